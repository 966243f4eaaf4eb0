"""A free TCP port for torchrun's rendezvous: tests run in parallel workers, so no port is fixed."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port on the loopback interface that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
