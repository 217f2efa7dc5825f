"""Built-in attacks against hand-computed values, and loading of attacks by name."""

import math
from pathlib import Path

import pytest
import torch

from farsync.sim.attacks import (
    BUILTIN_ATTACKS,
    LABEL_FLIP,
    AttackContext,
    alie,
    alie_z,
    constant,
    flip_labels,
    gaussian,
    label_flip,
    load_attack,
    sign_flip,
    stale,
)

PLUGIN_DIR = Path(__file__).resolve().parent


def make_context(
    *,
    honest_updates: list[torch.Tensor] | None = None,
    history: list[torch.Tensor] | None = None,
    seed: int = 0,
    num_workers: int = 16,
    num_byzantine: int = 7,
) -> AttackContext:
    return AttackContext(
        round=3,
        worker=1,
        num_workers=num_workers,
        num_byzantine=num_byzantine,
        honest_updates=honest_updates or [],
        history=history or [],
        generator=torch.Generator().manual_seed(seed),
    )


def test_sign_flip_reverses_and_scales() -> None:
    # Prepare
    attack = sign_flip(scale=1000.0)
    # Execute
    forged = attack(torch.tensor([1.0, -2.0]), make_context())
    # Assert
    torch.testing.assert_close(forged, torch.tensor([-1000.0, 2000.0]))


def test_gaussian_is_deterministic_under_seeded_generator() -> None:
    attack = gaussian(std=5.0)
    update = torch.zeros(100)
    first = attack(update, make_context(seed=11))
    again = attack(update, make_context(seed=11))
    other = attack(update, make_context(seed=12))
    expected = 5.0 * torch.randn(100, generator=torch.Generator().manual_seed(11))
    torch.testing.assert_close(first, again)
    torch.testing.assert_close(first, expected)
    assert not torch.equal(first, other)


def test_constant_sets_every_coordinate() -> None:
    forged = constant(value=3.0)(torch.tensor([1.0, 2.0, 3.0]), make_context())
    torch.testing.assert_close(forged, torch.full((3,), 3.0))


def test_alie_z_for_sixteen_workers_seven_byzantine() -> None:
    # s = floor(16 / 2 + 1) - 7 = 2, z = Phi^-1((16 - 2) / 16) = Phi^-1(0.875) = 1.1503493803760079.
    assert math.isclose(alie_z(16, 7), 1.1503493803760079, rel_tol=1e-12)


def test_alie_sends_mean_minus_z_std() -> None:
    honest = [torch.tensor([1.0, 0.0]), torch.tensor([3.0, 4.0])]
    context = make_context(honest_updates=honest)
    forged = alie()(honest[0], context)
    # Mean (2, 2), population std (1, 2).
    z = 1.1503493803760079
    torch.testing.assert_close(forged, torch.tensor([2.0 - z, 2.0 - 2.0 * z]))


def test_alie_with_explicit_z() -> None:
    honest = [torch.tensor([1.0]), torch.tensor([3.0])]
    forged = alie(z=2.0)(honest[0], make_context(honest_updates=honest))
    torch.testing.assert_close(forged, torch.tensor([0.0]))


def test_alie_rejects_byzantine_majority_and_missing_updates() -> None:
    with pytest.raises(ValueError, match="undefined for num_workers=4, num_byzantine=3"):
        alie_z(4, 3)
    with pytest.raises(ValueError, match="honest_updates"):
        alie()(torch.zeros(2), make_context())


def test_label_flip_sends_update_unchanged_and_flips_labels() -> None:
    update = torch.tensor([0.5, -0.5])
    assert label_flip()(update, make_context()) is update
    torch.testing.assert_close(flip_labels(torch.tensor([0, 1, 9]), num_classes=10), torch.tensor([9, 8, 0]))
    with pytest.raises(ValueError, match="labels must lie in"):
        flip_labels(torch.tensor([10]), num_classes=10)


def test_stale_replays_k_rounds_back() -> None:
    history = [torch.tensor([1.0]), torch.tensor([2.0]), torch.tensor([3.0])]
    forged = stale(k=2)(torch.tensor([4.0]), make_context(history=history))
    torch.testing.assert_close(forged, torch.tensor([2.0]))
    forged.add_(100.0)
    torch.testing.assert_close(history[1], torch.tensor([2.0]))


def test_stale_with_short_history_sends_update() -> None:
    update = torch.tensor([4.0])
    forged = stale(k=5)(update, make_context(history=[torch.tensor([1.0])]))
    torch.testing.assert_close(forged, update)
    with pytest.raises(ValueError, match="k must be"):
        stale(k=0)


def test_load_attack_builds_builtins_by_name() -> None:
    assert set(BUILTIN_ATTACKS) == {
        "sign_flip", "gaussian", "constant", "alie", LABEL_FLIP, "stale", "ipm", "mimic", "min_max", "min_sum"
    }  # fmt: skip
    attack = load_attack("sign_flip", scale=2.0)
    torch.testing.assert_close(attack(torch.tensor([1.0]), make_context()), torch.tensor([-2.0]))


def test_load_attack_imports_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(PLUGIN_DIR))
    attack = load_attack("plugin_attack:make_shift_attack", offset=0.5)
    # Round 3 in make_context: 1 + 0.5 + 3.
    torch.testing.assert_close(attack(torch.tensor([1.0]), make_context()), torch.tensor([4.5]))


@pytest.mark.parametrize(
    ("spec", "params", "message"),
    [
        ("no_such_attack", {}, "attack must be one of sign_flip"),
        ("farsync_no_such_module_xyz:make", {}, "cannot import module"),
        ("plugin_attack:missing", {}, "has no attribute 'missing'"),
        ("plugin_attack:NOT_CALLABLE", {}, "not callable"),
        ("plugin_attack:make_nothing", {}, "returned a int, not an attack"),
        ("plugin_attack:make_shift_attack", {"bogus": 1}, "does not accept parameters"),
        ("sign_flip", {"std": 1.0}, "does not accept parameters"),
    ],
)
def test_load_attack_rejects_bad_spec(
    monkeypatch: pytest.MonkeyPatch, spec: str, params: dict[str, object], message: str
) -> None:
    monkeypatch.syspath_prepend(str(PLUGIN_DIR))
    with pytest.raises(ValueError, match=message):
        load_attack(spec, **params)
