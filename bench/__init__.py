"""Benchmark of the rate-limited server against bare gunicorn and nginx."""
