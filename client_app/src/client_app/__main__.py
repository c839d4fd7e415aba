"""Command line entry point: `ratelimit-client` or `python -m client_app`."""

import logging
import os
import sys

from client_app.client import ExitStatus, logger, run
from client_app.settings import InvalidSettingError, Settings


def main() -> int:
    """Run the client with settings from the environment and return the exit
    status."""
    try:
        settings = Settings.from_environ(os.environ)
    except InvalidSettingError as error:
        _configure_logging(logging.ERROR)
        logger.error("%s", error)
        return ExitStatus.INVALID_SETTINGS

    _configure_logging(settings.log_level_number)
    return run(settings, sys.stdout)


def _configure_logging(level: int) -> None:
    # basicConfig's default format is LEVEL:logger:message, the format of the
    # urllib3 lines the journal shows, such as
    # DEBUG:urllib3.connectionpool:http://server:80 "GET / HTTP/1.1" 200 27
    logging.basicConfig(level=level, stream=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
