"""The WSGI entry point: ``gunicorn server_app.wsgi:app``."""

from server_app.app import create_app
from server_app.metrics import read_process_id_once

# The metrics must read the process ID once before the app creates them.
# gunicorn imports this module in each worker, so this runs there first.
read_process_id_once()
app = create_app()
