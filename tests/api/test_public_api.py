"""The public API: every name in ``farsync.__all__`` exists, and every algorithm and reducer the CLI runs is
built from Python without a ``RunConfig``, to the same objects (and the same weights) as the CLI's mapping.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import farsync
from farsync.algorithms.registry import ALGORITHMS as REGISTRY
from farsync.config import ALGORITHMS as CONFIG_ALGORITHMS
from farsync.reducers.budget import reducer_chain
from farsync.train.build import ALGORITHM_BUILDERS


def _comm() -> farsync.Communicator:
    return farsync.Communicator(None, 0, 1)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1))


def _chain(reducer: farsync.Reducer) -> list[str]:
    return [type(node).__name__ for node in reducer_chain(reducer)]


# ------------------------------------------------------------------------------------------ the names


def test_every_public_name_exists_once() -> None:
    names = farsync.__all__
    assert len(names) == len(set(names))
    missing = [name for name in names if not hasattr(farsync, name)]
    assert missing == []


def test_every_algorithm_name_has_one_builder_and_a_public_class() -> None:
    # One list of names in the config, the registry and the config-to-objects mapping.
    assert tuple(ALGORITHM_BUILDERS) == CONFIG_ALGORITHMS == tuple(REGISTRY)
    public = {getattr(farsync, name) for name in farsync.__all__}
    for name in CONFIG_ALGORITHMS:
        assert farsync.algorithm_class(name) in public, name
    assert farsync.OverlappedDiLoCo in public


# ------------------------------------------------------------------------------------------ reducers


@pytest.mark.parametrize(
    ("sections", "chain"),
    [
        ({}, ["MeanReducer"]),
        ({"compression": farsync.CompressionConfig(kind="int8")}, ["RingReducer", "MeanReducer"]),
        ({"compression": farsync.CompressionConfig(kind="topk")}, ["GatherReducer", "MeanReducer"]),
        ({"compression": farsync.CompressionConfig(kind="lowrank")}, ["LowRankReducer", "MeanReducer"]),
        (
            {"compression": farsync.CompressionConfig(kind="lowrank", adaptive=True)},
            ["AdaptiveLowRankReducer", "MeanReducer"],
        ),
        (
            {
                "compression": farsync.CompressionConfig(kind="int8"),
                "aggregation": farsync.AggregationConfig(rule="centered_clip"),
            },
            ["RobustReducer"],
        ),
        ({"privacy": farsync.PrivacyConfig(mode="central")}, ["PrivateReducer", "MeanReducer"]),
        (
            {
                "aggregation": farsync.AggregationConfig(rule="median"),
                "privacy": farsync.PrivacyConfig(mode="local"),
            },
            ["PrivateReducer", "RobustReducer"],
        ),
    ],
)
def test_make_reducer_composes_the_layers_of_its_sections(sections: dict[str, Any], chain: list[str]) -> None:
    # Execute
    from_python = farsync.make_reducer(_comm(), **sections)
    from_run = farsync.build_reducer(farsync.RunConfig(num_workers=1, **sections), _comm())
    # Assert: the outermost layers first; the CLI's mapping builds the same chain
    assert _chain(from_python) == chain
    assert _chain(from_run) == chain


def test_each_reducer_layer_has_a_builder_taking_its_own_section() -> None:
    comm = _comm()
    compressed = farsync.build_compressed_reducer(farsync.CompressionConfig(kind="int8"), comm)
    robust = farsync.build_robust_reducer(farsync.AggregationConfig(rule="trimmed_mean"), comm, compressed)
    private = farsync.build_private_reducer(farsync.PrivacyConfig(mode="central"), comm, robust, seed=3)
    assert isinstance(compressed, farsync.RingReducer)
    assert isinstance(robust, farsync.RobustReducer)
    assert isinstance(private, farsync.PrivateReducer) and private.inner is robust and private.seed == 3
    update = {"w": torch.ones(3)}
    assert set(private(update)) == {"w"}  # it reduces (world size 1: the update plus noise)
    with pytest.raises(farsync.ConfigError, match="privacy.mode"):
        farsync.build_private_reducer(farsync.PrivacyConfig(mode="off"), comm)


# --------------------------------------------------------------------------------------- algorithms


@pytest.mark.parametrize(
    ("options", "cls", "state"),
    [
        ({}, "DiLoCo", {}),
        ({"overlap": "delayed"}, "OverlappedDiLoCo", {"variant": "delayed"}),
        ({"overlap": "eager"}, "OverlappedDiLoCo", {"variant": "eager"}),
        ({"num_fragments": 3, "streaming_tau": 2}, "StreamingDiLoCo", {"fragments": 3}),
    ],
)
def test_diloco_options_pick_the_variant(options: dict[str, Any], cls: str, state: dict[str, Any]) -> None:
    # Prepare
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    # Execute
    algorithm = farsync.diloco(model, optimizer, _comm(), num_inner_steps=6, outer_lr=0.5, **options)
    # Assert
    assert type(algorithm).__name__ == cls
    assert algorithm.config.num_inner_steps == 6 and algorithm.config.outer_lr == 0.5
    if "variant" in state:
        assert algorithm.variant == state["variant"]  # type: ignore[attr-defined]
    if "fragments" in state:
        assert len(algorithm.fragments) == state["fragments"]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"overlap": "sometimes"}, "overlap"),
        ({"num_fragments": 2, "overlap": "eager"}, "overlap"),
        ({"num_fragments": -1}, "num_fragments"),
        ({"num_fragments": 2, "num_warmup_rounds": 2}, "num_warmup_rounds"),
        ({"num_inner_steps": 0}, "algorithm.num_inner_steps"),
        ({"num_fragments": 2, "streaming_tau": 6}, "algorithm.streaming_tau"),
        ({"num_fragments": 9}, "algorithm.num_fragments"),
    ],
)
def test_diloco_rejects_bad_options_naming_them(options: dict[str, Any], key: str) -> None:
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(farsync.ConfigError) as caught:
        farsync.diloco(model, optimizer, _comm(), **{"num_inner_steps": 6, **options})
    assert caught.value.key == key


def test_dilocox_preset_overlaps_over_a_low_rank_reducer() -> None:
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    comm = _comm()
    adaptive = farsync.dilocox(model, optimizer, comm, num_inner_steps=4, overlap="eager")
    fixed = farsync.dilocox(model, optimizer, comm, adaptive=False, rank=2)
    robust = farsync.RobustReducer(comm, farsync.AggregationConfig(rule="median"))
    given = farsync.dilocox(model, optimizer, comm, reducer=robust)
    assert (
        isinstance(adaptive, farsync.DiLoCoX) and adaptive.config.delay == 1 and adaptive.variant == "eager"
    )
    assert _chain(adaptive.reducer) == ["AdaptiveLowRankReducer", "MeanReducer"]
    assert _chain(fixed.reducer) == ["LowRankReducer", "MeanReducer"]
    assert given.reducer is robust  # anything but the bare fp32 mean is used as given
    with pytest.raises(farsync.ConfigError, match="overlap"):
        farsync.dilocox(model, optimizer, comm, overlap="none")  # type: ignore[arg-type]


def _train(algorithm: farsync.Algorithm, model: nn.Module, optimizer: torch.optim.Optimizer) -> str:
    generator = torch.Generator().manual_seed(5)
    with algorithm:
        for _ in range(12):
            x = torch.randn(8, 4, generator=generator)
            nn.functional.mse_loss(model(x), x.sum(1, keepdim=True)).backward()
            optimizer.step()
            optimizer.zero_grad()
    return algorithm.global_sha256()


SAME_RUN = [
    (
        {"overlap": "eager", "compression": {"kind": "int8"}},
        ["algorithm.delay=1", "algorithm.overlap=eager", "compression.kind=int8"],
    ),
    (
        {"num_fragments": 2, "streaming_tau": 1, "compression": {"kind": "int4"}},
        [
            "algorithm.name=streaming",
            "algorithm.num_fragments=2",
            "algorithm.streaming_tau=1",
            "compression.kind=int4",
        ],
    ),
    (
        {"dilocox": True, "adaptive": False, "rank": 2},
        [
            "algorithm.name=dilocox",
            "compression.kind=lowrank",
            "compression.rank=2",
            "compression.error_feedback=true",
        ],
    ),
]


@pytest.mark.parametrize(("python", "overrides"), SAME_RUN)
def test_python_api_and_the_cli_mapping_train_to_the_same_weights(
    python: dict[str, Any], overrides: list[str]
) -> None:
    # Prepare: the same model, optimizer and data, built once through each door
    config = farsync.load_config(
        None,
        ["num_workers=1", "model.kind=mlp", "data.kind=digits", "algorithm.num_inner_steps=4", *overrides],
    )
    model_a, model_b = _model(), _model()
    opt_a = torch.optim.AdamW(model_a.parameters(), lr=1e-2)
    opt_b = torch.optim.AdamW(model_b.parameters(), lr=1e-2)
    comm_a, comm_b = _comm(), _comm()
    options = dict(python)
    if options.pop("dilocox", False):
        from_python: farsync.Algorithm = farsync.dilocox(model_a, opt_a, comm_a, num_inner_steps=4, **options)
    else:
        compression = farsync.CompressionConfig(**options.pop("compression"))
        reducer = farsync.make_reducer(comm_a, compression=compression)
        from_python = farsync.diloco(model_a, opt_a, comm_a, num_inner_steps=4, reducer=reducer, **options)
    from_config = farsync.build_algorithm(
        config, model_b, opt_b, comm_b, farsync.build_reducer(config, comm_b)
    )
    # Execute
    hashes = (_train(from_python, model_a, opt_a), _train(from_config, model_b, opt_b))
    # Assert
    assert type(from_python) is type(from_config)
    assert _chain(from_python.reducer) == _chain(from_config.reducer)
    assert hashes[0] == hashes[1]


def test_ddp_and_gossip_round_records_follow_report_every_not_h() -> None:
    for name in ("ddp", "gossip"):
        config = farsync.load_config(
            None,
            [
                "num_workers=1",
                f"algorithm.name={name}",
                "model.kind=mlp",
                "data.kind=digits",
                "train.report_every=3",
                "algorithm.num_inner_steps=5",
            ],
        )
        model = _model()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        comm = _comm()
        algorithm = farsync.build_algorithm(
            config, model, optimizer, comm, farsync.build_reducer(config, comm)
        )
        _train(algorithm, model, optimizer)
        assert (name, algorithm.inner_step, algorithm.round) == (name, 12, 4)
