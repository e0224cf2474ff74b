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
from .models import MaskedLM

__all__ = ["Forward", "PlainForward"]


class Forward(ABC):
    """Logits for the loop (see the module docstring)."""

    def __init__(self, mlm: MaskedLM) -> None:
        self.mlm = mlm

    def begin_block(self, canvas: Canvas, block: Block) -> None:  # noqa: B027 - optional hook
        """Called before the first call of each block (caches reset here)."""

    @abstractmethod
    def logits(self, canvas: Canvas, positions: torch.Tensor, block: Block, call: int) -> torch.Tensor:
        """Float32 ``[P, V]`` logits at ``positions.nonzero()`` (row-major), never-sampled ids at ``-inf``.

        ``call`` is the 0-based index of the call within ``block``; ``positions`` lie inside the block's columns.
        """


class PlainForward(Forward):
    """The whole canvas through the model at every call (exact, no cache)."""

    def logits(self, canvas: Canvas, positions: torch.Tensor, block: Block, call: int) -> torch.Tensor:
        return self.mlm.logits(canvas.x, canvas.attention, positions=positions)
