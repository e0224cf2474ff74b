"""How good is a schedule? Estimators with error bars, and exact values on oracles (docs/theory.md §3 and §6).

Model-based (need forward passes; every function batches rows and calls the model once per chunk):

* :func:`heldout_likelihood` -- for held-out sequences and several schedules at once: ``log q_sigma(x)``
  for ``M`` random orders per sequence (one forward per distinct block start, shared by every
  schedule: common random orders make schedule comparisons paired). Summaries: the held-out bound
  ``NLL_T`` (``M = 1``, mean over orders) and the tighter ``-log mean_m q_{sigma_m}(x)``
  (:func:`summarize_heldout`).
* :func:`path_kl` -- ``KL(q_T || p_N)`` on (order, sequence) pairs from samples of the T-step sampler
  (section 6.3), Rao-Blackwellised over the order inside each block and optionally subsampled over levels.
* :func:`pseudo_log_likelihood` -- a judge model's pseudo-log-likelihood of samples.
* :func:`conditional_likelihood` -- infilling (:mod:`mdm_sched.tasks`): ``log q_sigma(x_target | x_given)`` of the
  T-step random-order sampler for ``M`` random orders of each example's targets, every schedule at once
  (the conditional NLL of the truth: its bound and ``M``-order estimate, :func:`summarize_heldout`).

Infilling accuracy: :func:`infill_accuracy` (per-example recovery and whole-region exact match).

Model-free: :func:`kmer_js` (Jensen-Shannon divergence of k-mer spectra) and :func:`position_js`
(per-position residue frequencies), both with bootstrap standard errors.

Exact (tabular oracles): :func:`oracle_exact` (exact ``KL(pi || q)``, factorization error, the bound
and the theory's predictions), :func:`exact_order_path_kl` (exact path KL for a perfect model).

Units: nats; ``*_per_token`` values are divided by the number of generated tokens. JS divergences in bits.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .schedules import Schedule, check_int, cost, nll_bound

__all__ = [
    "mean_se",
    "logmeanexp",
    "masked_logprobs",
    "heldout_likelihood",
    "summarize_heldout",
    "HeldoutResult",
    "conditional_likelihood",
    "infill_accuracy",
    "path_kl",
    "PathKLResult",
    "pseudo_log_likelihood",
    "masked_token_loglik",
    "kmer_js",
    "position_js",
    "oracle_exact",
    "exact_order_path_kl",
]


# --------------------------------------------------------------------------------------------------
# small statistics helpers
# --------------------------------------------------------------------------------------------------

def mean_se(values: Any) -> tuple[float, float]:
    """Mean and standard error of the mean of a 1-D sample (SE is NaN for fewer than 2 values)."""
    v = np.asarray(torch.as_tensor(values, dtype=torch.float64).cpu(), dtype=np.float64).reshape(-1)
    if v.size == 0:
        raise ValueError("mean_se(values=...): empty sample")
    se = float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else float("nan")
    return float(v.mean()), se


def logmeanexp(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``log mean exp`` along ``dim``, computed stably."""
    return torch.logsumexp(x, dim=dim) - math.log(x.shape[dim])


def _wrap(model: Any):
    from .models import wrap  # lazy: keeps `import mdm_sched.metrics` light for oracle-only use

    return wrap(model)


def _check_ids(sequences: Any, argname: str = "sequences") -> torch.Tensor:
    if isinstance(sequences, (list, tuple)):
        lengths = {len(s) for s in sequences}
        if len(lengths) != 1:
            raise ValueError(f"{argname}: rows have different lengths {sorted(lengths)[:5]}; crop or filter them to "
                             "one length first (the harness uses a fixed generation length N)")
        sequences = torch.tensor([list(map(int, s)) for s in sequences], dtype=torch.long)
    if not isinstance(sequences, torch.Tensor) or sequences.ndim != 2 or sequences.is_floating_point():
        raise TypeError(f"{argname} must be a LongTensor [batch, length] of token ids (or a list of equal-length lists)")
    if sequences.shape[0] == 0 or sequences.shape[1] == 0:
        raise ValueError(f"{argname} is empty (shape {tuple(sequences.shape)})")
    return sequences.long()


# --------------------------------------------------------------------------------------------------
# the one model primitive
# --------------------------------------------------------------------------------------------------

def masked_logprobs(model: Any, tokens: torch.Tensor, visible: torch.Tensor, targets: torch.Tensor, *,
                    attention_mask: torch.Tensor | None = None, batch_size: int = 64) -> torch.Tensor:
    """``log p(x_j | x_visible)`` of the true token ``x_j`` at every target position, float64 ``[R, L]`` (0 elsewhere).

    Args:
        model: a :class:`~mdm_sched.models.MaskedLM` (or anything :func:`~mdm_sched.wrap` accepts, e.g. an oracle).
        tokens: LongTensor ``[R, L]``: the true tokens (content ids).
        visible: BoolTensor ``[R, L]``: positions shown to the model; every other position is masked.
        targets: BoolTensor ``[R, L]``: positions whose log-probability is returned (must be masked).
        attention_mask: optional ``[R, L]`` (1 = real token).
        batch_size: rows per forward pass.
    """
    mlm = _wrap(model)
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    if visible.shape != tokens.shape or targets.shape != tokens.shape:
        raise ValueError(f"visible {tuple(visible.shape)} and targets {tuple(targets.shape)} must have the shape of "
                         f"tokens {tuple(tokens.shape)}")
    if bool((visible & targets).any()):
        raise ValueError("targets must be masked positions: a visible position's token is given, not predicted")
    out = torch.zeros(tokens.shape, dtype=torch.float64)
    canvas_all = torch.where(visible, tokens, torch.full_like(tokens, mlm.mask_token_id))
    for start in range(0, tokens.shape[0], batch_size):
        sl = slice(start, start + batch_size)
        tgt = targets[sl]
        if not bool(tgt.any()):
            continue
        attn = attention_mask[sl] if attention_mask is not None else None
        logits = mlm.logits(canvas_all[sl], attn, positions=tgt)  # [P, V], row-major over tgt.nonzero()
        logp = torch.log_softmax(logits.double(), dim=-1).cpu()
        true = tokens[sl][tgt.cpu()].cpu()
        out[sl][tgt.cpu()] = logp.gather(1, true.unsqueeze(1)).squeeze(1)
    return out


# --------------------------------------------------------------------------------------------------
# held-out likelihood of the T-step sampler (bound and M-order estimate)
# --------------------------------------------------------------------------------------------------

@dataclass
class HeldoutResult:
    """``log q_sigma(x)`` for every held-out sequence and order, per schedule.

    Attributes:
        logq: ``{schedule name: float64 [B, M]}``, nats per sequence (sum over its N tokens).
        n_tokens: N (for infilling: the largest number of targets in a row, the schedules' length).
        n_forward_rows: model rows evaluated (cost).
        tokens_per_row: ``[B]`` tokens scored per sequence when they differ (infilling); ``None``: all ``n_tokens``.
    """

    logq: dict[str, torch.Tensor]
    n_tokens: int
    n_forward_rows: int
    tokens_per_row: torch.Tensor | None = None


def _schedule_dict(schedules: Any, n_tokens: int) -> dict[str, Schedule]:
    if isinstance(schedules, Schedule):
        schedules = [schedules]
    if isinstance(schedules, Mapping):
        items = list(schedules.items())
    elif isinstance(schedules, Sequence):
        items = []
        for s in schedules:
            if not isinstance(s, Schedule):
                raise TypeError(f"schedules must hold Schedule objects, got {type(s).__name__}")
            items.append((f"{s.name or 'schedule'}@T={s.steps}", s))
    else:
        raise TypeError("schedules must be a Schedule, a list of Schedules or a {name: Schedule} mapping")
    if not items:
        raise ValueError("schedules is empty")
    out: dict[str, Schedule] = {}
    for name, s in items:
        s = s if isinstance(s, Schedule) else Schedule(s)
        if s.n_tokens != n_tokens:
            raise ValueError(f"schedule {name!r} reveals {s.n_tokens} tokens but the sequences have length {n_tokens}; "
                             "build the schedules for the sequence length (or Schedule.rescale)")
        if name in out and out[name] != s:
            raise ValueError(f"two different schedules share the name {name!r}; pass a {{name: Schedule}} mapping")
        out[name] = s
    return out


def heldout_likelihood(model: Any, sequences: Any, schedules: Any, *, n_orders: int = 1,
                       generator: torch.Generator | None = None, batch_size: int = 64) -> HeldoutResult:
    """``log q_sigma(x)`` of the T-step random-order sampler on held-out sequences, for ``n_orders`` orders each.

    For each sequence ``x`` and order ``sigma`` (shared by all schedules), schedule ``k`` gives
    ``log q_sigma(x) = sum_t sum_{j in S_t} log p(x_j | x_{A_{t-1}})`` with ``S_t`` the ranks
    ``K_{t-1}..K_t - 1`` of ``sigma``. One forward per distinct block start ``K`` (the union over schedules)
    per (sequence, order): ``-mean log q / N`` is the held-out bound ``NLL_T`` of docs/theory.md §3 and
    ``-log mean_m q_{sigma_m}(x) / N`` tightens it toward the sampler's true held-out NLL (:func:`summarize_heldout`).

    Args:
        model: a MaskedLM / wrappable model.
        sequences: LongTensor ``[B, N]`` of held-out token ids (all of length N).
        schedules: Schedule, list of Schedules (named ``"{name}@T={steps}"``) or ``{name: Schedule}``.
        n_orders: ``M`` random orders per sequence.
        generator: source of the random orders.
        batch_size: rows per forward pass.
    """
    x = _check_ids(sequences)
    b, n = x.shape
    check_int(n_orders, "n_orders", minimum=1)
    scheds = _schedule_dict(schedules, n)
    levels = sorted({k for s in scheds.values() for k in s.cumulative[:-1]})
    level_index = {k: i for i, k in enumerate(levels)}
    ranks = torch.rand(n_orders, b, n, generator=generator).argsort(-1).argsort(-1)  # rank of each position
    # rows: (order, level, sequence); visible = rank < level, targets = every masked position
    lv = torch.tensor(levels, dtype=torch.long)
    r_rows = ranks.unsqueeze(1).expand(n_orders, len(levels), b, n).reshape(-1, n)
    k_rows = lv.view(1, -1, 1, 1).expand(n_orders, len(levels), b, 1).reshape(-1, 1)
    x_rows = x.unsqueeze(0).unsqueeze(0).expand(n_orders, len(levels), b, n).reshape(-1, n)
    visible = r_rows < k_rows
    table = masked_logprobs(model, x_rows, visible, ~visible, batch_size=batch_size)
    table = table.view(n_orders, len(levels), b, n)
    logq: dict[str, torch.Tensor] = {}
    for name, s in scheds.items():
        cum = s.cumulative
        # block start (as a level index) of every rank 0..N-1
        start_of_rank = torch.tensor([level_index[cum[t]] for t in range(s.steps) for _ in range(s.sizes[t])],
                                     dtype=torch.long)
        lvl = start_of_rank[ranks]  # [M, B, N]
        picked = table.permute(0, 2, 3, 1).gather(-1, lvl.unsqueeze(-1)).squeeze(-1)  # [M, B, N]
        logq[name] = picked.sum(-1).T.contiguous()  # [B, M]
    return HeldoutResult(logq=logq, n_tokens=n, n_forward_rows=int(x_rows.shape[0]))


def summarize_heldout(result: HeldoutResult, baseline: str | None = None) -> dict[str, dict[str, float]]:
    """Per schedule: ``bound`` (= mean over orders and sequences of ``-log q_sigma / N``) and ``bound_se``;
    ``nll_M`` (``-log mean_m q_{sigma_m}(x) / N``) and ``nll_M_se``; with ``baseline``, the paired
    differences ``bound_diff`` / ``nll_M_diff`` (schedule minus baseline) and their SEs (same orders, same sequences).
    SEs are over sequences. Per-token values divide each sequence by its own number of scored tokens."""
    n = result.n_tokens if result.tokens_per_row is None else result.tokens_per_row.double()
    out: dict[str, dict[str, float]] = {}
    per_seq = {name: (-lq.mean(1) / n, -logmeanexp(lq, 1) / n) for name, lq in result.logq.items()}
    if baseline is not None and baseline not in per_seq:
        raise ValueError(f"baseline={baseline!r} is not one of the schedules {sorted(per_seq)}")
    for name, (bound, tight) in per_seq.items():
        m1, s1 = mean_se(bound)
        m2, s2 = mean_se(tight)
        row = {"bound": m1, "bound_se": s1, "nll_M": m2, "nll_M_se": s2,
               "n_orders": int(result.logq[name].shape[1]), "n_sequences": int(result.logq[name].shape[0])}
        if baseline is not None:
            d1 = mean_se(bound - per_seq[baseline][0])
            d2 = mean_se(tight - per_seq[baseline][1])
            row.update(bound_diff=d1[0], bound_diff_se=d1[1], nll_M_diff=d2[0], nll_M_diff_se=d2[1])
        out[name] = row
    return out


# --------------------------------------------------------------------------------------------------
# infilling: accuracy against the truth, and the conditional likelihood of the truth
# --------------------------------------------------------------------------------------------------

def infill_accuracy(predicted: torch.Tensor, truth: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example recovery (fraction of target positions equal to the truth) and exact match (all of them), float64 ``[B]``.

    ``predicted``/``truth``: ``[B, L]`` token ids; ``target``: ``[B, L]`` bool, the infilled positions (each row >= 1).
    """
    p, t = torch.as_tensor(predicted).cpu(), torch.as_tensor(truth).cpu()
    tgt = torch.as_tensor(target).bool().cpu()
    if p.shape != t.shape or tgt.shape != t.shape:
        raise ValueError(f"predicted {tuple(p.shape)}, truth {tuple(t.shape)} and target {tuple(tgt.shape)} must have "
                         "one shape [B, L]")
    n = tgt.sum(1)
    if bool((n == 0).any()):
        raise ValueError("infill_accuracy: a row has no target position")
    right = ((p == t) & tgt).sum(1)
    return right.double() / n.double(), (right == n).double()


def _row_starts(cumulative: Sequence[int], n_nominal: int, n_row: int) -> list[int]:
    """Block starts of one row: ``floor(K_t n / N)`` (how :class:`~mdm_sched.rules.FixedSchedule` rescales per row)."""
    return [k * n_row // n_nominal for k in cumulative]


def _check_infill(tokens: Any, target: Any, attention_mask: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = _check_ids(tokens, "tokens")
    tgt = torch.as_tensor(target).bool().cpu()
    attn = torch.ones_like(x, dtype=torch.bool) if attention_mask is None else torch.as_tensor(attention_mask).bool().cpu()
    if tgt.shape != x.shape or attn.shape != x.shape:
        raise ValueError(f"target {tuple(tgt.shape)} and attention_mask {tuple(attn.shape)} must have the shape of tokens "
                         f"{tuple(x.shape)}")
    if bool((tgt & ~attn).any()):
        raise ValueError("target marks padded positions (attention_mask 0)")
    if bool((tgt.sum(1) == 0).any()):
        raise ValueError("a row has no target position: every example must infill something")
    return x.cpu(), tgt, attn


def conditional_likelihood(model: Any, tokens: Any, target: Any, schedules: Any, *, attention_mask: Any = None,
                           n_orders: int = 1, generator: torch.Generator | None = None,
                           batch_size: int = 64) -> HeldoutResult:
    """``log q_sigma(x_target | x_given)`` of the T-step random-order infilling sampler, ``M`` orders per example.

    Like :func:`heldout_likelihood` with the non-target positions always visible: an order ``sigma`` is a random
    permutation of the example's ``n`` targets (shared by every schedule), and a schedule built for ``N`` = the
    largest number of targets in a row reveals ``floor(K_t n / N) - floor(K_{t-1} n / N)`` of them at call ``t``
    (as :func:`~mdm_sched.generate` does for rows with fewer masks). ``-mean log q / n`` is the conditional
    bound, ``-log mean_m q_{sigma_m} / n`` its ``M``-order estimate (:func:`summarize_heldout`; per-token values
    divide by each example's ``n``). One forward per distinct block start per (example, order).

    Args:
        model: a MaskedLM / wrappable model.
        tokens: ``[B, L]`` true token ids (padding anywhere under ``attention_mask``).
        target: ``[B, L]`` bool, the positions to infill.
        schedules: Schedule(s) for ``N`` tokens, or ``{name: Schedule}``.
        attention_mask: ``[B, L]`` (1 = real token) for rows of different lengths.
    """
    x, tgt, attn = _check_infill(tokens, target, attention_mask)
    check_int(n_orders, "n_orders", minimum=1)
    n_row = tgt.sum(1).tolist()
    n_nom = max(n_row)
    scheds = _schedule_dict(schedules, n_nom)
    b, length = x.shape
    ranks = torch.rand(n_orders, b, length, generator=generator).masked_fill(~tgt, 2.0).argsort(-1).argsort(-1)
    starts = {name: [_row_starts(s.cumulative, n_nom, n) for n in n_row] for name, s in scheds.items()}
    row_of: dict[tuple[int, int, int], int] = {}
    for m in range(n_orders):
        for i in range(b):
            for k in sorted({k for st in starts.values() for k in st[i][:-1]}):
                row_of[(m, i, k)] = len(row_of)
    keys = torch.tensor(list(row_of), dtype=torch.long).view(-1, 3)
    rm, ri, rk = keys.unbind(1)
    revealed = tgt[ri] & (ranks[rm, ri] < rk.unsqueeze(1))
    visible = (attn[ri] & ~tgt[ri]) | revealed
    table = masked_logprobs(model, x[ri], visible, tgt[ri] & ~visible,
                            attention_mask=attn[ri] if attention_mask is not None else None, batch_size=batch_size)
    logq: dict[str, torch.Tensor] = {}
    for name, per_row in starts.items():
        out = torch.zeros(b, n_orders, dtype=torch.float64)
        for i, st in enumerate(per_row):
            pos = tgt[i].nonzero().squeeze(1)
            bounds, first = torch.tensor(st[1:]), torch.tensor(st)
            for m in range(n_orders):
                level = first[torch.searchsorted(bounds, ranks[m, i, pos], right=True)]  # block start of each rank
                rows = torch.tensor([row_of[(m, i, int(k))] for k in level.tolist()], dtype=torch.long)
                out[i, m] = table[rows, pos].sum()
        logq[name] = out
    return HeldoutResult(logq=logq, n_tokens=n_nom, n_forward_rows=len(row_of),
                         tokens_per_row=torch.tensor(n_row, dtype=torch.long))


# --------------------------------------------------------------------------------------------------
# path KL from the T-step sampler to the N-step sampler (docs/theory.md §6, item 3)
# --------------------------------------------------------------------------------------------------

@dataclass
class PathKLResult:
    """Per-sample estimates of ``log q_T(sigma, x) - log p_N(sigma, x)`` (nats per sequence).

    ``mean``/``se`` summarise ``per_sample``; ``per_token``/``per_token_se`` divide by the number of
    generated tokens. ``levels_used`` is the number of within-block levels evaluated per sample
    (``None`` = all of them, the estimator is then exact up to the within-block order draws).
    """

    per_sample: torch.Tensor
    mean: float
    se: float
    per_token: float
    per_token_se: float
    n_generated: int
    levels_used: int | None
    n_forward_rows: int


def _path_kl_levels(sorted_rs: torch.Tensor, n_levels: int | None, generator: torch.Generator | None
                    ) -> tuple[torch.Tensor, torch.Tensor, int | None]:
    """Which (sample, level) pairs path KL evaluates, their weights, and the levels per sample (None = all).

    Level ``i`` (0-based over all positions, given ones first) is non-trivial iff it is not the first of its block.
    """
    bsz, length = sorted_rs.shape
    nontrivial = torch.zeros_like(sorted_rs, dtype=torch.bool)
    nontrivial[:, 1:] = (sorted_rs[:, 1:] == sorted_rs[:, :-1]) & (sorted_rs[:, 1:] > 0)
    if n_levels is None:
        return nontrivial, torch.ones(bsz, dtype=torch.float64), None
    check_int(n_levels, "n_levels", minimum=1, hint=" or None (all levels)")
    n_nontrivial = nontrivial.sum(1)
    keys = torch.rand(bsz, length, generator=generator).masked_fill(~nontrivial, 2.0)
    take = torch.arange(length).unsqueeze(0) < torch.clamp(n_nontrivial, max=n_levels).unsqueeze(1)
    chosen = torch.zeros_like(nontrivial).scatter_(1, keys.argsort(1), take)
    return chosen, n_nontrivial.double() / chosen.sum(1).clamp(min=1).double(), n_levels


def path_kl(model: Any, sequences: torch.Tensor, reveal_step: torch.Tensor, token_logprobs: torch.Tensor, *,
            n_levels: int | None = None, attention_mask: torch.Tensor | None = None,
            generator: torch.Generator | None = None, batch_size: int = 64) -> PathKLResult:
    """Estimate ``KL(q_T || p_N)`` from samples of the T-step random-order sampler (e.g. a :class:`GenerationOutput`).

    For a sample with blocks ``S_t`` (positions sharing a ``reveal_step``; 0 = given, always visible) and an
    order ``sigma`` drawn uniformly inside each block, ``log q_T - log p_N = sum_i d_i`` over the levels ``i``
    that are not block starts, ``d_i = log p(x_{sigma_i} | x_{A_{t-1}}) - log p(x_{sigma_i} | x_{sigma_<i})``
    (a block start contributes 0). The first term is the sampler's own ``token_logprobs``. Each ``d_i`` is
    averaged over the positions still unrevealed in its block (Rao-Blackwellisation over ``sigma_i``): one
    forward per level. ``n_levels=m`` evaluates ``m`` levels per sample drawn without replacement and scales
    by (number of levels)/m: unbiased, cheaper, noisier. The mean over samples estimates the path KL (an
    upper bound on the KL between the T-step and N-step sequence laws); only valid for ``order="random"``.

    Args:
        model: the model that generated the samples (its temperature-1 conditionals define ``p_N``).
        sequences, reveal_step, token_logprobs: ``[B, L]`` from :class:`~mdm_sched.sampling.GenerationOutput`.
        n_levels: levels per sample (``None``: all).
        attention_mask: ``[B, L]`` for padded prompts.
    """
    x = _check_ids(sequences)
    bsz, length = x.shape
    rs = torch.as_tensor(reveal_step).long().cpu()
    tlp = torch.as_tensor(token_logprobs, dtype=torch.float64).cpu()
    if rs.shape != x.shape or tlp.shape != x.shape:
        raise ValueError(f"reveal_step {tuple(rs.shape)} and token_logprobs {tuple(tlp.shape)} must have the shape "
                         f"of sequences {tuple(x.shape)} (pass GenerationOutput.sequences/.reveal_step/.token_logprobs)")
    attn = torch.ones_like(x, dtype=torch.bool) if attention_mask is None else torch.as_tensor(attention_mask).bool().cpu()
    rs = rs.masked_fill(~attn, 0)
    n_gen = (rs > 0).sum(1)
    if bool((n_gen == 0).any()):
        raise ValueError("path_kl: a row has no generated position (reveal_step all 0)")
    sorted_rs = rs.sort(1).values
    chosen, weight, used = _path_kl_levels(sorted_rs, n_levels, generator)
    row_idx, lvl = chosen.nonzero(as_tuple=True)  # one model row per chosen (sample, level)
    per_sample = torch.zeros(bsz, dtype=torch.float64)
    n_rows = int(row_idx.numel())
    if n_rows:
        beta = sorted_rs[row_idx, lvl]  # block (call index) of level i
        rs_r = rs[row_idx]
        before = (rs_r < beta.unsqueeze(1)).sum(1)  # positions revealed before the block (incl. given)
        r_in_block = lvl - before  # how many of the block are already revealed at level i (>= 1)
        in_block = rs_r == beta.unsqueeze(1)
        u = torch.rand(n_rows, length, generator=generator).masked_fill(~in_block, 2.0)
        block_rank = u.argsort(1).argsort(1)
        visible = (rs_r < beta.unsqueeze(1)) | (in_block & (block_rank < r_in_block.unsqueeze(1)))
        visible &= attn[row_idx]
        targets = in_block & ~visible
        logp = masked_logprobs(model, x[row_idx], visible, targets,
                               attention_mask=(attn[row_idx] if attention_mask is not None else None),
                               batch_size=batch_size)
        diff = ((tlp[row_idx] - logp) * targets).sum(1) / targets.sum(1).double()
        per_sample.index_add_(0, row_idx, diff)
        per_sample *= weight
    mean, se = mean_se(per_sample)
    n_tok = float(n_gen.double().mean())
    return PathKLResult(per_sample=per_sample, mean=mean, se=se, per_token=mean / n_tok, per_token_se=se / n_tok,
                        n_generated=round(n_tok), levels_used=used, n_forward_rows=n_rows)


# --------------------------------------------------------------------------------------------------
# a judge model's pseudo-log-likelihood
# --------------------------------------------------------------------------------------------------

def pseudo_log_likelihood(model: Any, sequences: Any, *, n_positions: int | None = None,
                          generator: torch.Generator | None = None, batch_size: int = 64) -> torch.Tensor:
    """Per-sequence mean pseudo-log-likelihood ``(1/N) sum_j log p(x_j | x_{-j})`` (nats per token), float64 ``[B]``.

    One forward per (sequence, position); ``n_positions=m`` averages over ``m`` positions drawn without
    replacement instead (unbiased for the per-token mean, noisier). Pass token ids of the *judge* model
    (re-encode text produced by another model with ``judge.encode``).
    """
    x = _check_ids(sequences)
    b, n = x.shape
    if n_positions is None or n_positions >= n:
        pos = torch.arange(n).repeat(b)
        rows = torch.arange(b).repeat_interleave(n)
    else:
        check_int(n_positions, "n_positions", minimum=1, hint=" or None (all positions)")
        pos = torch.rand(b, n, generator=generator).argsort(1)[:, :n_positions].reshape(-1)
        rows = torch.arange(b).repeat_interleave(n_positions)
    targets = torch.zeros(rows.numel(), n, dtype=torch.bool)
    targets[torch.arange(rows.numel()), pos] = True
    logp = masked_logprobs(model, x[rows], ~targets, targets, batch_size=batch_size).sum(1)
    per_seq = torch.zeros(b, dtype=torch.float64).index_add_(0, rows, logp)
    return per_seq / torch.bincount(rows, minlength=b).double()


def masked_token_loglik(model: Any, sequences: Any, *, mask_fraction: float = 0.15, n_masks: int = 1,
                        generator: torch.Generator | None = None, batch_size: int = 64) -> torch.Tensor:
    """Per-sequence mean ``log p(x_j | x_visible)`` over randomly masked positions (a judge score), float64 ``[B]``.

    Each of ``n_masks`` forwards per sequence masks ``round(mask_fraction * N)`` (at least 1) uniformly chosen
    positions and scores all of them: BERT's masked-LM objective at that rate, ``~mask_fraction * N`` times
    cheaper per scored token than :func:`pseudo_log_likelihood`, which it approaches as the fraction shrinks.
    """
    x = _check_ids(sequences)
    b, n = x.shape
    if not (isinstance(mask_fraction, (int, float)) and 0 < mask_fraction < 1):
        raise ValueError(f"mask_fraction must be in (0, 1), got {mask_fraction!r}")
    check_int(n_masks, "n_masks", minimum=1)
    k = max(1, round(mask_fraction * n))
    rows = torch.arange(b).repeat(n_masks)
    ranks = torch.rand(rows.numel(), n, generator=generator).argsort(1).argsort(1)
    targets = ranks < k
    logp = masked_logprobs(model, x[rows], ~targets, targets, batch_size=batch_size).sum(1) / k
    return torch.zeros(b, dtype=torch.float64).index_add_(0, rows, logp) / n_masks


# --------------------------------------------------------------------------------------------------
# model-free distances between samples and held-out data
# --------------------------------------------------------------------------------------------------

def _js_bits(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence (bits) between rows of two count/probability matrices ``[..., D]``."""
    p = p / p.sum(-1, keepdim=True).clamp_min(1e-300)
    q = q / q.sum(-1, keepdim=True).clamp_min(1e-300)
    m = 0.5 * (p + q)

    def kl(a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return torch.where(a > 0, a * (a.clamp_min(1e-300).log() - c.clamp_min(1e-300).log()), torch.zeros_like(a)).sum(-1)

    return (0.5 * kl(p, m) + 0.5 * kl(q, m)) / math.log(2.0)


def _bootstrap_weights(n: int, n_boot: int, generator: torch.Generator | None) -> torch.Tensor:
    """Multinomial resampling counts ``[n_boot, n]`` (each row sums to n)."""
    idx = torch.randint(0, n, (n_boot, n), generator=generator)
    return torch.zeros(n_boot, n, dtype=torch.float64).scatter_add_(1, idx, torch.ones(n_boot, n, dtype=torch.float64))


def _kmer_windows(x: torch.Tensor, k: int, lut: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The k-mers of every row whose tokens are all counted (``lut >= 0``): ``[M, k]`` vocabulary indices and
    ``[M]`` the row each comes from."""
    y = lut[x]
    b, n = y.shape
    if n < k:
        raise ValueError(f"k={k} is longer than the sequences (length {n})")
    windows = y.unfold(1, k, 1).reshape(-1, k)  # [B * (n-k+1), k]
    rows = torch.arange(b).repeat_interleave(n - k + 1)
    valid = (windows >= 0).all(-1)
    return windows[valid], rows[valid]


def _kmer_counts(samples: torch.Tensor, reference: torch.Tensor, k: int,
                 vocab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse per-sequence k-mer counts of both sets over the k-mers either contains: ``[U, B_s]`` and ``[U, B_r]``
    (float64 COO; ``U`` distinct k-mers seen, never the dense ``|vocab|^k``), over the tokens in ``vocab``."""
    top = int(max(int(samples.max()), int(reference.max()), int(vocab.max())))
    lut = torch.full((top + 1,), -1, dtype=torch.long)
    lut[vocab] = torch.arange(vocab.numel())
    ws, rs = _kmer_windows(samples, k, lut)
    wr, rr = _kmer_windows(reference, k, lut)
    if ws.shape[0] + wr.shape[0] == 0:
        raise ValueError("no k-mer of the samples or the reference lies within vocab")
    _, code = torch.unique(torch.cat([ws, wr]), dim=0, return_inverse=True)
    u = int(code.max()) + 1

    def counts(c: torch.Tensor, rows: torch.Tensor, b: int) -> torch.Tensor:
        return torch.sparse_coo_tensor(torch.stack([c, rows]), torch.ones(c.numel(), dtype=torch.float64),
                                       (u, b), check_invariants=False).coalesce()

    return counts(code[:ws.shape[0]], rs, samples.shape[0]), counts(code[ws.shape[0]:], rr, reference.shape[0])


def _bootstrap_js(cs: torch.Tensor, cr: torch.Tensor, n_boot: int, generator: torch.Generator | None) -> torch.Tensor:
    """JS (bits) of ``n_boot`` bootstrap resamples of both sets' sequences, a chunk of resamples at a time."""
    ws = _bootstrap_weights(cs.shape[1], n_boot, generator)
    wr = _bootstrap_weights(cr.shape[1], n_boot, generator)
    chunk = max(1, (1 << 22) // max(cs.shape[0], 1))  # about 32 MB of float64 per pooled matrix
    out = [_js_bits(torch.sparse.mm(cs, ws[i:i + chunk].T).T, torch.sparse.mm(cr, wr[i:i + chunk].T).T)
           for i in range(0, n_boot, chunk)]
    return torch.cat(out)


def _vocab_of(samples: torch.Tensor, reference: torch.Tensor, vocab: Any) -> torch.Tensor:
    if vocab is None:
        return torch.unique(torch.cat([samples.reshape(-1), reference.reshape(-1)]))
    return torch.as_tensor(list(vocab) if not isinstance(vocab, torch.Tensor) else vocab, dtype=torch.long).unique()


def kmer_js(samples: Any, reference: Any, k: int, *, vocab: Any = None, n_boot: int = 200,
            generator: torch.Generator | None = None) -> tuple[float, float]:
    """Jensen-Shannon divergence (bits) between the pooled k-mer spectra of ``samples`` and ``reference``,
    with a bootstrap SE (both sets resampled by sequence).

    ``vocab``: the token ids that count (default: every id present). Note the plug-in estimate is biased
    upward by finite samples: compare schedules at equal sample sizes, and against the N-step sampler.
    Counts are sparse (only the k-mers that occur), so any vocabulary size works.
    """
    s = _check_ids(samples, "samples")
    r = _check_ids(reference, "reference")
    check_int(k, "k", minimum=1)
    v = _vocab_of(s, r, vocab)
    cs, cr = _kmer_counts(s, r, k, v)
    js = float(_js_bits(torch.sparse.sum(cs, 1).to_dense(), torch.sparse.sum(cr, 1).to_dense()))
    if n_boot < 2:
        return js, float("nan")
    return js, float(_bootstrap_js(cs, cr, n_boot, generator).std(unbiased=True))


def position_js(samples: Any, reference: Any, *, vocab: Any = None, n_boot: int = 200,
                generator: torch.Generator | None = None) -> tuple[float, float]:
    """Mean over positions of the JS divergence (bits) between per-position token frequencies of two aligned,
    equal-length sets of sequences; bootstrap SE over sequences."""
    s = _check_ids(samples, "samples")
    r = _check_ids(reference, "reference")
    if s.shape[1] != r.shape[1]:
        raise ValueError(f"position_js needs aligned sequences of one length: samples have {s.shape[1]} tokens, "
                         f"reference {r.shape[1]}")
    v = _vocab_of(s, r, vocab)

    def onehot(x: torch.Tensor) -> torch.Tensor:  # [B, N*D]
        lut = torch.full((int(max(int(x.max()), int(v.max()))) + 1,), -1, dtype=torch.long)
        lut[v] = torch.arange(v.numel())
        y = lut[x]
        oh = torch.nn.functional.one_hot(y.clamp(min=0), v.numel()).double() * (y >= 0).unsqueeze(-1)
        return oh.reshape(x.shape[0], -1)

    os_, or_ = onehot(s), onehot(r)
    n, d = s.shape[1], v.numel()
    js = float(_js_bits(os_.sum(0).view(n, d), or_.sum(0).view(n, d)).mean())
    if n_boot < 2:
        return js, float("nan")
    bs = (_bootstrap_weights(os_.shape[0], n_boot, generator) @ os_).view(n_boot, n, d)
    br = (_bootstrap_weights(or_.shape[0], n_boot, generator) @ or_).view(n_boot, n, d)
    return js, float(_js_bits(bs, br).mean(-1).std(unbiased=True))


# --------------------------------------------------------------------------------------------------
# exact values on tabular oracles
# --------------------------------------------------------------------------------------------------

def oracle_exact(oracle: Any, schedule: Schedule | Sequence[int], model: Any = None) -> dict[str, float]:
    """Exact numbers for a :class:`~mdm_sched.oracle.TabularOracle` law ``pi`` and sampler ``q`` (model = ``oracle``
    unless given), all in nats per sequence unless ``_per_token``:

    ``kl`` = KL(pi || q) exact; ``nll`` = -E_pi log q = H + kl; ``bound`` = sum_t k_t CE(K_{t-1}) (so
    ``bound - H`` = E_order KL(pi || q_order) >= kl); ``fact_error`` = E_fact from the data's entropy profile;
    ``learning_error`` = sum_t k_t l(K_{t-1}); ``fact_bound`` = (k_max - 1) f(N-1) (dimension-free bound).
    """
    sched = schedule if isinstance(schedule, Schedule) else Schedule(schedule)
    n = oracle.n_tokens
    g = np.asarray(oracle.entropy_profile(), dtype=np.float64)
    ce = g if model is None else np.asarray(oracle.ce_profile(model), dtype=np.float64)
    h = float(oracle.entropy())
    kl = float(oracle.kl(sched, model))
    bound = nll_bound(ce, sched) * n
    e_fact = cost(g, sched)
    starts = np.asarray(sched.cumulative[:-1])
    learning = float(np.sum(np.asarray(sched.sizes) * (ce - g)[starts]))
    return {
        "entropy": h, "kl": kl, "nll": h + kl, "nll_per_token": (h + kl) / n,
        "bound": bound, "bound_per_token": bound / n, "order_kl": bound - h,
        "fact_error": e_fact, "learning_error": learning,
        "fact_bound": (sched.max_size - 1) * float(g[0] - g[-1]),
    }


def exact_order_path_kl(oracle: Any, schedule: Schedule | Sequence[int], model: Any = None) -> float:
    """Exact path KL ``E_sigma KL(q_sigma || p_sigma)`` (nats per sequence) on a small tabular oracle, by
    enumerating every order: ``q_sigma`` the T-step factorised law, ``p_sigma`` the N-step chain rule along ``sigma``.
    For the true conditionals (``model=None``) ``p_sigma = pi``. Cost: N! orders x V^N sequences (tests only)."""
    sched = schedule if isinstance(schedule, Schedule) else Schedule(schedule)
    model = oracle if model is None else model
    n = oracle.n_tokens
    if math.factorial(n) * oracle.vocab_size ** n > 2_000_000:
        raise ValueError("exact_order_path_kl enumerates N! orders x V^N sequences; use a smaller oracle")
    xs = oracle.all_sequences()
    total = 0.0
    perms = list(itertools.permutations(range(n)))
    for perm in perms:
        ranks = torch.empty(n, dtype=torch.long)
        ranks[list(perm)] = torch.arange(n)
        log_q = torch.zeros(xs.shape[0], dtype=torch.float64)
        log_p = torch.zeros(xs.shape[0], dtype=torch.float64)
        cum = sched.cumulative
        for t in range(sched.steps):
            vis = (ranks < cum[t]).expand(xs.shape[0], n)
            cond = model.conditionals(xs, vis).gather(-1, xs.unsqueeze(-1)).squeeze(-1).clamp_min(1e-300).log()
            block = (ranks >= cum[t]) & (ranks < cum[t + 1])
            log_q += cond[:, block].sum(-1)
        for i in range(n):
            vis = (ranks < i).expand(xs.shape[0], n)
            cond = model.conditionals(xs, vis).gather(-1, xs.unsqueeze(-1)).squeeze(-1).clamp_min(1e-300).log()
            log_p += cond[:, perm[i]]
        q = log_q.exp()
        total += float((q * (log_q - log_p)).sum())
    return total / len(perms)
