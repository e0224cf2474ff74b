"""User hooks into the loop: logits processors, a per-call callback, and a text streamer.

* ``logits_processor``: a transformers ``LogitsProcessorList`` (or any callable ``(input_ids, scores) -> scores``)
  applied to the ``[P, V]`` logits of the positions about to be drawn. ``input_ids`` is the canvas row of each
  position (``[P, L]``: its context, mask ids where still masked); ``positions=`` (column of each row) and
  ``rows=`` (batch row) are passed as keyword arguments to processors that accept them. Never-sampled ids stay
  at ``-inf`` whatever the processor does.
* ``callback_on_step_end(step, state)``: called after every model call with the 1-based call number and a
  :class:`StepState`. The callback may edit ``state.sequences`` in place (a masked position given a token is
  revealed; a position set to the mask id is masked again, if its block is not finished) and may set
  ``state.stop = True`` to end generation after this call (positions still masked keep the mask id).
* ``streamer``: a transformers streamer (``put(ids)`` / ``end()``, e.g. ``TextStreamer``) for a batch of one:
  the prompt first, then after each call the generated tokens that became final (the filled prefix of the
  generated span).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from ._signature import accepts
from .canvas import Canvas
from .logit_rows import LogitRows

__all__ = ["StepState", "Hooks", "Streamer"]


class Streamer(Protocol):
    """What transformers' streamers implement."""

    def put(self, value: torch.Tensor) -> None: ...

    def end(self) -> None: ...


@dataclass
class StepState:
    """What ``callback_on_step_end`` sees: the canvas after a call (``sequences`` may be edited in place)."""

    call: int
    block: int
    sequences: torch.Tensor
    masked: torch.Tensor
    attention_mask: torch.Tensor
    prompt_length: int
    stop: bool = False


@dataclass
class Hooks:
    """The hooks of one generation run (each optional)."""

    logits_processor: Callable[..., torch.Tensor] | None = None
    callback_on_step_end: Callable[[int, StepState], Any] | None = None
    streamer: Streamer | None = None
    _streamed: int = 0

    def check(self, batch: int) -> None:
        for name in ("logits_processor", "callback_on_step_end"):
            fn = getattr(self, name)
            if fn is not None and not callable(fn):
                raise TypeError(f"{name} must be callable, got {type(fn).__name__}")
        if self.streamer is not None:
            if not (callable(getattr(self.streamer, "put", None)) and callable(getattr(self.streamer, "end", None))):
                raise TypeError("streamer must have put(ids) and end() methods (e.g. transformers.TextStreamer)")
            if batch != 1:
                raise ValueError(f"streamer= streams one sequence but the batch has {batch} rows: generate one "
                                 "prompt with num_samples=1, or drop streamer=")

    def process(self, logits: torch.Tensor | LogitRows, canvas: Canvas, positions: torch.Tensor,
                never: torch.Tensor) -> torch.Tensor | LogitRows:
        """Apply the logits processor to ``[P, V]`` logits at ``positions`` (row-major)."""
        if self.logits_processor is None:
            return logits
        if isinstance(logits, LogitRows):
            logits = logits.materialize()  # the processor sees a plain float32 tensor
        rows, cols = positions.nonzero(as_tuple=True)
        kwargs: dict[str, torch.Tensor] = {}
        for name, value in (("positions", cols), ("rows", rows)):
            if isinstance(self.logits_processor, list) or accepts(self.logits_processor, name):
                kwargs[name] = value
        out = self.logits_processor(canvas.x[rows], logits, **kwargs)
        if not isinstance(out, torch.Tensor) or out.shape != logits.shape:
            raise ValueError(f"logits_processor must return a tensor of shape {tuple(logits.shape)}, got "
                             f"{getattr(out, 'shape', type(out).__name__)}")
        return out.float().masked_fill(never, float("-inf"))

    def start(self, canvas: Canvas) -> None:
        if self.streamer is not None:
            self.streamer.put(canvas.x[0, :canvas.prompt_length][canvas.attention[0, :canvas.prompt_length]].cpu())

    def after_call(self, canvas: Canvas, call: int, block: int, mask_id: int) -> bool:
        """Run the callback and the streamer after a call; returns True when generation must stop."""
        stop = False
        if self.callback_on_step_end is not None:
            state = StepState(call=call, block=block, sequences=canvas.x, masked=canvas.masked.clone(),
                              attention_mask=canvas.attention, prompt_length=canvas.prompt_length)
            self.callback_on_step_end(call, state)
            canvas.masked = (canvas.x == mask_id) & canvas.attention
            stop = bool(state.stop)
        self._stream(canvas)
        return stop

    def _stream(self, canvas: Canvas) -> None:
        if self.streamer is None:
            return
        gen_masked = canvas.masked[0, canvas.prompt_length:]
        done = int(gen_masked.numel() if not bool(gen_masked.any()) else int(gen_masked.long().argmax()))
        if done > self._streamed:
            start = canvas.prompt_length + self._streamed
            self.streamer.put(canvas.x[0, start:canvas.prompt_length + done].cpu())
            self._streamed = done

    def finish(self) -> None:
        if self.streamer is not None:
            self.streamer.end()
