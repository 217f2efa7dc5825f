"""Error feedback (the one residual store): nothing is lost across rounds, left-out rounds keep everything,
residuals survive a save/load."""

import io

import torch

from farsync.compress import Residuals, make_codec


def test_sent_sum_plus_final_residual_equals_input_sum() -> None:
    # Prepare: int4 loses a lot per round; the residual must carry exactly what was not sent.
    codec = make_codec("int4")
    generator = torch.Generator().manual_seed(30)
    inputs = [{"w": torch.randn(16, 12, generator=generator)} for _ in range(8)]
    residuals = Residuals()
    sent_sum = torch.zeros(16, 12, dtype=torch.float64)
    # Execute
    for named in inputs:
        corrected = residuals.corrected(named)
        sent = {"w": codec.round_trip(corrected["w"]).reshape(16, 12)}
        residuals.keep_unsent(corrected, sent)
        sent_sum += sent["w"].double()
    # Assert
    residual = residuals.get("w")
    assert residual is not None and residual.abs().sum() > 0
    input_sum = torch.stack([n["w"] for n in inputs]).double().sum(dim=0)
    torch.testing.assert_close(sent_sum + residual.double(), input_sum, atol=1e-5, rtol=0)


def test_a_left_out_round_keeps_the_whole_corrected_update() -> None:
    # Prepare
    residuals = Residuals()
    residuals.store("v", torch.tensor([1.0, 0.0]))
    corrected = residuals.corrected({"v": torch.tensor([0.5, 2.0])})
    # Execute
    residuals.keep_unsent(corrected, None)
    # Assert
    assert torch.equal(residuals.get("v"), torch.tensor([1.5, 2.0]))  # type: ignore[arg-type]


def test_a_residual_of_another_shape_is_dropped() -> None:
    # Prepare
    residuals = Residuals()
    residuals.store("w", torch.ones(3))
    # Execute
    corrected = residuals.corrected({"w": torch.zeros(2, 2)})
    # Assert
    assert torch.equal(corrected["w"], torch.zeros(2, 2))


def test_state_dict_round_trip_through_torch_save_and_reset() -> None:
    # Prepare
    original = Residuals()
    original.store("w", torch.randn(4, 3, generator=torch.Generator().manual_seed(31)))
    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)
    buffer.seek(0)
    restored = Residuals()
    # Execute
    restored.load_state_dict(torch.load(buffer))
    # Assert
    assert torch.equal(restored.get("w"), original.get("w"))  # type: ignore[arg-type]
    restored.reset()
    assert restored.get("w") is None and len(restored) == 0
