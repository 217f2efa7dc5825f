"""Who may join a run: the run's shared token, read from a file, proven with an HMAC, never sent in clear.

The coordinator publishes a random nonce in its store; a worker answers with
``HMAC-SHA256(token, nonce | worker slot | incarnation)``. The coordinator recomputes it and compares with
:func:`hmac.compare_digest` (constant time). The token itself never travels and never appears on a command
line (where ``ps`` would show it): it is read from a file that only its owner can read.

A run started without a token file is open: every proof is accepted (the coordinator warns once).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from pathlib import Path

from farsync.config import ConfigError

__all__ = ["check_proof", "make_proof", "read_token", "write_token"]

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


def make_proof(token: bytes | None, nonce: str, slot: int | None, incarnation: str) -> str:
    """What a worker presents: an HMAC of the coordinator's nonce and its identity ("" without a token)."""
    if token is None:
        return ""
    message = f"{nonce}|{slot}|{incarnation}".encode()
    return hmac.new(token, message, hashlib.sha256).hexdigest()


def check_proof(token: bytes | None, nonce: str, slot: int | None, incarnation: str, proof: str) -> bool:
    """True when ``proof`` was made with the run's token (always True for an open run)."""
    if token is None:
        return True
    expected = make_proof(token, nonce, slot, incarnation)
    return hmac.compare_digest(expected.encode(), str(proof).encode())
