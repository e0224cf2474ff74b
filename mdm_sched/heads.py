"""Positions-only logits: apply the model's LM head only where logits are needed.

Vocabularies of 100k+ tokens make the full ``[B, L, V]`` logits the memory peak. When the model
exposes its LM head (``model.cls``, ``model.lm_head`` or ``get_output_embeddings()``),
:class:`PositionsHead` runs the transformer body once with the head intercepted (it returns an empty
``[..., 0]`` tensor inside the forward), keeps the hidden states that entered it, and applies the head
only at the requested positions.

The first use verifies each candidate head once, on a short probe (at most 16 tokens of the longest
row), against the model's own full logits. A head whose output the model post-processes in a way
the adapter cannot see fails that check; when no candidate passes, the shortcut is switched off for
good (with a warning) and callers use full logits, so the shortcut can never change results.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .layout import ModelInputs

__all__ = ["PositionsHead", "Forward", "output_embeddings", "head_candidates"]

#: The adapter's raw forward: (input_ids, attention_mask or None, position_ids or None) -> logits.
Forward = Callable[[torch.Tensor, "torch.Tensor | None", "torch.Tensor | None"], torch.Tensor]
_PROBE_TOKENS = 16


def output_embeddings(model: nn.Module) -> nn.Module | None:
    """``model.get_output_embeddings()`` when it returns a module (some remote-code models raise instead)."""
    getter = getattr(model, "get_output_embeddings", None)
    if not callable(getter):
        return None
    try:
        head = getter()
    except Exception:
        return None
    return head if isinstance(head, nn.Module) else None


def head_candidates(model: nn.Module) -> list[nn.Module]:
    """Modules whose output may be the logits: the full MLM head first (so its transform also runs only
    where needed), then ``lm_head``, then the output embedding; duplicates removed."""
    found: list[nn.Module] = []
    for cand in (getattr(model, "cls", None), getattr(model, "lm_head", None), output_embeddings(model)):
        if isinstance(cand, nn.Module) and all(cand is not f for f in found):
            found.append(cand)
    return found


class PositionsHead:
    """The LM-head shortcut of one model: candidates, one-time verification and the fallback.

    Args:
        model: the wrapped module.
        enabled: ``False`` switches the shortcut off; ``None``/``True``: use it when a candidate verifies.
    """

    def __init__(self, model: nn.Module, enabled: bool | None = None) -> None:
        self.model = model
        self.candidates: list[nn.Module] = head_candidates(model) if enabled is not False else []
        self.verified = False

    @property
    def state(self) -> str:
        """``"unverified"`` (not used yet), ``"verified"`` (in use) or ``"off"`` (full logits)."""
        return "off" if not self.candidates else ("verified" if self.verified else "unverified")

    def logits_at(self, forward: Forward, inputs: ModelInputs, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor | None:
        """Model-dtype logits at model positions ``(rows, cols)``, ``[P, V]``; ``None`` when the shortcut is off."""
        if self.candidates and not self.verified:
            self._verify(forward, inputs)
        if not self.verified:
            return None
        head = self.candidates[0]
        hidden, _ = _capture(head, forward, inputs.input_ids, inputs.attention_mask, inputs.position_ids, full=False)
        if hidden is None:
            raise RuntimeError(f"{type(self.model).__name__}: the LM head was not called during the forward; "
                               "wrap(..., positions_only=False)")
        return head(hidden[rows, cols])

    def _verify(self, forward: Forward, inputs: ModelInputs) -> None:
        """Keep the first candidate whose output on a short probe equals the model's own logits."""
        probe = _probe(inputs.input_ids, inputs.attention_mask)
        while self.candidates:
            head = self.candidates[0]
            try:
                hidden, full = _capture(head, forward, probe, None, None, full=True)
            except Exception:
                hidden, full = None, None
            if full is not None and bool((torch.isnan(full) | (full == float("inf"))).any()):
                return  # undecidable on broken logits; the caller's full path raises on them
            if full is not None and _head_matches(head, hidden, full):
                self.verified = True
                return
            self.candidates.pop(0)
        warnings.warn(f"{type(self.model).__name__}: could not apply the LM head at selected positions only; "
                      "using full logits (same results, more memory)", stacklevel=5)


def _probe(model_ids: torch.Tensor, model_attn: torch.Tensor | None) -> torch.Tensor:
    """The first real tokens of the longest row, ``[1, <=16]``: never the large ``[B, L, V]`` tensor."""
    if model_attn is None:
        return model_ids[:1, :_PROBE_TOKENS]
    row = int(model_attn.sum(1).argmax())
    return model_ids[row][model_attn[row].bool()][:_PROBE_TOKENS].unsqueeze(0)


def _capture(head: nn.Module, forward: Forward, ids: torch.Tensor, attn: torch.Tensor | None,
             position_ids: torch.Tensor | None, full: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """One forward with ``head`` intercepted: (hidden states entering the head, full logits or ``None``)."""
    store: list[torch.Tensor] = []
    had_attr = "forward" in head.__dict__
    original = head.forward

    def capture(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        store.append(x)
        if full:
            return original(x, *args, **kwargs)
        return x.new_zeros(x.shape[:-1] + (0,))  # the [.., V] product is what we avoid

    head.forward = capture  # type: ignore[method-assign]
    try:
        logits = forward(ids, attn, position_ids)
    finally:
        if had_attr:
            head.forward = original  # type: ignore[method-assign]
        else:
            del head.forward
    hidden = store[-1] if len(store) == 1 else None  # a head called twice is not a plain head
    return hidden, (logits if full else None)


def _head_matches(head: nn.Module, hidden: torch.Tensor | None, full: torch.Tensor) -> bool:
    """Does ``head(hidden)`` row by row reproduce the model's own logits ``full`` ``[1, n, V]``?"""
    if hidden is None or hidden.shape[:2] != full.shape[:2]:
        return False
    try:
        got = head(hidden[0]).float()
    except Exception:
        return False
    want = full[0].float()
    if got.shape != want.shape:
        return False
    fin = torch.isfinite(want)
    if not torch.equal(fin, torch.isfinite(got)):
        return False
    if not bool(fin.any()):
        return True
    tol = 1e-4 if hidden.dtype in (torch.float32, torch.float64) else 3e-2  # half precision GEMMs differ more
    scale = float(want[fin].abs().max())
    return float((got[fin] - want[fin]).abs().max()) <= tol * (1.0 + scale)
