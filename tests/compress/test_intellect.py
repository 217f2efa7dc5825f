"""INTELLECT-1 uint8 lookup scheme: table of bin means, error on Gaussian data, bytes."""

import torch

from farsync.compress import Uint8LookupCodec, uint8_lookup_decode, uint8_lookup_encode


def test_gaussian_relative_l2_error_is_below_three_percent() -> None:
    # Prepare
    x = torch.randn(100_000, generator=torch.Generator().manual_seed(4))
    # Execute
    codes, table = uint8_lookup_encode(x)
    decoded = uint8_lookup_decode(codes, table)
    # Assert
    relative_error = (decoded - x).norm() / x.norm()
    assert relative_error.item() < 0.03
    assert codes.dtype == torch.uint8
    assert table.shape == (256,)


def test_table_entry_is_the_mean_of_the_values_in_its_bin() -> None:
    # Prepare
    x = torch.randn(5000, generator=torch.Generator().manual_seed(5))
    # Execute
    codes, table = uint8_lookup_encode(x)
    # Assert: recompute each occupied bin's mean by hand.
    for code in torch.unique(codes).tolist():
        members = x[codes == code]
        assert abs(table[code].item() - members.double().mean().item()) < 1e-6


def test_codes_bin_uniformly_around_the_mean_with_width_six_std_over_256() -> None:
    # Prepare: mean 0, population std 1 exactly, so the bin width is 6/256.
    x = torch.tensor([-1.0, 1.0])
    width = 6.0 / 256
    # Execute
    codes, _ = uint8_lookup_encode(x)
    # Assert: floor(-1/width) + 128 = -43 + 128 = 85; floor(1/width) + 128 = 42 + 128 = 170.
    assert codes.tolist() == [128 + int(-1.0 // width), 128 + int(1.0 // width)] == [85, 170]


def test_outliers_are_clamped_into_the_edge_bins() -> None:
    # Prepare: one huge outlier among many small values.
    x = torch.cat([torch.randn(1000, generator=torch.Generator().manual_seed(6)), torch.tensor([1e6])])
    # Execute
    codes, _ = uint8_lookup_encode(x)
    # Assert
    assert codes[-1].item() == 255
    assert int(codes.min().item()) >= 0


def test_constant_tensor_round_trips_exactly() -> None:
    # Prepare
    x = torch.full((7,), 2.5)
    # Execute
    decoded = uint8_lookup_decode(*uint8_lookup_encode(x))
    # Assert
    assert torch.equal(decoded, x)


def test_codec_sends_one_byte_per_value_plus_table() -> None:
    # Prepare
    values = torch.randn(32 * 64, generator=torch.Generator().manual_seed(7))
    codec = Uint8LookupCodec()
    # Execute
    message = codec.encode(values)
    decoded = codec.decode(message, values.numel())
    # Assert
    assert message.numel() == 32 * 64 + 256 * 4
    assert ((decoded - values).norm() / values.norm()).item() < 0.03
