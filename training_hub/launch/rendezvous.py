"""Wait until the rendezvous endpoint can be used, before torchrun is started.

torchrun's default static rendezvous makes node rank 0 serve a TCP store on the endpoint's port; the
other ranks connect to it. In a cluster the endpoint's host is the rank-0 headless Service, whose DNS
name appears only once that pod exists (and is ready, unless the Service publishes not-ready
addresses). Started too early, torchrun fails fast and the whole gang restarts; so every rank first
waits until the name resolves, and ranks other than 0 also until the port accepts connections.
"""

from __future__ import annotations

import socket
import sys
import time
from dataclasses import dataclass
from typing import Callable


class RendezvousTimeout(Exception):
    """The endpoint did not become usable in time (retryable: exit RENDEZVOUS_TIMEOUT)."""


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_endpoint(endpoint: str) -> Endpoint:
    """`host:port` or `[v6]:port` -> Endpoint, by the parameters' own parser. Raises ValueError naming what is wrong."""
    from training_hub.params import parse_host_port

    try:
        return Endpoint(*parse_host_port(endpoint))
    except ValueError as exc:
        raise ValueError(f"rdzv_endpoint: {exc} (got {endpoint!r})") from None


def resolves(endpoint: Endpoint) -> str | None:
    """None when the host resolves, else why not."""
    try:
        socket.getaddrinfo(endpoint.host, endpoint.port, type=socket.SOCK_STREAM)
        return None
    except (socket.gaierror, UnicodeError) as exc:
        return f"{endpoint.host} does not resolve ({exc})"


def accepts_connections(endpoint: Endpoint, timeout_s: float) -> str | None:
    """None when a TCP connection to the endpoint succeeds (it is closed at once), else why not."""
    try:
        with socket.create_connection((endpoint.host, endpoint.port), timeout=max(0.1, timeout_s)):
            return None
    except OSError as exc:
        return f"{endpoint} does not accept connections ({exc})"


def wait_for_endpoint(
    endpoint: str | Endpoint,
    *,
    node_rank: int,
    timeout_s: float,
    poll_interval_s: float = 1.0,
    report_every_s: float = 15.0,
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> float:
    """Block until the endpoint is usable for this rank; return the seconds waited.

    Raises RendezvousTimeout (with the last reason) after `timeout_s`.
    """
    target = endpoint if isinstance(endpoint, Endpoint) else parse_endpoint(endpoint)
    must_connect = node_rank != 0
    what = "resolves and accepts connections" if must_connect else "resolves"
    start = clock()
    deadline = start + timeout_s
    next_report = start
    while True:
        remaining = deadline - clock()
        problem = resolves(target)
        if problem is None and must_connect:
            problem = accepts_connections(target, min(5.0, max(0.1, remaining)))
        now = clock()
        if problem is None:
            waited = now - start
            if waited >= poll_interval_s:
                log(f"training-hub: rendezvous endpoint {target} ready after {waited:.0f}s")
            return waited
        if now >= deadline:
            raise RendezvousTimeout(
                f"rendezvous endpoint {target} not ready after {timeout_s:g}s (node rank {node_rank} waits "
                f"until it {what}): {problem}"
            )
        if now >= next_report:
            log(
                f"training-hub: waiting for rendezvous endpoint {target} (node rank {node_rank}: until it {what}; "
                f"{now - start:.0f}s of {timeout_s:g}s): {problem}"
            )
            next_report = now + report_every_s
        sleep(max(0.0, min(poll_interval_s, deadline - now)))
