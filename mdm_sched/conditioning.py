"""Held-out examples with per-example context: which tokens are given and which are generated (scored).

An :class:`Examples` holds, per example, its token ids and a boolean ``target`` mask: True where the sampler
generates (masked, and scored by the profile estimator), False where the token is context (always visible,
never scored). One type covers every conditioning :func:`mdm_sched.estimate_profile` supports:

- ``"none"``: unconditional sequences, every position a target (:meth:`Examples.from_sequences`);
- ``"prompt"``: a prompt that is always visible followed by the response to generate: a fixed-length
  prefix (``prompt_length``), prompt/response pairs of any lengths (:meth:`Examples.from_pairs`, two
  columns of a ``datasets.Dataset``), or chat messages rendered with the tokenizer's chat template
  (:func:`from_chat`);
- ``"infill"``: an arbitrary always-visible mask per example (:meth:`Examples.from_masks`), e.g. a region
  of each sequence to infill with the rest given (:meth:`Examples.from_region`).

Targets of different lengths are fine: the estimator maps them onto one profile over the visible
*fraction* of each example's targets (see :mod:`mdm_sched.estimate`).
"""
from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .validation import check_int, check_optional_int

if TYPE_CHECKING:
    from ._types import DataLike
    from .models import MaskedLM

__all__ = ["Examples", "KINDS", "from_columns", "from_chat", "render_chat", "chat_pair"]

#: What an example set conditions on.
KINDS = ("none", "prompt", "infill")
Encode = Callable[[list[str]], list[list[int]]]


def _ids(seq: Any, where: str) -> list[int]:
    from .data import _as_ids

    return _as_ids(seq, where)


@dataclass(frozen=True)
class Examples:
    """Token ids ``[M, W]`` (rows shorter than ``W`` are padded with 0 past ``widths``), the generated
    positions ``target [M, W]``, what they condition on (``kind``), a description and data counts.

    Build one with the ``from_*`` constructors rather than directly.
    """

    ids: torch.Tensor
    widths: torch.Tensor
    target: torch.Tensor
    kind: str
    description: str
    counts: Mapping[str, int]

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.ids.ndim != 2 or self.target.shape != self.ids.shape or self.widths.shape != (self.ids.shape[0],):
            raise ValueError("ids and target must be [M, W] and widths [M]")
        if self.ids.shape[0] == 0:
            raise ValueError("no examples: pass non-empty held-out data")
        inside = torch.arange(self.ids.shape[1]).unsqueeze(0) < self.widths.unsqueeze(1)
        if bool((self.target & ~inside).any()):
            raise ValueError("target marks positions past an example's width")
        empty = (self.target.sum(1) == 0).nonzero().squeeze(1)
        if empty.numel():
            raise ValueError(f"examples {empty[:5].tolist()} have nothing to generate (no target position); "
                             "drop them or mark at least one position as generated")

    # -- views ------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def n_targets(self) -> torch.Tensor:
        """Generated positions per example ``[M]``."""
        return self.target.sum(1)

    @property
    def equal_targets(self) -> bool:
        """Every example generates the same number of positions."""
        n = self.n_targets
        return bool((n == n[0]).all())

    @property
    def common_suffix(self) -> int | None:
        """``P`` when every example is exactly ``P`` context tokens followed by its targets, all of equal width."""
        w = self.ids.shape[1]
        if not bool((self.widths == w).all()) or not self.equal_targets:
            return None
        p = w - int(self.n_targets[0])
        return p if bool(self.target[:, p:].all()) else None

    @cached_property
    def sha256(self) -> str:
        """Hash of the ids and of what is generated: identifies the data in checkpoints and metadata.

        Data with a common suffix of targets (the fixed-length policy) hash their ids alone, as before
        conditional profiles existed, so older checkpoints stay valid.
        """
        h = hashlib.sha256(self.ids.numpy().astype(np.int64).tobytes() + str(tuple(self.ids.shape)).encode())
        if self.common_suffix is None:
            h.update(self.widths.numpy().astype(np.int64).tobytes() + self.target.numpy().tobytes())
        return h.hexdigest()[:16]

    def conditioning(self) -> dict[str, Any]:
        """What the examples condition on, as recorded in a profile's metadata (``"conditioning"``)."""
        n = self.n_targets
        ctx = (self.widths - n).float()
        return {"kind": self.kind, "target_lengths": [int(n.min()), int(n.max())],
                "context_lengths": [int(ctx.min()), int(ctx.max())], "mean_context_length": round(float(ctx.mean()), 3),
                "description": self.description}

    def masked_rows(self, mask_token_id: int) -> list[list[int]]:
        """Each example with its generated positions replaced by ``mask_token_id``: the prompts to infill with
        ``mdm_sched.generate(model, prompts=..., gen_length=0)`` (the context given, the targets to generate)."""
        x = self.ids.masked_fill(self.target, int(mask_token_id))
        return [row[:int(w)].tolist() for row, w in zip(x, self.widths)]

    def select(self, keep: torch.Tensor) -> Examples:
        """The examples where ``keep`` (bool ``[M]``) is True, trimmed to their widest row."""
        w = int(self.widths[keep].max()) if bool(keep.any()) else 0
        return Examples(self.ids[keep, :w], self.widths[keep], self.target[keep, :w], self.kind, self.description,
                        dict(self.counts, kept=int(keep.sum())))

    # -- constructors -----------------------------------------------------------------------------
    @classmethod
    def from_rows(cls, rows: Sequence[Sequence[int]], targets: Sequence[Sequence[bool]], *, kind: str,
                  description: str, counts: Mapping[str, int] | None = None) -> Examples:
        """Examples from per-example ids and generated-position masks (lists of equal lengths per example)."""
        if len(rows) != len(targets):
            raise ValueError(f"{len(rows)} examples but {len(targets)} target masks")
        if not rows:
            raise ValueError("no examples: pass non-empty held-out data")
        widths = [len(r) for r in rows]
        for i, (r, t) in enumerate(zip(rows, targets)):
            if len(r) != len(t):
                raise ValueError(f"example {i}: {len(r)} tokens but a mask of length {len(t)}")
        w = max(widths)
        ids = torch.zeros(len(rows), w, dtype=torch.long)
        target = torch.zeros(len(rows), w, dtype=torch.bool)
        for i, (r, t) in enumerate(zip(rows, targets)):
            ids[i, :len(r)] = torch.as_tensor(list(r), dtype=torch.long)
            target[i, :len(t)] = torch.as_tensor([bool(v) for v in t], dtype=torch.bool)
        return cls(ids, torch.as_tensor(widths, dtype=torch.long), target, kind, description,
                   dict(counts or {"kept": len(rows), "dropped": 0, "cropped": 0}))

    @classmethod
    def from_sequences(cls, seqs: Sequence[Sequence[int]], n_tokens: int | None = None, prompt_length: int = 0, *,
                       description: str = "", stacklevel: int = 3) -> Examples:
        """Fixed-length sequences under the library's length policy (:func:`mdm_sched.data.fixed_length`):
        ``prompt_length`` always-visible tokens followed by ``N`` generated ones."""
        from .data import fixed_length

        x, _n, counts = fixed_length(seqs, n_tokens, prompt_length, stacklevel=stacklevel + 1)
        target = torch.zeros(x.shape, dtype=torch.bool)
        target[:, prompt_length:] = True
        return cls(x, torch.full((x.shape[0],), x.shape[1], dtype=torch.long), target,
                   "prompt" if prompt_length else "none", description, counts)

    @classmethod
    def from_pairs(cls, prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], *,
                   n_tokens: int | None = None, pad_id: int | None = None, description: str = "pairs",
                   stacklevel: int = 2) -> Examples:
        """Prompt/response pairs of any lengths: the prompt is context, the response is generated.

        ``n_tokens`` crops longer responses (counted in ``counts["cropped"]``, with a warning); with
        ``pad_id`` shorter responses are padded with that id up to ``n_tokens`` (LLaDA/Dream generate a fixed
        length and fill the tail with EOS: measure on data formatted the same way).
        """
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        n = check_optional_int(n_tokens, "n_tokens", minimum=1)
        if pad_id is not None and n is None:
            raise ValueError("pad_id= pads responses up to n_tokens: pass n_tokens= too")
        rows, targets, cropped = [], [], 0
        for i, (p, r) in enumerate(zip(prompts, responses)):
            p = [] if len(p) == 0 else _ids(p, f"prompt {i}")
            r = _ids(r, f"response {i}")
            if n is not None and len(r) > n:
                r, cropped = r[:n], cropped + 1
            if pad_id is not None and n is not None:
                r = r + [check_int(pad_id, "pad_id", minimum=0)] * (n - len(r))
            rows.append(p + r)
            targets.append([False] * len(p) + [True] * len(r))
        if cropped:
            warnings.warn(f"{cropped} of {len(rows)} responses cropped to n_tokens={n} tokens", UserWarning,
                          stacklevel=stacklevel)
        return cls.from_rows(rows, targets, kind="prompt", description=description,
                             counts={"kept": len(rows), "dropped": 0, "cropped": cropped})

    @classmethod
    def from_masks(cls, seqs: Sequence[Sequence[int]], visible: Sequence[Sequence[bool]], *,
                   description: str = "infill") -> Examples:
        """Infilling: ``visible[i][j]`` True where token ``j`` of example ``i`` is always given; the rest is generated."""
        rows = [_ids(s, f"example {i}") for i, s in enumerate(seqs)]
        if len(visible) != len(rows):
            raise ValueError(f"{len(rows)} sequences but {len(visible)} visible masks")
        vis = [v.tolist() if isinstance(v, (torch.Tensor, np.ndarray)) else list(v) for v in visible]
        return cls.from_rows(rows, [[not b for b in v] for v in vis], kind="infill", description=description)

    @classmethod
    def from_region(cls, seqs: Sequence[Sequence[int]], start: int, stop: int, *, description: str | None = None,
                    stacklevel: int = 2) -> Examples:
        """Infill content positions ``start..stop-1`` of every sequence, the rest visible.

        Sequences with fewer than ``stop + 1`` tokens (the region must be followed by visible context) are
        dropped with a warning that counts them.
        """
        a = check_int(start, "start", minimum=0)
        b = check_int(stop, "stop", minimum=a + 1)
        rows = [_ids(s, f"example {i}") for i, s in enumerate(seqs)]
        keep = [r for r in rows if len(r) > b]
        if not keep:
            raise ValueError(f"no sequence is longer than stop={b}: choose a region inside the sequences")
        if len(keep) < len(rows):
            warnings.warn(f"{len(rows) - len(keep)} of {len(rows)} sequences dropped: not longer than the region's end "
                          f"(stop={b})", UserWarning, stacklevel=stacklevel)
        targets = [[a <= j < b for j in range(len(r))] for r in keep]
        desc = description or f"region {a}..{b - 1} infilled"
        return cls.from_rows(keep, targets, kind="infill", description=desc,
                             counts={"kept": len(keep), "dropped": len(rows) - len(keep), "cropped": 0})


# ------------------------------------------------------------------------------------------------
# From datasets: two columns, or chat messages
# ------------------------------------------------------------------------------------------------

def _column(data: Any, name: str) -> list:
    """A column of a ``datasets.Dataset`` (or a list of dicts, or a dict of lists) as a list."""
    if isinstance(data, Mapping):
        if name not in data:
            raise ValueError(f"no column {name!r}; columns: {sorted(data)}")
        return list(data[name])
    names = getattr(data, "column_names", None)
    if names is not None:
        if name not in names:
            raise ValueError(f"no column {name!r} in the dataset; columns: {names}")
        return list(data[name])
    rows = list(data)
    if rows and isinstance(rows[0], Mapping):
        if name not in rows[0]:
            raise ValueError(f"no column {name!r}; keys: {sorted(rows[0])}")
        return [r[name] for r in rows]
    raise TypeError(f"expected a datasets.Dataset, a dict of columns or a list of dicts, got {type(data).__name__}")


def _encode_all(values: list, encode: Encode | None, what: str) -> list[list[int]]:
    """Token ids of a column: strings are encoded, id lists kept."""
    if values and all(isinstance(v, str) for v in values):
        if encode is None:
            raise ValueError(f"the {what} column holds text but the model has no tokenizer: wrap(model, tokenizer=...)")
        return [list(r) for r in encode(values)]
    return [_ids(v, f"{what} {i}") for i, v in enumerate(values)]


def from_columns(data: DataLike, prompt_column: str, response_column: str, *, encode: Encode | None = None,
                 chat_tokenizer: Any = None, n_tokens: int | None = None, pad_id: int | None = None,
                 description: str | None = None) -> Examples:
    """Prompt/response pairs from two columns (text or token ids) of a ``datasets.Dataset``.

    With ``chat_tokenizer`` each prompt becomes one user message rendered with the tokenizer's chat template
    (generation prompt added), as an instruct model sees it.
    """
    prompts, responses = _column(data, prompt_column), _column(data, response_column)
    if chat_tokenizer is not None:
        if not all(isinstance(v, str) for v in [*prompts, *responses]):
            raise ValueError("chat rendering needs text prompts and responses (the template works on strings)")
        pairs = [chat_pair(chat_tokenizer, [{"role": "user", "content": p}, {"role": "assistant", "content": r}])
                 for p, r in zip(prompts, responses)]
        prompts, responses = [p for p, _ in pairs], [r for _, r in pairs]
    desc = description or f"{type(data).__name__} ({prompt_column} -> {response_column}{', chat' if chat_tokenizer else ''})"
    return Examples.from_pairs(_encode_all(prompts, encode, "prompt"), _encode_all(responses, encode, "response"),
                               n_tokens=n_tokens, pad_id=pad_id, description=desc, stacklevel=3)


def render_chat(tokenizer: Any, messages: Sequence[Mapping[str, str]]) -> str:
    """The conversation ``messages`` as the model's prompt text (chat template, generation prompt added)."""
    apply = getattr(tokenizer, "apply_chat_template", None)
    if apply is None or getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("chat data need a tokenizer with a chat template (tokenizer.chat_template is None); "
                         "use an instruct model's tokenizer or pass prompt/response columns without --chat")
    return str(apply(list(messages), add_generation_prompt=True, tokenize=False))


def chat_pair(tokenizer: Any, conversation: Sequence[Mapping[str, str]]) -> tuple[str, str]:
    """``(prompt text, response text)`` of a conversation whose last message is the response.

    The prompt is the earlier messages rendered with the generation prompt; the response is what the template
    writes after it for the last message (its content and end-of-turn marker: what the model generates), or
    the bare content when the template does not render the prompt as a prefix of the whole conversation.
    """
    prompt = render_chat(tokenizer, conversation[:-1])
    full = str(tokenizer.apply_chat_template(list(conversation), tokenize=False))
    if full.startswith(prompt) and len(full) > len(prompt):
        return prompt, full[len(prompt):]
    return prompt, str(conversation[-1]["content"])


def from_chat(data: DataLike, tokenizer: Any, *, encode: Encode, messages_column: str = "messages",
              n_tokens: int | None = None, pad_id: int | None = None, description: str | None = None) -> Examples:
    """Chat conversations: the last message (the assistant's) is generated, the earlier ones rendered with the
    chat template are the prompt (:func:`chat_pair`). ``encode`` turns the rendered text into ids
    (``MaskedLM.encode``); ``n_tokens``/``pad_id`` crop and pad responses (:meth:`Examples.from_pairs`)."""
    convs = _column(data, messages_column)
    prompts, responses = [], []
    for i, conv in enumerate(convs):
        conv = list(conv)
        if len(conv) < 2 or not all(isinstance(m, Mapping) and "content" in m for m in conv):
            raise ValueError(f"conversation {i}: expected a list of at least two {{'role', 'content'}} messages")
        if conv[-1].get("role") != "assistant":
            raise ValueError(f"conversation {i}: the last message must be the assistant's (the response to score), "
                             f"got role {conv[-1].get('role')!r}")
        prompt, response = chat_pair(tokenizer, conv)
        prompts.append(prompt)
        responses.append(response)
    desc = description or f"{type(data).__name__} ({messages_column}, chat template)"
    return Examples.from_pairs(encode(prompts), encode(responses), n_tokens=n_tokens, pad_id=pad_id,
                               description=desc, stacklevel=3)


def prepare(mlm: MaskedLM, data: DataLike, *, prompt_column: str | None, response_column: str | None, chat: bool,
            visible: Sequence[Sequence[bool]] | None, n_tokens: int | None, prompt_length: int,
            text_column: str | None) -> Examples:
    """The examples ``estimate_profile`` measures on, from whichever conditioning arguments it got."""
    encode = mlm.encode if mlm.tokenizer is not None else None
    if isinstance(data, Examples):
        if prompt_column or response_column or chat or visible is not None or prompt_length or n_tokens is not None:
            raise ValueError("data is already an Examples object: do not also pass prompt_column/response_column/"
                             "chat/visible/prompt_length/n_tokens (build the Examples with the lengths you want)")
        return data
    if (prompt_column is None) != (response_column is None) and not (chat and response_column is None):
        raise ValueError("pass both prompt_column= and response_column= (or chat=True with a messages column)")
    if prompt_column is not None or chat:
        if prompt_length or visible is not None:
            raise ValueError("prompt/response or chat data already say what is visible: drop prompt_length=/visible=")
        if chat and prompt_column is None:
            if mlm.tokenizer is None:
                raise ValueError("chat=True needs the model's tokenizer (its chat template)")
            return from_chat(data, mlm.tokenizer, encode=mlm.encode, n_tokens=n_tokens)
        return from_columns(data, str(prompt_column), str(response_column), encode=encode, n_tokens=n_tokens,
                            chat_tokenizer=mlm.tokenizer if chat else None)
    from .estimate import _token_sequences

    seqs, desc = _token_sequences(mlm, data, text_column)
    if visible is not None:
        if prompt_length or n_tokens is not None:
            raise ValueError("visible= already says what is given and generated: drop prompt_length=/n_tokens=")
        return Examples.from_masks(seqs, visible, description=f"{desc}, infill (visible masks)")
    return Examples.from_sequences(seqs, n_tokens, prompt_length, description=desc, stacklevel=4)
