"""Turning ``[P, V]`` logits into tokens: temperature, top-k, top-p, an exact draw, and per-position statistics.

Logits arrive as float32 ``[P, V]`` with never-sampled ids at ``-inf``, or as a
:class:`~mdm_sched.logit_rows.LogitRows` (the model's output, read a chunk of rows at a time). The draw is exact up
to float32 rounding of the probabilities: a categorical sample by inversion of the CDF (one uniform per position,
the same law as Gumbel-max with a fraction of the random numbers); temperature 0 is greedy. Whatever the sampling
controls, the statistics reported (``logp`` of the drawn token, ``entropy``, ``margin``) are those of the
temperature-1 model distribution, which is what orders rank by and what the likelihood bounds use.

Speed: rows are processed in chunks of about :data:`SAMPLE_CHUNK_ELEMENTS` logits, small enough to stay in the
CPU's cache between the passes over them, so each row is read from memory about once. The block maxima found while
reading (:meth:`~mdm_sched.logit_rows.LogitRows.read`) give the peak (NaN check, normaliser) and locate the greedy
argmax; ``exp`` is taken once per logit, as ``exp2`` (:data:`LOG2E`); a sampled id is found from block sums of the
probabilities and a float64 cumulative sum of one block per row, never of the whole ``[P, V]``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .logit_rows import BLOCK, ChunkBuffers, LogitRows, block_reduce

__all__ = ["SamplingParams", "Draw", "draw_tokens", "invert_cdf", "first_argmax", "SAMPLE_CHUNK_ELEMENTS",
           "chunk_elements"]

#: Logits processed at once on a CPU (at least one row): 4 MiB of float32, which stays in the CPU's cache through
#: the passes over a chunk and is large enough that the per-chunk dispatch of ~40 small ops stays negligible
#: (measured on 1,024 rows at V = 32,000 and 126,464: 1 MiB chunks 1.2x to 1.35x slower, 8 MiB no faster).
SAMPLE_CHUNK_ELEMENTS = 1 << 20
#: The same on an accelerator, where each chunk costs a kernel launch and a host synchronisation instead.
DEVICE_CHUNK_ELEMENTS = 1 << 22


def chunk_elements(device: torch.device) -> int:
    """Logits per chunk on ``device``."""
    return SAMPLE_CHUNK_ELEMENTS if device.type == "cpu" else max(SAMPLE_CHUNK_ELEMENTS, DEVICE_CHUNK_ELEMENTS)


@dataclass(frozen=True)
class SamplingParams:
    """How a token is drawn from a position's distribution (validated by the generation config)."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None

    @property
    def plain(self) -> bool:
        """Temperature 1 without truncation: the draw needs no rescaled copy of the logits."""
        return self.temperature == 1.0 and self.top_k is None and (self.top_p is None or self.top_p >= 1.0)


@dataclass
class Draw:
    """One drawn token per position and its statistics under the temperature-1 model (``[P]`` each).

    ``entropy`` and ``margin`` (``p_1 - p_2``, the two largest probabilities) are computed only when asked for.
    """

    tokens: torch.Tensor
    logp: torch.Tensor
    entropy: torch.Tensor | None = None
    margin: torch.Tensor | None = None

    def statistic(self, name: str) -> torch.Tensor:
        """``confidence`` (probability of the drawn token), ``entropy`` or ``margin``."""
        if name == "confidence":
            return self.logp.exp()
        value = getattr(self, name, None) if name in ("entropy", "margin") else None
        if value is None:
            raise KeyError(f"statistic {name!r} was not computed for this draw")
        return value


def _truncate(logits: torch.Tensor, peak: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Tempered float64 logits with top-k / top-p applied (dropped ids at ``-inf``).

    The peak is subtracted before dividing, so any finite temperature > 0 works: 1e-40 leaves 0 at the argmax and
    -inf (or a huge negative) elsewhere (greedy), 1e39 leaves every allowed id near 0 (uniform); nothing overflows.
    """
    z = (logits.double() - peak) / params.temperature
    if params.top_k is not None and params.top_k < z.shape[-1]:
        kth = z.topk(params.top_k, dim=-1).values[:, -1:]
        z = z.masked_fill(z < kth, float("-inf"))
    if params.top_p is not None and params.top_p < 1.0:
        sorted_z, perm = z.sort(dim=-1, descending=True)
        probs = torch.softmax(sorted_z, dim=-1)
        # drop a token once the mass strictly before it already reaches top_p (the top token stays)
        drop_sorted = (probs.cumsum(dim=-1) - probs) >= params.top_p
        z = z.masked_fill(torch.zeros_like(drop_sorted).scatter_(-1, perm, drop_sorted), float("-inf"))
    return z


#: ``exp(z) = 2 ** (z * LOG2E)``: on a CPU ``torch.exp2`` is several times faster than ``torch.exp`` (measured 4x on
#: float32) at the same float32 accuracy once the peak is subtracted first (the scaled argument is then small).
LOG2E = 1.4426950408889634


def _exp_shifted(logits: torch.Tensor, peak: torch.Tensor, work: torch.Tensor) -> torch.Tensor:
    """``exp(logits - peak)`` into the buffer ``work`` (``peak [n, 1]`` finite)."""
    return torch.sub(logits, peak, out=work).mul_(LOG2E).exp2_()


def _logsumexp(logits: torch.Tensor, peak: torch.Tensor, work: torch.Tensor) -> torch.Tensor:
    """``torch.logsumexp`` of rows with a finite, already known ``peak`` ``[n, 1]`` (no pass for the peak)."""
    return _exp_shifted(logits, peak, work).sum(dim=-1, keepdim=True).log_().add_(peak)


def _entropy(logits: torch.Tensor, lse: torch.Tensor, work: torch.Tensor, work2: torch.Tensor) -> torch.Tensor:
    """Entropy of each row's temperature-1 distribution, in the buffers ``work`` and ``work2`` (``0 log 0 = 0`` at
    never-sampled ids, where ``p * logp`` is ``0 * -inf = nan``; the logits hold no other NaN, they are checked)."""
    logp = torch.sub(logits, lse, out=work)
    p = torch.mul(logp, LOG2E, out=work2).exp2_()
    return -p.mul_(logp).nan_to_num_(0.0).sum(-1)


def _block_ids(block: torch.Tensor) -> torch.Tensor:
    """The ids of block ``block [n, 1]``: ``[n, BLOCK]`` (those of the last block may pass the vocabulary)."""
    return block * BLOCK + torch.arange(BLOCK, device=block.device)


def _peak_block(blocks: torch.Tensor, peak: torch.Tensor) -> torch.Tensor:
    """The first block ``[n, 1]`` whose maximum is the row's ``peak``."""
    return blocks.eq(peak).byte().argmax(-1, keepdim=True)


def first_argmax(logits: torch.Tensor, peak: torch.Tensor, blocks: torch.Tensor | None = None) -> torch.Tensor:
    """``logits.argmax(-1)`` (the first maximal id) of rows whose ``peak`` ``[n, 1]`` and, optionally, block maxima
    (:func:`~mdm_sched.logit_rows.block_reduce`) are known, without the slow index-tracking reduction: the first
    block whose maximum is the peak, then the first id in it (a clamped id repeats the last one, found first)."""
    if blocks is None:
        blocks = block_reduce(logits, "amax")
    block = _peak_block(blocks, peak)
    cols = _block_ids(block).clamp_(max=logits.shape[1] - 1)
    return (block * BLOCK).squeeze(1) + logits.gather(1, cols).eq(peak).byte().argmax(-1)


def runner_up(logits: torch.Tensor, peak: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """The second-largest logit ``[n, 1]`` of each row (the peak again when it is tied; ``-inf`` for one id), from
    the block maxima instead of a ``topk(2)`` over every id (6x slower): the larger of the other blocks' maxima and
    the runner-up inside the first block holding the peak."""
    block = _peak_block(blocks, peak)
    ids = _block_ids(block)
    inside = logits.gather(1, ids.clamp(max=logits.shape[1] - 1)).masked_fill_(ids >= logits.shape[1], float("-inf"))
    others = blocks.scatter(1, block, float("-inf")).amax(-1, keepdim=True)
    return torch.maximum(inside.topk(2, dim=-1).values[:, 1:], others)


def invert_cdf(weights: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Id ``[n]`` drawn from each row of non-negative ``weights [n, V]`` by inversion with uniforms ``u [n]``, the
    rows' total weight ``[n, 1]`` float64, which must be positive): the block of
    :data:`~mdm_sched.logit_rows.BLOCK` ids from the cumulative block sums, then the id within it from the float64
    cumulative sum of that block alone, so no ``[n, V]`` cumulative sum is made. An id of weight 0 is never
    returned, whatever the rounding."""
    vocab = weights.shape[1]
    sums = block_reduce(weights, "sum").double()
    cum = sums.cumsum(-1)
    target = u.unsqueeze(1) * cum[:, -1:]
    block = torch.searchsorted(cum, target, right=True)
    last = sums.shape[1] - 1 - (sums > 0).flip(-1).byte().argmax(-1, keepdim=True)
    block = torch.minimum(block, last)  # u * total rounded up to the total: the last block with weight
    mass = sums.gather(1, block)
    frac = ((target - (cum.gather(1, block) - mass)) / mass).clamp_(0.0, 1.0 - 2.0 ** -53)
    ids = _block_ids(block)
    within = weights.gather(1, ids.clamp(max=vocab - 1)).double().masked_fill_(ids >= vocab, 0.0).cumsum_(-1)
    within.div_(within[:, -1:].clone())  # the last entry becomes exactly 1 > frac: the search stays in the block
    return (block * BLOCK + torch.searchsorted(within, frac, right=True)).squeeze(1), cum[:, -1:]


def _draw_chunk(logits: torch.Tensor, peak: torch.Tensor, blocks: torch.Tensor, params: SamplingParams,
                u: torch.Tensor, want: frozenset[str], buffers: ChunkBuffers) -> Draw:
    """Draw at rows of float32 ``logits`` whose ``peak`` ``[n, 1]`` and block maxima are known (never-sampled ids
    at ``-inf``)."""
    if bool((peak == float("-inf")).any()):
        raise ValueError("every token is suppressed at some position (all logits -inf): loosen allowed_tokens / "
                         "suppress_tokens")
    n = logits.shape[0]
    work = buffers.get("work", n)
    if params.temperature == 0.0:
        tokens = first_argmax(logits, peak, blocks)
        lse = _logsumexp(logits, peak, work)
        logp = (peak - lse).squeeze(1)  # the drawn token's logit is the peak
    else:
        if params.plain:  # temperature 1: the weights are exp(logits - peak), and their sum gives the normaliser
            weights = _exp_shifted(logits, peak, work)
            tokens, total = invert_cdf(weights, u)
            lse = (peak.double() + total.log()).float()
        else:
            z = _truncate(logits, peak, params)
            tokens = invert_cdf(z.sub_(z.amax(dim=-1, keepdim=True)).exp_(), u)[0]
            lse = _logsumexp(logits, peak, work)
        logp = (logits.gather(-1, tokens.unsqueeze(-1)) - lse).squeeze(-1)
    out = Draw(tokens=tokens, logp=logp)
    if "margin" in want:
        out.margin = ((peak - lse).exp() - (runner_up(logits, peak, blocks) - lse).exp()).squeeze(1)
    if "entropy" in want:
        out.entropy = _entropy(logits, lse, work, buffers.get("work2", n))
    return out


def draw_tokens(logits: torch.Tensor | LogitRows, params: SamplingParams, uniforms: torch.Tensor,
                want: frozenset[str] = frozenset()) -> Draw:
    """Draw one token per row of ``logits [P, V]``, a chunk of rows at a time (see the module docstring).

    Args:
        logits: float32 ``[P, V]`` with never-sampled ids at ``-inf``, or a :class:`~mdm_sched.logit_rows.LogitRows`
            (the model's output, converted, checked and suppressed chunk by chunk as it is read).
        params: temperature (0 = greedy), top-k, top-p.
        uniforms: ``[P]`` float64 uniforms (one per position; unused when greedy).
        want: extra statistics to compute: ``"entropy"``, ``"margin"``.
    """
    rows = logits if isinstance(logits, LogitRows) else LogitRows(logits, origin="the logits processor")
    n_pos, vocab = rows.shape
    step = max(1, chunk_elements(rows.device) // max(1, vocab))
    parts = []
    buffers = ChunkBuffers(min(step, n_pos), vocab, rows.device)
    with torch.inference_mode():  # reading fills never-sampled ids in place, also on inference tensors
        for i in range(0, n_pos, step):
            chunk, peak, blocks = rows.read(i, min(i + step, n_pos), buffers)
            parts.append(_draw_chunk(chunk, peak, blocks, params, uniforms[i:i + step], want, buffers))
    if len(parts) == 1:
        return parts[0]
    if not parts:
        empty = torch.zeros(0, device=rows.device)
        return Draw(tokens=empty.long(), logp=empty, entropy=empty if "entropy" in want else None,
                    margin=empty if "margin" in want else None)

    def cat(name: str) -> torch.Tensor | None:
        values = [getattr(p, name) for p in parts]
        return None if values[0] is None else torch.cat(values)

    return Draw(tokens=cat("tokens"), logp=cat("logp"), entropy=cat("entropy"), margin=cat("margin"))  # type: ignore[arg-type]
