"""The evaluation harness's configuration and results as typed values, with a JSON round trip.

A run (:func:`mdm_sched.harness.run_eval`) returns one :class:`EvalResults`; ``results.json`` is its
:meth:`EvalResults.to_dict` as indented JSON, and :meth:`EvalResults.load` reads it back, so a report can be
re-rendered from ``results.json`` alone (``report.render_markdown(EvalResults.load(path))``).

Every number the harness measures is a :class:`ResultRow`: one metric for one (task, order, decoder, budget)
with its standard error, the mean number of model calls actually made and, where the design allows it,
the paired difference to a baseline decoder. A decoder is a fixed schedule (``"optimal"``: exactly ``budget``
calls) or an adaptive rule that chooses its own number of calls (``budget`` is then its cap or ``None``;
``calls``/``calls_se`` say what it used), so new decoders and new tasks add rows, not fields.

Non-finite numbers (a missing judge, a curve that never matches) are written as the strings ``"nan"``,
``"inf"`` and ``"-inf"`` so the file is strict JSON that any tool can read.
"""
from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ._io import atomic_write_text, check_format, read_json
from ._types import PathLike

__all__ = ["EvalConfig", "Estimate", "PairedDiff", "ResultRow", "SensitivityCheck", "ReferenceValues", "CallsSaved",
           "ProfileSummary", "SplitSummary", "TaskSummary", "TheoryRow", "EvalResults", "RESULTS_FORMAT", "RESULTS_VERSION",
           "UNCONDITIONAL", "DEFAULT_DECODERS"]

RESULTS_FORMAT = "mdm_sched.eval_results"
RESULTS_VERSION = 1
DEFAULT_SCHEDULES = ("constant", "cosine", "geometric", "optimal", "sqrt")
DEFAULT_DECODERS = ("constant", "cosine", "optimal", "sqrt", "threshold", "entropy_bound")
#: the task of the unconditional rows (held-out bound, samples); infilling rows carry their task's name
UNCONDITIONAL = "unconditional"


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class EvalConfig:
    """Everything a run depends on (stored in ``results.json``; caches are keyed on the relevant parts).

    Each field's ``metadata["help"]`` is also the help of its ``mdm-sched eval``/``demo`` flag.

    Cost knobs (model rows evaluated): profile ``profile_levels x profile_tokens_per_level / (N/2)``;
    held-out ``|union of block starts| x n_orders x n_eval``; generation ``sum(T) x num_samples`` per
    schedule and order; path KL ``path_kl_levels x num_samples`` per config (``None``: ``N - T``);
    judge ``judge_positions x num_samples`` per config: ``judge_positions`` forwards per sample, each scoring
    15% randomly masked positions (``None``: the exact pseudo-log-likelihood, ``N`` forwards per sample).
    """

    model: str = field(default="antiberty", metadata=_help("model to evaluate (built-in name, directory or hub id)"))
    judge: str | None = field(default="sapiens-vh", metadata=_help(
        "a different model that scores the samples (pseudo-log-likelihood); 'none': no judge"))
    data: str = field(default="antibody-germlines:human:H", metadata=_help(
        "data spec with the two splits below, e.g. antibody-germlines:human:H"))
    profile_split: str = field(default="train", metadata=_help("split the profile is fitted on"))
    eval_split: str = field(default="test", metadata=_help("split everything else is evaluated on"))
    n_tokens: int | None = field(default=None, metadata=_help(
        "generation length N ('none': the most common length of the evaluation split; see mdm_sched.data.fixed_length)"))
    budgets: tuple[int, ...] = field(default=(5, 10, 15, 30), metadata=_help("model-call budgets T"))
    schedules: tuple[str, ...] = field(default=DEFAULT_SCHEDULES, metadata=_help("schedules to compare"))
    orders: tuple[str, ...] = field(default=("random", "confidence"), metadata=_help(
        "unmasking orders: random (required), confidence, margin, entropy"))
    confidence_budgets: tuple[int, ...] | None = field(default=None, metadata=_help(
        "budgets for the non-random orders ('none': all budgets)"))
    num_samples: int = field(default=32, metadata=_help("samples per (schedule, T, order)"))
    n_orders: int = field(default=2, metadata=_help("random orders per held-out sequence (M), common to all schedules"))
    max_eval_sequences: int | None = field(default=None, metadata=_help(
        "evaluate on a random subset of at most this many sequences ('none': all)"))
    path_kl_levels: int | None = field(default=8, metadata=_help(
        "within-block levels per sample for path KL ('none': all of them)"))
    judge_positions: int | None = field(default=16, metadata=_help(
        "judge forwards per sample, each masking and scoring 15 percent of the positions ('none': exact pseudo-log-likelihood)"))
    profile_levels: int = field(default=32, metadata=_help("visible counts the profile is measured at"))
    profile_tokens_per_level: int = field(default=2048, metadata=_help("scored tokens per profile level"))
    reference_budget: int | None = field(default=None, metadata=_help(
        "budget at which 'calls saved' is measured ('none': the middle budget)"))
    sensitivity_z: float = field(default=5.0, metadata=_help(
        "a sample-side metric is sensitive when 1 call and N calls differ by more than this many SE"))
    batch_size: int = field(default=64, metadata=_help("rows per model call"))
    seed: int = field(default=0, metadata=_help("seed of every random draw in the run"))
    theory: bool = field(default=False, metadata=_help("append the exact-oracle theory table"))
    infill: str | None = field(default=None, metadata=_help(
        "infilling task on the evaluation split ('none': no infilling stage): imgt:START-STOP (antibody regions by "
        "IMGT number, e.g. imgt:27-65) or span:LENGTH|FRACTION (one random span per sequence), optionally :mutate=RATE"))
    infill_decoders: tuple[str, ...] = field(default=DEFAULT_DECODERS, metadata=_help(
        "decoders compared on the infilling task (mdm_sched.decoders.DECODERS)"))
    infill_orders: tuple[str, ...] = field(default=("random", "confidence"), metadata=_help(
        "orders for infilling: random is sampled (temperature 1), model-ranked orders are greedy (temperature 0)"))
    infill_budgets: tuple[int, ...] = field(default=(2, 4, 8), metadata=_help(
        "budgets T of the fixed schedules when infilling (1 call and one call per token are always added)"))
    thresholds: tuple[float, ...] = field(default=(0.5, 0.7, 0.9, 0.99), metadata=_help(
        "tau values of the confidence-threshold rule"))
    entropy_bounds: tuple[float, ...] = field(default=(0.1, 0.5, 1.0, 2.0), metadata=_help(
        "gamma values (nats) of the entropy-bound rule"))
    factors: tuple[float, ...] = field(default=(0.5, 1.0, 2.0), metadata=_help("values of Fast-dLLM's factor rule"))
    infill_samples: int = field(default=4, metadata=_help(
        "samples per example for sampled (random-order) infilling; greedy runs are deterministic"))
    infill_sequences: int | None = field(default=None, metadata=_help(
        "infill a random subset of at most this many evaluation sequences ('none': all)"))
    infill_split: str = field(default="eval", metadata=_help(
        "examples the infilling task is built on: 'eval' (the evaluation split) or 'all' (both splits: about twice "
        "the examples, for decoders that use no profile, since profiles are fitted on the profile split)"))
    ordered_nll: bool = field(default=False, metadata=_help(
        "infilling: also the conditional NLL of the truth under each ranked order (teacher forcing along the "
        "sampler's own ranking; T forwards per example and fixed schedule)"))
    profile_walks: int = field(default=32, metadata=_help(
        "profile-split examples walked by the policy and self profiles (one forward per generated position each)"))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (tuples as lists)."""
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvalConfig:
        """Inverse of :meth:`to_dict`; refuses unknown keys (a typo would otherwise be silently ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown EvalConfig fields {unknown}; known: {', '.join(sorted(names))}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


# --------------------------------------------------------------------------------------------------
# numbers
# --------------------------------------------------------------------------------------------------

def _num(value: Any) -> float:
    """A float from JSON: numbers, or the strings ``nan``/``inf``/``-inf`` written for non-finite values."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"expected a number, got {value!r}")
    return float(value)


def _opt_num(value: Any) -> float | None:
    return None if value is None else _num(value)


def _opt_nums(values: Any) -> tuple[float, ...] | None:
    return None if values is None else tuple(_num(v) for v in values)


def _strict(obj: Any) -> Any:
    """``obj`` with non-finite floats replaced by strings, so ``json.dumps`` writes strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {k: _strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict(v) for v in obj]
    return obj


@dataclass(frozen=True)
class Estimate:
    """A value and its standard error."""

    value: float
    se: float

    def to_dict(self) -> dict[str, float]:
        return {"value": float(self.value), "se": float(self.se)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Estimate:
        return cls(_num(data["value"]), _num(data["se"]))


@dataclass(frozen=True)
class PairedDiff:
    """``row - baseline`` measured on the same units (sequences, orders), with the SE of that difference."""

    baseline: str
    diff: float
    se: float


@dataclass(frozen=True)
class ResultRow:
    """One measured number: ``metric`` for ``decoder`` at ``budget`` under ``order`` on ``task``.

    ``calls``/``calls_se``: the mean number of model calls per sequence the decoder actually made and its SE
    (a fixed schedule makes exactly ``budget`` calls, the default; an adaptive rule reports what it used).
    ``paired``: the difference to a baseline decoder on the same units, when the design pairs them.
    ``parameter``: an adaptive decoder's setting (``tau``, ``gamma``...; ``None`` for fixed schedules).
    ``per_unit`` / ``calls_per_unit``: the per-unit values behind ``value`` / ``calls`` (infilling: one per example,
    the mean over its samples, in the same order for every decoder of a task), for paired bootstrap intervals.
    """

    metric: str
    order: str
    decoder: str
    budget: int | None
    value: float
    se: float
    calls: float | None = None
    calls_se: float = 0.0
    paired: PairedDiff | None = None
    task: str = UNCONDITIONAL
    parameter: float | None = None
    per_unit: tuple[float, ...] | None = None
    calls_per_unit: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.calls is None:
            if self.budget is None:
                raise ValueError(f"ResultRow({self.metric}, {self.decoder}): give budget or calls (mean calls made)")
            object.__setattr__(self, "calls", float(self.budget))

    def to_dict(self) -> dict[str, Any]:
        """A flat dict (one CSV row); the paired difference as ``paired_baseline``/``paired_diff``/``paired_diff_se``."""
        out: dict[str, Any] = {"metric": self.metric, "order": self.order, "task": self.task, "decoder": self.decoder,
                               "budget": self.budget, "calls": float(self.calls or 0.0), "calls_se": float(self.calls_se),
                               "value": float(self.value), "se": float(self.se)}
        if self.paired is not None:
            out.update(paired_baseline=self.paired.baseline, paired_diff=float(self.paired.diff),
                       paired_diff_se=float(self.paired.se))
        if self.parameter is not None:
            out["parameter"] = float(self.parameter)
        for key in ("per_unit", "calls_per_unit"):
            if getattr(self, key) is not None:
                out[key] = [float(v) for v in getattr(self, key)]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ResultRow:
        paired = None
        if data.get("paired_baseline") is not None:
            paired = PairedDiff(str(data["paired_baseline"]), _num(data["paired_diff"]), _num(data["paired_diff_se"]))
        budget = data.get("budget")
        return cls(metric=str(data["metric"]), order=str(data["order"]), decoder=str(data["decoder"]),
                   budget=None if budget is None else int(budget), value=_num(data["value"]), se=_num(data["se"]),
                   calls=_opt_num(data.get("calls")), calls_se=_num(data.get("calls_se", 0.0)), paired=paired,
                   task=str(data.get("task", UNCONDITIONAL)), parameter=_opt_num(data.get("parameter")),
                   per_unit=_opt_nums(data.get("per_unit")), calls_per_unit=_opt_nums(data.get("calls_per_unit")))


@dataclass(frozen=True)
class SensitivityCheck:
    """Can a metric tell the 1-call sampler from the N-step sampler (``|diff| / SE = z``) under ``order`` on ``task``?

    Infilling checks pair the two samplers on the same examples (``z`` uses the SE of the per-example difference).
    """

    metric: str
    one_call: Estimate
    n_step: Estimate
    z: float
    sensitive: bool
    order: str = "random"
    task: str = UNCONDITIONAL

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "one_call": self.one_call.to_dict(), "n_step": self.n_step.to_dict(),
                "z": float(self.z), "sensitive": bool(self.sensitive), "order": self.order, "task": self.task}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SensitivityCheck:
        return cls(str(data["metric"]), Estimate.from_dict(data["one_call"]), Estimate.from_dict(data["n_step"]),
                   _num(data["z"]), bool(data["sensitive"]), str(data.get("order", "random")),
                   str(data.get("task", UNCONDITIONAL)))


@dataclass(frozen=True)
class ReferenceValues:
    """A metric's reference levels: the N-step and 1-call samplers, and the held-out data itself."""

    metric: str
    n_step: Estimate | None = None
    one_call: Estimate | None = None
    heldout: Estimate | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"metric": self.metric}
        for key in ("n_step", "one_call", "heldout"):
            est = getattr(self, key)
            out[key] = None if est is None else est.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReferenceValues:
        est = {k: None if data.get(k) is None else Estimate.from_dict(data[k]) for k in ("n_step", "one_call", "heldout")}
        return cls(str(data["metric"]), **est)


@dataclass(frozen=True)
class CallsSaved:
    """Calls ``decoder`` needs to match the baseline's quality at ``reference_budget`` (monotone fits, interpolated).

    ``calls_to_match`` is ``-inf`` when the decoder already matches at its fewest measured calls
    (``lowest_calls``), ``inf`` when it never does up to ``highest_calls``, NaN without finite values.
    ``reference_calls``: the mean calls the baseline made at ``reference_budget`` (``None``: exactly the budget;
    infilling rows with fewer targets make fewer). ``ratio`` = reference calls / calls to match.
    ``interval``: a 90% paired bootstrap interval of ``ratio`` over the task's units (``None``: not computed).
    """

    metric: str
    decoder: str
    baseline: str
    reference_budget: int
    baseline_value: float
    calls_to_match: float
    lowest_calls: float
    highest_calls: float
    order: str = "random"
    task: str = UNCONDITIONAL
    reference_calls: float | None = None
    interval: tuple[float, float] | None = None

    @property
    def ratio(self) -> float:
        """How many times fewer calls than the baseline (``inf`` when it matches at its fewest calls: a lower bound
        ``reference / lowest_calls`` then holds; 0 when it never matches; NaN without values)."""
        ref = float(self.reference_budget if self.reference_calls is None else self.reference_calls)
        t = self.calls_to_match
        if math.isnan(t):
            return float("nan")
        if t == float("inf"):
            return 0.0
        return float("inf") if t == float("-inf") else ref / t

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "decoder": self.decoder, "baseline": self.baseline,
                "reference_budget": int(self.reference_budget), "baseline_value": float(self.baseline_value),
                "calls_to_match": float(self.calls_to_match), "lowest_calls": float(self.lowest_calls),
                "highest_calls": float(self.highest_calls), "order": self.order, "task": self.task,
                "reference_calls": None if self.reference_calls is None else float(self.reference_calls),
                "interval": None if self.interval is None else [float(v) for v in self.interval]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CallsSaved:
        return cls(str(data["metric"]), str(data["decoder"]), str(data["baseline"]), int(data["reference_budget"]),
                   _num(data["baseline_value"]), _num(data["calls_to_match"]), _num(data["lowest_calls"]),
                   _num(data["highest_calls"]), str(data.get("order", "random")), str(data.get("task", UNCONDITIONAL)),
                   _opt_num(data.get("reference_calls")), _interval(data.get("interval")))


def _interval(values: Any) -> tuple[float, float] | None:
    if values is None:
        return None
    lo, hi = (_num(v) for v in values)
    return (lo, hi)


@dataclass(frozen=True)
class ProfileSummary:
    """The fitted CE curve's ends, the N-step bound on it and, per budget, the predicted gain of the optimum
    (``J(constant) / J(optimal)``) and the calls it predicts the optimum saves on the bound (``predicted_calls``:
    constant's calls for the same bound over the budget; empty in results written before it existed)."""

    ce_first: float
    ce_last: float
    bound_n_step: float
    predicted_gain: dict[int, float]
    predicted_calls: dict[int, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"ce_first": float(self.ce_first), "ce_last": float(self.ce_last), "bound_n_step": float(self.bound_n_step),
                "predicted_gain": {str(t): float(g) for t, g in self.predicted_gain.items()},
                "predicted_calls": {str(t): float(g) for t, g in self.predicted_calls.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProfileSummary:
        return cls(_num(data["ce_first"]), _num(data["ce_last"]), _num(data["bound_n_step"]),
                   {int(t): _num(g) for t, g in data["predicted_gain"].items()},
                   {int(t): _num(g) for t, g in data.get("predicted_calls", {}).items()})


@dataclass(frozen=True)
class SplitSummary:
    """What the length policy (:func:`mdm_sched.data.fixed_length`) did to one data split.

    ``sequences``: how many the run used (after ``max_eval_sequences`` for the evaluation split).
    """

    split: str
    sequences: int
    dropped: int
    cropped: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SplitSummary:
        return cls(str(data["split"]), int(data["sequences"]), int(data["dropped"]), int(data["cropped"]))


@dataclass(frozen=True)
class TaskSummary:
    """The infilling task of a run: what is infilled, on how many examples, and the schedules' nominal length.

    ``infilled``/``given``: (min, max, mean) positions per example; ``n_tokens``: the largest number of infilled
    positions (what the fixed schedules are built for; rows with fewer rescale them). ``predicted_calls``: per
    profile the decoders used (``"region"``, ``"policy@confidence"``...), the calls its optimal schedule is
    predicted to save at each budget (:func:`mdm_sched.schedules.predicted_calls_saved`).
    """

    name: str
    description: str
    examples: int
    infilled: tuple[float, float, float]
    given: tuple[float, float, float]
    n_tokens: int
    predicted_calls: dict[str, dict[int, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "examples": int(self.examples),
                "infilled": list(self.infilled), "given": list(self.given), "n_tokens": int(self.n_tokens),
                "predicted_calls": {k: {str(t): float(v) for t, v in d.items()} for k, d in self.predicted_calls.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskSummary:
        trio = lambda key: tuple(_num(v) for v in data[key])
        predicted = {k: {int(t): _num(v) for t, v in d.items()} for k, d in data.get("predicted_calls", {}).items()}
        return cls(str(data["name"]), str(data["description"]), int(data["examples"]), trio("infilled"), trio("given"),
                   int(data["n_tokens"]), predicted)


@dataclass(frozen=True)
class TheoryRow:
    """One (oracle, budget, schedule) of the exact-oracle theory table (:mod:`mdm_sched.theory`).

    ``order_kl_se``, ``exact_kl`` and ``kl_gain`` are ``None`` where they do not apply (exact rows have no SE;
    long chains have no exact KL).
    """

    oracle: str
    n_tokens: int
    budget: int
    schedule: str
    fact_error: float
    order_kl: float
    predicted_gain: float
    measured_gain: float
    gain_se: float = 0.0
    order_kl_se: float | None = None
    exact_kl: float | None = None
    kl_gain: float | None = None

    def to_dict(self) -> dict[str, Any]:
        opt = lambda v: None if v is None else float(v)
        return {"oracle": self.oracle, "n_tokens": int(self.n_tokens), "budget": int(self.budget),
                "schedule": self.schedule, "fact_error": float(self.fact_error), "order_kl": float(self.order_kl),
                "predicted_gain": float(self.predicted_gain), "measured_gain": float(self.measured_gain),
                "gain_se": float(self.gain_se), "order_kl_se": opt(self.order_kl_se), "exact_kl": opt(self.exact_kl),
                "kl_gain": opt(self.kl_gain)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TheoryRow:
        return cls(str(data["oracle"]), int(data["n_tokens"]), int(data["budget"]), str(data["schedule"]),
                   _num(data["fact_error"]), _num(data["order_kl"]), _num(data["predicted_gain"]),
                   _num(data["measured_gain"]), _num(data.get("gain_se", 0.0)), _opt_num(data.get("order_kl_se")),
                   _opt_num(data.get("exact_kl")), _opt_num(data.get("kl_gain")))


# --------------------------------------------------------------------------------------------------
# the whole result
# --------------------------------------------------------------------------------------------------

_LISTS: dict[str, type] = {"rows": ResultRow, "sensitivity": SensitivityCheck, "references": ReferenceValues,
                           "calls_saved": CallsSaved, "theory_rows": TheoryRow}
_TEXTS = ("findings", "confidence_notes", "caveats")


@dataclass
class EvalResults:
    """Everything one harness run measured and concluded (``results.json``).

    ``findings``/``confidence_notes`` are the report's sentences (:func:`mdm_sched.report.findings`),
    ``theory`` the exact-oracle table as Markdown (``theory_rows``: its numbers), ``forward_rows`` the model
    rows evaluated by this run (parts reused from the cache are not counted).
    """

    config: EvalConfig
    n_tokens: int
    data_description: str
    profile_data: SplitSummary
    eval_data: SplitSummary
    rows: list[ResultRow] = field(default_factory=list)
    profile: ProfileSummary | None = None
    sensitivity: list[SensitivityCheck] = field(default_factory=list)
    references: list[ReferenceValues] = field(default_factory=list)
    calls_saved: list[CallsSaved] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)
    confidence_notes: list[str] = field(default_factory=list)
    caveats: list[str] = field(default_factory=list)
    theory: str | None = None
    theory_rows: list[TheoryRow] = field(default_factory=list)
    forward_rows: int = 0
    wall_time_s: float = float("nan")
    infill: TaskSummary | None = None

    def sensitivity_of(self, metric: str, *, order: str = "random", task: str = UNCONDITIONAL) -> SensitivityCheck | None:
        """The sensitivity check of ``metric`` under ``order`` on ``task`` (``None``: not checked, e.g. the held-out
        metrics)."""
        return next((s for s in self.sensitivity if s.metric == metric and s.order == order and s.task == task), None)

    def rows_of(self, task: str = UNCONDITIONAL) -> list[ResultRow]:
        """The rows of one task."""
        return [r for r in self.rows if r.task == task]

    def references_of(self, metric: str) -> ReferenceValues | None:
        """The reference levels of ``metric``, if measured."""
        return next((r for r in self.references if r.metric == metric), None)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (may hold non-finite floats; :meth:`to_json` makes them strict JSON)."""
        out: dict[str, Any] = {"format": RESULTS_FORMAT, "version": RESULTS_VERSION, "config": self.config.to_dict(),
                               "n_tokens": self.n_tokens, "data_description": self.data_description,
                               "profile_data": self.profile_data.to_dict(), "eval_data": self.eval_data.to_dict(),
                               "profile": None if self.profile is None else self.profile.to_dict()}
        out.update({key: [item.to_dict() for item in getattr(self, key)] for key in _LISTS})
        out.update({key: list(getattr(self, key)) for key in _TEXTS})
        out.update(theory=self.theory, forward_rows=int(self.forward_rows), wall_time_s=float(self.wall_time_s),
                   infill=None if self.infill is None else self.infill.to_dict())
        return out

    @classmethod
    def from_dict(cls, data: Any) -> EvalResults:
        """Inverse of :meth:`to_dict` (also accepts the strict-JSON strings for non-finite numbers)."""
        data = check_format(data, fmt=RESULTS_FORMAT, version=RESULTS_VERSION, what="evaluation results file")
        try:
            return cls(config=EvalConfig.from_dict(data["config"]), n_tokens=int(data["n_tokens"]),
                       data_description=str(data["data_description"]),
                       profile_data=SplitSummary.from_dict(data["profile_data"]),
                       eval_data=SplitSummary.from_dict(data["eval_data"]),
                       profile=None if data.get("profile") is None else ProfileSummary.from_dict(data["profile"]),
                       **{key: [kind.from_dict(d) for d in data.get(key, [])] for key, kind in _LISTS.items()},
                       **{key: [str(s) for s in data.get(key, [])] for key in _TEXTS},
                       theory=data.get("theory"), forward_rows=int(data.get("forward_rows", 0)),
                       wall_time_s=_num(data.get("wall_time_s", "nan")),
                       infill=None if data.get("infill") is None else TaskSummary.from_dict(data["infill"]))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"corrupted evaluation results: missing or malformed field {exc}") from exc

    def to_json(self) -> str:
        """Indented strict JSON (non-finite numbers as ``"nan"``/``"inf"``/``"-inf"``)."""
        return json.dumps(_strict(self.to_dict()), indent=2, allow_nan=False) + "\n"

    @classmethod
    def from_json(cls, text: str) -> EvalResults:
        return cls.from_dict(json.loads(text))

    def save(self, path: PathLike) -> None:
        """Write :meth:`to_json` to ``path`` atomically."""
        atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls, path: PathLike) -> EvalResults:
        """Read a ``results.json`` written by :meth:`save`."""
        return cls.from_dict(read_json(path, what="evaluation results"))
