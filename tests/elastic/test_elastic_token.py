"""Who may join: a wrong or missing token is refused with a clear message and leaves no trace in the run."""

from __future__ import annotations

from pathlib import Path

import pytest

from farsync.comm.groups import open_store
from farsync.config import load_config
from farsync.elastic.client import CoordinatorClient, JoinRefused
from farsync.elastic.coordinator import Coordinator
from farsync.elastic.token import read_token, write_token
from farsync.elastic.worker import EXIT_REFUSED, join


def test_token_file_is_private_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "token"
    token = write_token(path)
    assert read_token(path) == token
    assert path.stat().st_mode & 0o077 == 0


@pytest.fixture
def coordinator(tmp_path: Path):  # type: ignore[no-untyped-def]
    token = write_token(tmp_path / "token")
    store = open_store("127.0.0.1", 0, 1, is_master=True)
    coord = Coordinator(store, token=token, min_workers=1)
    thread = coord.start_thread()
    yield coord, store.port
    coord.stop()
    thread.join(5)


def _client(port: int, token: bytes | None) -> CoordinatorClient:
    return CoordinatorClient(
        "127.0.0.1",
        port,
        token=token,
        slot=None,
        config_sha="cfg",
        num_slots=2,
        elastic={},
        say=lambda line: None,
    )


def test_wrong_or_missing_token_is_refused_and_has_no_effect(coordinator, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    coord, port = coordinator
    for token in (b"not-the-token", None):
        client = _client(port, token)
        with pytest.raises(JoinRefused, match="token"):
            client.register(client.store)
    assert coord.book.admitted == {}  # nothing entered the run
    # A refusal the worker cannot verify (it lacks the key) is believed once it persists: 3 tries each.
    assert coord.num_refused_joins == 3 + 1
    assert all("token" in refusal["reason"] for refusal in coord.refusals)
    good = _client(port, read_token(tmp_path / "token"))
    good.register(good.store)
    assert good.slot == 0 and list(coord.book.admitted) == [0]


def test_farsync_worker_with_a_wrong_token_exits_with_a_clear_message(
    coordinator,
    tmp_path: Path,  # type: ignore[no-untyped-def]
    capsys: pytest.CaptureFixture[str],
) -> None:
    coord, port = coordinator
    wrong = tmp_path / "wrong"
    wrong.write_text("guessed\n")
    config = load_config(None, ["num_workers=2"])
    code = join(config, f"127.0.0.1:{port}", token_file=wrong, out_dir=None)
    assert code == EXIT_REFUSED
    err = capsys.readouterr().err
    assert "refused" in err and "does not match the run's token" in err
    assert coord.book.admitted == {}
