"""Byzantine workers, simulated and defended against: attacks to inject and checks on incoming updates.

Pure and network-free, like :mod:`farsync.aggregate`, whose robust rules these attacks exercise.
"""

from farsync.byzantine.attacks import (
    BUILTIN_ATTACKS,
    LABEL_FLIP,
    Attack,
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
from farsync.byzantine.validation import (
    StrikeBook,
    UpdateSummary,
    check_summary,
    summarize_update,
    validate_update,
)

__all__ = [
    "BUILTIN_ATTACKS",
    "LABEL_FLIP",
    "Attack",
    "AttackContext",
    "StrikeBook",
    "UpdateSummary",
    "alie",
    "alie_z",
    "check_summary",
    "constant",
    "flip_labels",
    "gaussian",
    "label_flip",
    "load_attack",
    "sign_flip",
    "stale",
    "summarize_update",
    "validate_update",
]
