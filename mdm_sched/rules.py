"""Reveal rules: how many masked positions each row reveals at a model call.

The sampling loop asks one question per call and never looks at what kind of rule answers it::

    k = rule.counts(step)          # LongTensor [B], 0 <= k <= step.remaining

A **fixed schedule** (:class:`FixedSchedule`, built from a :class:`~mdm_sched.schedules.Schedule`) answers
from the call index alone, before the model is called, so the loop can compute logits only at the
positions it will reveal. An **adaptive rule** declares the per-position statistics it reads
(:attr:`RevealRule.stats`, e.g. ``{"confidence"}``); the loop then computes logits at every candidate
position of the block, hands the rule those statistics ranked by the order's score
(:class:`RankedStats`), and reveals the ``k`` top-ranked positions.

To add a rule: subclass :class:`RevealRule`, set ``stats``, implement :meth:`~RevealRule.counts` (vectorised over
rows) and :meth:`~RevealRule.planned_calls` (``None`` when the number of calls is not known in advance).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

if TYPE_CHECKING:
    from .schedules import Schedule

__all__ = ["RevealRule", "FixedSchedule", "RankedStats", "Step", "STATISTICS"]

#: Per-position statistics a rule may ask for (all under the temperature-1 model distribution):
#: ``confidence`` = probability of the drawn token, ``entropy`` = entropy of the position's distribution.
STATISTICS = frozenset({"confidence", "entropy"})


@dataclass(frozen=True)
class RankedStats:
    """Candidate statistics per row, sorted by the order's score (best first).

    Each tensor is ``[B, C]`` (``C`` = largest number of candidates in a row); entries past a row's
    ``count`` are padding (``valid`` is False there; values are NaN).
    """

    valid: torch.Tensor
    count: torch.Tensor
    values: dict[str, torch.Tensor]

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self.values:
            raise KeyError(f"statistic {name!r} was not computed; the rule must list it in its `stats`")
        return self.values[name]


@dataclass(frozen=True)
class Step:
    """What a rule sees at one call of one block.

    Attributes:
        call: 0-based index of this call within the block.
        length: the block's length in generated positions (a schedule's ``N`` for this block).
        n_masked: ``[B]`` masked positions of each row in the block when the block started
            (``length`` plus any prompt masks infilled with the first block).
        remaining: ``[B]`` positions of each row still masked before this call.
        ranked: candidate statistics ranked by the order, for rules with ``stats``; ``None`` otherwise.
    """

    call: int
    length: int
    n_masked: torch.Tensor
    remaining: torch.Tensor
    ranked: RankedStats | None = None


class RevealRule(ABC):
    """How many positions each row reveals at a call (see the module docstring)."""

    #: statistics the rule reads (subset of :data:`STATISTICS`); empty = a fixed plan, decided before the call
    stats: ClassVar[frozenset[str]] = frozenset()
    #: short name used in outputs and reports
    name: str = "rule"

    @property
    def adaptive(self) -> bool:
        """True when the counts depend on the model's predictions (the loop must score every candidate)."""
        return bool(self.stats)

    def check_length(self, length: int, argname: str) -> None:  # noqa: B027 - optional hook
        """Raise ``ValueError`` if the rule cannot be used for blocks of ``length`` positions."""

    @abstractmethod
    def planned_calls(self, length: int) -> int | None:
        """Calls a block of ``length`` positions takes, or ``None`` when it depends on the predictions."""

    @abstractmethod
    def counts(self, step: Step) -> torch.Tensor:
        """``[B]`` number of positions each row reveals at this call, ``0 <= k <= step.remaining``."""

    def describe(self) -> dict[str, Any]:
        """JSON-able description (name and parameters) recorded next to generated samples."""
        return {"rule": self.name}


class FixedSchedule(RevealRule):
    """A :class:`~mdm_sched.schedules.Schedule` as a rule: its cumulative fractions ``K_t / N`` per row.

    After call ``t`` a row with ``n`` masked positions in the block has revealed ``floor(K_t n / N)`` of
    them (exactly ``k_t`` per call when ``n == N``); a shorter block uses ``schedule.rescale(length)``.
    """

    def __init__(self, schedule: Schedule) -> None:
        self.schedule = schedule
        self.name = schedule.name or "schedule"
        self._per_length: dict[int, Schedule] = {schedule.n_tokens: schedule}

    def for_length(self, length: int) -> Schedule:
        """The schedule used for a block of ``length`` positions (the nominal one, or its rescaling)."""
        if length not in self._per_length:
            self._per_length[length] = self.schedule.rescale(length)
        return self._per_length[length]

    def check_length(self, length: int, argname: str) -> None:
        n = self.schedule.n_tokens
        if n != length:
            raise ValueError(f"schedule sizes sum to {n} but {argname}={length}: build it for {length} tokens "
                             f"(e.g. ms.schedules.constant({length}, steps)) or use schedule.rescale({length})")

    def planned_calls(self, length: int) -> int:
        return self.for_length(length).steps

    def counts(self, step: Step) -> torch.Tensor:
        sched = self.for_length(step.length)
        k_next = sched.cumulative[step.call + 1] if step.call < sched.steps else sched.n_tokens
        target = (k_next * step.n_masked) // sched.n_tokens  # floor(K_t n / N)
        revealed = step.n_masked - step.remaining
        return torch.minimum((target - revealed).clamp(min=0), step.remaining)

    def describe(self) -> dict[str, Any]:
        return {"rule": "schedule", "name": self.schedule.name, "sizes": list(self.schedule.sizes)}

    def __repr__(self) -> str:
        return f"FixedSchedule({self.schedule!r})"


def cap_counts(counts: torch.Tensor, step: Step, max_calls: int | None) -> torch.Tensor:
    """Reveal everything left at the last allowed call, at least one position while any remain."""
    counts = torch.where(step.remaining > 0, counts.clamp(min=1), torch.zeros_like(counts))
    if max_calls is not None and step.call + 1 >= max_calls:
        counts = step.remaining.clone()
    return torch.minimum(counts, step.remaining)

