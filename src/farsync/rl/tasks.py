"""Tasks with rewards verifiable offline, their character tokenizer, and user reward functions.

This module owns what the policy is asked to do and how an answer is scored:

* :class:`CharTokenizer`: a small character vocabulary (digits, lower-case letters, a few symbols) plus an
  end token (id 0) that ends every answer. Its vocabulary fits a tiny :class:`farsync.models.gpt.GPT`.
* Tasks, generated deterministically from a seed, each with a training stream and a disjoint held-out set:
  ``arithmetic`` ("37+58=" -> "95"), ``reversal`` ("rev:cfab=" -> "bafc") and ``sorting``
  ("sort:cfab=" -> "abcf").
* Rewards are plain callables ``(prompt, completion) -> float`` over text. The built-in ones recompute the
  answer from the prompt alone (so any peer can re-score a shared rollout); a user's own is passed as a
  callable or named ``"package.module:function"`` (:func:`load_reward`). :func:`safe_reward` scores a reward
  function that raises, or returns a non-number, as 0 and logs it: the run goes on.
"""

from __future__ import annotations

import importlib
import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

__all__ = [
    "TASKS",
    "CharTokenizer",
    "Problem",
    "RewardFn",
    "Task",
    "arithmetic_reward",
    "load_callable",
    "load_reward",
    "make_task",
    "reversal_reward",
    "safe_reward",
    "sorting_reward",
]

logger = logging.getLogger(__name__)

RewardFn = Callable[[str, str], float]
"""A reward function: ``(prompt text, completion text) -> reward``."""

_LETTERS = "abcdefgh"
_VALIDATION_OFFSET = 2 * 10**9


class CharTokenizer:
    """Characters to ids and back; id 0 is the end token, which :meth:`decode` stops at."""

    END_ID = 0
    ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz+-*=:> "

    def __init__(self) -> None:
        self._ids = {char: index + 1 for index, char in enumerate(self.ALPHABET)}

    @property
    def vocab_size(self) -> int:
        """Number of ids (the end token included)."""
        return len(self.ALPHABET) + 1

    def encode(self, text: str) -> list[int]:
        """The ids of ``text``; raises ``ValueError`` naming a character outside the alphabet."""
        try:
            return [self._ids[char] for char in text]
        except KeyError as error:
            raise ValueError(
                f"character {error.args[0]!r} is not in the task alphabet {self.ALPHABET!r}"
            ) from None

    def decode(self, ids: list[int] | tuple[int, ...]) -> str:
        """The text of ``ids`` up to (not including) the first end token."""
        chars: list[str] = []
        for token in ids:
            if token == self.END_ID:
                break
            chars.append(self.ALPHABET[token - 1] if 0 < token <= len(self.ALPHABET) else "?")
        return "".join(chars)


@dataclass(frozen=True)
class Problem:
    """One prompt with its reference answer."""

    task_id: str
    """``"<task>/<split>/<index>"``: unique, and enough to find the problem again."""
    prompt: str
    """What the policy sees (ends with ``=``)."""
    answer: str
    """The reference completion (without the end token)."""


def arithmetic_reward(prompt: str, completion: str) -> float:
    """1.0 when ``completion`` is the sum of the two numbers in ``prompt`` ("a+b="), else 0.0."""
    left, _, right = prompt.removesuffix("=").partition("+")
    if not (left.isdigit() and right.isdigit()):
        return 0.0
    return 1.0 if completion == str(int(left) + int(right)) else 0.0


def reversal_reward(prompt: str, completion: str) -> float:
    """1.0 when ``completion`` is the string of ``prompt`` ("rev:s=") reversed, else 0.0."""
    return 1.0 if completion == prompt.removeprefix("rev:").removesuffix("=")[::-1] else 0.0


def sorting_reward(prompt: str, completion: str) -> float:
    """1.0 when ``completion`` is the letters of ``prompt`` ("sort:s=") in order, else 0.0."""
    return 1.0 if completion == "".join(sorted(prompt.removeprefix("sort:").removesuffix("="))) else 0.0


def _arithmetic(rng: random.Random, max_operand: int) -> tuple[str, str]:
    left, right = rng.randrange(max_operand + 1), rng.randrange(max_operand + 1)
    return f"{left}+{right}=", str(left + right)


def _letters(rng: random.Random, kind: str, min_len: int, max_len: int) -> tuple[str, str]:
    text = "".join(rng.choice(_LETTERS) for _ in range(rng.randint(min_len, max_len)))
    if kind == "rev":
        return f"rev:{text}=", text[::-1]
    return f"sort:{text}=", "".join(sorted(text))


class Task:
    """A task: a deterministic training stream, a disjoint held-out set and a reward function.

    Held-out prompts are drawn first from ``seed``; the training stream skips any prompt in the held-out
    set, so pass@1 on it measures generalisation.
    """

    def __init__(
        self,
        name: str,
        make: Callable[[random.Random], tuple[str, str]],
        reward: RewardFn,
        *,
        seed: int,
        num_heldout: int,
    ) -> None:
        self.name, self.reward, self._make, self._seed = name, reward, make, seed
        rng = random.Random(f"{name}/heldout/{seed}")
        heldout: dict[str, str] = {}
        for _ in range(num_heldout * 50):
            if len(heldout) == num_heldout:
                break
            prompt, answer = make(rng)
            heldout.setdefault(prompt, answer)
        self.heldout = [Problem(f"{name}/heldout/{i}", p, a) for i, (p, a) in enumerate(heldout.items())]
        self._heldout_prompts = frozenset(heldout)

    def train_problem(self, index: int) -> Problem:
        """Training problem number ``index`` (the same for every caller with the same seed)."""
        rng = random.Random(f"{self.name}/train/{self._seed}/{index}")
        for _ in range(1000):
            prompt, answer = self._make(rng)
            if prompt not in self._heldout_prompts:
                return Problem(f"{self.name}/train/{index}", prompt, answer)
        raise RuntimeError(f"task {self.name}: the held-out set covers the whole problem space")

    def validation(self, num_problems: int = 200) -> list[Problem]:
        """Training-stream problems set aside for model selection (the held-out set is never used for it)."""
        return [self.train_problem(_VALIDATION_OFFSET + i) for i in range(num_problems)]

    def problem(self, task_id: str) -> Problem | None:
        """The problem with ``task_id``, or ``None`` if it does not name one of this task's problems."""
        name, _, rest = task_id.partition("/")
        split, _, index = rest.partition("/")
        if name != self.name or not index.isdigit() or len(index) > 12:
            return None
        if split == "train":
            return self.train_problem(int(index))
        if split == "heldout" and int(index) < len(self.heldout):
            return self.heldout[int(index)]
        return None

    def max_prompt_chars(self) -> int:
        """Longest prompt among the held-out set and the first training problems (for model sizing)."""
        prompts = [p.prompt for p in self.heldout] + [self.train_problem(i).prompt for i in range(200)]
        return max(len(p) for p in prompts)

    def max_answer_chars(self) -> int:
        """Longest reference answer among the held-out set and the first training problems."""
        answers = [p.answer for p in self.heldout] + [self.train_problem(i).answer for i in range(200)]
        return max(len(a) for a in answers)


TASKS: dict[str, tuple[Callable[[random.Random], tuple[str, str]], RewardFn]] = {
    "arithmetic": (partial(_arithmetic, max_operand=99), arithmetic_reward),
    "reversal": (partial(_letters, kind="rev", min_len=3, max_len=5), reversal_reward),
    "sorting": (partial(_letters, kind="sort", min_len=3, max_len=5), sorting_reward),
}
"""The shipped tasks: name -> (problem generator, reward)."""


def make_task(name: str, *, seed: int = 0, num_heldout: int = 200) -> Task:
    """The shipped task ``name``; raises ``ValueError`` naming the allowed tasks for an unknown one."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; allowed: {', '.join(sorted(TASKS))}")
    make, reward = TASKS[name]
    return Task(name, make, reward, seed=seed, num_heldout=num_heldout)


def load_reward(spec: str) -> RewardFn:
    """The reward function named by ``"package.module:function"`` (:func:`load_callable`)."""
    return load_callable(spec)


def load_callable(spec: str) -> Callable[..., Any]:
    """The callable named by ``"package.module:function"``; raises ``ValueError`` saying what is wrong."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"expected 'package.module:function', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"cannot import module {module_name!r}: {error}") from None
    function = getattr(module, attribute, None)
    if not callable(function):
        raise ValueError(f"module {module_name!r} has no callable {attribute!r}")
    return function  # type: ignore[no-any-return]


def safe_reward(reward: RewardFn, prompt: str, completion: str) -> tuple[float, bool]:
    """``(reward, ok)``: the reward function's value, or ``(0.0, False)`` when it raises or returns
    something that is not a finite number (logged with the prompt)."""
    try:
        value = reward(prompt, completion)
    except Exception as error:  # noqa: BLE001 - a user's reward function must not stop the run
        logger.warning("reward function raised on prompt %r: %r; scored 0", prompt, error)
        return 0.0, False
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        logger.warning("reward function returned %r on prompt %r; scored 0", value, prompt)
        return 0.0, False
    return float(value), True
