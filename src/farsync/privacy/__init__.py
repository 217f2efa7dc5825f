"""Differential privacy for farsync: clipping and Gaussian noise on updates, and an (epsilon, delta) accountant.

Privacy is a wrapper around a reducer (:mod:`farsync.privacy.reducer`), never a flag inside an algorithm;
the federated driver applies the same pure mechanism (:mod:`farsync.privacy.mechanism`) per client. The
epsilon spent is computed by Opacus's RDP accountant (:mod:`farsync.privacy.accountant`).
"""

from __future__ import annotations

from farsync.privacy.accountant import PrivacyAccountant, epsilon_for
from farsync.privacy.mechanism import add_noise, clip_update, update_norm
from farsync.privacy.reducer import PrivateReducer, build_private_reducer, find_private_reducer

__all__ = [
    "PrivacyAccountant",
    "PrivateReducer",
    "add_noise",
    "build_private_reducer",
    "clip_update",
    "epsilon_for",
    "find_private_reducer",
    "update_norm",
]
