"""Turning ``[P, V]`` logits into tokens: temperature, top-k, top-p, an exact draw, and per-position statistics.

Logits arrive as float32 ``[P, V]`` with never-sampled ids at ``-inf``, or as a
:class:`~mdm_sched.logit_rows.LogitRows` (the model's output, read a chunk of rows at a time). The draw is exact:
a categorical sample by inversion of the float64 CDF (one uniform per position, the same law as Gumbel-max with
a fraction of the random numbers); temperature 0 is greedy. Whatever the sampling controls, the statistics
reported (``logp`` of the drawn token, ``entropy``, ``margin``) are those of the temperature-1 model distribution,
which is what orders rank by and what the likelihood bounds use.

Speed: rows are processed in chunks of about :data:`SAMPLE_CHUNK_ELEMENTS` logits, small enough to stay in the
CPU's cache between the passes over them (peak and argmax while reading, normaliser, CDF), so each row is read
from memory about once; the peak and argmax found while reading serve the NaN check, the greedy draw and the
normaliser; only the float64 CDF of a sampled draw is a second buffer, and only of a chunk.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .logit_rows import ChunkBuffers, LogitRows

__all__ = ["SamplingParams", "Draw", "draw_tokens", "SAMPLE_CHUNK_ELEMENTS", "chunk_elements"]

#: Logits processed at once on a CPU (at least one row): 1 MiB of float32, which stays in a core's cache
#: through the passes over a chunk; also bounds the float64 temporaries of a sampled draw.
SAMPLE_CHUNK_ELEMENTS = 1 << 18
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


def _logsumexp(logits: torch.Tensor, peak: torch.Tensor, work: torch.Tensor) -> torch.Tensor:
    """``torch.logsumexp`` of rows with a finite, already known ``peak`` ``[n, 1]``: the same arithmetic
    (``log(sum(exp(x - peak))) + peak``) without its pass for the peak, in the buffer ``work``."""
    return torch.sub(logits, peak, out=work).exp_().sum(dim=-1, keepdim=True).log_().add_(peak)


def _entropy(logits: torch.Tensor, lse: torch.Tensor, work: torch.Tensor) -> torch.Tensor:
    """Entropy of each row's temperature-1 distribution (``0 log 0 = 0`` at never-sampled ids)."""
    logp = torch.sub(logits, lse, out=work)
    terms = logp.exp() * logp
    return -terms.masked_fill_(logp == float("-inf"), 0.0).sum(-1)


def first_argmax(logits: torch.Tensor, peak: torch.Tensor, width: int = 256) -> torch.Tensor:
    """``logits.argmax(-1)`` (the first maximal id) of rows whose ``peak`` ``[n, 1]`` is known, without the slow
    index-tracking reduction: the first block of ``width`` ids whose maximum is the peak, then the first id in it."""
    vocab = logits.shape[1]
    main = vocab - vocab % width
    blocks = [logits[:, :main].unflatten(1, (main // width, width)).amax(-1)] if main else []
    if main < vocab:
        blocks.append(logits[:, main:].amax(-1, keepdim=True))
    block = (torch.cat(blocks, 1) if len(blocks) > 1 else blocks[0]).eq(peak).byte().argmax(-1, keepdim=True)
    cols = (block * width + torch.arange(width, device=logits.device)).clamp_(max=vocab - 1)
    return (block * width).squeeze(1) + logits.gather(1, cols).eq(peak).byte().argmax(-1)


def _draw_chunk(logits: torch.Tensor, peak: torch.Tensor, params: SamplingParams, u: torch.Tensor,
                want: frozenset[str], buffers: ChunkBuffers) -> Draw:
    """Draw at rows of float32 ``logits`` whose ``peak`` ``[n, 1]`` is known (never-sampled ids at ``-inf``)."""
    if bool((peak == float("-inf")).any()):
        raise ValueError("every token is suppressed at some position (all logits -inf): loosen allowed_tokens / "
                         "suppress_tokens")
    n = logits.shape[0]
    work = buffers.get("work", n)
    if params.temperature == 0.0:
        tokens = first_argmax(logits, peak)
        lse = _logsumexp(logits, peak, work)
        logp = (peak - lse).squeeze(1)  # the drawn token's logit is the peak
    else:
        z = logits if params.plain else _truncate(logits, peak, params)
        z_peak = peak if params.plain else z.amax(dim=-1, keepdim=True)
        cdf = buffers.get("cdf", n, torch.float64).copy_(z).sub_(z_peak).exp_().cumsum_(dim=-1)
        total = cdf[:, -1:]
        tokens = torch.searchsorted(cdf, u.unsqueeze(1).mul(total), right=True).squeeze(1).clamp_(max=z.shape[-1] - 1)
        # the normaliser comes for free at temperature 1: log sum exp = peak + log(cdf[-1])
        lse = (peak.double() + total.log()).float() if params.plain else _logsumexp(logits, peak, work)
        logp = (logits.gather(-1, tokens.unsqueeze(-1)) - lse).squeeze(-1)
    out = Draw(tokens=tokens, logp=logp)
    if "margin" in want:
        top = (logits.topk(min(2, logits.shape[-1]), dim=-1).values - lse).exp()
        out.margin = top[:, 0] - top[:, 1] if top.shape[1] > 1 else top[:, 0]
    if "entropy" in want:
        out.entropy = _entropy(logits, lse, work)
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
            chunk, peak = rows.read(i, min(i + step, n_pos), buffers)
            parts.append(_draw_chunk(chunk, peak, params, uniforms[i:i + step], want, buffers))
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
