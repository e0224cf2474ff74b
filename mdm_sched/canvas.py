"""The canvas generation writes on: prompts laid out left-padded, masks to fill, blocks, commits and EOS.

Rules (documented once, here):

* **Layout.** Prompts of different lengths are left-padded (an attention mask marks real tokens); the
  ``gen_length`` positions to generate follow them, all masked.
* **Blocks.** The generated span is cut into blocks of ``block_length`` (the last one may be shorter),
  filled left to right. Mask tokens inside a prompt are infilled together with the first block. With
  ``gen_length=0`` (pure infilling) there is one block: the prompts' masks, whose nominal length is the
  largest number of masks in a row.
* **Chat.** ``messages=`` (or string prompts with ``apply_chat_template=True``) become prompt ids through
  the tokenizer's chat template before anything else (:func:`chat_prompts`, :meth:`MaskedLM.encode_chat`).
* When a row is finished (EOS, stop strings) is :mod:`mdm_sched.stopping`'s business.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ._types import PromptLike
from .models import MaskedLM
from .text import Conversation
from .validation import check_token_ids, is_int

__all__ = ["Canvas", "Block", "prompt_tensors", "check_prompt_ids", "unknown_tokens", "plan_blocks", "chat_prompts",
           "TemplatedPrompts"]


def chat_prompts(mlm: MaskedLM, prompts: PromptLike | None, messages: Conversation | Sequence[Conversation] | None,
                 apply_chat_template: bool) -> PromptLike | None:
    """The prompts after chat templating: token-id lists for ``messages`` (one conversation or one per row) or
    for string ``prompts`` with ``apply_chat_template`` (each string one user message); else ``prompts``."""
    if not isinstance(apply_chat_template, bool):
        raise TypeError(f"apply_chat_template must be True or False, got {apply_chat_template!r}")
    if messages is not None:
        if prompts is not None:
            raise ValueError("pass either prompts= or messages=, not both")
        return TemplatedPrompts(mlm.encode_chat(messages))
    if not apply_chat_template:
        return prompts
    texts = [prompts] if isinstance(prompts, str) else prompts
    if not (isinstance(texts, (list, tuple)) and texts and all(isinstance(t, str) for t in texts)):
        raise ValueError("apply_chat_template=True takes string prompts (each becomes one user message); for token "
                         "ids pass them already templated, or pass messages=[[{'role': 'user', 'content': ...}], ...]")
    return TemplatedPrompts(mlm.encode_chat([[{"role": "user", "content": t}] for t in texts]))


class TemplatedPrompts(list):
    """Prompt ids rendered by a chat template: their special tokens (headers, BOS ...) are the template's, on purpose."""


def unknown_tokens(mlm: MaskedLM, texts: Sequence[str]) -> list[int]:
    """Indices of the texts whose encoding holds the tokenizer's unknown token (characters it cannot encode)."""
    return _unknown_rows(mlm, mlm.encode(list(texts))) if mlm.tokenizer is not None else []


def _unknown_rows(mlm: MaskedLM, rows: list[list[int]]) -> list[int]:
    unk = getattr(mlm.tokenizer, "unk_token_id", None)
    return [] if unk is None else [i for i, row in enumerate(rows) if unk in row]


def _rows_from_lists(mlm: MaskedLM, prompts: Sequence) -> list[list[int]]:
    if all(isinstance(p, str) for p in prompts):
        rows = mlm.encode(list(prompts))
        bad = _unknown_rows(mlm, rows)
        if bad:
            warnings.warn(f"prompt {bad[0]} ({prompts[bad[0]][:40]!r}) holds characters the tokenizer cannot encode; "
                          "they become the unknown token", UserWarning, stacklevel=5)
        return rows
    if all(is_int(p) for p in prompts):
        return [[int(p) for p in prompts]]
    if all(isinstance(p, (list, tuple, torch.Tensor)) for p in prompts):
        rows = [p.tolist() if isinstance(p, torch.Tensor) else list(p) for p in prompts]
        if not all(is_int(t) for r in rows for t in r):
            raise TypeError("prompts given as lists must hold integer token ids")
        return [[int(t) for t in r] for r in rows]
    raise TypeError("prompts must not mix strings and token ids")


def _tensor_prompts(prompts: torch.Tensor, attention_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    ids = prompts.unsqueeze(0) if prompts.ndim == 1 else prompts
    if ids.ndim != 2 or ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise TypeError("prompts as a tensor must be integer token ids of shape [batch, length] (or [length])")
    ids = ids.long()
    if attention_mask is None:
        attn = torch.ones_like(ids, dtype=torch.bool)
    else:
        attn = attention_mask.unsqueeze(0) if attention_mask.ndim == 1 else attention_mask
        attn = attn.to(ids.device).bool()
        if attn.shape != ids.shape:
            raise ValueError(f"attention_mask shape {tuple(attn.shape)} must equal prompts shape {tuple(ids.shape)}")
    # Left-align whatever the padding side: a stable sort puts padding first and keeps token order.
    order = torch.argsort(attn.to(torch.int8), dim=1, stable=True)
    return ids.gather(1, order), attn.gather(1, order)


def check_prompt_ids(mlm: MaskedLM, ids: torch.Tensor, attn: torch.Tensor) -> None:
    """Refuse attended prompt ids outside the vocabulary, and layout ids (framing, padding, other special tokens of
    families that never sample them; :attr:`~mdm_sched.tokens.TokenPolicy.layout_ids`): the adapter adds those
    itself, and as content they would be fed to the model yet hidden from ``.texts``. Mask ids are infilled."""
    check_token_ids(ids, "prompts", mlm.vocab_size, where=attn)
    layout = sorted(mlm.tokens.layout_ids)
    if not layout or ids.numel() == 0:
        return
    bad = torch.isin(ids, torch.tensor(layout, dtype=ids.dtype, device=ids.device)) & attn
    if not bool(bad.any()):
        return
    row, col = bad.nonzero()[0].tolist()
    tid = int(ids[row, col])
    col -= int((~attn[row]).sum())  # position within the row's own tokens (rows are left-padded)
    tok = mlm.tokenizer.convert_ids_to_tokens(tid) if mlm.tokenizer is not None else None
    what = f"id {tid}" + (f" ({tok})" if tok is not None else "")
    raise ValueError(f"prompts[{row}] holds the special token {what} at position {col}: framing, padding and other "
                     "special tokens are added by the library (pad a tensor of prompts with attention_mask=0, not pad "
                     "ids); remove it from the prompt, or use the mask token to have a position infilled")


def prompt_tensors(mlm: MaskedLM, prompts: PromptLike, attention_mask: torch.Tensor | None,
                   pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompt ids ``[B, P]`` and their boolean attention mask, checked (:func:`check_prompt_ids`)."""
    ids, attn = _prompt_tensors(mlm, prompts, attention_mask, pad)
    if isinstance(prompts, TemplatedPrompts):
        check_token_ids(ids, "prompts", mlm.vocab_size, where=attn)
    else:
        check_prompt_ids(mlm, ids, attn)
    return ids, attn


def _prompt_tensors(mlm: MaskedLM, prompts: PromptLike, attention_mask: torch.Tensor | None,
                    pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(prompts, torch.Tensor):
        return _tensor_prompts(prompts, attention_mask)
    if attention_mask is not None:
        raise ValueError("attention_mask= only applies to prompts given as a tensor; drop it for lists or strings")
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, (list, tuple)) or len(prompts) == 0:
        raise TypeError("prompts must be None, a string, a list of strings, a list of token ids, a list of "
                        "token-id lists, or a LongTensor [batch, length]")
    rows = _rows_from_lists(mlm, prompts)
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, r in enumerate(rows):  # input preparation, not the sampling loop
        if r:
            ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
            attn[i, width - len(r):] = True
    return ids, attn


@dataclass(frozen=True)
class Block:
    """Columns ``[start, end)`` filled together; ``columns`` ``[L]`` also marks prompt columns infilled with it.

    ``length`` is what the reveal rule plans for (a schedule's ``N``): the block's width, or for pure infilling
    the largest number of prompt masks in a row.
    """

    start: int
    end: int
    length: int
    columns: torch.Tensor


@dataclass
class Canvas:
    """Token ids being generated and what is known about each position (``[B, L]`` tensors).

    Attributes:
        x: token ids (the mask id where still masked, padding where ``attention`` is False).
        attention: real positions (False on left padding).
        masked: positions still to generate.
        prompt_length: ``P``, the padded prompt width (the generated span starts there).
        reveal_step: 1-based call at which each position was revealed (0 = given).
        token_logprobs: temperature-1 log-probability of each committed token (0 for given tokens and EOS fill).
    """

    x: torch.Tensor
    attention: torch.Tensor
    masked: torch.Tensor
    prompt_length: int
    reveal_step: torch.Tensor = field(init=False)
    token_logprobs: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.reveal_step = torch.zeros_like(self.x)
        self.token_logprobs = torch.zeros(self.x.shape, dtype=torch.float32, device=self.x.device)

    @classmethod
    def build(cls, p_ids: torch.Tensor, p_attn: torch.Tensor, gen_length: int, mask_id: int,
              pad: int) -> Canvas:
        """Prompts followed by ``gen_length`` masks; prompt mask tokens are to be generated too."""
        b = p_ids.shape[0]
        device = p_ids.device
        x = torch.cat([torch.where(p_attn, p_ids, torch.full_like(p_ids, pad)),
                       torch.full((b, gen_length), mask_id, dtype=torch.long, device=device)], dim=1)
        attn = torch.cat([p_attn, torch.ones((b, gen_length), dtype=torch.bool, device=device)], dim=1)
        return cls(x=x, attention=attn, masked=(x == mask_id) & attn, prompt_length=p_ids.shape[1])

    @property
    def generated(self) -> torch.Tensor:
        return self.x[:, self.prompt_length:]

    def commit(self, select: torch.Tensor, tokens: torch.Tensor, logp: torch.Tensor, call: int) -> None:
        """Write ``tokens`` at ``select.nonzero()`` (row-major), revealed at model call ``call``."""
        self.x[select] = tokens
        self.token_logprobs[select] = logp.float()
        self.reveal_step[select] = call
        self.masked &= ~select


def plan_blocks(canvas: Canvas, gen_length: int, block_length: int | None) -> list[Block]:
    """The blocks of a canvas (module docstring); raises when there is nothing to generate."""
    p_len, width = canvas.prompt_length, canvas.x.shape[1]
    cols = torch.arange(width, device=canvas.x.device)
    if gen_length == 0:
        n_infill = int(canvas.masked.sum(1).max()) if canvas.x.shape[0] else 0
        if n_infill == 0:
            raise ValueError("gen_length=0 and the prompts hold no mask tokens: nothing to generate")
        return [Block(p_len, p_len, n_infill, cols < p_len)]
    nominal = block_length if block_length is not None else gen_length
    blocks = []
    for start in range(p_len, width, nominal):
        end = min(start + nominal, width)
        columns = (cols >= start) & (cols < end)
        if start == p_len:
            columns |= cols < p_len  # prompt masks are infilled with the first block
        blocks.append(Block(start, end, end - start, columns))
    return blocks
