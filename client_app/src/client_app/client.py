"""Send the configured number of GET requests and retry the failed ones."""

from __future__ import annotations

import enum
import logging
import time
from dataclasses import dataclass
from typing import TextIO

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import MaxRetryError
from urllib3.util.retry import Retry

from client_app.settings import Settings, url_for_logs

logger = logging.getLogger("client_app")

TOO_MANY_REQUESTS = 429
# 429 is what the rate limiter returns. The 5xx codes are the ones a proxy or
# an overloaded server returns for a condition that may clear on its own.
RETRY_STATUSES = frozenset({TOO_MANY_REQUESTS, 500, 502, 503, 504})
RETRIES_EXHAUSTED_MESSAGE = "Failure retries limit is reached"


class ExitStatus(enum.IntEnum):
    """Process exit statuses. Python itself exits with 1 on an uncaught exception."""

    OK = 0
    INVALID_SETTINGS = 2
    RETRIES_EXHAUSTED = 3
    SERVER_FAILED = 4


@dataclass
class Tally:
    """Counts of the HTTP requests one run sent and the responses it got."""

    sent: int = 0
    ok: int = 0
    rate_limited: int = 0
    other: int = 0
    retries: int = 0

    def record_status(self, status: int | None) -> None:
        """Count one sent request and its response status, None if it failed."""
        self.sent += 1
        if status is None:
            return
        if 200 <= status < 300:
            self.ok += 1
        elif status == TOO_MANY_REQUESTS:
            self.rate_limited += 1
        else:
            self.other += 1

    def record_response(self, response: requests.Response) -> None:
        """Count every attempt behind a response, retried ones included."""
        # requests follows redirects itself, so each hop has its own Retry.
        for hop in (*response.history, response):
            retry: Retry | None = hop.raw.retries
            attempts = retry.history if retry is not None else ()
            for attempt in attempts:
                self.record_status(attempt.status)
            self.retries += len(attempts)
            self.record_status(hop.status_code)


def build_session(settings: Settings) -> requests.Session:
    """Create a session whose adapter retries 429 and 5xx responses and
    connection errors with exponential backoff."""
    retry = Retry(
        total=settings.total_failure_retries,
        allowed_methods=frozenset({"GET"}),
        status_forcelist=RETRY_STATUSES,
        backoff_factor=settings.backoff_factor,
        backoff_max=settings.max_backoff,
        # The rate limiter's Retry-After is the time left in its window, up to
        # 600 s for 5/10minute. Honouring it would replace the backoff rule
        # with that wait, so only backoff_factor and backoff_max set the wait.
        respect_retry_after_header=False,
        # Return the last response when the retries run out, so run() can tell
        # a 429 (rate limited) from a 5xx (server failing) by its status.
        raise_on_status=False,
    )
    session = requests.Session()
    # Each request opens its own connection. A kept-alive connection sits idle
    # through the backoff wait. When that wait equals the server's keep-alive
    # timeout (2 s in gunicorn, the second wait with factor 1), the server
    # closes the connection just as the retry is sent. The retry then fails
    # with a connection error and uses up one of the retries meant for 429s.
    session.headers["Connection"] = "close"
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def run(settings: Settings, output: TextIO) -> ExitStatus:
    """Send settings.total_requests GET requests, write each response body to
    output and log a summary line at INFO."""
    tally = Tally()
    started = time.monotonic()
    with build_session(settings) as session:
        status = _send_requests(session, settings, tally, output)
    elapsed = time.monotonic() - started
    logger.info(
        "Summary: sent=%d ok_2xx=%d rate_limited_429=%d other=%d retries=%d"
        " seconds=%.2f",
        tally.sent,
        tally.ok,
        tally.rate_limited,
        tally.other,
        tally.retries,
        elapsed,
    )
    return status


def _send_requests(
    session: requests.Session, settings: Settings, tally: Tally, output: TextIO
) -> ExitStatus:
    url = url_for_logs(settings.server_url)
    for _ in range(settings.total_requests):
        try:
            response = session.get(
                settings.server_url,
                timeout=(settings.connect_timeout, settings.read_timeout),
            )
        except requests.RequestException as error:
            _record_failure(tally, settings, error)
            logger.error(
                "Request to %s failed: %s",
                url,
                _describe(error, settings.total_failure_retries),
            )
            return ExitStatus.SERVER_FAILED

        tally.record_response(response)
        if response.ok:
            print(response.text.rstrip("\n"), file=output, flush=True)
            continue
        if response.status_code == TOO_MANY_REQUESTS:
            print(RETRIES_EXHAUSTED_MESSAGE, file=output, flush=True)
            return ExitStatus.RETRIES_EXHAUSTED
        logger.error(
            "Request to %s failed: the server returned %d %s after %d retries",
            url,
            response.status_code,
            response.reason,
            len(response.raw.retries.history) if response.raw.retries else 0,
        )
        return ExitStatus.SERVER_FAILED
    return ExitStatus.OK


def _record_failure(
    tally: Tally, settings: Settings, error: requests.RequestException
) -> None:
    # urllib3 raises MaxRetryError only once every retry is used, so the
    # request was sent 1 + total_failure_retries times. Any other error was
    # raised on the first attempt.
    if _max_retry_error(error) is None:
        tally.record_status(None)
        return
    for _ in range(settings.total_failure_retries + 1):
        tally.record_status(None)
    tally.retries += settings.total_failure_retries


def _max_retry_error(error: requests.RequestException) -> MaxRetryError | None:
    # requests wraps urllib3's MaxRetryError as the first argument of its own.
    cause = error.args[0] if error.args else None
    return cause if isinstance(cause, MaxRetryError) else None


def _describe(error: requests.RequestException, retries: int) -> str:
    max_retry_error = _max_retry_error(error)
    if max_retry_error is not None:
        description = f"{max_retry_error.reason} (after {retries} retries)"
    else:
        description = str(error)
    # Keep the error on one line for the journal.
    return " ".join(description.split())
