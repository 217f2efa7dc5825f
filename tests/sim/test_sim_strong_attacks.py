"""The in-distribution attacks (IPM, mimic, min-max, min-sum) against hand-computed values."""

import math

import pytest
import torch

from farsync.sim.attacks import AttackContext, ipm, load_attack, mimic, min_max, min_sum


def make_context(
    honest_updates: list[torch.Tensor] | None = None, honest_peers: list[torch.Tensor] | None = None
) -> AttackContext:
    return AttackContext(
        round=0,
        worker=15,
        num_workers=16,
        num_byzantine=7,
        honest_updates=honest_updates or [],
        history=[],
        generator=torch.Generator().manual_seed(0),
        honest_peers=honest_peers or [],
    )


def test_ipm_sends_minus_eps_times_the_colluders_mean() -> None:
    # Prepare: colluders' mean is (2, 3).
    context = make_context([torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])])
    # Execute
    forged = ipm(eps=0.5)(torch.zeros(2), context)
    # Assert
    torch.testing.assert_close(forged, torch.tensor([-1.0, -1.5]))


def test_mimic_copies_the_chosen_honest_worker() -> None:
    peers = [torch.tensor([1.0]), torch.tensor([2.0])]
    forged = mimic(target=1)(torch.tensor([9.0]), make_context(honest_peers=peers))
    torch.testing.assert_close(forged, torch.tensor([2.0]))
    forged.add_(1.0)  # the copy is the attacker's own: the honest worker's update is untouched
    torch.testing.assert_close(peers[1], torch.tensor([2.0]))
    # Target indices wrap around the honest workers present.
    torch.testing.assert_close(mimic(target=2)(torch.zeros(1), make_context(honest_peers=peers)), peers[0])


def test_min_max_and_min_sum_in_one_dimension_reach_the_honest_extreme() -> None:
    # Prepare: honest 0, 2, 4: mean 2, population std sqrt(8/3), so p = -sqrt(8/3).
    context = make_context([torch.tensor([0.0]), torch.tensor([2.0]), torch.tensor([4.0])])
    # Execute
    forged_max = min_max()(torch.zeros(1), context)
    forged_sum = min_sum()(torch.zeros(1), context)
    # Assert. min-max: the farthest honest update (4) may be at most the honest diameter (4) away -> 0.
    # min-sum: sum of squared distances at most that of the honest 0 (0 + 4 + 16 = 20): (2 - x)^2 * 3 + 8
    # = 20 gives x = 0.
    torch.testing.assert_close(forged_max, torch.tensor([0.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(forged_sum, torch.tensor([0.0]), atol=1e-6, rtol=0)


def test_min_max_with_sign_perturbation() -> None:
    # Mean (2, -2), p = -sign(mean) = (-1, 1), diameter 2 sqrt(2); the update at (3, -3) binds at gamma = 1.
    context = make_context([torch.tensor([1.0, -1.0]), torch.tensor([3.0, -3.0])])
    forged = min_max(perturbation="sign")(torch.zeros(2), context)
    torch.testing.assert_close(forged, torch.tensor([1.0, -1.0]))


def test_min_max_constraint_is_tight_in_many_dimensions() -> None:
    # Prepare: random honest updates; the forged vector must sit exactly on the min-max boundary.
    generator = torch.Generator().manual_seed(5)
    honest = [torch.randn(50, generator=generator) + 1.0 for _ in range(7)]
    stack = torch.stack(honest).double()
    diameter = float(torch.cdist(stack, stack).max())
    # Execute
    forged = min_max(perturbation="unit")(honest[0], make_context(honest))
    # Assert: as far as the diameter from the farthest honest update, and moved against the mean.
    farthest = float(torch.cdist(forged.double()[None], stack).max())
    assert math.isclose(farthest, diameter, rel_tol=1e-5)
    assert float(forged @ stack.mean(dim=0).float()) < float(stack.mean(dim=0).norm() ** 2)


def test_identical_colluders_send_their_mean() -> None:
    # No honest spread to hide in: gamma is 0 (and no division by a zero std).
    honest = [torch.tensor([1.0, 2.0])] * 3
    for attack in (min_max(), min_sum()):
        torch.testing.assert_close(attack(torch.zeros(2), make_context(honest)), torch.tensor([1.0, 2.0]))


@pytest.mark.parametrize(
    ("factory", "params", "message"),
    [
        (ipm, {"eps": 0.0}, "eps must be > 0"),
        (mimic, {"target": -1}, "target must be an integer >= 0"),
        (min_max, {"perturbation": "up"}, "perturbation must be one of std, unit, sign"),
        (min_sum, {"perturbation": 1}, "perturbation must be one of"),
    ],
)
def test_bad_parameters_are_refused(factory: object, params: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        factory(**params)  # type: ignore[operator]


@pytest.mark.parametrize(("name", "needs"), [("ipm", "honest_updates"), ("mimic", "honest_peers")])
def test_attacks_name_the_missing_knowledge(name: str, needs: str) -> None:
    with pytest.raises(ValueError, match=needs):
        load_attack(name)(torch.zeros(2), make_context())
