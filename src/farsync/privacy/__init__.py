"""Differential privacy for farsync: clipping and Gaussian noise on updates, and an (epsilon, delta) accountant.

Privacy is a wrapper around a reducer (:mod:`farsync.reducers.private`), never a flag inside an algorithm;
the federated driver applies the same pure mechanism (:mod:`farsync.privacy.mechanism`) per client. The
epsilon spent is computed by Opacus's RDP accountant (:mod:`farsync.privacy.accountant`).
"""

from __future__ import annotations

from farsync.privacy.accountant import PrivacyAccountant, epsilon_for
from farsync.privacy.mechanism import add_noise, clip_update, update_norm

__all__ = [
    "PrivacyAccountant",
    "add_noise",
    "clip_update",
    "epsilon_for",
    "update_norm",
]
