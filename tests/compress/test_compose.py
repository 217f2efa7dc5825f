"""Chain: bytes of the final payload, decode reverses both stages, integer tensors pass through."""

import dataclasses

import torch

from farsync.compress import BlockQuantize, Chain, LowRank, TopK, quantized_num_bytes


def test_lowrank_then_int8_bytes_are_the_quantized_factors() -> None:
    # Prepare
    matrix = torch.randn(100, 70, generator=torch.Generator().manual_seed(20))
    chain = Chain(LowRank(rank=4), BlockQuantize(8, block_size=64))
    # Execute
    encoded = chain.encode("w", matrix)
    # Assert: P is 100x4 = 400 values, Q is 70x4 = 280 values.
    expected = quantized_num_bytes(400, 8, 64) + quantized_num_bytes(280, 8, 64)
    assert encoded.num_bytes == expected == (400 + 4 * 7) + (280 + 4 * 5)
    assert set(encoded.payload) == {"p/codes", "p/scales", "q/codes", "q/scales"}


def test_decode_is_close_to_the_unquantized_lowrank_decode() -> None:
    # Prepare: same warm start for both, so the only difference is the int8 rounding of P and Q.
    matrix = torch.randn(50, 30, generator=torch.Generator().manual_seed(21))
    plain = LowRank(rank=3)
    chain = Chain(LowRank(rank=3), BlockQuantize(8))
    # Execute
    reference = plain.decode(plain.encode("w", matrix))
    decoded = chain.decode(chain.encode("w", matrix))
    # Assert
    relative = (decoded - reference).norm() / reference.norm()
    assert decoded.shape == matrix.shape
    assert relative.item() < 0.02


def test_only_keys_leaves_other_payload_tensors_as_they_are() -> None:
    # Prepare
    bias = torch.randn(10, generator=torch.Generator().manual_seed(22))
    chain = Chain(LowRank(rank=2), BlockQuantize(8), only_keys=("p", "q"))
    # Execute
    encoded = chain.encode("b", bias)
    decoded = chain.decode(encoded)
    # Assert
    assert set(encoded.payload) == {"values"}
    assert torch.equal(decoded, bias)


def test_integer_payload_tensors_pass_through_unquantized() -> None:
    # Prepare
    tensor = torch.randn(200, generator=torch.Generator().manual_seed(23))
    chain = Chain(TopK(0.1), BlockQuantize(8, block_size=64))
    # Execute
    encoded = chain.encode("w", tensor)
    decoded = chain.decode(encoded)
    # Assert: 20 int32 indices untouched, 20 values quantized into one block.
    assert encoded.payload["indices"].dtype == torch.int32
    assert encoded.num_bytes == 20 * 4 + 20 + 4
    kept = decoded != 0
    assert int(kept.sum()) == 20
    scale = tensor[kept].abs().max() / 127
    assert torch.all((decoded[kept] - tensor[kept]).abs() <= scale / 2 * (1 + 1e-5))


def test_state_dict_nests_both_stages() -> None:
    # Prepare
    chain = Chain(LowRank(rank=2), BlockQuantize(4))
    chain.encode("w", torch.randn(6, 5, generator=torch.Generator().manual_seed(24)))
    # Execute
    state = chain.state_dict()
    restored = Chain(LowRank(rank=2), BlockQuantize(4))
    restored.load_state_dict(state)
    # Assert
    assert set(state) == {"first", "second"}
    assert torch.equal(restored.first.state_dict()["q"]["w"], state["first"]["q"]["w"])


def test_peer_payload_decodes_with_the_local_encodings_metadata() -> None:
    # Prepare: two workers with different values of the same shape.
    generator = torch.Generator().manual_seed(25)
    local_matrix, peer_matrix = (
        torch.randn(20, 12, generator=generator),
        torch.randn(20, 12, generator=generator),
    )
    local = Chain(LowRank(rank=2), BlockQuantize(8))
    peer = Chain(LowRank(rank=2), BlockQuantize(8))
    local_encoded = local.encode("w", local_matrix)
    peer_encoded = peer.encode("w", peer_matrix)
    # Execute
    received = dataclasses.replace(local_encoded, payload=peer_encoded.payload)
    decoded = local.decode(received)
    # Assert
    assert local_encoded.meta == peer_encoded.meta
    assert torch.equal(decoded, peer.decode(peer_encoded))
