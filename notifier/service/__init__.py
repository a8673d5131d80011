"""Long-running tasks that join the adapters to the core decisions."""
