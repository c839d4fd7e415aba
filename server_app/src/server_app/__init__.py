"""A Flask hello-world service with a per-client rate limit kept in Redis.

The application factory is :func:`server_app.app.create_app`. This module
imports nothing, so that ``server_app.gunicorn_conf`` can set
PROMETHEUS_MULTIPROC_DIR before prometheus_client is first imported.
"""
