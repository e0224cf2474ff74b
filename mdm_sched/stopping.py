"""When a row is finished: end-of-sequence ids and stop strings.

* **EOS ids** (``stop_at_eos=True`` for the model's EOS, an id, or a list of ids): once a row commits one of
  them in the generated span, every still-masked position after it is filled with that row's first EOS id
  (``fill_id``); positions before it are still generated.
* **Stop strings** (``stop_strings=[...]``, needs a tokenizer): once the filled prefix of a row's generated
  span (the tokens before its first masked position, special tokens kept) decodes to text containing a stop string, every
  still-masked position after the token that completed it is filled. The text keeps the stop string, as in
  transformers' ``generate``.

Filled positions are revealed at the call that triggered them and never cost a model call: a block (and a
batch) whose rows are all filled makes no more calls.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .canvas import Canvas

__all__ = ["Stopping"]


class Stopping:
    """EOS ids and stop strings of one run (see the module docstring)."""

    def __init__(self, eos_ids: Sequence[int], fill_id: int | None, stop_strings: Sequence[str] = (),
                 decode: Callable[[list[list[int]]], list[str]] | None = None) -> None:
        self.eos = torch.tensor(list(eos_ids), dtype=torch.long)
        self.fill_id = fill_id
        self.stop_strings = tuple(stop_strings)
        self.decode = decode
        self._checked: list[int] | None = None  # per row: filled-prefix length already searched

    @property
    def active(self) -> bool:
        return bool(self.eos.numel()) or bool(self.stop_strings)

    def apply(self, canvas: Canvas, call: int) -> None:
        """Fill after committed EOS ids and completed stop strings (a no-op when nothing is configured)."""
        if self.eos.numel():
            cols = torch.arange(canvas.x.shape[1], device=canvas.x.device)
            is_eos = torch.isin(canvas.x, self.eos.to(canvas.x.device)) & (cols >= canvas.prompt_length)
            self._fill_after(canvas, is_eos & ~canvas.masked & canvas.attention, call)
        if self.stop_strings:
            self._fill_after(canvas, self._stop_marks(canvas), call)

    def _fill_after(self, canvas: Canvas, marks: torch.Tensor, call: int) -> None:
        fill = canvas.masked & (marks.long().cumsum(1) > 0)
        if bool(fill.any()):
            assert self.fill_id is not None
            canvas.x[fill] = self.fill_id
            canvas.reveal_step[fill] = call
            canvas.masked &= ~fill

    def _stop_marks(self, canvas: Canvas) -> torch.Tensor:
        """``[B, L]`` True at the token of each row that completes a stop string (first one only)."""
        assert self.decode is not None
        p = canvas.prompt_length
        b = canvas.x.shape[0]
        if self._checked is None:
            self._checked = [0] * b
        marks = torch.zeros_like(canvas.masked)
        gen, masked = canvas.x[:, p:].tolist(), canvas.masked[:, p:]
        filled = torch.where(masked.any(1), masked.long().argmax(1), torch.full((b,), masked.shape[1])).tolist()
        for row in range(b):  # text matching per row: a loop over rows, not over the model's work
            for j in range(self._checked[row] + 1, filled[row] + 1):
                text = self.decode([gen[row][:j]])[0]
                if any(s in text for s in self.stop_strings):
                    marks[row, p + j - 1] = True
                    filled[row] = masked.shape[1]  # finished: never searched again
                    break
            self._checked[row] = filled[row]
        return marks
