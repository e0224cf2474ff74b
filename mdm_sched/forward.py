"""How one model call is made: the seam where KV caches and guidance plug into the loop.

The sampling loop asks a :class:`Forward` for logits at some positions of the canvas; it never calls the
model itself. :class:`PlainForward` runs the whole canvas through the adapter every call. Other strategies
(a KV cache that reuses the keys and values of the tokens before the block, classifier-free guidance that
mixes a conditional and an unconditional pass) implement the same two methods.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from .canvas import Block, Canvas
from .logit_rows import LogitRows
from .models import MaskedLM

__all__ = ["Forward", "PlainForward", "GuidedForward", "make_forward"]


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
        cols = torch.arange(canvas.x.shape[1], device=canvas.x.device)
        prompt = canvas.attention & (cols < canvas.prompt_length)
        uncond = canvas.x.masked_fill(prompt, self.mlm.mask_token_id)
        both = self.mlm.logits(torch.cat([canvas.x, uncond]), torch.cat([canvas.attention, canvas.attention]),
                               positions=torch.cat([positions, positions]))
        cond, un = both.chunk(2, dim=0)
        guided = un + (self.scale + 1.0) * (cond - un)
        guided = guided.masked_fill(torch.isinf(cond), float("-inf"))  # never-sampled ids stay -inf (not NaN)
        return LogitRows(guided, origin="classifier-free guidance")


def make_forward(mlm: MaskedLM, cfg_scale: float = 0.0) -> Forward:
    """The forward strategy for a run's settings."""
    return GuidedForward(mlm, cfg_scale) if cfg_scale > 0 else PlainForward(mlm)
