"""How one model call is made: the seam where KV caches and guidance plug into the loop.

The sampling loop asks a :class:`Forward` for logits at some positions of the canvas; it never calls the
model itself. :class:`PlainForward` runs the whole canvas through the adapter every call;
:class:`GuidedForward` mixes a conditional and an unconditional pass (LLaDA's guidance); :class:`PrefixCache`
and :class:`DualCache` reuse keys and values (Fast-dLLM, arXiv 2505.22618, ``llada/generate.py``).

KV caches (``generate(cache="prefix" | "dual")``), for models whose forward takes ``past_key_values`` and
``use_cache`` (Fast-dLLM's LLaDA and Dream modeling files; :meth:`~mdm_sched.models.MaskedLM.check_kv_cache`
says what a model lacks):

* The first model call of each block runs the whole canvas with ``use_cache=True``; its logits serve that call,
  exactly as without a cache, and its keys/values are kept.
* ``"prefix"`` (``generate_with_prefix_cache``): the block's later calls run the block and everything after it,
  with the keys/values of the columns before the block from that first call.
* ``"dual"`` (``generate_with_dual_cache``): the later calls run the block alone, with the keys/values of every
  other column (before and after the block) from the first call; ``replace_position`` tells the model which
  cached entries the block's fresh ones replace.

This is an approximation: the cached keys/values are those of the first call, while a plain call recomputes
them from the current canvas (tokens revealed since then change them through bidirectional attention). It is
exact when no column attends to columns after it (a causal model): the prefix then never changes within a
block, and the block cannot see the stale suffix. The block's window is the block's columns, widened to any
prompt masks infilled with the first block; a call that needs logits outside it (a callback re-masked a
column) refills the cache. For models whose logits at ``i`` predict ``i + 1`` (Dream) the window starts one
column earlier, so every position reads the logits a plain call would give it (Fast-dLLM's Dream loop lets the
block's first position read its own). Fast-dLLM's loops call the model once more after a call that filled the
block (its ``while`` loop tests for masks after calling): that call reveals nothing, and is not reproduced here
(the loop stops when the block is filled), so tokens are the same and ``nfe`` is lower by one in such blocks.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch

from ._types import CacheMode, PastKeyValues
from .canvas import Block, Canvas
from .logit_rows import LogitRows
from .models import MaskedLM

__all__ = ["Forward", "PlainForward", "GuidedForward", "CachedForward", "PrefixCache", "DualCache", "CACHES",
           "make_forward"]


class Forward(ABC):
    """Logits for the loop (see the module docstring)."""

    def __init__(self, mlm: MaskedLM) -> None:
        self.mlm = mlm

    def begin_block(self, canvas: Canvas, block: Block) -> None:  # noqa: B027 - optional hook
        """Called before the first call of each block (caches reset here)."""

    @abstractmethod
    def logits(self, canvas: Canvas, positions: torch.Tensor, block: Block, call: int) -> LogitRows:
        """``[P, V]`` logits at ``positions.nonzero()`` (row-major), read as float32 with never-sampled ids at ``-inf``.

        ``call`` is the 0-based index of the call within ``block``; ``positions`` lie inside the block's columns.
        """


class PlainForward(Forward):
    """The whole canvas through the model at every call (exact, no cache)."""

    def logits(self, canvas: Canvas, positions: torch.Tensor, block: Block, call: int) -> LogitRows:
        return self.mlm.logit_rows(canvas.x, canvas.attention, positions)


class GuidedForward(Forward):
    """LLaDA's unsupervised classifier-free guidance: ``un + (scale + 1) (cond - un)``.

    The unconditional pass sees the same canvas with every prompt token replaced by the mask id; both passes
    run as one batched forward (``2B`` rows), as LLaDA's ``generate(cfg_scale=...)`` does.
    """

    def __init__(self, mlm: MaskedLM, scale: float) -> None:
        super().__init__(mlm)
        self.scale = float(scale)

    def logits(self, canvas: Canvas, positions: torch.Tensor, block: Block, call: int) -> LogitRows:
        # every prompt column, padding included, as LLaDA's `un_x[prompt_index] = mask_id` (padding stays unattended)
        prompt = torch.arange(canvas.x.shape[1], device=canvas.x.device) < canvas.prompt_length
        uncond = canvas.x.masked_fill(prompt.unsqueeze(0), self.mlm.mask_token_id)
        both = self.mlm.logits(torch.cat([canvas.x, uncond]), torch.cat([canvas.attention, canvas.attention]),
                               positions=torch.cat([positions, positions]))
        cond, un = both.chunk(2, dim=0)
        guided = un + (self.scale + 1.0) * (cond - un)
        guided = guided.masked_fill(torch.isinf(cond), float("-inf"))  # never-sampled ids stay -inf (not NaN)
        return LogitRows(guided, origin="classifier-free guidance")


class CachedForward(Forward):
    """A KV cache filled by the first call of each block (see the module docstring); subclasses set ``mode``."""

    mode: ClassVar[str]
    #: True: later calls run the window alone and the model replaces its cached entries (dual);
    #: False: they run the window and everything after it, on the keys/values before it (prefix).
    replace: ClassVar[bool]

    def __init__(self, mlm: MaskedLM) -> None:
        super().__init__(mlm)
        mlm.check_kv_cache(self.mode)
        self.past: PastKeyValues | None = None
        self.window = (0, 0)  # content columns whose tokens and logits later calls recompute
        self.span = (0, 0)  # model columns later calls run

    def begin_block(self, canvas: Canvas, block: Block) -> None:
        self.past = None

    def logits(self, canvas: Canvas, positions: torch.Tensor, block: Block, call: int) -> LogitRows:
        cols = positions.any(0).nonzero().squeeze(1)
        inside = cols.numel() == 0 or (int(cols[0]) >= self.window[0] and int(cols[-1]) < self.window[1])
        if self.past is not None and inside:
            rows, past = self.mlm.kv_logit_rows(canvas.x, canvas.attention, positions, span=self.span,
                                                 past=self.past, replace=self.replace)
            if self.replace:  # dual: the returned cache is the full one with the window replaced
                self.past = past
            return rows  # prefix: the returned cache grew by the columns run; the next call needs the prefix alone
        rows, past = self.mlm.kv_logit_rows(canvas.x, canvas.attention, positions)
        self._keep(past, canvas, block, positions)
        return rows

    def _keep(self, past: PastKeyValues, canvas: Canvas, block: Block, positions: torch.Tensor) -> None:
        """Set the window from the block (and what is to be revealed in it) and keep the cache it needs."""
        width = canvas.x.shape[1]
        todo = ((canvas.masked & block.columns) | positions).any(0).nonzero().squeeze(1)
        lo, hi = block.start, block.end
        if todo.numel():
            lo, hi = min(lo, int(todo[0])), max(hi, int(todo[-1]) + 1)
        self.window = (lo, hi)
        start, end = self.mlm.kv_columns(lo, hi)
        self.span = (start, end) if self.replace else (start, width)
        for layer in past:
            for t in layer:
                if t.ndim < 2 or t.shape[-2] != width:
                    raise ValueError(f"cache={self.mode!r}: {type(self.mlm.model).__name__} returned cached tensors of "
                                     f"shape {tuple(t.shape)}; expected the sequence ({width} columns) on dimension -2")
        self.past = past if self.replace else [tuple(t[..., :start, :] for t in layer) for layer in past]


class PrefixCache(CachedForward):
    """Fast-dLLM's prefix cache: later calls of a block run the block and what follows it."""

    mode = "prefix"
    replace = False


class DualCache(CachedForward):
    """Fast-dLLM's dual cache: later calls of a block run the block alone (``replace_position``)."""

    mode = "dual"
    replace = True


#: The KV cache strategies by ``cache=`` name.
CACHES: dict[str, type[CachedForward]] = {"prefix": PrefixCache, "dual": DualCache}


def make_forward(mlm: MaskedLM, cfg_scale: float = 0.0, cache: CacheMode | None = None) -> Forward:
    """The forward strategy for a run's settings (``cache`` with ``cfg_scale > 0`` is refused)."""
    if cache is not None:
        if cfg_scale > 0:
            raise ValueError("cache= does not support classifier-free guidance: use cfg_scale=0 or cache=None")
        if cache not in CACHES:
            raise ValueError(f"cache={cache!r} is unknown; choose one of {', '.join(CACHES)} (or None)")
        return CACHES[cache](mlm)
    return GuidedForward(mlm, cfg_scale) if cfg_scale > 0 else PlainForward(mlm)
