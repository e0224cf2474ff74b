"""Token policy: which ids mean mask, padding, EOS and framing for a model, and which ids are never sampled.

Each id is resolved once, in this order: the explicit argument, the tokenizer, the model's config,
then the family's default (:attr:`~mdm_sched.families.Family.default_mask_token_id`). The
never-sampled set follows the family's special-token policy
(:attr:`~mdm_sched.families.Family.suppress_special_tokens`) plus ``suppress_tokens=``, and
``allowed_tokens=`` restricts sampling further. :meth:`TokenPolicy.never_sampled` turns it into the
boolean ``[V]`` mask that the logits are filled with ``-inf`` under, cached per vocabulary size and device.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from .families import Family
from .validation import check_int, is_int

__all__ = ["TokenPolicy", "first_int", "tokenizer_id", "config_value", "token_ids"]

Framing = tuple[int | None, int | None]


def first_int(*values: object) -> int | None:
    """The first integer among ``values`` (a list or tuple stands for its first element), else ``None``.

    Configs store some ids as lists (several EOS ids); the first one is the canonical id.
    """
    for v in values:
        if isinstance(v, (list, tuple)) and v:
            v = v[0]
        if is_int(v):
            return int(v)  # type: ignore[call-overload]
    return None


def tokenizer_id(tokenizer: Any, name: str) -> int | None:
    """``tokenizer.<name>`` when it is an integer id (``None`` for a missing tokenizer or attribute)."""
    return first_int(getattr(tokenizer, name, None)) if tokenizer is not None else None


def config_value(model: nn.Module, *names: str) -> object | None:
    """First non-None attribute of ``model.config`` among ``names``."""
    config = getattr(model, "config", None)
    for name in names:
        value = getattr(config, name, None) if config is not None else None
        if value is not None:
            return value
    return None


def token_ids(tokens: Iterable[int | str] | int | str, tokenizer: Any, argname: str) -> list[int]:
    """Token ids of ``tokens`` (ids, or token strings looked up in ``tokenizer``); ``argname`` names errors."""
    if isinstance(tokens, (str, int)):
        tokens = [tokens]
    out = []
    for t in tokens:
        if isinstance(t, str):
            out.append(_string_id(t, tokenizer, argname))
        elif is_int(t) or (isinstance(t, torch.Tensor) and t.numel() == 1 and not t.is_floating_point()):
            out.append(int(t))  # type: ignore[call-overload]
        else:
            raise TypeError(f"{argname} must hold token ids (int) or token strings, got {type(t).__name__}")
    return out


def _string_id(token: str, tokenizer: Any, argname: str) -> int:
    if tokenizer is None:
        raise ValueError(f"{argname} contains the string {token!r} but no tokenizer is known: "
                         "pass token ids or wrap(..., tokenizer=...)")
    tid = tokenizer.convert_tokens_to_ids(token)
    if tid is None or (tid == tokenizer_id(tokenizer, "unk_token_id") and token != getattr(tokenizer, "unk_token", None)):
        raise ValueError(f"{argname}: token {token!r} is not in the tokenizer's vocabulary")
    return int(tid)


def _explicit_id(value: object, name: str) -> int | None:
    """An id passed by the caller: ``None``, an int (or a list whose first element is one), >= 0."""
    if isinstance(value, (list, tuple)) and value:
        value = value[0]
    return None if value is None else check_int(value, name, minimum=0, hint=" (a token id)")


class TokenPolicy:
    """The special ids of one model and the set of ids it never samples.

    Attributes: ``mask_token_id``, ``pad_token_id``, ``eos_token_id``, ``framing`` (prefix id, suffix id;
    ``(None, None)`` for families without framing), ``never`` (ids never sampled, before ``allowed``),
    ``allowed`` (ids that may be sampled, or ``None`` for all), ``layout_ids`` (ids that are layout, not content:
    framing, padding distinct from EOS and, for families that suppress special tokens, every special token but the
    mask and ``[UNK]``; prompts may not hold them, see :func:`mdm_sched.generate`).
    """

    def __init__(self, *, mask_token_id: int, pad_token_id: int | None, eos_token_id: int | None,
                 framing: Framing, never: Iterable[int], allowed: Iterable[int] | None = None,
                 layout_ids: Iterable[int] = ()) -> None:
        self.mask_token_id = mask_token_id
        self.pad_token_id = pad_token_id
        self.eos_token_id = eos_token_id
        self.framing: Framing = framing
        self.never: frozenset[int] = frozenset(never)
        self.allowed: frozenset[int] | None = None if allowed is None else frozenset(allowed)
        self.layout_ids: frozenset[int] = frozenset(layout_ids) - {mask_token_id}
        self.suppressed: frozenset[int] = frozenset()  # the caller's suppress_tokens (set by resolve)
        if self.allowed is not None and not self.allowed:
            raise ValueError("allowed_tokens is empty: pass at least one token that may be sampled")
        self._masks: dict[tuple[int, torch.device], torch.Tensor] = {}

    @classmethod
    def resolve(cls, family: Family, model: nn.Module, tokenizer: Any = None, *, mask_token_id: int | None = None,
                pad_token_id: int | None = None, eos_token_id: int | None = None, framing: Framing | None = None,
                suppress_tokens: Iterable[int | str] | None = None,
                allowed_tokens: Iterable[int | str] | None = None, force_mask_token_id: bool = False) -> TokenPolicy:
        """Resolve every id from the explicit arguments, then ``tokenizer``, then ``model.config``, then ``family``.

        An explicit ``mask_token_id`` that contradicts the tokenizer's is an error unless ``force_mask_token_id``."""
        explicit = _explicit_id(mask_token_id, "mask_token_id")
        known = tokenizer_id(tokenizer, "mask_token_id")
        if explicit is not None and known is not None and explicit != known and not force_mask_token_id:
            raise ValueError(f"mask_token_id={explicit} contradicts the tokenizer's mask token "
                             f"{getattr(tokenizer, 'mask_token', None)!r} (id {known}): drop mask_token_id=, or pass "
                             "force_mask_token_id=True if the model really masks with another id")
        mask = _resolve_mask_id(family, model, tokenizer, explicit)
        pad = first_int(_explicit_id(pad_token_id, "pad_token_id"), tokenizer_id(tokenizer, "pad_token_id"),
                        config_value(model, "pad_token_id"))
        eos = first_int(_explicit_id(eos_token_id, "eos_token_id"), tokenizer_id(tokenizer, "eos_token_id"),
                        config_value(model, "eos_token_id"))
        frame = _resolve_framing(family, model, tokenizer, framing)
        never = {mask}
        layout = {i for i in frame if i is not None}
        if family.suppress_special_tokens:
            never |= {i for i in (*frame, pad) if i is not None}
            never |= {int(i) for i in (getattr(tokenizer, "all_special_ids", None) or [])}
            layout = set(never) - {tokenizer_id(tokenizer, "unk_token_id")}  # [UNK] is input the model knows
        elif pad is not None and pad != eos:
            never.add(pad)  # diffusion LMs often pad with EOS, which must stay samplable (it ends the text)
            layout.add(pad)
        suppressed = set() if suppress_tokens is None else set(token_ids(suppress_tokens, tokenizer, "suppress_tokens"))
        never |= suppressed
        allowed = None if allowed_tokens is None else token_ids(allowed_tokens, tokenizer, "allowed_tokens")
        policy = cls(mask_token_id=mask, pad_token_id=pad, eos_token_id=eos, framing=frame, never=never, allowed=allowed,
                     layout_ids=layout)
        policy.suppressed = frozenset(suppressed)
        return policy

    @property
    def n_framing(self) -> int:
        """How many framing tokens surround the content (0, 1 or 2)."""
        return sum(i is not None for i in self.framing)

    def never_sampled(self, vocab_size: int, device: torch.device | str | None = None) -> torch.Tensor:
        """Boolean ``[vocab_size]`` mask of the ids never sampled, cached per (size, device); do not modify it.

        Raises:
            ValueError: every id would be suppressed (``allowed_tokens``/``suppress_tokens`` leave nothing).
        """
        dev = torch.device(device) if device is not None else torch.device("cpu")
        key = (int(vocab_size), dev)
        mask = self._masks.get(key)
        if mask is None:
            cpu = self._masks.get((key[0], torch.device("cpu")))
            mask = (cpu if cpu is not None else self._build(key[0])).to(dev)
            self._masks[key] = mask
        return mask

    def _build(self, vocab_size: int) -> torch.Tensor:
        mask = torch.zeros(vocab_size, dtype=torch.bool)
        mask[torch.tensor([i for i in self.never if 0 <= i < vocab_size], dtype=torch.long)] = True
        if self.allowed is not None:
            allowed = torch.zeros(vocab_size, dtype=torch.bool)
            allowed[torch.tensor([i for i in self.allowed if 0 <= i < vocab_size], dtype=torch.long)] = True
            mask |= ~allowed
        if bool(mask.all()):
            raise ValueError("every token is suppressed: check allowed_tokens / suppress_tokens")
        return mask

    def __repr__(self) -> str:
        return (f"TokenPolicy(mask={self.mask_token_id}, pad={self.pad_token_id}, eos={self.eos_token_id}, "
                f"framing={self.framing}, never={sorted(self.never)}, "
                f"allowed={None if self.allowed is None else len(self.allowed)})")


def _resolve_mask_id(family: Family, model: nn.Module, tokenizer: Any, explicit: int | None) -> int:
    found = first_int(explicit, tokenizer_id(tokenizer, "mask_token_id"), config_value(model, "mask_token_id"),
                      getattr(model, "mask_token_id", None), family.default_mask_token_id)
    if found is None:
        raise ValueError("no mask token known for this model: pass mask_token_id=<id> (to wrap/generate), "
                         "or a tokenizer with a mask token, or a config with mask_token_id")
    if found < 0:
        raise ValueError(f"mask_token_id must be a non-negative token id, got {found}")
    return found


def _resolve_framing(family: Family, model: nn.Module, tokenizer: Any, explicit: Framing | None) -> Framing:
    """(prefix id, suffix id): explicit, else the tokenizer's CLS/BOS and SEP/EOS (the config's without one)."""
    if explicit is not None:
        if not family.framing:
            raise ValueError(f"framing= is only used by families with framing tokens; family {family.name!r} has none "
                             "(drop framing=, or pass family='bert')")
        if not (isinstance(explicit, (tuple, list)) and len(explicit) == 2):
            raise ValueError("framing must be a pair (prefix_id or None, suffix_id or None), e.g. (cls_id, sep_id)")
        return (_explicit_id(explicit[0], "framing[0]"), _explicit_id(explicit[1], "framing[1]"))
    if not family.framing:
        return (None, None)
    tok = tokenizer
    prefix = first_int(tokenizer_id(tok, "cls_token_id"), tokenizer_id(tok, "bos_token_id"),
                       config_value(model, "cls_token_id", "bos_token_id") if tok is None else None)
    suffix = first_int(tokenizer_id(tok, "sep_token_id"), tokenizer_id(tok, "eos_token_id"),
                       config_value(model, "sep_token_id", "eos_token_id") if tok is None else None)
    return (prefix, suffix)
