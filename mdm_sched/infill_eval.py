"""The harness's infilling stage: every decoder on one infilling task, scored at the model calls each one makes.

For a task (:mod:`mdm_sched.tasks`) and each order of ``EvalConfig.infill_orders`` (random order sampled at
temperature 1, ``infill_samples`` samples per example; model-ranked orders greedy, one deterministic run), every
decoder of ``EvalConfig.infill_decoders`` (:mod:`mdm_sched.decoders`) infills every example at each value of its
grid (fixed schedules: ``infill_budgets`` plus 1 call and one call per token). Per run and example: recovery,
exact match and the calls the example needed (distinct calls that revealed one of its positions). With random
order among the orders, fixed schedules also get the conditional NLL of the truth under random order (bound and
``M``-order estimate, :func:`mdm_sched.metrics.conditional_likelihood`); it is not defined for adaptive rules or
greedy decoding.

Sensitivity: per (order, metric), 1 call against one call per token, paired on the examples. Every model-side
part is cached through the host's ``stage`` (:func:`mdm_sched.harness.cached_stage`).
"""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from . import metrics
from .decoders import POLICY_PROFILE, RANDOM_PROFILE, REGION_PROFILE, SELF_PROFILE, Decoder, DecoderContext, get_decoder
from .profile_stage import Payload, StageHost, equal_length, policy_profile, region_profile, self_profile, task_examples
from .results import Estimate, PairedDiff, ResultRow, SensitivityCheck, TaskSummary
from .rules import RevealRule
from .schedules import Schedule, predicted_calls_saved

if TYPE_CHECKING:
    from .conditioning import Examples
    from .models import MaskedLM
    from .profile import InformationProfile
    from .results import EvalConfig
    from .tasks import InfillTask

__all__ = ["INFILL_METRICS", "SAMPLE_METRICS", "NLL_METRICS", "BASELINE", "PROFILE_SOURCES", "ProfileSources",
           "temperature_of", "load_task", "infill_curve", "run_infill", "InfillOutcome"]

SAMPLE_METRICS = ("recovery", "exact_match")
NLL_METRICS = ("cond_nll", "cond_nll_M")
INFILL_METRICS = SAMPLE_METRICS + NLL_METRICS
#: the decoder every other one is compared with (LLaDA's default schedule)
BASELINE = "constant"


@dataclass
class InfillOutcome:
    """The stage's rows, sensitivity checks and task summary."""

    rows: list[ResultRow]
    sensitivity: list[SensitivityCheck]
    summary: TaskSummary


def temperature_of(order: str) -> float:
    """Random order is sampled (temperature 1: the sampler the theory is about); model-ranked orders are greedy."""
    return 1.0 if order == "random" else 0.0


def load_task(cfg: EvalConfig, model: MaskedLM, *, split: str | None = None) -> InfillTask:
    """``cfg.infill`` on the evaluation split (``cfg.infill_split == "all"``: the evaluation split followed by the
    profile split), at most ``cfg.infill_sequences`` examples (a seeded subset); with ``split`` (the profile split,
    for the profiles conditioned like the task): on that split, every example."""
    from .data import load_source
    from .tasks import build_task

    assert cfg.infill is not None
    if split is None and cfg.infill_split == "all":
        import datasets

        source = datasets.concatenate_datasets([load_source(cfg.data, split=cfg.eval_split),
                                                load_source(cfg.data, split=cfg.profile_split)])
    else:
        source = load_source(cfg.data, split=split or cfg.eval_split)
    alphabet = sorted({t for seq in model.encode(list(source["text"])) for t in seq})
    task = build_task(cfg.infill, source, model.encode, alphabet=alphabet, seed=cfg.seed)
    if split is None and cfg.infill_sequences is not None and len(task) > cfg.infill_sequences:
        g = torch.Generator().manual_seed(cfg.seed)
        task = task.subset(torch.randperm(len(task), generator=g)[:cfg.infill_sequences].sort().values)
    return task


def infill_curve(full_curve: np.ndarray, n_tokens: int) -> np.ndarray:
    """The random-order profile read at the same numbers of masked positions: ``CE(N - n + i)``, ``i = 0..n-1``.

    With ``n`` positions left to infill and the rest visible, the random-order profile's best guess of the
    per-token CE is its value when ``n`` of its ``N`` positions are masked.
    """
    full = np.asarray(full_curve, dtype=np.float64)
    if n_tokens > full.size:
        raise ValueError(f"the task infills up to {n_tokens} positions but the profile covers {full.size}")
    return full[full.size - n_tokens:]


class ProfileSources:
    """The profiles the decoders of one infilling run may name, each measured on the profile split when first asked
    for (and cached by the host): the run's random-order curve and :mod:`mdm_sched.profile_stage`'s profiles."""

    def __init__(self, host: StageHost, full_curve: np.ndarray) -> None:
        self.host, self.full_curve = host, full_curve
        self._train: Examples | None = None

    def train(self) -> Examples:
        """The task built on the profile split (never the evaluation examples), as examples."""

        if self._train is None:
            self._train = task_examples(load_task(self.host.cfg, self.host.model, split=self.host.cfg.profile_split))
        return self._train

    def walked(self) -> Examples:
        """The profile split's examples that policy and self profiles walk (equal lengths, ``profile_walks`` at most)."""

        return equal_length(self.train(), self.host.cfg.profile_walks, self.host.cfg.seed)


def _region(src: ProfileSources, n: int, order: str) -> np.ndarray:

    return region_profile(src.host, src.train()).curve(n)


def _policy(src: ProfileSources, n: int, order: str) -> InformationProfile:

    return policy_profile(src.host, src.walked(), order, label="region")


def _self(src: ProfileSources, n: int, order: str) -> np.ndarray | InformationProfile:

    prof = self_profile(src.host, src.walked(), order, label="region")
    return prof if prof.kind == "policy" else prof.curve(n)


#: how the stage gets each profile a decoder may name (:attr:`~mdm_sched.decoders.Decoder.profile`), for ``n``
#: positions and the run's order: a CE curve (random-order profiles) or a profile object (ordering-aware ones).
#: A decoder on another profile adds its provider here and its entry in :data:`mdm_sched.decoders.DECODERS`.
SourceProvider = Callable[[ProfileSources, int, str], "np.ndarray | InformationProfile"]
PROFILE_SOURCES: dict[str, SourceProvider] = {
    RANDOM_PROFILE: lambda src, n, order: infill_curve(src.full_curve, n),
    REGION_PROFILE: _region,
    POLICY_PROFILE: _policy,
    SELF_PROFILE: _self,
}


def _decoders(cfg: EvalConfig, order: str) -> list[Decoder]:
    """The configured decoders defined for ``order``."""
    return [d for d in (get_decoder(name) for name in cfg.infill_decoders) if d.runs_under(order)]


def _context(src: ProfileSources, n_tokens: int, order: str) -> DecoderContext:
    """The decoders' context under ``order``: exactly the profiles its decoders name, curves and profile objects."""
    needed = {d.profile for d in _decoders(src.host.cfg, order)} - {None}
    unknown = sorted(p for p in needed if p not in PROFILE_SOURCES)
    if unknown:
        raise ValueError(f"no provider for the profiles {unknown} (infill_eval.PROFILE_SOURCES has "
                         f"{', '.join(PROFILE_SOURCES)})")
    got = {p: PROFILE_SOURCES[p](src, n_tokens, order) for p in sorted(needed)}
    curves = {k: v for k, v in got.items() if isinstance(v, np.ndarray)}
    return DecoderContext(n_tokens, curves, {k: v for k, v in got.items() if not isinstance(v, np.ndarray)}, order)


def _predicted_calls(ctxs: Mapping[str, DecoderContext], budgets: tuple[int, ...]) -> dict[str, dict[int, float]]:
    """For each profile the run's decoders use: the calls its optimal schedule is predicted to save at each budget
    (:func:`mdm_sched.schedules.predicted_calls_saved`). Random-order curves are keyed by profile name (they do not
    depend on the run's order), ordering-aware profiles by ``name@order``. The self profile is left out: it models the
    distance to the model's own slow sampler, not to the data the task scores."""
    out: dict[str, dict[int, float]] = {}
    for order, ctx in ctxs.items():
        sources = {**ctx.curves, **{f"{k}@{order}": v for k, v in ctx.profiles.items() if k != SELF_PROFILE}}
        for key, src in sources.items():
            if key == SELF_PROFILE or key in out:  # a random-order curve is the same under every order
                continue
            out[key] = {int(t): float(predicted_calls_saved(src, int(t), n_tokens=ctx.n_tokens))
                        for t in budgets if t <= ctx.n_tokens}
    return out


def _key(*parts: object) -> str:
    return hashlib.sha1(json.dumps(parts, default=str, sort_keys=True).encode()).hexdigest()[:12]


def _describe(rule: Schedule | RevealRule) -> dict[str, Any]:
    return {"sizes": list(rule.sizes)} if isinstance(rule, Schedule) else rule.describe()


def _aligned(sequences: torch.Tensor, reveal: torch.Tensor, widths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded generate() outputs laid out like the task (right-padded): ids and reveal steps ``[R, W]``."""
    w = int(widths.max())
    pad = sequences.shape[1] - widths  # left padding of each row
    cols = (pad.unsqueeze(1) + torch.arange(w).unsqueeze(0)).clamp(max=sequences.shape[1] - 1)
    return sequences.gather(1, cols), reveal.gather(1, cols)


def _calls_per_row(reveal: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Distinct calls that revealed at least one target of each row: what the row costs on its own."""
    steps = torch.where(target, reveal, torch.zeros_like(reveal)).sort(1).values
    new = (steps[:, 1:] != steps[:, :-1]) & (steps[:, 1:] > 0)
    return new.sum(1) + (steps[:, 0] > 0).long()


def _generate(host: StageHost, task: InfillTask, order: str, rule: Schedule | RevealRule, seed: int) -> Payload:
    """Infill every example (``infill_samples`` times when sampling); per-example means of each score."""
    import mdm_sched as ms

    temp = temperature_of(order)
    reps = host.cfg.infill_samples if temp > 0 else 1
    out = ms.generate(host.model, task.prompts(host.model.mask_token_id), gen_length=0, schedule=rule, order=order,
                      temperature=temp, num_samples=reps, generator=torch.Generator().manual_seed(seed))
    host.forward_rows += out.nfe * len(task) * reps
    ids, reveal = _aligned(out.sequences.cpu(), out.reveal_step.cpu(), task.widths.repeat_interleave(reps))
    truth, target = task.ids.repeat_interleave(reps, 0), task.target.repeat_interleave(reps, 0)
    rec, exact = metrics.infill_accuracy(ids, truth, target)
    calls = _calls_per_row(reveal, target).double()
    per_example = lambda v: v.view(len(task), reps).mean(1).tolist()
    return {"recovery": per_example(rec), "exact_match": per_example(exact), "calls": per_example(calls),
            "nfe": int(out.nfe)}


def _points(cfg: EvalConfig, decoder: Decoder, n_tokens: int) -> list[float]:
    """The values a decoder runs at: its grid; fixed schedules add 1 call and one call per token."""
    grid = [float(v) for v in getattr(cfg, decoder.grid)]
    if not decoder.fixed:
        return grid
    return [float(t) for t in sorted({1, n_tokens, *(int(v) for v in grid if v <= n_tokens)})]


@dataclass
class _Run:
    """One (order, decoder, value): its per-example scores."""

    order: str
    decoder: Decoder
    value: float
    scores: Payload


def _runs(host: StageHost, task: InfillTask, ctxs: Mapping[str, DecoderContext], task_fp: Mapping[str, object]
          ) -> list[_Run]:
    cfg, runs = host.cfg, []
    for order in cfg.infill_orders:
        ctx = ctxs[order]
        for decoder in _decoders(cfg, order):
            for value in _points(cfg, decoder, ctx.n_tokens):
                rule = decoder.rule(ctx, value)
                fp = {"what": "infill", "task": task_fp, "order": order, "rule": _describe(rule),
                      "temperature": temperature_of(order), "samples": cfg.infill_samples}
                key = _key(fp)
                label = f"infill {order} {decoder.label(value)}" + (f" T={int(value)}" if decoder.fixed else "")
                scores = host.stage(label, f"infill/{key}.json", fp,
                                    lambda r=rule, o=order, k=key: _generate(host, task, o, r, int(k[:6], 16)),
                                    eval_subset=False)
                runs.append(_Run(order, decoder, value, scores))
    return runs


def _nll(host: StageHost, task: InfillTask, scheds: dict[str, Schedule], task_fp: Mapping[str, object]) -> Payload:
    """``log q`` of the truth for every fixed schedule at once (random order, ``n_orders`` orders per example)."""
    cfg = host.cfg

    def compute() -> Payload:
        g = torch.Generator().manual_seed(cfg.seed)
        res = metrics.conditional_likelihood(host.model, task.ids, task.target, scheds, attention_mask=task.attention,
                                             n_orders=cfg.n_orders, generator=g, batch_size=cfg.batch_size)
        host.forward_rows += res.n_forward_rows
        return {"logq": {k: v.tolist() for k, v in res.logq.items()}}

    fp = {"what": "infill-nll", "task": task_fp, "n_orders": cfg.n_orders,
          "schedules": {k: list(s.sizes) for k, s in scheds.items()}}
    return host.stage("infill conditional NLL", "infill/nll.json", fp, compute, eval_subset=False)


def _ordered_nll_of(host: StageHost, task: InfillTask, sched: Schedule, order: str) -> list[float]:
    """Per example: ``-log q(truth | context) / n`` of the deterministic ``order`` sampler with ``sched`` (rows with
    ``n`` targets reveal ``sched.transfer_counts(n)`` per call, as generate() does), by teacher forcing."""
    from .policy import ordered_nll

    ex, out = task_examples(task), np.zeros(len(task))
    for n in sorted(set(task.n_targets.tolist())):
        keep = task.n_targets == n
        sizes = [int(c) for c in sched.transfer_counts(n).tolist() if c > 0]  # a call revealing nothing is no call
        res = ordered_nll(host.model, ex.select(keep), Schedule(sizes), order=order, batch_size=host.cfg.batch_size,
                          seed=host.cfg.seed)
        out[keep.numpy()] = res.per_example
        host.forward_rows += int(keep.sum()) * len(sizes)
    return out.tolist()


def _ordered_nll(host: StageHost, task: InfillTask, order: str, scheds: Mapping[str, Schedule],
                 task_fp: Mapping[str, object]) -> dict[str, list[float]]:
    """The conditional NLL of the truth under a ranked order, per schedule (cached per schedule's sizes)."""
    out = {}
    for key, sched in scheds.items():
        fp = {"what": "infill-ordered-nll", "task": task_fp, "order": order, "sizes": list(sched.sizes)}
        label = f"infill {order} conditional NLL {key}"
        out[key] = host.stage(label, f"infill/ordered-{_key(fp)}.json", fp,
                              lambda s=sched: {"nll": _ordered_nll_of(host, task, s, order)}, eval_subset=False)["nll"]
    return out


def _ordered_rows(task: InfillTask, order: str, nll: Mapping[str, list[float]], points: Mapping[str, tuple[str, int]],
                  calls: Mapping[tuple[str, int], tuple[float, float]]) -> list[ResultRow]:
    """``cond_nll`` rows of a ranked order (nats per token), paired with the baseline at the same budget."""
    rows = []
    for key, (name, t) in points.items():
        v = np.asarray(nll[key])
        base = nll.get(f"{BASELINE}@T={t}")
        paired = None if base is None else PairedDiff(BASELINE, *_est((v - np.asarray(base)).tolist()))
        c, cs = calls.get((name, t), (float(t), 0.0))
        rows.append(ResultRow("cond_nll", order, name, t, *_est(v.tolist()), calls=c, calls_se=cs, paired=paired,
                              task=task.name, per_unit=tuple(v.tolist())))
    return rows


def _fixed_points(cfg: EvalConfig, ctx: DecoderContext, order: str) -> tuple[dict[str, Schedule], dict[str, tuple[str, int]]]:
    """Every fixed schedule run under ``order``, keyed ``name@T=t``, and its (decoder, budget)."""
    scheds: dict[str, Schedule] = {}
    points: dict[str, tuple[str, int]] = {}
    for decoder in _decoders(cfg, order):
        for value in _points(cfg, decoder, ctx.n_tokens) if decoder.fixed else ():
            sched = decoder.rule(ctx, value)
            assert isinstance(sched, Schedule)
            key = f"{decoder.name}@T={int(value)}"
            scheds[key], points[key] = sched, (decoder.name, int(value))
    return scheds, points


def _est(values: list[float]) -> tuple[float, float]:
    return metrics.mean_se(values)


def _sample_rows(task: InfillTask, runs: list[_Run]) -> list[ResultRow]:
    """Recovery and exact match rows; fixed schedules paired with the baseline at the same budget and order."""
    base = {(r.order, r.value): r for r in runs if r.decoder.name == BASELINE}
    rows = []
    for r in runs:
        calls, calls_se = _est(r.scores["calls"])
        partner = base.get((r.order, r.value)) if r.decoder.fixed else None
        for metric in SAMPLE_METRICS:
            v, se = _est(r.scores[metric])
            paired = None
            if partner is not None:
                d = np.asarray(r.scores[metric]) - np.asarray(partner.scores[metric])
                paired = PairedDiff(BASELINE, *_est(d.tolist()))
            rows.append(ResultRow(metric, r.order, r.decoder.name, int(r.value) if r.decoder.fixed else None, v, se,
                                  calls=calls, calls_se=calls_se, paired=paired, task=task.name,
                                  parameter=None if r.decoder.fixed else r.value, per_unit=tuple(r.scores[metric]),
                                  calls_per_unit=tuple(r.scores["calls"])))
    return rows


def _nll_rows(task: InfillTask, logq: Mapping[str, list], points: Mapping[str, tuple[str, int]],
              calls: Mapping[tuple[str, int], tuple[float, float]]) -> list[ResultRow]:
    """Conditional NLL rows (per token, random order) with paired differences to the baseline."""
    n = task.n_targets.double().numpy()
    rows = []
    for key, (name, t) in points.items():
        lq = torch.tensor(logq[key], dtype=torch.float64)
        base = torch.tensor(logq[f"{BASELINE}@T={t}"], dtype=torch.float64) if f"{BASELINE}@T={t}" in logq else None
        for metric, per_ex in (("cond_nll", lambda x: -x.mean(1)), ("cond_nll_M", lambda x: -metrics.logmeanexp(x, 1))):
            v = per_ex(lq).numpy() / n
            paired = None if base is None else PairedDiff(BASELINE, *_est((v - per_ex(base).numpy() / n).tolist()))
            c, cs = calls.get((name, t), (float(t), 0.0))
            rows.append(ResultRow(metric, "random", name, t, *_est(v.tolist()), calls=c, calls_se=cs, paired=paired,
                                  task=task.name, per_unit=tuple(v.tolist())))
    return rows


def _sensitivity(task: InfillTask, runs: list[_Run], nll: Mapping[str, list], ordered: Mapping[str, Mapping[str, list]],
                 n_tokens: int, z: float) -> list[SensitivityCheck]:
    """Per (order, metric): 1 call against one call per token, paired on the examples."""
    out = []
    fixed = {(r.order, int(r.value)): r for r in runs if r.decoder.name == BASELINE}
    n = task.n_targets.double().numpy()
    for order in dict.fromkeys(r.order for r in runs):
        one, full = fixed.get((order, 1)), fixed.get((order, n_tokens))
        pairs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        if one is not None and full is not None:
            pairs = {m: (np.asarray(one.scores[m]), np.asarray(full.scores[m])) for m in SAMPLE_METRICS}
        key1, keyn = f"{BASELINE}@T=1", f"{BASELINE}@T={n_tokens}"
        if order == "random" and key1 in nll and keyn in nll:
            a, b = torch.tensor(nll[key1]), torch.tensor(nll[keyn])
            pairs["cond_nll"] = (-a.mean(1).numpy() / n, -b.mean(1).numpy() / n)
            pairs["cond_nll_M"] = (-metrics.logmeanexp(a, 1).numpy() / n, -metrics.logmeanexp(b, 1).numpy() / n)
        got = ordered.get(order, {})
        if key1 in got and keyn in got:
            pairs["cond_nll"] = (np.asarray(got[key1]), np.asarray(got[keyn]))
        for metric, (a1, an) in pairs.items():
            d, dse = _est((an - a1).tolist())
            zz = abs(d) / dse if dse > 0 else (math.inf if d != 0 else 0.0)
            out.append(SensitivityCheck(metric, Estimate(*_est(a1.tolist())), Estimate(*_est(an.tolist())), zz,
                                        bool(zz > z), order=order, task=task.name))
    return out


def run_infill(host: StageHost, task: InfillTask, full_curve: np.ndarray) -> InfillOutcome:
    """The whole stage: every (order, decoder, value) run, the conditional NLL, rows and sensitivity checks."""
    n_tokens = int(task.n_targets.max())
    src = ProfileSources(host, full_curve)
    ctxs = {order: _context(src, n_tokens, order) for order in host.cfg.infill_orders}
    summ = task.summary()
    task_fp = {**summ, "sha": hashlib.sha1(task.ids.numpy().tobytes() + task.target.numpy().tobytes()).hexdigest()[:16]}
    runs = _runs(host, task, ctxs, task_fp)
    random_order = "random" in host.cfg.infill_orders  # the conditional NLL is a random-order quantity
    scheds, points = _fixed_points(host.cfg, ctxs["random"], "random") if random_order else ({}, {})
    nll = _nll(host, task, scheds, task_fp)["logq"] if scheds else {}
    calls = {(r.order, r.decoder.name, int(r.value)): _est(r.scores["calls"]) for r in runs if r.decoder.fixed}
    at = lambda order: {(d, t): v for (o, d, t), v in calls.items() if o == order}
    rows = _sample_rows(task, runs) + _nll_rows(task, nll, points, at("random"))
    ordered: dict[str, dict[str, list[float]]] = {}
    for order in (o for o in host.cfg.infill_orders if o != "random" and host.cfg.ordered_nll):
        o_scheds, o_points = _fixed_points(host.cfg, ctxs[order], order)
        ordered[order] = _ordered_nll(host, task, order, o_scheds, task_fp)
        rows += _ordered_rows(task, order, ordered[order], o_points, at(order))
    summary = TaskSummary(task.name, task.description, len(task), tuple(summ["infilled"]), tuple(summ["given"]), n_tokens,
                          _predicted_calls(ctxs, host.cfg.infill_budgets))
    checks = _sensitivity(task, runs, nll, ordered, n_tokens, host.cfg.sensitivity_z)
    return InfillOutcome(rows, checks, summary)
