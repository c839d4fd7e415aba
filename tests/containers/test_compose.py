"""docker-compose.yml end to end: the worked example, metrics and scaling.

Each stack runs .env's worked example (RATE_LIMIT=5/10minute, 7 requests,
4 retries) with a backoff factor of 0.01 s, so every client sends 5 requests
that return 200, then 1 request and 4 retries that return 429, and exits 3.
"""

from __future__ import annotations

import ipaddress
import json
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import ComposeStack, Images, run_command, start_stack, stop_stack

# The first test builds the images, which takes minutes on a cold cache.
pytestmark = pytest.mark.timeout(900)

HELLO_WORLD = {"message": "hello world!"}
EXIT_RATE_LIMITED = 3
ALLOWED_REQUESTS = 5
REJECTED_REQUESTS = 5  # the 6th request and its 4 retries
RETRIES = 4


@dataclass(frozen=True)
class FinishedStack:
    """A compose stack whose client containers have all exited."""

    stack: ComposeStack
    exit_codes: dict[str, int]

    def container(self, service: str) -> str:
        """Return the id of the only container of ``service``."""
        (container_id,) = self.stack.container_ids(service)
        return container_id

    def subnet(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        """Return the subnet of the project's only network."""
        network_ids = run_command(
            [
                "docker",
                "network",
                "ls",
                "--quiet",
                "--filter",
                f"label=com.docker.compose.project={self.stack.project}",
            ]
        ).stdout.split()
        (network_id,) = network_ids
        inspected = json.loads(
            run_command(["docker", "network", "inspect", network_id]).stdout
        )
        (config,) = inspected[0]["IPAM"]["Config"]
        return ipaddress.ip_network(config["Subnet"])

    def running_addresses(self) -> set[str]:
        """Return the network addresses of the redis and server containers."""
        addresses = set()
        for service in ("redis", "server"):
            inspected = self.stack.inspect(self.container(service))
            for network in inspected["NetworkSettings"]["Networks"].values():
                addresses.add(network["IPAddress"])
        return addresses

    def server_metrics(self) -> str:
        """Fetch /metrics with curl inside the server container."""
        result = run_command(
            [
                "docker",
                "exec",
                self.container("server"),
                "curl",
                "--fail",
                "--silent",
                "--show-error",
                "http://localhost:80/metrics",
            ]
        )
        return result.stdout


@pytest.fixture(scope="module")
def one_client(images: Images) -> Iterator[FinishedStack]:
    stack = start_stack(images)
    try:
        yield FinishedStack(stack, stack.wait_for_exit("client"))
    finally:
        stop_stack(stack)


@pytest.fixture(scope="module")
def two_clients(images: Images) -> Iterator[FinishedStack]:
    stack = start_stack(images, "--scale", "client=2")
    try:
        yield FinishedStack(stack, stack.wait_for_exit("client"))
    finally:
        stop_stack(stack)


def requests_by_address(metrics: str) -> dict[str, dict[str, float]]:
    """Map each client address in client_requests_total to its counts by status."""
    counts: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            if sample.name == "client_requests_total":
                address = sample.labels["address"]
                counts.setdefault(address, {})[sample.labels["status"]] = sample.value
    return counts


def sample_value(metrics: str, name: str, **labels: str) -> float | None:
    """Return the value of the sample ``name`` with exactly ``labels``."""
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return None


def test_client_exits_rate_limited(one_client: FinishedStack) -> None:
    assert list(one_client.exit_codes.values()) == [EXIT_RATE_LIMITED]


def test_client_logs_show_worked_example(one_client: FinishedStack) -> None:
    result = run_command(["docker", "logs", one_client.container("client")])
    lines = (result.stdout + result.stderr).splitlines()
    responses = [line for line in lines if line.startswith("{")]

    assert [json.loads(line) for line in responses] == [HELLO_WORLD] * 5
    assert sum("Incremented Retry" in line for line in lines) == RETRIES
    assert lines.count("Failure retries limit is reached") == 1


def test_server_metrics_count_requests(one_client: FinishedStack) -> None:
    metrics = one_client.server_metrics()
    by_address = requests_by_address(metrics)

    assert sample_value(
        metrics, "flask_http_request_total", method="GET", status="200"
    ) == float(ALLOWED_REQUESTS)
    assert sample_value(
        metrics, "flask_http_request_total", method="GET", status="429"
    ) == float(REJECTED_REQUESTS)
    # An exited container has no address left to inspect, so the test checks
    # that the only address counted is on the project's network and belongs
    # to neither of the two containers still running.
    (address,) = by_address
    assert ipaddress.ip_address(address) in one_client.subnet()
    assert address not in one_client.running_addresses()
    assert by_address[address] == {
        "200": float(ALLOWED_REQUESTS),
        "429": float(REJECTED_REQUESTS),
    }


def test_client_container_reaches_metrics(one_client: FinishedStack) -> None:
    result = one_client.stack.compose(
        "run",
        "--rm",
        "--no-deps",
        "client",
        "curl",
        "--fail",
        "--silent",
        "--show-error",
        "http://server:80/metrics",
    )

    assert sample_value(
        result.stdout, "flask_http_request_total", method="GET", status="200"
    ) == float(ALLOWED_REQUESTS)


def test_server_published_on_loopback(one_client: FinishedStack) -> None:
    published = one_client.stack.compose("port", "server", "80").stdout.strip()
    host, _, port = published.rpartition(":")

    assert host == "127.0.0.1"
    with urllib.request.urlopen(
        f"http://127.0.0.1:{port}/healthz", timeout=10
    ) as response:
        assert response.status == 200


def test_server_container_hardened(one_client: FinishedStack) -> None:
    inspected = one_client.stack.inspect(one_client.container("server"))
    host_config = inspected["HostConfig"]

    assert inspected["Config"]["User"] == "10001:10001"
    assert inspected["State"]["Health"]["Status"] == "healthy"
    assert host_config["ReadonlyRootfs"] is True
    assert host_config["CapDrop"] == ["ALL"]
    assert "no-new-privileges:true" in host_config["SecurityOpt"]


def test_redis_requires_password(one_client: FinishedStack) -> None:
    redis = one_client.container("redis")
    without_password = run_command(
        ["docker", "exec", redis, "env", "-u", "REDISCLI_AUTH", "redis-cli", "ping"],
        check=False,
    )
    with_password = run_command(["docker", "exec", redis, "redis-cli", "ping"])

    assert "NOAUTH" in without_password.stdout + without_password.stderr
    assert with_password.stdout.strip() == "PONG"


def test_redis_not_published(one_client: FinishedStack) -> None:
    ports = one_client.stack.inspect(one_client.container("redis"))["NetworkSettings"][
        "Ports"
    ]

    assert ports == {"6379/tcp": None}


def test_scaled_clients_limited_separately(two_clients: FinishedStack) -> None:
    metrics = two_clients.server_metrics()
    by_address = requests_by_address(metrics)
    subnet = two_clients.subnet()

    assert list(two_clients.exit_codes.values()) == [EXIT_RATE_LIMITED] * 2
    assert len(by_address) == 2
    for address, counts in by_address.items():
        assert ipaddress.ip_address(address) in subnet
        assert address not in two_clients.running_addresses()
        assert counts == {
            "200": float(ALLOWED_REQUESTS),
            "429": float(REJECTED_REQUESTS),
        }, address
    assert sample_value(
        metrics, "flask_http_request_total", method="GET", status="200"
    ) == float(2 * ALLOWED_REQUESTS)
    assert sample_value(
        metrics, "flask_http_request_total", method="GET", status="429"
    ) == float(2 * REJECTED_REQUESTS)
