"""Ordering-aware (policy) profiles: the losses an ordered sampler actually incurs, measured by teacher forcing.

**The sampler.** An ordered sampler (``order="confidence"``, ``"margin"``, ``"entropy"``) reveals, at a state
``S`` (the visible positions, context included) with ``K`` of ``N`` generated positions visible, the ``k``
top-ranked masked positions and draws them independently from the model's conditionals ``p_j(. | x_S)``.
The bound below is for the *deterministic counterpart* of the rule: positions are ranked by a function of
the model's temperature-1 distributions at the state -- ``confidence``: the largest probability
``max_v p_j(v | x_S)``; ``margin``: ``p_(1) - p_(2)``; ``entropy``: ``-H(p_j)`` -- ties to the lower column.
(``generate``'s margin and entropy orders are exactly this; its confidence order ranks by the probability of
the *drawn* token, which is this rule at temperature 0 and differs from it at temperature 1.)

**An identity, not just a bound.** The selection ``B_t`` of call ``t`` is a function of ``x_{S_{t-1}}`` only,
so a finished sequence ``x`` determines its own path: ``S_0`` = the context, ``B_1`` = the top ``k_1`` at
``S_0``, ``S_1 = S_0 u B_1``, ``B_2`` = the top ``k_2`` at ``x_{S_1}``, ... Exactly one path produces ``x``, so
the T-call sampler's law is ``q_k(x) = prod_t prod_{j in B_t(x)} p(x_j | x_{S_{t-1}(x)})`` and, for held-out
``x ~ pi`` (teacher forcing: reveal the *true* tokens along the rule's own choices),

    E_pi[-log q_k(x)] = H(pi) + KL(pi || q_k) = E_pi sum_t sum_{r <= k_t} l_r(S^k_{t-1}(x), x),

with ``l_r(S, x) = -log p(x_j | x_S)`` at the ``r``-th ranked masked position ``j`` of state ``S``. For
``k = (1, ..., 1)`` it is the exact NLL of the N-call ordered sampler. (A rule that scores drawn tokens adds
``-log P(selection | state)`` and only ``<=`` holds, THEORY.md section 7.)

**What is measured and what the DP optimises.** :func:`estimate_policy` walks the one-token-per-call path
``S^1`` on held-out data (reveal the true token of the top-ranked position, re-rank: ``N`` forwards per
example) and records, at the levels ``K``, the two-index table ``CE_r(K) = E l_r(S^1_K(x), x)``; its rank-1
column ``CE_1(K)`` is the *policy profile*. A schedule's predicted loss is
``L(k) = sum_t C(K_{t-1}, K_t)`` with block cost ``C(a, b) = sum_{r <= b-a} CE_r(a)``; it equals the exact
``E[-log q_k]`` when the state a schedule reaches at count ``K_{t-1}`` is the one-per-call path's (always
for ``k = (1, ..., 1)``; otherwise the top ``k`` at once versus one at a time with re-ranking can pick other
positions: that is the approximation, checked by exact enumeration in the tests). So
``NLL_T(k) = L(k) / N`` predicts the ordered T-call sampler's held-out NLL and
``J(k) = L(k) - L(1, ..., 1)`` its excess over the N-call ordered sampler, ``KL(pi || q_k) - KL(pi || q_1)``;
:func:`mdm_sched.schedules.optimal` minimises ``J`` exactly over schedules with ``T`` calls. Random order is
the case ``CE_r(K) = CE(K)`` for all ``r``, where ``C(a, b) = (b - a) CE(a)`` and the DP is THEORY.md section 4's.
``C`` is Monge iff the ``j``-th revealed token's loss ``CE_{j-a}(a)`` does not rise when its call starts later
(larger ``a``); measured tables need not be, so the policy DP is the exact ``O(T N^2)`` one, without the Monge
shortcut. Unlike random order, ``CE_r(K)`` grows with ``r`` (worse-ranked positions are harder), which is why
revealing many tokens per call costs more under an ordered sampler than the random-order profile predicts.

**Estimation details.** The walk's forward at every visible count ``K`` records the per-rank losses, pooled
into the nearest level (within half the gap to the neighbouring level: :func:`level_bins`,
``metadata["pooled_counts"]``), so all ``N`` forwards of a walk contribute and the table's noise drops by about
``sqrt(N / levels)`` (a small bias where the table changes fast within a level's range; none when the levels
are every count, the default for ``N <= 48``). The table is stored at the levels (default: 48 visible counts,
denser at both ends) as ``rank_ce [levels, N]`` (NaN past the ``N - K`` masked positions); :meth:`InformationProfile.fitted_ranks`
makes each level non-decreasing in ``r`` (isotonic), :func:`block_costs` interpolates the cumulative sums
linearly between levels (in visible fraction) and ranks (in rank fraction for another length). Context
(prompt, infilling frame) is visible in every state; every example must generate the same number of positions
(pad responses, as LLaDA/Dream do with EOS). Rounds, checkpoints and processes work as in
:mod:`mdm_sched.estimate`: a whole example walk is the unit of work, dealt round-robin, so K processes give
exactly the 1-process profile. ``metadata["state_overlap"]`` measures how much the states depend on the
schedule that reached them (THEORY.md section 7): at each level ``K``, the mean fraction of the path's ``K``
visible positions that are among the top ``K`` of the first state (1: one block of ``K`` from the start would
reach the same state). :func:`ordered_nll` gives the exact held-out NLL of the ordered T-call sampler for any
schedule (``T`` forwards per example), to check a prediction. **Self profile**: the same table on samples
of the model's own N-call ordered sampler ``q_1`` (:func:`sample_walks`, :mod:`mdm_sched.self_profile`) gives
``L(1..1) = H(q_1)`` and ``J(k) = KL(q_1 || q_k)`` up to the same state approximation.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .draw import SamplingParams, draw_tokens
from .estimate import Accumulator
from .masking import Rows, choose_blocks

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .distributed import DistContext
    from .estimate import _Heldout, _Progress, _Settings
    from .models import MaskedLM
    from .profile import InformationProfile

__all__ = ["POLICY_ORDERS", "position_scores", "block_costs", "level_bins", "walk", "sample_walks", "estimate_policy",
           "RankAccumulator", "ordered_nll", "OrderedNLL"]

#: Orders with a policy profile (random order has the ordinary profile).
POLICY_ORDERS = ("confidence", "margin", "entropy")


def position_scores(logp: torch.Tensor, order: str) -> torch.Tensor:
    """Ranking scores ``[P]`` (higher reveals first) from log-probabilities ``[P, V]`` of the temperature-1
    model: the deterministic counterpart of each order (see the module docstring)."""
    if order == "confidence":
        return logp.max(dim=-1).values
    if order == "margin":
        top = logp.topk(min(2, logp.shape[-1]), dim=-1).values.exp()
        return top[:, 0] - top[:, 1] if top.shape[1] > 1 else top[:, 0]
    if order == "entropy":
        return -torch.special.entr(logp.exp()).sum(-1)
    raise ValueError(f"order={order!r} has no policy profile; choose one of {', '.join(POLICY_ORDERS)}")


def block_costs(ranks: np.ndarray, levels: np.ndarray, n_measured: int, n: int) -> np.ndarray:
    """Block costs ``C [n + 1, n + 1]``: ``C[a, b] = sum_{r <= b-a} CE_r(a)`` (``inf`` where ``b <= a``).

    ``ranks`` is the fitted table ``[levels, n_measured]``. Each level's cumulative sum over ranks is extended
    past its ``n_measured - K`` masked positions with its last value, evaluated at ``k n_measured / n`` ranks
    (scaled by ``n / n_measured``: the same fraction of a longer sequence holds proportionally more
    tokens), and interpolated linearly between levels at the visible fraction ``a / n`` (constant beyond the
    first and last level). At the measured length and a measured level this is the table itself.
    """
    n0, lv = int(n_measured), np.asarray(levels, dtype=np.int64)
    cum = np.zeros((lv.size, n0 + 1))
    for j, k in enumerate(lv.tolist()):
        row = ranks[j, :n0 - k]
        cum[j, 1:n0 - k + 1] = np.cumsum(row)
        cum[j, n0 - k + 1:] = cum[j, n0 - k] + row[-1] * np.arange(1, k + 1)
    kappa = np.arange(n + 1) * (n0 / n)
    at = np.stack([np.interp(kappa, np.arange(n0 + 1), c) for c in cum]) * (n / n0)  # [levels, k = 0..n]
    u, uj = np.arange(n + 1) / n, lv / n0
    lo = np.clip(np.searchsorted(uj, u, side="right") - 1, 0, lv.size - 1)
    hi = np.minimum(lo + 1, lv.size - 1)
    w = np.where(hi > lo, (u - uj[lo]) / np.where(hi > lo, uj[hi] - uj[lo], 1.0), 0.0).clip(0.0, 1.0)
    per_start = (1.0 - w)[:, None] * at[lo] + w[:, None] * at[hi]  # [a, k]
    a, b = np.triu_indices(n + 1, 1)
    out = np.full((n + 1, n + 1), np.inf)
    out[a, b] = per_start[a, b - a]
    return out


# ------------------------------------------------------------------------------------------------
# The walk: one token per call along the rule's own order
# ------------------------------------------------------------------------------------------------

def level_bins(levels: np.ndarray, n: int) -> np.ndarray:
    """The level each visible count ``K = 0..n-1`` is pooled into (``-1``: none): its nearest level, if within half
    the gap to that level's neighbour on that side (the outer levels reach as far out as in)."""
    lv = np.asarray(levels, dtype=np.int64)
    k = np.arange(n)
    if lv.size == 0:
        return np.full(n, -1)
    j = np.abs(k[:, None] - lv[None, :]).argmin(1)  # nearest; a tie goes to the lower level
    gaps = np.diff(lv).astype(np.float64)
    below = np.concatenate([gaps[:1] if gaps.size else [0.0], gaps]) / 2
    above = np.concatenate([gaps, gaps[-1:] if gaps.size else [0.0]]) / 2
    d = k - lv[j]
    ok = (d == 0) | ((d < 0) & (-d <= below[j])) | ((d > 0) & (d <= above[j]))
    return np.where(ok, j, -1)


@dataclass
class WalkResult:
    """What one batch walk recorded per level (every visible count pooled into its level, :func:`level_bins`):
    per-row rank-1 ``(ce, entropy, accuracy)`` averaged over the level's counts ``[levels, r, 3]``, per-rank CE
    summed over rows and counts ``[levels, n_eff]`` with the number of terms ``rank_counts``, the overlap of each
    state with the top ``K`` of the first state (per-row means, summed over rows) ``[levels]``; each row's
    teacher-forced loss along the path ``[r]`` (nats); the final ids ``[r, W]`` (the samples, when sampling)."""

    stats: torch.Tensor
    rank_sums: torch.Tensor
    rank_counts: torch.Tensor
    overlap: torch.Tensor
    path_loss: torch.Tensor
    ids: torch.Tensor


class _Recorder:
    """Per-level sums of a teacher-forced walk (see :class:`WalkResult`)."""

    def __init__(self, levels: np.ndarray, n_eff: int, r: int) -> None:
        self.bin = level_bins(levels, n_eff)
        n_lv = np.asarray(levels).size
        self.stats = torch.zeros(n_lv, r, 3, dtype=torch.float64)
        self.steps = torch.zeros(n_lv, dtype=torch.float64)
        self.rank_sums = torch.zeros(n_lv, n_eff, dtype=torch.float64)
        self.rank_counts = torch.zeros(n_lv, n_eff, dtype=torch.float64)
        self.overlap = torch.zeros(n_lv, r, dtype=torch.float64)

    def wants(self, visible: int) -> bool:
        return visible < self.bin.size and self.bin[visible] >= 0

    def add(self, visible: int, logp: torch.Tensor, true: torch.Tensor, rank: torch.Tensor,
            overlap: torch.Tensor) -> None:
        j = int(self.bin[visible])
        stats, ranks = _record(logp, true, rank)
        self.stats[j] += stats
        self.steps[j] += 1
        self.rank_sums[j, :ranks.numel()] += ranks
        self.rank_counts[j, :ranks.numel()] += logp.shape[0]
        self.overlap[j] += overlap

    def result(self, path_loss: torch.Tensor, ids: torch.Tensor) -> WalkResult:
        steps = self.steps.clamp(min=1)
        return WalkResult(self.stats / steps[:, None, None], self.rank_sums, self.rank_counts,
                          (self.overlap / steps[:, None]).sum(1), path_loss, ids)


def _block_layout(rows: Rows, block_length: int | None, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``(to generate now, masked later)`` ``[r, W]``: all targets, or one uniformly chosen block per row
    (earlier blocks visible, later ones masked and never revealed)."""
    if block_length is None:
        return rows.target.clone(), torch.zeros_like(rows.target)
    first, length = choose_blocks(rows.n_targets, block_length, gen)
    local = torch.arange(block_length).expand(rows.count, block_length)
    tidx = torch.arange(rows.target_columns.shape[1]).expand(rows.count, -1)
    block = rows.spread(local < length.unsqueeze(1), first)
    later = rows.spread((tidx >= (first + length).unsqueeze(1)) & (tidx < rows.n_targets.unsqueeze(1)))
    return block, later


def _record(logp: torch.Tensor, true: torch.Tensor, rank: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """From log-probs ``[r, m, V]`` and true tokens ``[r, m]`` (column order) and the ranking ``[r, m]``: per-row
    rank-1 ``(ce, entropy, accuracy)`` ``[r, 3]`` and per-rank CE summed over rows ``[m]``."""
    ce = (-logp.gather(2, true.unsqueeze(-1)).squeeze(-1)).gather(1, rank)  # [r, m], rank order
    if not bool(torch.isfinite(ce).all()):
        raise ValueError("a data token got probability 0 under the model (infinite cross-entropy): the data contain "
                         "tokens the adapter suppresses; strip special tokens from the data")
    top = logp[torch.arange(logp.shape[0]), rank[:, 0]]  # [r, V]
    acc = top.argmax(-1) == true.gather(1, rank[:, :1]).squeeze(1)
    ent = torch.special.entr(top.exp()).sum(-1)
    return torch.stack([ce[:, 0].double(), ent.double(), acc.double()], 1).cpu(), ce.double().sum(0).cpu()


def walk(mlm: MaskedLM, rows: Rows, order: str, levels: np.ndarray, *, n_eff: int, block_length: int | None,
         gen: torch.Generator, sample: bool = False, sizes: list[int] | None = None) -> WalkResult:
    """Reveal positions along ``order``'s ranking: ``sizes[t]`` top-ranked ones at call ``t`` (default one per
    call, ``n_eff`` calls per row).

    Teacher forcing (``sample=False``): the revealed tokens are the true ones; at each level the per-rank losses
    are recorded, and each row's loss along the path is ``-log q_k(x)`` of the deterministic ordered sampler with
    schedule ``sizes`` (the module docstring). Sampling (``sample=True``): the revealed tokens are drawn from the
    model (exact temperature-1 draws): the ordered sampler itself (``order="random"``: uniformly random positions).
    """
    block, later = _block_layout(rows, block_length, gen)
    r, ids, masked = rows.count, rows.ids.clone(), block
    rec = _Recorder(np.zeros(0, dtype=np.int64) if sample else levels, n_eff, r)
    path_loss = torch.zeros(r, dtype=torch.float64)
    pad = mlm.pad_token_id if mlm.pad_token_id is not None else 0
    first: torch.Tensor | None = None
    visible = 0
    for size in sizes or [1] * n_eff:
        m = n_eff - visible
        cols = masked.nonzero()[:, 1].view(r, m)
        canvas = Rows(ids, rows.widths, rows.target).canvas(masked | later, mlm.mask_token_id, pad)
        if order == "random":  # positions do not depend on the model: logits only where it reveals
            chosen = cols.gather(1, torch.rand(r, m, generator=gen).argsort(dim=1)[:, :size]).sort(dim=1).values
            query = torch.zeros_like(masked).scatter_(1, chosen, True)  # logits come in row-major (column) order
            logp = torch.log_softmax(mlm.logits(canvas, rows.attention(), positions=query).float(), -1).view(r, size, -1)
        else:
            logp = torch.log_softmax(mlm.logits(canvas, rows.attention(), positions=masked).float(), -1).view(r, m, -1)
            rank = position_scores(logp.view(r * m, -1), order).view(r, m).argsort(dim=1, descending=True, stable=True)
            ranked = cols.gather(1, rank)
            first = ranked if first is None else first
            if rec.wants(visible):
                top = torch.zeros_like(masked).scatter_(1, first[:, :max(visible, 1)], True)
                shared = (top & block & ~masked).sum(1).double() / visible if visible else torch.ones(r, dtype=torch.float64)
                rec.add(visible, logp, ids.gather(1, cols), rank, shared)
            chosen = ranked[:, :size]
            logp = logp[torch.arange(r).unsqueeze(1), rank[:, :size]]  # [r, size, V]
        if sample:
            u = torch.rand(r * size, dtype=torch.float64, generator=gen)
            drawn = draw_tokens(logp.reshape(r * size, -1), SamplingParams(), u).tokens.cpu().view(r, size)
            ids = ids.scatter(1, chosen, drawn)
        else:
            path_loss -= logp.gather(2, ids.gather(1, chosen).unsqueeze(-1)).squeeze(-1).double().sum(1).cpu()
        masked = masked.scatter(1, chosen, False)
        visible += size
    return rec.result(path_loss, ids)


def sample_walks(mlm: MaskedLM, rows: Rows, order: str, *, gen: torch.Generator,
                 sizes: list[int] | None = None) -> torch.Tensor:
    """Samples ``[r, W]`` of the model's ordered sampler with the context of ``rows`` given (``rows.ids`` at target
    positions are ignored): ``order``'s deterministic ranking, temperature 1, ``sizes`` tokens per call (default
    one: the N-call sampler)."""
    n = rows.n_targets
    if not bool((n == n[0]).all()):
        raise ValueError("sample_walks: every row must generate the same number of positions")
    return walk(mlm, rows, order, np.zeros(0, dtype=np.int64), n_eff=int(n[0]), block_length=None, gen=gen,
                sample=True, sizes=sizes).ids


@dataclass(frozen=True)
class OrderedNLL:
    """Held-out NLL of an ordered T-call sampler: per example (nats per generated token), mean and its SE."""

    per_example: np.ndarray
    mean: float
    se: float


def ordered_nll(model: Any, data: Any, schedule: Any, *, order: str = "confidence", batch_size: int = 16,
                seed: int = 0, n_tokens: int | None = None, prompt_length: int = 0) -> OrderedNLL:
    """The exact held-out NLL of the deterministic ordered sampler with ``schedule``: teacher forcing along the
    sampler's own path (``schedule.steps`` forwards per batch), ``-log q_k(x)`` per example divided by its
    generated length. For ``order="random"``: one uniformly random order per example (an unbiased estimate of
    the random-order bound ``NLL_T``).

    ``data`` is anything :func:`mdm_sched.estimate_profile` takes (e.g. infilling
    :class:`~mdm_sched.conditioning.Examples`); every example must generate ``schedule.n_tokens`` positions.
    """
    from .conditioning import prepare
    from .models import wrap
    from .schedules import Schedule

    mlm = wrap(model)
    sched = schedule if isinstance(schedule, Schedule) else Schedule(schedule)
    ex = prepare(mlm, data, prompt_column=None, response_column=None, chat=False, visible=None, n_tokens=n_tokens,
                 prompt_length=prompt_length, text_column=None)
    n = ex.n_targets
    if not bool((n == sched.n_tokens).all()):
        raise ValueError(f"every example must generate schedule.n_tokens={sched.n_tokens} positions (got "
                         f"{int(n.min())}..{int(n.max())}): use schedule.rescale(n) or data of that length")
    losses = []
    for b, start in enumerate(range(0, len(ex), batch_size)):
        rows = Rows(ex.ids[start:start + batch_size], ex.widths[start:start + batch_size],
                    ex.target[start:start + batch_size])
        res = walk(mlm, rows, order, np.zeros(0, dtype=np.int64), n_eff=sched.n_tokens, block_length=None,
                   gen=torch.Generator().manual_seed(_walk_seed(seed, b)), sizes=list(sched.sizes))
        losses.append(res.path_loss.numpy() / sched.n_tokens)
    per = np.concatenate(losses)
    se = float(per.std(ddof=1) / np.sqrt(per.size)) if per.size > 1 else float("nan")
    return OrderedNLL(per, float(per.mean()), se)


# ------------------------------------------------------------------------------------------------
# Sums, rounds and the profile
# ------------------------------------------------------------------------------------------------

class RankAccumulator(Accumulator):
    """:class:`mdm_sched.estimate.Accumulator` of the rank-1 statistics plus per-rank CE sums ``rank [levels, n]``."""

    def __init__(self, n_levels: int, n_ranks: int = 0) -> None:
        super().__init__(n_levels)
        self.rank = np.zeros((n_levels, n_ranks))
        self.rank_count = np.zeros((n_levels, n_ranks))
        self.overlap = np.zeros(n_levels)  # summed over rows: |S_K & top_K(first state)| / K

    def to_arrays(self) -> dict[str, np.ndarray]:
        return dict(super().to_arrays(), rank=self.rank, rank_count=self.rank_count, overlap=self.overlap)

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], n_levels: int) -> RankAccumulator:
        base = super().from_arrays(arrays, n_levels)
        rank = np.asarray(arrays["rank"], dtype=np.float64)
        if rank.ndim != 2 or rank.shape[0] != n_levels:
            raise ValueError("rank sums do not match the levels")
        acc = cls(n_levels, rank.shape[1])
        acc.count, acc.sums, acc.sq, acc.tokens, acc.rank = base.count, base.sums, base.sq, base.tokens, rank
        acc.overlap = np.asarray(arrays["overlap"], dtype=np.float64).reshape(n_levels)
        acc.rank_count = np.asarray(arrays["rank_count"], dtype=np.float64).reshape(rank.shape)
        return acc


def _walk_seed(seed: int, batch: int) -> int:
    """Seed of batch ``batch``'s walk (block choice): never equal to a mask seed (4 words, not 3)."""
    return int(np.random.SeedSequence([seed, batch, 0xB10C, 1]).generate_state(1, np.uint64)[0] >> np.uint64(1))


@dataclass(frozen=True)
class _PolicyRun:
    mlm: MaskedLM
    rows: Rows
    heldout: _Heldout
    order: str
    settings: _Settings
    dist: DistContext
    batches: int

    def fingerprint(self) -> dict[str, Any]:
        s, h = self.settings, self.heldout
        return {"model": self.mlm.name_or_path, "config_hash": self.mlm.config_hash, **self.mlm.identity(),
                "data_sha256": h.sha256,
                "n_tokens": h.n, "prompt_length": s.prompt_length, "block_length": s.block_length,
                "levels": h.levels.tolist(), "batch_size": s.batch_size, "order": self.order, "seed": s.seed,
                "checkpoint_every": s.checkpoint_every, "batches": self.batches}

    def round(self, start: int, end: int, grid: Any, on_walk: Callable[[], None]) -> tuple[torch.Tensor, torch.Tensor]:
        """Rank-1 values ``[batches, levels, batch_size, 3]`` and rank sums, rank counts and the state overlap
        ``[batches, levels, 2 n_eff + 1]`` of batches ``start..end-1``, each walked by one process (round-robin)
        and summed over the processes (exact)."""
        s, h = self.settings, self.heldout
        vals = torch.zeros(end - start, h.levels.size, s.batch_size, 3, dtype=torch.float64)
        ranks = torch.zeros(end - start, h.levels.size, 2 * h.n_eff + 1, dtype=torch.float64)
        for k, b in enumerate(range(start, end)):
            if k % self.dist.world != self.dist.rank:
                continue
            rows = self.rows.slice(grid.start(b), grid.start(b) + grid.rows(b))
            res = walk(self.mlm, rows, self.order, h.levels, n_eff=h.n_eff, block_length=s.block_length,
                       gen=torch.Generator().manual_seed(_walk_seed(s.seed, b)))
            vals[k, :, :rows.count] = res.stats
            ranks[k] = torch.cat([res.rank_sums, res.rank_counts, res.overlap[:, None]], 1)
            on_walk()
        return self.dist.all_reduce_sum(vals), self.dist.all_reduce_sum(ranks)


def _run_walks(run: _PolicyRun, progress: _Progress, checkpoint: Path | None, show: bool) -> None:
    """Walk batches in rounds of ``checkpoint_every`` until ``run.batches``, checkpointing after each round."""
    from .estimate import BatchGrid, _save_checkpoint

    h, s = run.heldout, run.settings
    grid = BatchGrid(run.rows.count, s.batch_size, h.n_eff - h.levels)
    bar = None
    if show and run.dist.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=run.batches * h.n_eff, initial=progress.forwards, unit="fwd", desc=f"policy profile "
                   f"({run.order})", dynamic_ncols=True)
    on_walk = (lambda: bar.update(h.n_eff * run.dist.world)) if bar is not None else (lambda: None)
    every = np.ones(h.levels.size, dtype=bool)
    try:
        for start in range(progress.next_batch, run.batches, s.checkpoint_every):
            end = min(start + s.checkpoint_every, run.batches)
            vals, ranks = run.round(start, end, grid, on_walk)
            for k, b in enumerate(range(start, end)):
                sums, counts, overlap = ranks[k, :, :h.n_eff], ranks[k, :, h.n_eff:-1], ranks[k, :, -1]
                progress.acc.add(grid.start(b), every, vals[k, :, :grid.rows(b)].numpy(), counts.sum(1).numpy())
                progress.acc.rank += sums.numpy()
                progress.acc.rank_count += counts.numpy()
                progress.acc.overlap += overlap.numpy()
            progress.forwards += (end - start) * h.n_eff
            progress.next_batch = end
            if checkpoint is not None and run.dist.is_main:
                _save_checkpoint(checkpoint, run.fingerprint(), progress)
            if bar is not None:
                bar.n = progress.forwards
                bar.refresh()
    finally:
        if bar is not None:
            bar.close()


def estimate_policy(mlm: MaskedLM, rows: Rows, h: _Heldout, order: str, s: _Settings, dist: DistContext,
                    checkpoint: Path | None, *, progress: bool, description: str | None) -> InformationProfile:
    """The policy profile of ``order`` on the (permuted) examples ``rows``: :func:`estimate_profile` with
    ``order=`` confidence/margin/entropy lands here (one pass over the data unless ``max_batches`` says otherwise)."""
    from .estimate import BatchGrid, _load_checkpoint, _Progress, run_metadata
    from .profile import InformationProfile

    if order not in POLICY_ORDERS:
        raise ValueError(f"order={order!r} has no policy profile; choose one of {', '.join(POLICY_ORDERS)}")
    n_t = h.ex.n_targets
    if not h.ex.equal_targets or (s.block_length is not None and int(n_t[0]) % s.block_length):
        raise ValueError(f"a policy profile needs every example to generate the same number of positions (got "
                         f"{int(n_t.min())}..{int(n_t.max())}): pad responses to one length (e.g. with EOS, as "
                         "LLaDA/Dream generate; Examples.from_pairs(..., n_tokens=N, pad_id=eos)) or crop them")
    grid = BatchGrid(rows.count, s.batch_size, h.n_eff - h.levels)
    run = _PolicyRun(mlm, rows, h, order, s, dist, s.max_batches or grid.per_pass)
    state = (_load_checkpoint(checkpoint, run.fingerprint(), h.levels.size, RankAccumulator)
             if checkpoint is not None else None) or _Progress(RankAccumulator(h.levels.size, h.n_eff))
    _run_walks(run, state, checkpoint, progress)
    acc = state.acc
    mean, se, mc = acc.mean(), acc.cluster_se(), acc.mc_se()
    meta = run_metadata(mlm, h, s, order=order, forwards=state.forwards, processes=dist.world, mc=mc,
                        data_description=description)
    bins = level_bins(h.levels, h.n_eff)
    meta.update(kind="policy", stop={"batches": run.batches}, ranking=_RANKING[order],
                pooled_counts=[[int(np.min(np.nonzero(bins == j))), int(np.max(np.nonzero(bins == j)))]
                               for j in range(h.levels.size)],
                state_overlap=[round(float(v), 6) for v in (acc.overlap / acc.rows).tolist()])
    with np.errstate(invalid="ignore", divide="ignore"):
        table = acc.rank / acc.rank_count
    return InformationProfile(h.levels, mean[:, 0], se[:, 0], n_tokens=h.n_eff, entropy=mean[:, 1],
                              entropy_se=se[:, 1], accuracy=mean[:, 2], tokens=acc.tokens.astype(np.int64),
                              rows=acc.rows.astype(np.int64), metadata=meta, rank_ce=table)


_RANKING = {"confidence": "max probability of the temperature-1 distribution (the deterministic counterpart of "
                          "ranking by the drawn token's probability)",
            "margin": "p_(1) - p_(2) of the temperature-1 distribution",
            "entropy": "lowest entropy of the temperature-1 distribution first"}
