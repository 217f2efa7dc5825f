"""The relay that weight shards travel through: a shared directory, optionally served over HTTP.

This module owns the transport under :mod:`farsync.rl.broadcast`. A relay is the stand-in for SHARDCAST's
relay servers / a CDN (INTELLECT-2, arXiv 2505.07291): the trainer writes a version's files into one
directory; consumers read them either straight from that directory (a shared or network file system) or over
HTTP from a :class:`RelayServer` (the standard library's ``http.server``) through :class:`HttpRelay`
(``urllib``). No socket protocol of our own.

Only names of the relay's layout are ever read or written (:func:`check_name`): ``LATEST``,
``v<8 digits>/manifest.json``, ``v<8 digits>/shard-<5 digits>.safetensors`` and
``consumers/<consumer id>.json``; anything else (``..``, absolute paths) is refused on both sides.

Failures: a missing file raises :class:`RelayMissing`; anything else that stops a read (timeout, refused
connection, a body larger than the caller allows) raises :class:`RelayError`. Every HTTP call has a timeout;
reads of a local directory are bounded by the file system.
"""

from __future__ import annotations

import http.server
import json
import logging
import os
import re
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "DirectoryRelay",
    "HttpRelay",
    "Relay",
    "RelayError",
    "RelayMissing",
    "RelayServer",
    "check_name",
    "report_age_s",
    "write_atomically",
]

logger = logging.getLogger(__name__)

_NAME = re.compile(
    r"LATEST|v\d{8}/manifest\.json|v\d{8}/shard-\d{5}\.safetensors|consumers/[A-Za-z0-9_.\-]{1,64}\.json"
)
MAX_REPORT_BYTES = 4096
"""Largest consumer report a relay accepts."""


class RelayError(OSError):
    """A relay read or write that did not complete (timeout, connection, oversized body)."""


class RelayMissing(RelayError):
    """The relay has no file of that name (not published yet, or already garbage-collected)."""


def check_name(name: str) -> str:
    """Returns ``name`` if it belongs to the relay's layout; raises ``ValueError`` naming what is allowed."""
    if not isinstance(name, str) or _NAME.fullmatch(name) is None or ".." in name:
        raise ValueError(
            f"relay name {name!r} is not LATEST, vNNNNNNNN/manifest.json, vNNNNNNNN/shard-NNNNN.safetensors "
            "or consumers/<id>.json"
        )
    return name


def write_atomically(path: Path, data: bytes, *, durable: bool = False) -> None:
    """Writes ``data`` to ``path`` so that a reader sees the old file or the whole new one, never a part.

    ``durable`` also flushes the file to disk before it is renamed (a machine crash cannot leave it half
    written). Broadcast does not need it: a shard lost in a crash fails its checksum and is fetched again.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        if durable:
            handle.flush()
            os.fsync(handle.fileno())
    os.replace(tmp, path)


@runtime_checkable
class Relay(Protocol):
    """What a consumer needs from a relay: read a file of the layout, and report the version it holds."""

    def read(self, name: str, max_bytes: int, timeout_s: float) -> bytes:
        """The bytes of ``name`` (at most ``max_bytes``, else :class:`RelayError`)."""
        ...

    def report(self, consumer_id: str, record: dict[str, Any], timeout_s: float) -> None:
        """Stores ``record`` (small JSON) as ``consumers/<consumer_id>.json``."""
        ...


class DirectoryRelay:
    """A relay that is a directory the consumer can read directly (shared or network file system)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def read(self, name: str, max_bytes: int, timeout_s: float) -> bytes:
        path = self.root / check_name(name)
        try:
            with open(path, "rb") as handle:
                data = handle.read(max_bytes + 1)
        except FileNotFoundError:
            raise RelayMissing(f"{name} is not on the relay at {self.root}") from None
        except OSError as error:
            raise RelayError(f"reading {name} from {self.root}: {error}") from None
        if len(data) > max_bytes:
            raise RelayError(f"{name} is larger than the {max_bytes} bytes allowed")
        return data

    def report(self, consumer_id: str, record: dict[str, Any], timeout_s: float) -> None:
        data = json.dumps(record).encode()
        if len(data) > MAX_REPORT_BYTES:
            raise ValueError(f"a consumer report is at most {MAX_REPORT_BYTES} bytes, got {len(data)}")
        write_atomically(self.root / check_name(f"consumers/{consumer_id}.json"), data)


class HttpRelay:
    """A relay read over HTTP (``urllib``) from a :class:`RelayServer` or any static file server."""

    def __init__(self, base_url: str) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"relay url {base_url!r} must start with http:// or https://")
        self.base_url = base_url.rstrip("/")

    def read(self, name: str, max_bytes: int, timeout_s: float) -> bytes:
        url = f"{self.base_url}/{check_name(name)}"
        try:
            with urllib.request.urlopen(url, timeout=max(timeout_s, 1e-3)) as response:
                data: bytes = response.read(max_bytes + 1)
        except urllib.error.HTTPError as error:
            if error.code == 404:
                raise RelayMissing(f"{name} is not on the relay at {self.base_url}") from None
            raise RelayError(f"GET {url}: HTTP {error.code}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as error:
            raise RelayError(f"GET {url}: {error}") from None
        if len(data) > max_bytes:
            raise RelayError(f"{name} is larger than the {max_bytes} bytes allowed")
        return data

    def report(self, consumer_id: str, record: dict[str, Any], timeout_s: float) -> None:
        url = f"{self.base_url}/{check_name(f'consumers/{consumer_id}.json')}"
        request = urllib.request.Request(url, data=json.dumps(record).encode(), method="PUT")
        try:
            with urllib.request.urlopen(request, timeout=max(timeout_s, 1e-3)):
                pass
        except (urllib.error.URLError, TimeoutError, OSError) as error:
            raise RelayError(f"PUT {url}: {error}") from None


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the relay layout's files; accepts small PUTs of consumer reports; refuses everything else."""

    def _name(self) -> str | None:
        try:
            return check_name(self.path.split("?", 1)[0].lstrip("/"))
        except ValueError:
            self.send_error(404, "not a relay file")
            return None

    def do_GET(self) -> None:
        if self._name() is not None:
            super().do_GET()

    def do_HEAD(self) -> None:
        if self._name() is not None:
            super().do_HEAD()

    def do_PUT(self) -> None:
        name = self._name()
        if name is None:
            return
        length = int(self.headers.get("Content-Length", "0") or 0)
        if not name.startswith("consumers/") or not 0 < length <= MAX_REPORT_BYTES:
            self.send_error(400, f"only consumers/<id>.json of 1 to {MAX_REPORT_BYTES} bytes may be written")
            return
        body = self.rfile.read(length)
        try:
            record = json.loads(body)
            if not isinstance(record, dict) or not isinstance(record.get("version"), int):
                raise ValueError("no integer 'version'")
        except ValueError as error:
            logger.warning("relay: rejected consumer report %s: %s", name, error)
            self.send_error(400, "a report is a JSON object with an integer 'version'")
            return
        write_atomically(Path(self.directory) / name, body)
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("relay http: " + format, *args)


class RelayServer:
    """Serves a relay directory over HTTP on ``host`` (port 0: a free port) from a daemon thread.

    Use as a context manager, or call :meth:`close`. ``url`` is the base URL for :class:`HttpRelay`.
    """

    def __init__(self, root: Path | str, host: str = "127.0.0.1", port: int = 0) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        directory = str(self.root)

        class Handler(_Handler):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, directory=directory, **kwargs)

        self._server = http.server.ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="relay-http", daemon=True)
        self._thread.start()
        self.url = f"http://{host}:{self._server.server_address[1]}"

    def close(self, timeout_s: float = 5.0) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=timeout_s)

    def __enter__(self) -> RelayServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def report_age_s(path: Path) -> float:
    """Seconds since ``path`` (a consumer report) was last written."""
    return max(0.0, time.time() - path.stat().st_mtime)
