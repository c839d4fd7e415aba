"""Load from several client addresses: no errors, and each admitted exactly its limit.

Each test runs 64 keep-alive connections for 30 s, spread over four loopback
source addresses, against RATE_LIMIT=1000/minute. The fixed window starts at
an address's first request and lasts 60 s, so within 30 s every address is
admitted exactly 1000 requests and rejected for the rest.
"""

from __future__ import annotations

from live_server import StartServer, client_request_counts
from loadgen import Endpoint, LoadResult, run_load

from bench.processes import GunicornServer, RedisServer

LIMIT = 1000
SOURCE_ADDRESSES = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]
CONNECTIONS = 64
SECONDS = 30.0


def settings(redis_server: RedisServer, workers: int) -> dict[str, str]:
    return {
        "RATE_LIMIT": f"{LIMIT}/minute",
        "REDIS_URL": redis_server.url(),
        "GUNICORN_WORKERS": str(workers),
    }


def summed_counts(servers: list[GunicornServer]) -> dict[tuple[str, str], float]:
    total: dict[tuple[str, str], float] = {}
    for server in servers:
        for key, value in client_request_counts(server.base_url).items():
            total[key] = total.get(key, 0.0) + value
    return total


def check_exact_limit(result: LoadResult, servers: list[GunicornServer]) -> None:
    assert result.server_errors == 0
    assert result.socket_errors == 0, [
        t.error_samples for t in result.by_address.values()
    ]
    assert result.invalid_bodies == 0
    metrics = summed_counts(servers)
    for address in SOURCE_ADDRESSES:
        statuses = result.by_address[address].statuses
        assert set(statuses) == {200, 429}, (address, statuses)
        assert statuses[200] == LIMIT, (address, statuses)
        assert metrics[(address, "200")] == LIMIT
        assert metrics[(address, "429")] == statuses[429]


def test_four_workers_admit_exact_limit(
    redis_server: RedisServer, start_server: StartServer
) -> None:
    server = start_server(settings(redis_server, workers=4))
    endpoint = Endpoint("127.0.0.1", server.port)

    result = run_load([endpoint], SOURCE_ADDRESSES, CONNECTIONS, SECONDS)

    check_exact_limit(result, [server])


def test_two_servers_share_limit(
    redis_server: RedisServer, start_server: StartServer
) -> None:
    servers = [start_server(settings(redis_server, workers=2)) for _ in range(2)]
    endpoints = [Endpoint("127.0.0.1", server.port) for server in servers]

    result = run_load(endpoints, SOURCE_ADDRESSES, CONNECTIONS, SECONDS)

    check_exact_limit(result, servers)
    # Each server alone saw only part of every address's admitted requests.
    for server in servers:
        counts = client_request_counts(server.base_url)
        for address in SOURCE_ADDRESSES:
            assert 0 < counts[(address, "200")] < LIMIT
