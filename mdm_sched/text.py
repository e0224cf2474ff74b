"""Text codec: strings to content token ids and back, for ordinary text and for residue (protein) models.

Content ids never include framing tokens (the layout adds those). A model directory may declare a
``residue_separator`` (see :mod:`mdm_sched.assets`): one-token-per-character models then get their
characters joined with it before tokenizing (AntiBERTy wants ``"E V Q L"``, Sapiens ``"EVQL"``), and
decoding returns plain residue strings. The tokenizer's mask token string marks masked positions.

Chat messages (instruct models) go through the tokenizer's own chat template, ending with the
assistant's generation prompt, with the special tokens the family's reference sampler adds
(:attr:`~mdm_sched.families.Family.chat_tokenization`): Dream's demos take the template's tokens as
they are; LLaDA's ``chat.py`` renders the template to text and tokenizes that with the tokenizer's
BOS (one BOS: LLaDA's batch ``generate.py`` tokenizes without special tokens when the template
renders the BOS itself, and its SFT data start with a single BOS).
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .compat import own_chat_template
from .tokens import tokenizer_id

__all__ = ["TextCodec", "Conversation", "as_conversations"]

#: One chat: messages ``{"role": "system" | "user" | "assistant", "content": str}`` in order.
Conversation = Sequence[Mapping[str, str]]


def as_conversations(messages: Conversation | Sequence[Conversation]) -> list[list[dict[str, str]]]:
    """``messages`` as a list of conversations: one conversation (a list of message dicts) or a list of them.

    Raises:
        TypeError: anything else (each message must be a mapping with string ``role`` and ``content``).
    """
    hint = ('messages must be a conversation [{"role": "user", "content": "..."}, ...] or a list of them '
            "(one per prompt)")
    if not isinstance(messages, (list, tuple)) or not messages:
        raise TypeError(f"{hint}; got {type(messages).__name__}")
    convs = [messages] if isinstance(messages[0], Mapping) else list(messages)
    out = []
    for conv in convs:
        if not isinstance(conv, (list, tuple)) or not conv:
            raise TypeError(f"{hint}; got an empty or non-list conversation {conv!r}")
        for m in conv:
            if not (isinstance(m, Mapping) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
                raise TypeError(f"{hint}; got the message {m!r}")
        out.append([dict(m) for m in conv])
    return out


class TextCodec:
    """Encode and decode text for one model.

    Args:
        tokenizer: an HF tokenizer, or ``None`` (then only token ids work).
        residue_separator: ``None`` for ordinary text; else the string joining residues before tokenizing.
        pad_token_id: dropped when decoding residue strings (besides the tokenizer's special tokens).
        chat_tokenization: how chat prompts get their special tokens, ``"template"`` or ``"text"``
            (:attr:`~mdm_sched.families.Family.chat_tokenization`).
    """

    def __init__(self, tokenizer: Any = None, residue_separator: str | None = None,
                 pad_token_id: int | None = None, chat_tokenization: str = "template") -> None:
        if residue_separator is not None and not isinstance(residue_separator, str):
            raise TypeError(f"residue_separator must be None or a string such as ' ', got {type(residue_separator).__name__}")
        self.tokenizer = tokenizer
        self.residue_separator = residue_separator
        self.pad_token_id = pad_token_id
        self.chat_tokenization = chat_tokenization

    def _require_tokenizer(self, what: str) -> Any:
        if self.tokenizer is None:
            raise TypeError(f"{what} needs a tokenizer: wrap(model, tokenizer=...) or pass token ids instead of strings")
        return self.tokenizer

    def encode(self, texts: str | Sequence[str]) -> list[list[int]]:
        """Content token ids (no framing tokens) of each text; the mask token's string marks masked positions."""
        tok = self._require_tokenizer("encode")
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("encode expects a list of strings")
        if self.residue_separator:
            texts = [self._split_residues(t, getattr(tok, "mask_token", None)) for t in texts]
        return [list(map(int, ids)) for ids in tok(texts, add_special_tokens=False)["input_ids"]]

    def encode_chat(self, messages: Conversation | Sequence[Conversation]) -> list[list[int]]:
        """Prompt ids of each conversation through the tokenizer's chat template, up to the assistant's turn.

        The ids hold the special tokens the family's reference sampler adds (module docstring).

        Raises:
            ValueError: no tokenizer, or a tokenizer without a chat template.
        """
        tok = self._require_tokenizer("messages / apply_chat_template")
        if own_chat_template(tok) is None:
            raise ValueError("messages / apply_chat_template need a tokenizer with a chat template (an instruct "
                             "model's tokenizer); set tokenizer.chat_template or pass plain prompts")
        return [self._chat_ids(tok, conv) for conv in as_conversations(messages)]

    def _chat_ids(self, tok: Any, conversation: list[dict[str, str]]) -> list[int]:
        if self.chat_tokenization == "template":  # the template's own tokens (Dream)
            encoded = tok.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True, return_dict=True)
            return [int(i) for i in encoded["input_ids"]]
        text = tok.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        ids = [int(i) for i in tok(text)["input_ids"]]  # the tokenizer adds its BOS (LLaDA's chat.py)
        bos = tokenizer_id(tok, "bos_token_id")
        if bos is not None and ids[:2] == [bos, bos]:
            ids = ids[1:]  # the template rendered a BOS too: keep one, as LLaDA's SFT data have
        return ids

    def _split_residues(self, text: str, mask_str: str | None) -> str:
        """One token per non-space character; a literal mask token stays whole."""
        pattern = re.compile(("(" + re.escape(mask_str) + ")|" if mask_str else "") + r"(\S)")
        return str(self.residue_separator).join(m.group(0) for m in pattern.finditer(text))

    def decode(self, ids: torch.Tensor | Sequence[Sequence[int]] | Sequence[int], *,
               skip_special_tokens: bool = True) -> list[str]:
        """Texts of rows of token ids (one row may be given flat); padding and special tokens are dropped
        (kept with ``skip_special_tokens=False``, e.g. to find stop strings such as ``"</s>"``).

        Residue models (``residue_separator`` set) give plain residue strings (``"EVQLV..."``).
        """
        tok = self._require_tokenizer("decode")
        rows = ids.tolist() if isinstance(ids, torch.Tensor) else [list(r) if not isinstance(r, int) else r for r in ids]
        if rows and isinstance(rows[0], int):
            rows = [rows]
        if self.residue_separator is not None:
            special = set(getattr(tok, "all_special_ids", None) or []) | {self.pad_token_id}
            if not skip_special_tokens:
                special = set()
            return ["".join(tok.convert_ids_to_tokens([i for i in r if i not in special])) for r in rows]
        return tok.batch_decode(rows, skip_special_tokens=skip_special_tokens)
