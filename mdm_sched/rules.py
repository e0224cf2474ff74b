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
rows) and :meth:`~RevealRule.planned_calls` (``None`` when the number of calls is not known in advance). To save it
in a generation config, make :meth:`~RevealRule.describe` return its parameters and call :func:`register_rule`.

Rules round-trip through JSON (:meth:`RevealRule.describe` / :func:`from_description`) and parse from the short
text form the command line uses (:func:`parse_rule`: ``"threshold:0.9"``, ``"entropy_bound:gamma=0.5,max_calls=8"``).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from .validation import check_float, check_optional_int

if TYPE_CHECKING:
    from .schedules import Schedule

__all__ = ["RevealRule", "FixedSchedule", "RankedStats", "Step", "STATISTICS", "ConfidenceThreshold", "ConfidenceFactor",
           "EntropyBound", "threshold", "confidence_factor", "entropy_bound", "cap_counts", "RULES", "register_rule",
           "from_description", "parse_rule"]

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
        """JSON-able description (name and parameters) recorded next to generated samples and saved in configs.

        :func:`from_description` inverts it for registered rules (:func:`register_rule`).
        """
        return {"rule": self.name}

    @classmethod
    def from_description(cls, params: Mapping[str, Any]) -> RevealRule:
        """The rule from :meth:`describe`'s parameters (without ``"rule"``); default: ``cls(**params)``."""
        return cls(**params)


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

    @classmethod
    def from_description(cls, params: Mapping[str, Any]) -> FixedSchedule:
        from .schedules import Schedule

        _only(params, ("sizes", "name"))
        return cls(Schedule(params["sizes"], name=params.get("name")))

    def __repr__(self) -> str:
        return f"FixedSchedule({self.schedule!r})"


def _only(params: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    """Refuse parameters a rule does not take (``from_description`` turns the TypeError into a clear message)."""
    extra = sorted(set(params) - set(allowed))
    if extra:
        raise TypeError(f"unexpected parameter(s) {', '.join(extra)}; the rule takes {', '.join(allowed)}")


def cap_counts(counts: torch.Tensor, step: Step, max_calls: int | None) -> torch.Tensor:
    """Reveal everything left at the last allowed call, at least one position while any remain."""
    counts = torch.where(step.remaining > 0, counts.clamp(min=1), torch.zeros_like(counts))
    if max_calls is not None and step.call + 1 >= max_calls:
        counts = step.remaining.clone()
    return torch.minimum(counts, step.remaining)



# ------------------------------------------------------------------------------------------------
# Adaptive rules
# ------------------------------------------------------------------------------------------------

def _check_max_calls(max_calls: int | None) -> int | None:
    return check_optional_int(max_calls, "max_calls", minimum=1, hint=" (cap on calls per block)")


class ConfidenceThreshold(RevealRule):
    """Fast-dLLM's parallel decoding rule: reveal every candidate whose drawn token has probability ``>= tau``.

    At least one position per row and call (the best-ranked one); ``max_calls`` caps the calls per block (the
    last allowed call reveals everything left); ``min_schedule`` adds a floor: by call ``t`` at least
    ``floor(K_t n / N)`` positions are revealed, as with that fixed schedule (diffusers' ``BlockRefinementScheduler``
    commits ``max(quota_t, #above threshold)`` per step instead; the floor here is cumulative, so it finishes
    within ``min_schedule.steps`` calls while forcing no more reveals than needed).
    """

    stats = frozenset({"confidence"})
    name = "threshold"

    def __init__(self, tau: float, *, max_calls: int | None = None, min_schedule: Schedule | None = None) -> None:
        self.tau = check_float(tau, "tau", minimum=0.0, maximum=1.0, hint=" (a probability)")
        self.max_calls = _check_max_calls(max_calls)
        self.floor = FixedSchedule(min_schedule) if min_schedule is not None else None

    def planned_calls(self, length: int) -> int | None:
        return None

    def check_length(self, length: int, argname: str) -> None:
        if self.floor is not None:
            self.floor.check_length(length, argname)

    def counts(self, step: Step) -> torch.Tensor:
        assert step.ranked is not None
        conf = step.ranked["confidence"]
        k = ((conf >= self.tau) & step.ranked.valid).sum(1)
        if self.floor is not None:
            k = torch.maximum(k, self.floor.counts(step))
        return cap_counts(k, step, self.max_calls)

    def describe(self) -> dict[str, Any]:
        floor = None if self.floor is None else list(self.floor.schedule.sizes)
        return {"rule": self.name, "tau": self.tau, "max_calls": self.max_calls, "min_schedule": floor}

    @classmethod
    def from_description(cls, params: Mapping[str, Any]) -> ConfidenceThreshold:
        from .schedules import Schedule

        _only(params, ("tau", "max_calls", "min_schedule"))
        floor = params.get("min_schedule")
        return cls(params["tau"], max_calls=params.get("max_calls"), min_schedule=None if floor is None else Schedule(floor))

    def __repr__(self) -> str:
        return f"threshold(tau={self.tau:g})"


class ConfidenceFactor(RevealRule):
    """Fast-dLLM's factor rule: with candidates' confidences sorted ``c_1 >= c_2 >= ...``, reveal the ``r`` most
    confident while ``c_r >= 1 - factor / (r + 1)`` (the first always).

    Fast-dLLM's original loop also reveals the last remaining candidate when it alone fails its threshold; this
    rule (like dllm's port) does not.
    """

    stats = frozenset({"confidence"})
    name = "factor"

    def __init__(self, factor: float, *, max_calls: int | None = None) -> None:
        self.factor = check_float(factor, "factor", minimum=0.0, min_inclusive=False)
        self.max_calls = _check_max_calls(max_calls)

    def planned_calls(self, length: int) -> int | None:
        return None

    def counts(self, step: Step) -> torch.Tensor:
        assert step.ranked is not None
        conf = step.ranked["confidence"].nan_to_num(nan=-1.0).sort(dim=1, descending=True).values
        rank = torch.arange(1, conf.shape[1] + 1, device=conf.device, dtype=conf.dtype)
        thr = 1.0 - self.factor / (rank + 1.0)
        thr[0] = -1.0
        k = ((conf >= thr) & step.ranked.valid).sum(1)
        return cap_counts(k, step, self.max_calls)

    def describe(self) -> dict[str, Any]:
        return {"rule": self.name, "factor": self.factor, "max_calls": self.max_calls}

    def __repr__(self) -> str:
        return f"confidence_factor(factor={self.factor:g})"


class EntropyBound(RevealRule):
    """EB-Sampler's rule (arXiv 2505.24857): reveal the longest prefix of the order's ranking whose summed
    entropy minus its largest entropy is ``<= gamma`` (at least one position).

    The left side bounds the mutual information among the revealed tokens, so small ``gamma`` keeps the
    factorised draw close to a joint one. Entropies are of the temperature-1 model distribution (diffusers'
    ``EntropyBoundScheduler`` measures them after its annealed temperature, on uniform-noise models).
    """

    stats = frozenset({"entropy"})
    name = "entropy_bound"

    def __init__(self, gamma: float, *, max_calls: int | None = None) -> None:
        self.gamma = check_float(gamma, "gamma", minimum=0.0, hint=" (nats)")
        self.max_calls = _check_max_calls(max_calls)

    def planned_calls(self, length: int) -> int | None:
        return None

    def counts(self, step: Step) -> torch.Tensor:
        assert step.ranked is not None
        ent = step.ranked["entropy"].nan_to_num(nan=0.0).clamp(min=0.0).double()
        excess = ent.cumsum(1) - ent.cummax(1).values
        k = ((excess <= self.gamma + 1e-12) & step.ranked.valid).sum(1)
        return cap_counts(k, step, self.max_calls)

    def describe(self) -> dict[str, Any]:
        return {"rule": self.name, "gamma": self.gamma, "max_calls": self.max_calls}

    def __repr__(self) -> str:
        return f"entropy_bound(gamma={self.gamma:g})"


def threshold(tau: float, *, max_calls: int | None = None, min_schedule: Schedule | None = None) -> ConfidenceThreshold:
    """Fast-dLLM's confidence threshold as a reveal rule (see :class:`ConfidenceThreshold`)."""
    return ConfidenceThreshold(tau, max_calls=max_calls, min_schedule=min_schedule)


def confidence_factor(factor: float, *, max_calls: int | None = None) -> ConfidenceFactor:
    """Fast-dLLM's factor rule (see :class:`ConfidenceFactor`)."""
    return ConfidenceFactor(factor, max_calls=max_calls)


def entropy_bound(gamma: float, *, max_calls: int | None = None) -> EntropyBound:
    """EB-Sampler's entropy bound as a reveal rule (see :class:`EntropyBound`)."""
    return EntropyBound(gamma, max_calls=max_calls)


# ------------------------------------------------------------------------------------------------
# Saving and parsing rules
# ------------------------------------------------------------------------------------------------

#: Rules that can be rebuilt from :meth:`RevealRule.describe`, by their ``describe()["rule"]`` name.
RULES: dict[str, type[RevealRule]] = {"schedule": FixedSchedule, "threshold": ConfidenceThreshold,
                                      "factor": ConfidenceFactor, "entropy_bound": EntropyBound}
#: The parameter a rule's short text form (``"threshold:0.9"``) sets, and other names users type for the rule.
_MAIN_PARAMETER = {"threshold": "tau", "factor": "factor", "entropy_bound": "gamma"}
_ALIASES = {"confidence_factor": "factor", "confidence_threshold": "threshold", "eb": "entropy_bound"}


def register_rule(cls: type[RevealRule], *, main_parameter: str | None = None) -> type[RevealRule]:
    """Make a custom rule class savable in configs (by its ``name``); usable as a class decorator.

    ``main_parameter`` names the parameter set by the text form ``"name:value"`` (command line).
    """
    if not (isinstance(cls, type) and issubclass(cls, RevealRule)):
        raise TypeError(f"register_rule takes a RevealRule subclass, got {cls!r}")
    RULES[cls.name] = cls
    if main_parameter is not None:
        _MAIN_PARAMETER[cls.name] = main_parameter
    return cls


def from_description(data: Mapping[str, Any]) -> RevealRule:
    """The rule :meth:`RevealRule.describe` described (``{"rule": name, **parameters}``)."""
    if not isinstance(data, Mapping) or "rule" not in data:
        raise ValueError(f"a rule description is a JSON object with a 'rule' name, got {data!r}")
    name = _ALIASES.get(data["rule"], data["rule"])
    if name not in RULES:
        raise ValueError(f"unknown reveal rule {data['rule']!r}; known: {', '.join(RULES)} (custom rules must be "
                         "registered with mdm_sched.rules.register_rule before loading)")
    params = {k: v for k, v in data.items() if k != "rule"}
    try:
        return RULES[name].from_description(params)
    except (TypeError, KeyError) as exc:
        raise ValueError(f"bad parameters for reveal rule {name!r}: {params!r} ({exc})") from exc


def _parse_value(text: str) -> Any:
    if text.lower() in ("none", "null", ""):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    raise ValueError(f"rule parameter {text!r} must be a number or none")


def parse_rule(text: str) -> RevealRule:
    """A rule from its text form ``"name:value"`` or ``"name:key=value,key=value"``.

    ``"threshold:0.9"`` is ``threshold(0.9)``, ``"factor:1"`` is ``confidence_factor(1.0)``,
    ``"entropy_bound:gamma=0.5,max_calls=8"`` is ``entropy_bound(0.5, max_calls=8)``.
    """
    name, _, rest = str(text).partition(":")
    name = _ALIASES.get(name.strip(), name.strip())
    if name not in RULES or name == "schedule":
        raise ValueError(f"unknown reveal rule {name!r} in {text!r}; use one of "
                         f"{', '.join(n + ':VALUE' for n in _MAIN_PARAMETER)} (e.g. threshold:0.9)")
    params: dict[str, Any] = {}
    for i, item in enumerate(p.strip() for p in rest.split(",") if p.strip()):
        key, eq, value = item.partition("=")
        if not eq:
            if i or name not in _MAIN_PARAMETER:
                raise ValueError(f"rule {text!r}: write further parameters as key=value (e.g. max_calls=16)")
            key, value = _MAIN_PARAMETER[name], item
        params[key.strip()] = _parse_value(value.strip())
    main = _MAIN_PARAMETER.get(name)
    if main is not None and main not in params:
        raise ValueError(f"rule {text!r} needs its parameter: e.g. {name}:0.9 or {name}:{main}=0.9")
    return from_description({"rule": name, **params})
