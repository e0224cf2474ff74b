"""Type aliases and protocols for what users pass in: models, schedules, prompts, token ids, data.

These name the *shapes* of accepted inputs once, so signatures say more than ``Any``. They are for
readers and type checkers; runtime validation lives in :mod:`mdm_sched.validation`.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Protocol, Union, runtime_checkable

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from .models import MaskedLM
    from .oracle import Oracle
    from .profile import InformationProfile
    from .rules import RevealRule
    from .schedules import Schedule

__all__ = ["ModelLike", "TokenIds", "PromptLike", "ScheduleLike", "CurveLike", "PathLike", "GeneratorLike",
           "TokenizerLike", "HasLogits", "PastKeyValues", "CacheMode"]


@runtime_checkable
class HasLogits(Protocol):
    """What a model's forward returns in the Hugging Face convention: an object with ``.logits``."""

    logits: torch.Tensor


@runtime_checkable
class TokenizerLike(Protocol):
    """The part of a Hugging Face tokenizer the library uses (encode a batch, decode, special ids)."""

    def __call__(self, text: list[str], **kwargs: object) -> object: ...

    def batch_decode(self, ids: Sequence[Sequence[int]], **kwargs: object) -> list[str]: ...


#: A model the library accepts: its own adapter, any ``nn.Module`` (HF masked LM, LLaDA/Dream, an oracle).
ModelLike = Union["MaskedLM", nn.Module, "Oracle"]
#: One sequence of token ids.
TokenIds = Union[Sequence[int], torch.Tensor, np.ndarray]
#: Prompts for :func:`mdm_sched.generate`: a string, strings, token-id lists, or a ``[batch, length]`` tensor.
PromptLike = Union[str, Sequence[str], Sequence[int], Sequence[Sequence[int]], torch.Tensor]
#: What ``schedule=`` accepts: a Schedule, per-call sizes, an int (calls per block), a builder name, a rule.
ScheduleLike = Union["Schedule", Sequence[int], int, str, "RevealRule"]
#: A cross-entropy curve ``CE(0..N-1)`` or a profile that yields one.
CurveLike = Union[Sequence[float], np.ndarray, torch.Tensor, "InformationProfile"]
PathLike = Union[str, "os.PathLike[str]"]
GeneratorLike = Union[torch.Generator, Sequence[torch.Generator], None]
#: Held-out data: a datasets.Dataset, token-id sequences, strings, a 2-D tensor or a source spec string.
DataLike = Union[str, Iterable[Sequence[int]], Iterable[str], torch.Tensor, object]
#: A KV cache in Fast-dLLM's format: per layer a ``(key, value)`` pair, the sequence on dimension ``-2``.
PastKeyValues = Sequence[Sequence[torch.Tensor]]
#: ``generate(cache=...)``: reuse keys/values of the tokens before the block (``"prefix"``) or also after it (``"dual"``).
CacheMode = str
