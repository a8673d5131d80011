"""Webhook delivery: URL safety, signed HTTP attempts."""
