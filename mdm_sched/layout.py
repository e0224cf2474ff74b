"""Layout: where content tokens sit in the model's input, and which model position's logits predict each.

The adapter's callers speak in *content* positions (no framing tokens; left or right padding under an
attention mask). :class:`Layout` turns a content batch into :class:`ModelInputs`, driven by the
family entry (:mod:`mdm_sched.families`):

- ``framing``: the prefix/suffix ids (CLS/SEP) go around each row's content;
- ``right_pad``: rows are re-laid out right-padded (a stable sort keeps content order), so absolute
  position embeddings see every row as they would see it alone;
- ``position_ids``: left-padded rows get position ids starting at 0 on the first real token, when
  the forward accepts them (what Dream's own generate does);
- ``shifted_logits``: content position ``j`` reads the logits of the model position before it, unless
  that is not content (the row's first position then reads its own, as Dream does);
- ``pairwise_mask``: :meth:`Layout.forward_mask` turns the ``[B, W]`` padding mask into the boolean
  ``[B, 1, W, W]`` query-key mask that Dream's generator builds (its attention takes no other form).

:func:`max_content_length` says how many content tokens fit in the model's position table.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .families import Family
from .tokens import config_value, first_int
from .validation import check_optional_int

__all__ = ["Layout", "ModelInputs", "max_content_length"]


@dataclass(frozen=True)
class ModelInputs:
    """One forward's inputs and the map back to content positions.

    Attributes:
        input_ids: ``[B, W]`` model input ids (framing and padding included).
        attention_mask: ``[B, W]`` bool (True = real token), or ``None`` when no row is padded.
        position_ids: ``[B, W]`` or ``None`` (the model's default positions).
        index: ``[B, L]``: for each content position, the model position whose logits predict it.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor | None
    position_ids: torch.Tensor | None
    index: torch.Tensor


class Layout:
    """Content batch -> :class:`ModelInputs` for one model (see the module docstring).

    Args:
        family: the family entry (reads ``framing``, ``right_pad``, ``position_ids``, ``shifted_logits``).
        framing: (prefix id, suffix id), either may be ``None``.
        pad_token_id: id written at padded positions (0 when the model has none: they are masked out anyway).
        accepts_position_ids: the model's forward takes ``position_ids``.
    """

    def __init__(self, family: Family, framing: tuple[int | None, int | None] = (None, None),
                 pad_token_id: int | None = None, accepts_position_ids: bool = False) -> None:
        self.family = family
        self.prefix, self.suffix = framing if family.framing else (None, None)
        self.pad = pad_token_id if pad_token_id is not None else 0
        self.pass_position_ids = family.position_ids and accepts_position_ids

    @property
    def n_framing(self) -> int:
        return int(self.prefix is not None) + int(self.suffix is not None)

    def __call__(self, ids: torch.Tensor, attn: torch.Tensor) -> ModelInputs:
        """Model inputs for content ``ids`` ``[B, L]`` under the boolean attention mask ``attn``."""
        padded = not bool(attn.all())
        if self.family.right_pad or self.n_framing:
            model_ids, model_attn, content, index = self._relaid(ids, attn)
        else:
            model_ids = torch.where(attn, ids, torch.full_like(ids, self.pad))
            model_attn, content = attn, attn
            index = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0).expand_as(ids)
        position_ids = None
        if padded and self.pass_position_ids:
            position_ids = (model_attn.long().cumsum(1) - 1).clamp(min=0)
        if self.family.shifted_logits:
            index = _read_previous(index, content)
        return ModelInputs(model_ids, model_attn if padded else None, position_ids, index)

    def forward_mask(self, attention_mask: torch.Tensor | None) -> torch.Tensor | None:
        """A ``[B, W]`` model attention mask (True/1 = real token) in the form the family's forward takes.

        ``[B, W]`` long 0/1 (the Hugging Face padding mask), or for ``pairwise_mask`` families the boolean
        ``[B, 1, W, W]`` mask of Dream's ``diffusion_generate``: query ``i`` attends key ``j`` when both are
        real (a padded query attends nothing; its output is never read).
        """
        if attention_mask is None:
            return None
        if self.family.pairwise_mask:
            real = attention_mask.bool()
            return real[:, None, :, None] & real[:, None, None, :]
        return attention_mask.long()

    def _relaid(self, ids: torch.Tensor, attn: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``[prefix] content [suffix] pad...`` per row: (model ids, model attention, content mask, index)."""
        b, l = ids.shape
        device = ids.device
        order = torch.argsort((~attn).to(torch.int8), dim=1, stable=True)  # real tokens first, in order
        compact = ids.gather(1, order)
        n_valid = attn.sum(1, keepdim=True)
        n_pre = int(self.prefix is not None)
        width = l + self.n_framing
        model_ids = torch.full((b, width), self.pad, dtype=ids.dtype, device=device)
        body_valid = torch.arange(l, device=device).unsqueeze(0) < n_valid
        model_ids[:, n_pre:n_pre + l] = torch.where(body_valid, compact, torch.full_like(compact, self.pad))
        if self.prefix is not None:
            model_ids[:, 0] = self.prefix
        if self.suffix is not None:
            model_ids.scatter_(1, n_valid + n_pre, self.suffix)
        cols = torch.arange(width, device=device).unsqueeze(0)
        model_attn = cols < n_valid + self.n_framing
        content = (cols >= n_pre) & (cols < n_valid + n_pre)
        index = torch.argsort(order, dim=1) + n_pre  # inverse permutation: content col -> model col
        return model_ids, model_attn, content, index


def _read_previous(index: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """Shift ``index`` one model position back where that position holds content (else keep it)."""
    prev = (index - 1).clamp(min=0)
    ok = (index > 0) & content.gather(1, prev)
    return torch.where(ok, prev, index)


def _embeddings(model: nn.Module) -> nn.Module | None:
    base = getattr(model, "base_model", None)
    return getattr(base if isinstance(base, nn.Module) else model, "embeddings", None)


def max_content_length(model: nn.Module, n_framing: int, explicit: int | None = None) -> int | None:
    """Content positions the model takes: ``explicit``, else its position table (or config) minus framing.

    ``None`` when nothing says (models with relative positions and no configured maximum).
    """
    if explicit is not None:
        return check_optional_int(explicit, "max_length", minimum=1)
    limit = None
    pos = getattr(_embeddings(model), "position_embeddings", None)
    if isinstance(pos, nn.Embedding):
        limit = pos.num_embeddings
        if pos.padding_idx is not None:  # RoBERTa-style: positions start after padding_idx
            limit -= pos.padding_idx + 1
    if limit is None:
        limit = first_int(config_value(model, "max_position_embeddings", "max_sequence_length", "n_positions"))
    return None if limit is None else max(int(limit) - n_framing, 0)
