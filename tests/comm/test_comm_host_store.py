"""The run's store listens on the address it is given, not on every interface as TCPStore's server does."""

from __future__ import annotations

import socket
import sys

import pytest

from farsync.comm.groups import host_store, is_loopback, open_store


def _accepts(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1.0).close()
    except OSError:
        return False
    return True


@pytest.mark.skipif(sys.platform != "linux", reason="127.0.0.2 is a loopback address on Linux only")
def test_host_store_listens_on_the_named_address_only() -> None:
    store = host_store("127.0.0.1", 0)
    client = open_store("127.0.0.1", store.port, 1, is_master=False, timeout_s=5.0)
    client.set("k", "v")
    assert store.get("k") == b"v"
    assert not _accepts("127.0.0.2", store.port)  # another address of this machine: refused
    plain = open_store("127.0.0.1", 0, 1, is_master=True)
    assert _accepts("127.0.0.2", plain.port)  # what TCPStore alone does: every interface


def test_is_loopback() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("localhost")
    assert (
        not is_loopback("0.0.0.0")
        and not is_loopback("192.0.2.7")
        and not is_loopback("no-such-host.invalid")
    )
