"""The WSGI entry point: ``gunicorn server_app.wsgi:app``."""

from server_app.app import create_app

app = create_app()
