"""Exit 0 when GET /healthz on the server in this container returns 200.

The image's HEALTHCHECK runs this file with the container's environment, so
it requests the port that GUNICORN_BIND sets. The server returns 200 from
/healthz only while Redis replies to it, so an unhealthy container can also
mean that the rate-limit storage is unreachable.
"""

import os
import sys
import urllib.error
import urllib.request

# The server's default bind address when GUNICORN_BIND is unset.
DEFAULT_BIND = "0.0.0.0:80"
TIMEOUT_SECONDS = 3.0
# Wildcard addresses accept connections on loopback as well.
WILDCARD_HOSTS = {"", "0.0.0.0", "[::]"}


def healthz_url(bind: str) -> str:
    """Build the /healthz URL that reaches the address gunicorn binds."""
    host, separator, port = bind.rpartition(":")
    if bind.startswith("unix:") or not separator or not port.isdigit():
        raise ValueError(
            f"invalid GUNICORN_BIND={bind!r} for the health check: "
            "expected HOST:PORT, for example 0.0.0.0:8080"
        )
    if host in WILDCARD_HOSTS:
        host = "[::1]" if host == "[::]" else "127.0.0.1"
    return f"http://{host}:{port}/healthz"


def main() -> int:
    try:
        url = healthz_url(os.environ.get("GUNICORN_BIND", DEFAULT_BIND))
    except ValueError as error:
        print(error)
        return 1
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response:
            status = response.status
    except urllib.error.HTTPError as error:
        status = error.code
    except OSError as error:
        print(f"GET {url} failed: {error}")
        return 1
    print(f"GET {url} returned {status}")
    return 0 if status == 200 else 1


if __name__ == "__main__":
    sys.exit(main())
