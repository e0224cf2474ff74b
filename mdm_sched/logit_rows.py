"""Rows of logits read about once: :class:`LogitRows`, the hand-over from a model call to the token draw.

A model call leaves its logits in the model's dtype, often for many more positions than are drawn (``[B, W, V]``
when the LM head cannot be applied at selected positions only). Copying the selected rows out, converting them
to float32, checking them for NaN/+inf, filling the never-sampled ids and then drawing walked the whole
``[P, V]`` block from memory five or more times. A :class:`LogitRows` keeps a reference to the model's output and
the index of the rows wanted, and hands out float32 chunks of rows small enough to stay in the CPU cache while the
draw (:mod:`mdm_sched.draw`) makes its passes over them. Reading a chunk (:meth:`LogitRows.read`):

* gathers only its rows (a view, no copy, when the rows are a contiguous span of float32 logits) and converts
  only them to float32 (bf16 models);
* checks the values at the never-sampled ids for NaN/+inf, then sets them to ``-inf`` touching only their
  columns (in place: rows of a float32 source are overwritten, so a :class:`LogitRows` owns its source);
* finds the maximum of each block of :data:`BLOCK` ids with one pass; the row's peak (the maximum of those) is
  what the draw normalises by, and the block maxima locate its argmax without a second pass. The pass is also the
  NaN/+inf check of the other ids (both propagate through ``max``; the same error as
  :meth:`~mdm_sched.models.MaskedLM.logits`).

Memory beyond the model's own output is one chunk, however many positions are drawn.
"""
from __future__ import annotations

import math

import torch

__all__ = ["LogitRows", "ChunkBuffers", "NonFiniteLogitsError", "BLOCK", "block_reduce"]

#: Ids per block of a row: block maxima locate the argmax and block sums of probabilities locate a sampled token,
#: so that only one block per row is searched (LLaDA's 126,464 and the common 32,000 are multiples of 256).
BLOCK = 256


class NonFiniteLogitsError(ValueError):
    """Logits hold NaN or ``+inf`` (a ``ValueError``: the model's output is unusable)."""


class ChunkBuffers:
    """``[rows, V]`` work buffers reused by every chunk of one pass (on a CPU a fresh multi-MiB tensor per chunk
    costs a page fault per 4 KiB each time it is touched; a reused one stays in cache).

    :meth:`get` hands out the first ``n`` rows of a named buffer; the next chunk overwrites them, so keep nothing
    that views a buffer past the chunk it was computed for.
    """

    def __init__(self, rows: int, vocab: int, device: torch.device) -> None:
        self.rows, self.vocab, self.device = rows, vocab, device
        self._buffers: dict[tuple[str, torch.dtype], torch.Tensor] = {}

    def get(self, name: str, n: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Rows ``[0, n)`` of the buffer ``name`` (created on first use)."""
        buf = self._buffers.get((name, dtype))
        if buf is None:
            buf = self._buffers[(name, dtype)] = torch.empty((self.rows, self.vocab), dtype=dtype, device=self.device)
        return buf[:n]


def block_reduce(x: torch.Tensor, op: str, width: int = BLOCK) -> torch.Tensor:
    """``op`` (``"amax"`` or ``"sum"``) over each block of ``width`` ids of ``x [n, V]``: ``[n, ceil(V / width)]``
    (the last block holds the ``V % width`` ids left over, if any)."""
    vocab = x.shape[1]
    main = vocab - vocab % width
    parts = [getattr(x[:, :main].unflatten(1, (main // width, width)), op)(-1)] if main else []
    if main < vocab:
        parts.append(getattr(x[:, main:], op)(-1, keepdim=True))
    return torch.cat(parts, 1) if len(parts) > 1 else parts[0]


def _span_start(index: torch.Tensor) -> int | None:
    """First row when ``index`` is ``first, first + 1, ...`` (a contiguous span), else ``None``."""
    n = index.numel()
    if n == 0:
        return None
    first = int(index[0])
    if int(index[-1]) - first != n - 1 or (n > 1 and not bool((index.diff() == 1).all())):
        return None
    return first


class LogitRows:
    """``[P, V]`` float32 logits: rows ``index`` of ``source``, read chunk by chunk (see the module docstring).

    Args:
        source: ``[N, V]`` logits in any floating dtype (e.g. the model's ``[B, W, V]`` output viewed as ``[B*W, V]``).
        index: ``[P]`` rows of ``source`` in draw order; ``None`` = every row, in order.
        never: boolean ``[V]`` ids set to ``-inf`` when read; ``None`` when already applied.
        origin: names what produced the logits in the NaN/+inf error.
        hint: appended to that error (what to do about it).
    """

    def __init__(self, source: torch.Tensor, index: torch.Tensor | None = None, never: torch.Tensor | None = None,
                 *, origin: str = "the logits", hint: str = "") -> None:
        if source.ndim != 2 or not source.is_floating_point():
            raise ValueError(f"LogitRows needs floating logits [rows, vocab], got {tuple(source.shape)} {source.dtype}")
        self.source = source
        self.offset = 0
        self.index: torch.Tensor | None = None
        self.length = source.shape[0]
        if index is not None:
            self.length = index.numel()
            start = _span_start(index)
            if start is None:
                self.index = index.to(source.device)
            else:
                self.offset = start
        self.never_ids: torch.Tensor | None = None
        self.never_mask: torch.Tensor | None = None
        if never is not None:
            ids = never.nonzero().squeeze(1)
            if ids.numel() * 16 > never.numel():
                self.never_mask = never  # many ids (e.g. allowed_tokens): one masked fill beats scattered writes
            elif ids.numel():
                self.never_ids = ids
        self.origin = origin
        self.hint = hint

    @property
    def shape(self) -> tuple[int, int]:
        return (self.length, self.source.shape[1])

    @property
    def device(self) -> torch.device:
        return self.source.device

    def __len__(self) -> int:
        return self.length

    def _rows(self, start: int, stop: int, buffers: ChunkBuffers | None) -> torch.Tensor:
        """Float32 rows ``[start, stop)``: a view of a float32 span, else gathered / converted into ``buffers``."""
        n = stop - start
        if self.index is None:
            rows = self.source[self.offset + start:self.offset + stop]
            if rows.dtype == torch.float32 or buffers is None:
                return rows.float()
            return buffers.get("rows", n).copy_(rows)
        index = self.index[start:stop]
        if buffers is None:
            return self.source.index_select(0, index).float()
        if self.source.dtype == torch.float32:
            return torch.index_select(self.source, 0, index, out=buffers.get("rows", n))
        raw = torch.index_select(self.source, 0, index, out=buffers.get("raw", n, self.source.dtype))
        return buffers.get("rows", n).copy_(raw)

    def _fill(self, chunk: torch.Tensor) -> None:
        if self.never_ids is not None:
            chunk.index_fill_(1, self.never_ids, float("-inf"))
        elif self.never_mask is not None:
            chunk.masked_fill_(self.never_mask, float("-inf"))

    def read(self, start: int, stop: int,
             buffers: ChunkBuffers | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rows ``[start, stop)``: (float32 logits ``[n, V]`` with never-sampled ids at ``-inf``, their peak ``[n, 1]``,
        the maxima of their blocks of :data:`BLOCK` ids ``[n, ceil(V / BLOCK)]``).

        With ``buffers``, gathered or converted rows land in its ``"rows"`` buffer (valid until the next read).

        Raises:
            NonFiniteLogitsError: a row holds NaN or ``+inf`` (at any id, never-sampled ones included).
        """
        chunk = self._rows(start, stop, buffers)
        if self.never_ids is not None:  # check the few values the fill overwrites, then fill
            self._check(chunk.index_select(1, self.never_ids).amax(dim=-1))
            self._fill(chunk)
        elif self.never_mask is not None:
            self._check(chunk.amax(dim=-1))
            self._fill(chunk)
        blocks = block_reduce(chunk, "amax")  # NaN and +inf propagate through max
        peak = blocks.amax(dim=-1, keepdim=True)
        self._check(peak)
        return chunk, peak, blocks

    def _check(self, peak: torch.Tensor) -> None:
        if math.isfinite(float(peak.sum())):  # one reduction in the common case; -inf rows are the draw's error
            return
        if bool((torch.isnan(peak) | (peak == float("inf"))).any()):
            raise NonFiniteLogitsError(f"{self.origin} returned NaN or +inf logits{self.hint}")

    def materialize(self) -> torch.Tensor:
        """All rows as one float32 ``[P, V]`` tensor, checked and suppressed (for callers that need the tensor)."""
        with torch.inference_mode():  # the source is usually an inference tensor, filled in place
            return self._materialize()

    def _materialize(self) -> torch.Tensor:
        if self.index is None and self.offset == 0 and self.length == self.source.shape[0] \
                and self.source.dtype == torch.float32:
            self.read(0, self.length)  # in place on the source: no copy
            return self.source
        out = torch.empty(self.shape, dtype=torch.float32, device=self.device)
        rows = max(1, min(self.length, (1 << 20) // max(1, self.shape[1])))
        buffers = ChunkBuffers(rows, self.shape[1], self.device)
        for i in range(0, self.length, rows):
            out[i:i + rows] = self.read(i, min(i + rows, self.length), buffers)[0]
        return out
