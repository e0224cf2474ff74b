"""Text codec: strings to content token ids and back, for ordinary text and for residue (protein) models.

Content ids never include framing tokens (the layout adds those). A model directory may declare a
``residue_separator`` (see :mod:`mdm_sched.assets`): one-token-per-character models then get their
characters joined with it before tokenizing (AntiBERTy wants ``"E V Q L"``, Sapiens ``"EVQL"``), and
decoding returns plain residue strings. The tokenizer's mask token string marks masked positions.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["TextCodec"]


class TextCodec:
    """Encode and decode text for one model.

    Args:
        tokenizer: an HF tokenizer, or ``None`` (then only token ids work).
        residue_separator: ``None`` for ordinary text; else the string joining residues before tokenizing.
        pad_token_id: dropped when decoding residue strings (besides the tokenizer's special tokens).
    """

    def __init__(self, tokenizer: Any = None, residue_separator: str | None = None,
                 pad_token_id: int | None = None) -> None:
        if residue_separator is not None and not isinstance(residue_separator, str):
            raise TypeError(f"residue_separator must be None or a string such as ' ', got {type(residue_separator).__name__}")
        self.tokenizer = tokenizer
        self.residue_separator = residue_separator
        self.pad_token_id = pad_token_id

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

    def _split_residues(self, text: str, mask_str: str | None) -> str:
        """One token per non-space character; a literal mask token stays whole."""
        pattern = re.compile(("(" + re.escape(mask_str) + ")|" if mask_str else "") + r"(\S)")
        return str(self.residue_separator).join(m.group(0) for m in pattern.finditer(text))

    def decode(self, ids: torch.Tensor | Sequence[Sequence[int]] | Sequence[int]) -> list[str]:
        """Texts of rows of token ids (one row may be given flat); padding and special tokens are dropped.

        Residue models (``residue_separator`` set) give plain residue strings (``"EVQLV..."``).
        """
        tok = self._require_tokenizer("decode")
        rows = ids.tolist() if isinstance(ids, torch.Tensor) else [list(r) if not isinstance(r, int) else r for r in ids]
        if rows and isinstance(rows[0], int):
            rows = [rows]
        if self.residue_separator is not None:
            special = set(getattr(tok, "all_special_ids", None) or []) | {self.pad_token_id}
            return ["".join(tok.convert_ids_to_tokens([i for i in r if i not in special])) for r in rows]
        return tok.batch_decode(rows, skip_special_tokens=True)
