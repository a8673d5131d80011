"""The Dentally API adapter."""
