"""Clients that send part of a request and stall, against a real server: a thousand sockets with
partial headers and twenty 16 MiB bodies one byte short. Health and scoring still answer, memory
stays bounded by what the stalled bodies sent, bodies past the budget for bodies in flight are
refused, and the server closes every stalled socket."""

from __future__ import annotations

import contextlib
import socket
import threading

import httpx
import pytest
from helpers import HTTP_TIMEOUT_S, metric, peak_rss, rss, wait_for
from load_report import Tally

PARTIAL_HEADERS = 1000
STALLED_BODIES = 20
BODY_BYTES = 16 * 1024 * 1024  # the default --max-body-bytes
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def server(server_factory, tiny_model_factory):
    folder = tiny_model_factory(
        "slow-clients", labels=["NEGATIVE", "POSITIVE"], reward_config={"preset": "sentiment"}
    )
    # The default deadline for headers (10 s) and a shorter one for the whole request than the
    # default 60 s, only so that the test ends sooner. Deadlines far shorter would be unsafe on a
    # busy machine: an event loop that stalls past one closes an ordinary request's connection
    # too. The connection cap is the default 1,024, which the stalled sockets come close to.
    return server_factory(["--model", f"m={folder}", "--timeout-request-complete-s=20"])


def connect(server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=HTTP_TIMEOUT_S)
    return sock


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server has closed the socket: a read sees the end of the stream (or a reset),
    not a timeout."""
    sock.settimeout(0.05)
    try:
        return sock.recv(1 << 16) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_stalled_requests_hold_nothing_for_long_and_others_are_answered(server, load_report):
    stalled: list[socket.socket] = []
    with peak_rss(server.process.pid) as peak:
        before = rss(server.process.pid)
        for _ in range(PARTIAL_HEADERS):
            sock = connect(server)
            sock.sendall(b"POST /v1/score HTTP/1.1\r\nHost: reward\r\nContent-Type: applic")
            stalled.append(sock)
        bodies = [connect(server) for _ in range(STALLED_BODIES)]
        one_byte_short = b"x" * (BODY_BYTES - 1)

        def send_all_but_one_byte(sock: socket.socket) -> None:
            sock.sendall(
                b"POST /v1/score HTTP/1.1\r\nHost: reward\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n" % BODY_BYTES
            )
            # Closed by the server's deadline while still sending: fine too.
            with contextlib.suppress(OSError):
                sock.sendall(one_byte_short)

        senders = [threading.Thread(target=send_all_but_one_byte, args=(s,)) for s in bodies]
        for sender in senders:
            sender.start()
        with httpx.Client(base_url=server.url, timeout=HTTP_TIMEOUT_S) as client:
            health = client.get("/health/ready")
            scored = client.post("/v1/score", json={"texts": ["a fine film"]})
        for sender in senders:
            sender.join()
        stalled.extend(bodies)
        still_open = list(stalled)

        def all_closed() -> bool:
            # The sockets the server has closed are checked no more; stops at the first open one.
            while still_open and closed_by_server(still_open[-1]):
                still_open.pop()
            return not still_open

        wait_for(all_closed, "the server to close every stalled socket")

    load_report.record(
        Tally(
            "slow clients",
            f"{PARTIAL_HEADERS:,} sockets with partial headers + {STALLED_BODIES} bodies of "
            "16 MiB minus one byte, stalled + a health check and a score call",
            admitted=2,  # health and the score call, asserted below
            refused=len(stalled) - len(still_open),  # closed by a deadline or refused 429
            lost=len(still_open),
            peak_growth_bytes=peak[0] - before,
        )
    )
    assert health.status_code == 200
    assert scored.status_code == 200 and len(scored.json()["rewards"]) == 1
    # Bounded by what the stalled bodies sent (20 x 16 MiB), with room for the parser's copies.
    assert peak[0] - before < 2 * STALLED_BODIES * BODY_BYTES, f"{(peak[0] - before) / MIB} MiB"
    assert metric(server, "reward_http_read_timeouts_total", phase="headers") >= PARTIAL_HEADERS
    # The default --max-body-bytes-in-flight (256 MiB) takes sixteen of the bodies; the others
    # are refused 429 unread (more, if a body's deadline frees its share while others arrive).
    body_timeouts = metric(server, "reward_http_read_timeouts_total", phase="body")
    refused = metric(server, "reward_http_body_budget_refusals_total")
    assert refused >= 1 and body_timeouts + refused >= STALLED_BODIES
    for sock in stalled:
        sock.close()
    assert httpx.post(f"{server.url}/v1/score", json={"texts": ["still"]}).status_code == 200
