"""The run's shared token: read from a file, written for a local run, never sent and never on a command line.

Every key of the elastic protocol is derived from it (:mod:`farsync.comm.auth`): a worker's join and every
later request are signed with a session key ``HMAC(token, session | nonce | slot | incarnation)``, and the
coordinator's replies with a key of its own. The token itself never travels and never appears on a command
line (where ``ps`` would show it): it is read from a file that only its owner can read.

A run started without a token file is open: nothing is signed or checked (the coordinator warns once).
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from farsync.config import ConfigError

__all__ = ["read_token", "write_token"]

logger = logging.getLogger(__name__)


def read_token(path: str | Path | None, key: str = "--token-file") -> bytes | None:
    """The token in ``path`` (surrounding whitespace removed); ``None`` when no file is given."""
    if path is None:
        return None
    file = Path(path)
    if not file.is_file():
        raise ConfigError(key, str(path), "no such token file")
    token = file.read_bytes().strip()
    if not token:
        raise ConfigError(key, str(path), "the token file is empty; put a long random secret in it")
    return token


def write_token(path: Path) -> bytes:
    """Writes a new random token to ``path`` readable by its owner only; returns it."""
    token = secrets.token_hex(32).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(token + b"\n")
    return token
