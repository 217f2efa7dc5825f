"""The hooks that prove and verify rollouts from untrusted inference workers.

This module owns the two small interfaces a verification scheme plugs into, and the trivial ones:

* :class:`Prover` runs on the inference worker: after sampling, it returns a compact fingerprint of the
  model's activations over the prompt and completion (bytes, carried in :attr:`Rollout.fingerprint`).
* :class:`Verifier` runs on the trainer: given a parsed rollout and the model of the rollout's
  ``policy_version``, it accepts it or rejects it with a reason. A rejection excludes the rollout; the runner
  counts rejections per worker and can exclude a worker caught lying.

The TOPLOC-like implementation (top-k activation values, tolerances for fp nondeterminism) is
:mod:`farsync.rl.verify`. :class:`NoProof` and :class:`AcceptAll` are the "verification off" pair.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from torch import nn

from farsync.rl.messages import Rollout

__all__ = ["AcceptAll", "NoProof", "Prover", "Verdict", "Verifier"]


@dataclass(frozen=True)
class Verdict:
    """A verifier's decision on one rollout."""

    accepted: bool
    """True when the rollout may be trained on."""
    reason: str = ""
    """Why it was rejected (a short phrase for logs and counters); empty when accepted."""


@runtime_checkable
class Prover(Protocol):
    """Worker side: fingerprints the activations that produced a completion."""

    def prove(self, model: nn.Module, prompt_ids: tuple[int, ...], completion_ids: tuple[int, ...]) -> bytes:
        """A compact proof for ``prompt_ids + completion_ids`` under ``model`` (in eval mode, no grad)."""
        ...


@runtime_checkable
class Verifier(Protocol):
    """Trainer side: checks a rollout against the policy it claims to come from."""

    def verify(self, rollout: Rollout, model: nn.Module) -> Verdict:
        """Accepts or rejects ``rollout``; ``model`` holds the weights of ``rollout.policy_version``."""
        ...


class NoProof:
    """A :class:`Prover` that attaches no proof (verification off)."""

    def prove(self, model: nn.Module, prompt_ids: tuple[int, ...], completion_ids: tuple[int, ...]) -> bytes:
        return b""


class AcceptAll:
    """A :class:`Verifier` that accepts every rollout (verification off)."""

    def verify(self, rollout: Rollout, model: nn.Module) -> Verdict:
        return Verdict(True)
