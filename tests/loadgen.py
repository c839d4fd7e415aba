"""A bounded HTTP load generator with one keep-alive connection per thread.

Each connection binds its socket to one of several loopback source addresses,
so the server counts several client addresses. Every connection stops at a
deadline or after a maximum number of requests, whichever comes first.
"""

from __future__ import annotations

import http.client
import json
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_SECONDS = 10.0


@dataclass
class AddressTally:
    """Responses by status, socket errors and invalid bodies for one address."""

    statuses: Counter[int] = field(default_factory=Counter)
    socket_errors: int = 0
    invalid_bodies: int = 0
    error_samples: list[str] = field(default_factory=list)


@dataclass
class LoadResult:
    """Tallies by source address, from every connection of one load run."""

    by_address: dict[str, AddressTally]
    seconds: float

    def count(self, address: str, status: int) -> int:
        return self.by_address[address].statuses[status]

    @property
    def total_requests(self) -> int:
        return sum(sum(t.statuses.values()) for t in self.by_address.values())

    @property
    def server_errors(self) -> int:
        return sum(
            n
            for tally in self.by_address.values()
            for status, n in tally.statuses.items()
            if status >= 500
        )

    @property
    def socket_errors(self) -> int:
        return sum(t.socket_errors for t in self.by_address.values())

    @property
    def invalid_bodies(self) -> int:
        return sum(t.invalid_bodies for t in self.by_address.values())


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    path: str = "/"


def _body_is_json(body: bytes) -> bool:
    try:
        json.loads(body)
    except ValueError:
        return False
    return True


def _connection_loop(
    endpoint: Endpoint,
    source_address: str,
    deadline: float,
    max_requests: int,
    tally: AddressTally,
    lock: threading.Lock,
) -> None:
    connection: http.client.HTTPConnection | None = None
    sent = 0
    while sent < max_requests and time.monotonic() < deadline:
        if connection is None:
            connection = http.client.HTTPConnection(
                endpoint.host,
                endpoint.port,
                timeout=REQUEST_TIMEOUT_SECONDS,
                source_address=(source_address, 0),
            )
        sent += 1
        try:
            connection.request("GET", endpoint.path)
            response = connection.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException) as error:
            connection.close()
            connection = None
            with lock:
                tally.socket_errors += 1
                if len(tally.error_samples) < 5:
                    tally.error_samples.append(repr(error))
            continue
        with lock:
            tally.statuses[response.status] += 1
            if not _body_is_json(body):
                tally.invalid_bodies += 1
                if len(tally.error_samples) < 5:
                    tally.error_samples.append(f"{response.status}: {body[:200]!r}")
        if response.will_close:
            connection.close()
            connection = None
    if connection is not None:
        connection.close()


def run_load(
    endpoints: list[Endpoint],
    source_addresses: list[str],
    connections: int,
    seconds: float,
    max_requests_per_connection: int = 100_000,
) -> LoadResult:
    """Open connections spread over addresses and endpoints, run them, tally.

    Connection i uses source address i mod len(addresses) and endpoint
    (i // len(addresses)) mod len(endpoints), so every address reaches every
    endpoint when there are enough connections.
    """
    lock = threading.Lock()
    tallies = {address: AddressTally() for address in source_addresses}
    started = time.monotonic()
    deadline = started + seconds
    threads = []
    for index in range(connections):
        address = source_addresses[index % len(source_addresses)]
        endpoint = endpoints[(index // len(source_addresses)) % len(endpoints)]
        thread = threading.Thread(
            target=_connection_loop,
            args=(
                endpoint,
                address,
                deadline,
                max_requests_per_connection,
                tallies[address],
                lock,
            ),
            name=f"load-{index}",
            daemon=True,
        )
        threads.append(thread)
    for thread in threads:
        thread.start()
    for thread in threads:
        # A request in flight at the deadline has at most its timeout to end.
        thread.join(timeout=seconds + 2 * REQUEST_TIMEOUT_SECONDS)
        if thread.is_alive():
            raise RuntimeError(f"{thread.name} did not stop by its deadline")
    result = LoadResult(tallies, time.monotonic() - started)
    log.info(
        "load: %d requests in %.1f s over %d connections",
        result.total_requests,
        result.seconds,
        connections,
    )
    return result
