"""Ports for a dataflow group in tests and benchmarks (crmflow.redis_server.free_ports)."""

from __future__ import annotations

import socket
from pathlib import Path

from crmflow.redis_server import free_ports


def ephemeral_range() -> tuple[int, int]:
    low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    return int(low), int(high)


def test_free_ports_are_consecutive_bindable_and_outside_the_ephemeral_range() -> None:
    low, _ = ephemeral_range()
    for _ in range(20):
        base = free_ports(3)
        assert base + 3 <= low  # no outgoing connection can hold one of them meanwhile
        sockets = [socket.socket() for _ in range(3)]
        try:
            for n, sock in enumerate(sockets):
                sock.bind(("127.0.0.1", base + n))
        finally:
            for sock in sockets:
                sock.close()

