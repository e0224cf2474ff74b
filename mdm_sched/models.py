"""One adapter for every masked LM family: :class:`MaskedLM`, :func:`wrap` and :func:`load_masked_lm`.

Every stage of the library (profile estimation, generation, evaluation) talks to a model through
:meth:`MaskedLM.logits`, which takes *content* token ids (the mask id where a position is masked,
left or right padding marked by an attention mask) and returns float32 logits aligned with those
content positions, never-sampled ids at ``-inf``.

The adapter is assembled from parts, each in its own module with one job; none branches on family
names, they read the family's entry:

- :mod:`mdm_sched.families`: what each family is (framing, logit shift, position ids, special-token
  policy, default mask id, auto class, detection) and the registry; **add a family there**.
- :mod:`mdm_sched.tokens`: :class:`~mdm_sched.tokens.TokenPolicy`, the mask/pad/EOS/framing ids and
  the never-sampled mask (``MaskedLM.never_sampled``).
- :mod:`mdm_sched.text`: :class:`~mdm_sched.text.TextCodec`, ``encode``/``decode`` (protein residue
  separators declared by a model directory's ``mdm_sched.json``, see :mod:`mdm_sched.assets`).
- :mod:`mdm_sched.layout`: :class:`~mdm_sched.layout.Layout`, content batch -> model inputs and back.
- :mod:`mdm_sched.heads`: :class:`~mdm_sched.heads.PositionsHead`, the LM head applied only at the
  requested positions, verified once against full logits, with a permanent fallback.

:func:`wrap` caches adapters on the module: the same module with the same arguments gives the same
:class:`MaskedLM`, so repeated ``generate(module, ...)`` calls neither re-hash the config nor
re-verify the head. The cache lives in the module's ``__dict__`` (a reference cycle, collected with
the module; never copied or pickled with it). An adapter reads the module's config once: after
changing the config, build a fresh one with ``MaskedLM(module, ...)``.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
import weakref
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import assets
from ._signature import accepts, parameter_names
from ._types import CacheMode, PastKeyValues
from .compat import dtype_kwargs
from .families import FAMILIES, LLADA_MASK_TOKEN_ID, Family, detect_family, family_of, get_family
from .heads import PositionsHead, output_embeddings
from .layout import Layout, ModelInputs, max_content_length
from .logit_rows import LogitRows
from .text import Conversation, TextCodec
from .tokens import Framing, TokenPolicy, config_value, first_int
from .validation import check_device, check_token_ids, is_int

__all__ = ["MaskedLM", "wrap", "load_masked_lm", "detect_family", "weights_fingerprint", "FAMILIES", "LLADA_MASK_TOKEN_ID"]


# --------------------------------------------------------------------------------------------------
# calling the module
# --------------------------------------------------------------------------------------------------

def _extract_logits(out: object) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if logits is None and isinstance(out, dict):
        logits = out.get("logits")
    if logits is None and isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        logits = out[0]
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"the model's forward returned {type(out).__name__} without a `.logits` tensor; "
                        "wrap a module whose forward(input_ids, attention_mask=None) returns an object with "
                        ".logits [batch, length, vocab] (the Hugging Face convention)")
    return logits


def config_hash(model: nn.Module, family: str, mask_token_id: int) -> str:
    """16 hex digits identifying the architecture (class, config, parameter shapes), family and mask id.

    Weights do not enter it: two checkpoints of one architecture share a hash. Volatile config
    fields (paths, library versions, dtype) are left out.
    """
    config = getattr(model, "config", None)
    if config is None:
        cfg: dict = {}
    elif hasattr(config, "to_dict"):
        cfg = dict(config.to_dict())
    else:
        cfg = dict(vars(config))
    for volatile in ("_name_or_path", "name_or_path", "transformers_version", "torch_dtype", "dtype"):
        cfg.pop(volatile, None)
    shapes = [(n, tuple(p.shape)) for n, p in model.named_parameters()]
    blob = json.dumps({"class": type(model).__name__, "family": family, "mask": mask_token_id,
                       "config": cfg, "params": shapes}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _has_vocabulary(tokenizer: Any) -> bool:
    """False for the tokenizer transformers 5 builds without vocabulary files (special tokens only: every text
    would become [UNK])."""
    return len(tokenizer) > len(set(getattr(tokenizer, "all_special_ids", []) or []))


def _special_ids_tokenizer(model: nn.Module, spec: Family, suppress_tokens: object, allowed_tokens: object,
                           framing: Framing | None) -> Any:
    """For a family that never samples special tokens, wrapped without a tokenizer: the tokenizer saved beside the
    model (``config._name_or_path`` when it is a local folder), which names its special ids; ``None`` when the
    family samples specials anyway or the caller named the ids (``suppress_tokens``/``allowed_tokens``/``framing``).

    Raises:
        ValueError: no tokenizer can be found, so ``[UNK]``/``[CLS]``/``[SEP]``/``[PAD]`` would be sampled.
    """
    if not spec.suppress_special_tokens or suppress_tokens is not None or allowed_tokens is not None:
        return None
    folder = config_value(model, "_name_or_path", "name_or_path")
    if isinstance(folder, str) and folder and Path(folder).is_dir():
        try:
            from transformers import AutoTokenizer

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            if _has_vocabulary(tok):
                return tok
        except Exception:
            pass
    if framing is not None:
        return None  # the caller named the framing ids: those, pad and mask are never sampled
    raise ValueError(f"{type(model).__name__} is a {spec.name}-family model, which never samples special tokens, but "
                     "no tokenizer is known to name them ([UNK], [CLS], [SEP], [PAD] ...): pass tokenizer=..., or "
                     "suppress_tokens=[ids never to sample] (or allowed_tokens=[ids that may be sampled])")


#: Elements read from each of a few parameter tensors for :func:`weights_fingerprint` (evenly spaced).
_FINGERPRINT_ELEMENTS = 4096


def weights_fingerprint(model: nn.Module) -> str:
    """16 hex digits identifying the weights and their dtype, cheaply: a hash of the dtype and of evenly spaced
    elements of the first, middle and last parameter tensors (a few thousand values, whatever the model's size).

    Unlike :func:`config_hash`, two checkpoints of one architecture, or one checkpoint in float32 and bfloat16,
    differ. A change to parameters it does not read (rare: most training touches them all) goes unnoticed.
    """
    params = [(n, p) for n, p in model.named_parameters()]
    digest = hashlib.sha256()
    if not params:
        return digest.hexdigest()[:16]
    picks = sorted({0, len(params) // 3, (2 * len(params)) // 3, len(params) - 1})
    for i in picks:
        name, p = params[i]
        flat = p.detach().reshape(-1)
        idx = torch.linspace(0, max(flat.numel() - 1, 0), min(_FINGERPRINT_ELEMENTS, flat.numel()),
                             device=flat.device).long()
        values = flat[idx].float().cpu().numpy()
        digest.update(f"{name}:{tuple(p.shape)}:{p.dtype}".encode())
        digest.update(values.tobytes())
    return digest.hexdigest()[:16]


# --------------------------------------------------------------------------------------------------
# the adapter
# --------------------------------------------------------------------------------------------------

class MaskedLM:
    """A masked LM behind one calling convention (see the module docstring).

    Build it with :func:`wrap` or :func:`load_masked_lm` rather than directly. Attributes:
    ``model`` (the ``nn.Module``), ``tokenizer`` (or ``None``), ``family`` (its name) and ``family_spec``
    (its :class:`~mdm_sched.families.Family` entry), ``mask_token_id``, ``pad_token_id``,
    ``eos_token_id``, ``framing`` (prefix, suffix ids for families with framing), ``max_length``
    (content positions, or ``None`` when unknown), ``name_or_path``, ``config_hash``,
    ``residue_separator`` (``None`` for ordinary text tokenizers). The parts: ``tokens``
    (:class:`~mdm_sched.tokens.TokenPolicy`), ``text`` (:class:`~mdm_sched.text.TextCodec`), ``layout``
    (:class:`~mdm_sched.layout.Layout`), ``head`` (:class:`~mdm_sched.heads.PositionsHead`).
    """

    def __init__(self, model: nn.Module, *, tokenizer: Any = None, mask_token_id: int | None = None,
                 family: str | Family | None = None, suppress_tokens: Iterable[int | str] | None = None,
                 allowed_tokens: Iterable[int | str] | None = None, framing: Framing | None = None,
                 pad_token_id: int | None = None, eos_token_id: int | None = None, max_length: int | None = None,
                 positions_only: bool | None = None, residue_separator: str | None = None,
                 name_or_path: str | None = None, force_mask_token_id: bool = False) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module (or a MaskedLM), got {type(model).__name__}")
        spec = family_of(model) if family is None else get_family(family)
        self.model = model
        self.tokenizer = tokenizer
        self.family_spec: Family = spec
        self.name_or_path: str | None = name_or_path if name_or_path is not None else (
            config_value(model, "_name_or_path", "name_or_path") or None)  # type: ignore[assignment]
        id_source = tokenizer if tokenizer is not None else _special_ids_tokenizer(model, spec, suppress_tokens,
                                                                                    allowed_tokens, framing)
        self.tokens = TokenPolicy.resolve(spec, model, id_source, mask_token_id=mask_token_id, pad_token_id=pad_token_id,
                                          eos_token_id=eos_token_id, framing=framing, suppress_tokens=suppress_tokens,
                                          allowed_tokens=allowed_tokens, force_mask_token_id=bool(force_mask_token_id))
        if spec.framing and framing is None and self.tokens.framing == (None, None):
            warnings.warn(f"{type(model).__name__}: no CLS/SEP (BOS/EOS) framing tokens known; the model will see "
                          "unframed content. Pass tokenizer=... or framing=(cls_id, sep_id)", stacklevel=3)
        self.text = TextCodec(tokenizer, residue_separator, self.tokens.pad_token_id, spec.chat_tokenization)
        self._pass_attention_mask = accepts(model.forward, "attention_mask")
        self.layout = Layout(spec, self.tokens.framing, self.tokens.pad_token_id, accepts(model.forward, "position_ids"))
        self.max_length: int | None = max_content_length(model, self.layout.n_framing, max_length)
        self.head = PositionsHead(model, enabled=positions_only if spec.head_shortcut else False)
        self._vocab_size: int | None = first_int(config_value(model, "vocab_size"))
        if self._vocab_size is None and isinstance(head_out := output_embeddings(model), nn.Linear):
            self._vocab_size = head_out.out_features
        self.config_hash: str = config_hash(model, spec.name, self.tokens.mask_token_id)
        self._width_ok: int | None = None
        if self._vocab_size is not None:
            self._check_width(self._vocab_size)

    # -- what the parts resolved -----------------------------------------------------------------
    @property
    def family(self) -> str:
        """The family's registry name (``"bert"``, ``"llada"``, ``"dream"``, ``"module"``, ...)."""
        return self.family_spec.name

    @property
    def mask_token_id(self) -> int:
        return self.tokens.mask_token_id

    @property
    def pad_token_id(self) -> int | None:
        return self.tokens.pad_token_id

    @property
    def eos_token_id(self) -> int | None:
        return self.tokens.eos_token_id

    @property
    def framing(self) -> Framing:
        """(prefix id, suffix id) put around the content; ``(None, None)`` for families without framing."""
        return self.tokens.framing

    @property
    def residue_separator(self) -> str | None:
        return self.text.residue_separator

    @property
    def device(self) -> torch.device:
        for t in self.model.parameters():
            return t.device
        for t in self.model.buffers():
            return t.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        for t in self.model.parameters():
            if t.is_floating_point():
                return t.dtype
        return torch.float32

    @property
    def weights_fingerprint(self) -> str:
        """:func:`weights_fingerprint` of the module now (weights and dtype; recomputed on each access, cheaply)."""
        return weights_fingerprint(self.model)

    def identity(self) -> dict[str, str]:
        """What, beyond :attr:`config_hash`, tells this model's results from another's: the weights' fingerprint and
        dtype (stored in profiles and checkpoints)."""
        return {"weights": self.weights_fingerprint, "dtype": str(self.dtype).replace("torch.", "")}

    @property
    def vocab_size(self) -> int:
        """Size of the logits' last dimension (probed with one tiny forward when the config has none)."""
        if self._vocab_size is None:
            probe = torch.full((1, 1), self.mask_token_id, dtype=torch.long, device=self.device)
            with torch.inference_mode(), self._eval_mode():
                try:
                    width = int(self._forward(probe, None, None).shape[-1])
                except IndexError as exc:  # an embedding lookup of the mask id itself failed
                    raise ValueError(f"mask_token_id={self.mask_token_id} is outside the vocabulary of "
                                     f"{type(self.model).__name__} ({exc}): pass the model's own mask id") from exc
            self._check_width(width)
            self._vocab_size = width
        return self._vocab_size

    # -- tokens never sampled --------------------------------------------------------------------
    def never_sampled(self, device: torch.device | str | None = None) -> torch.Tensor:
        """Boolean ``[vocab_size]`` mask of the ids never sampled (cached per device; do not modify).

        ``device`` defaults to the model's device (where the logits are).
        """
        return self.tokens.never_sampled(self.vocab_size, self.device if device is None else device)

    @property
    def suppressed_ids(self) -> torch.Tensor:
        """Token ids that are never sampled (sorted LongTensor on CPU)."""
        return self.never_sampled("cpu").nonzero().squeeze(1)

    @property
    def allowed_ids(self) -> torch.Tensor:
        """Token ids that may be sampled (sorted LongTensor on CPU)."""
        return (~self.never_sampled("cpu")).nonzero().squeeze(1)

    # -- text ------------------------------------------------------------------------------------
    def encode(self, texts: str | Sequence[str]) -> list[list[int]]:
        """Content token ids (no framing tokens) of each text; the mask token's string marks masked positions."""
        return self.text.encode(texts)

    def encode_chat(self, messages: Conversation | Sequence[Conversation]) -> list[list[int]]:
        """Prompt ids of chat conversations (one, or a list of them) through the tokenizer's chat template,
        ending with the assistant's generation prompt, special tokens as the family expects (BOS for LLaDA)."""
        return self.text.encode_chat(messages)

    def decode(self, ids: torch.Tensor | Sequence[Sequence[int]], *, skip_special_tokens: bool = True) -> list[str]:
        """Texts of rows of token ids; padding, framing and other special tokens are dropped unless
        ``skip_special_tokens=False``.

        Residue models (``residue_separator`` set) give plain residue strings (``"EVQLV..."``).
        """
        return self.text.decode(ids, skip_special_tokens=skip_special_tokens)

    def __repr__(self) -> str:
        return (f"MaskedLM(family={self.family!r}, model={type(self.model).__name__}, name_or_path={self.name_or_path!r}, "
                f"mask_token_id={self.mask_token_id}, max_length={self.max_length})")

    def to(self, *args: Any, **kwargs: Any) -> MaskedLM:
        """Move the model (``nn.Module.to`` arguments); returns the adapter."""
        self.model.to(*args, **kwargs)
        return self

    # -- model calls -----------------------------------------------------------------------------
    def _forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                 position_ids: torch.Tensor | None) -> torch.Tensor:
        """The module's logits in its own dtype and positions (no layout, no suppression)."""
        kwargs: dict[str, torch.Tensor] = {}
        if attention_mask is not None:
            if not self._pass_attention_mask:
                raise ValueError(f"{type(self.model).__name__}.forward takes no attention_mask, so rows of different "
                                 "lengths cannot be batched: pass prompts of equal length (or batch them separately)")
            kwargs["attention_mask"] = self.layout.forward_mask(attention_mask)
        if position_ids is not None:
            kwargs["position_ids"] = position_ids
        logits = _extract_logits(self.model(input_ids, **kwargs))
        if logits.ndim != 3 or tuple(logits.shape[:2]) != tuple(input_ids.shape):
            raise ValueError(f"{type(self.model).__name__} returned logits of shape {tuple(logits.shape)} for input_ids "
                             f"of shape {tuple(input_ids.shape)}: expected [batch={input_ids.shape[0]}, "
                             f"length={input_ids.shape[1]}, vocabulary]; check the model's forward (one logit row per "
                             "input position, none dropped or added)")
        return logits

    def ids_in_play(self) -> dict[str, int]:
        """The special ids this adapter uses (mask, pad, EOS, framing), by argument name."""
        named = {"mask_token_id": self.mask_token_id, "pad_token_id": self.pad_token_id,
                 "eos_token_id": self.eos_token_id, "framing[0]": self.framing[0], "framing[1]": self.framing[1]}
        return {k: int(v) for k, v in named.items() if v is not None}

    def _check_width(self, width: int) -> None:
        """The logits' last dimension must cover the configured vocabulary and every special id in play."""
        if width == self._width_ok:
            return
        name = type(self.model).__name__
        configured = first_int(config_value(self.model, "vocab_size"))
        if configured is not None and width < configured:
            raise ValueError(f"{name} returned logits over {width} token ids but its config says vocab_size="
                             f"{configured}: the logits must have one column per token id (check the LM head)")
        for arg, tid in self.ids_in_play().items():
            if tid >= width:
                raise ValueError(f"{arg}={tid} is outside the vocabulary of {name}, whose logits cover ids "
                                 f"[0, {width}): pass the model's own {arg} (or the matching tokenizer)")
        for arg, ids in (("suppress_tokens", self.tokens.suppressed), ("allowed_tokens", self.tokens.allowed or ())):
            bad = sorted(i for i in ids if not 0 <= i < width)
            if bad:
                raise ValueError(f"{arg} holds id {bad[0]}, outside the vocabulary of {name} (ids [0, {width}))")
        self._width_ok = width

    @contextlib.contextmanager
    def _eval_mode(self) -> Iterator[None]:
        was_training = self.model.training
        if was_training:
            self.model.eval()  # dropout off while sampling, even when called from a training loop
        try:
            yield
        finally:
            if was_training:
                self.model.train()

    def _check_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                      positions: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(ids, boolean attention, boolean positions or None) on the model's device, shapes checked."""
        if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2:
            raise ValueError("input_ids must be a LongTensor [batch, length] of content token ids")
        device = self.device
        ids = input_ids.to(device)
        attn = (torch.ones_like(ids, dtype=torch.bool) if attention_mask is None
                else attention_mask.to(device).bool())
        if attn.shape != ids.shape:
            raise ValueError(f"attention_mask shape {tuple(attn.shape)} != input_ids shape {tuple(ids.shape)}")
        if positions is not None:
            positions = positions.to(device).bool()
            if positions.shape != ids.shape:
                raise ValueError(f"positions shape {tuple(positions.shape)} != input_ids shape {tuple(ids.shape)}")
        if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise TypeError(f"input_ids must hold integer token ids, got dtype {ids.dtype}")
        check_token_ids(ids, "input_ids", self.vocab_size, where=attn)
        if self.max_length is not None and ids.shape[1] > self.max_length:
            longest = int(attn.sum(1).max())
            if longest > self.max_length:
                raise ValueError(f"a row has {longest} content tokens but {self.name_or_path or type(self.model).__name__} "
                                 f"takes at most max_length={self.max_length}: shorten the prompt or gen_length")
        return ids, attn, positions

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               positions: torch.Tensor | None = None) -> torch.Tensor:
        """Float32 logits for content ids (mask id where masked), never-sampled ids at ``-inf``.

        Args:
            input_ids: LongTensor ``[B, L]`` of content ids (no framing tokens).
            attention_mask: ``[B, L]`` (1 = real token); left or right padding; ``None`` = all real.
            positions: optional BoolTensor ``[B, L]``; then only the logits at ``positions.nonzero()``
                (row-major) are returned, ``[P, V]``, computed through the LM head only there when possible.

        Returns:
            ``[B, L, V]`` (``positions=None``) or ``[P, V]`` float32; ``log_softmax`` of it is the model's
            sampling distribution at temperature 1.

        Raises:
            ValueError: NaN or ``+inf`` logits, or rows longer than :attr:`max_length`.
        """
        if positions is not None:
            return self.logit_rows(input_ids, attention_mask, positions).materialize()
        ids, attn, _ = self._check_inputs(input_ids, attention_mask, None)
        with torch.inference_mode(), self._eval_mode():
            inputs = self.layout(ids, attn)
            full = self._forward(inputs.input_ids, inputs.attention_mask, inputs.position_ids)
            out = full.gather(1, inputs.index.unsqueeze(-1).expand(-1, -1, full.shape[-1]))
            b, length, vocab = out.shape
            flat = self._rows(out.reshape(b * length, vocab), None).materialize()
            return flat.view(b, length, vocab)

    def logit_rows(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                   positions: torch.Tensor) -> LogitRows:
        """The logits at ``positions.nonzero()`` (row-major) as :class:`~mdm_sched.logit_rows.LogitRows`: the model's
        output, not yet copied, converted, checked or suppressed (that happens chunk by chunk as the draw reads it).

        Same arguments and meaning as :meth:`logits` with ``positions``; ``logit_rows(...).materialize()`` is
        ``logits(..., positions=positions)``.
        """
        ids, attn, positions = self._check_inputs(input_ids, attention_mask, positions)
        assert positions is not None
        with torch.inference_mode(), self._eval_mode():
            inputs = self.layout(ids, attn)
            rows, cols = positions.nonzero(as_tuple=True)
            model_cols = inputs.index[rows, cols]
            at = self.head.logits_at(self._forward, inputs, rows, model_cols)
            if at is not None:
                return self._rows(at, None)
            full = self._forward(inputs.input_ids, inputs.attention_mask, inputs.position_ids)
            return self._rows(full.reshape(-1, full.shape[-1]), rows * full.shape[1] + model_cols)

    def _rows(self, source: torch.Tensor, index: torch.Tensor | None) -> LogitRows:
        """Rows of this model's logits, suppressed and checked as they are read."""
        vocab = source.shape[-1]
        self._check_width(int(vocab))
        if self._vocab_size is None:
            self._vocab_size = int(vocab)
        name = self.name_or_path or type(self.model).__name__
        return LogitRows(source, index, self.tokens.never_sampled(vocab, source.device), origin=f"model {name}",
                         hint=f" (dtype {self.dtype}); run it in float32 (load_masked_lm(..., dtype=torch.float32)) "
                              "or check its weights")

    # -- KV cache (Fast-dLLM's interface) ---------------------------------------------------------
    def check_kv_cache(self, mode: CacheMode) -> None:
        """Raise a ValueError naming what this model lacks for ``generate(cache=mode)`` (``"prefix"``/``"dual"``).

        A cached call runs only some columns of the canvas and passes the keys and values of the others as
        ``past_key_values``: the forward must accept ``past_key_values`` and ``use_cache`` (and ``replace_position``
        for ``"dual"``), as Fast-dLLM's LLaDA and Dream modeling files do, and content columns must be model columns
        (no framing tokens, no re-laid-out rows).
        """
        name = type(self.model).__name__
        if self.layout.n_framing or self.family_spec.right_pad:
            raise ValueError(f"cache={mode!r}: {name} is a {self.family}-family model whose rows are re-laid out around "
                             "framing tokens, so cached columns would not line up with the canvas; use cache=None")
        needed = ["past_key_values", "use_cache"] + (["replace_position"] if mode == "dual" else [])
        missing = [arg for arg in needed if not accepts(self.model.forward, arg)]
        if missing:
            raise ValueError(f"cache={mode!r} needs a model whose forward accepts {', '.join(needed)} (Fast-dLLM's "
                             f"modeling_llada.py / modeling_dream.py); {name}.forward has no {', '.join(missing)}")

    def kv_columns(self, lo: int, hi: int) -> tuple[int, int]:
        """Model columns a cached call must run so that content columns ``[lo, hi)`` get fresh tokens and logits
        (one more on the left for families whose logits at ``i`` predict ``i + 1``)."""
        shift = 1 if self.family_spec.shifted_logits and lo > 0 else 0
        return lo - shift, hi

    def kv_logit_rows(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, positions: torch.Tensor, *,
                      span: tuple[int, int] | None = None, past: PastKeyValues | None = None,
                      replace: bool = False) -> tuple[LogitRows, PastKeyValues]:
        """One model call that fills or uses a KV cache: (logits at ``positions.nonzero()``, the returned cache).

        Args:
            input_ids, attention_mask, positions: as for :meth:`logit_rows` (the whole canvas).
            span: model columns ``[start, end)`` to run (from :meth:`kv_columns`); ``None``: every column, with
                ``use_cache=True``, to fill the cache. The attention mask, when rows are padded, covers every column.
            past: the cache for the columns not run: those before ``start`` (``replace=False``, Fast-dLLM's prefix
                cache), or every column (``replace=True``, the dual cache: the model replaces the span's entries, told
                by ``replace_position``, a ``[1, W]`` mask because the span is the same for every row).
        """
        if (span is None) != (past is None):
            raise ValueError("kv_logit_rows: pass span and past together (or neither, to fill the cache)")
        ids, attn, positions = self._check_inputs(input_ids, attention_mask, positions)
        assert positions is not None
        with torch.inference_mode(), self._eval_mode():
            inputs = self.layout(ids, attn)
            start, end = span if span is not None else (0, inputs.input_ids.shape[1])
            rows, cols = positions.nonzero(as_tuple=True)
            local = inputs.index[rows, cols] - start
            if local.numel() and (int(local.min()) < 0 or int(local.max()) >= end - start):
                raise ValueError(f"kv_logit_rows: positions read model columns outside the span [{start}, {end})")
            query = inputs.input_ids[:, start:end]
            call = _CachedCall(self, query, self._kv_kwargs(inputs, start, end, past, replace))
            at = None
            if past is None or self.head.state == "verified":  # the head is verified on a full call only
                sliced = ModelInputs(query, inputs.attention_mask, call.kwargs.get("position_ids"), inputs.index)
                at = self.head.logits_at(call, sliced, rows, local)
            if at is not None:
                return self._rows(at, None), call.past()
            logits = call(query, None, None)
            return self._rows(logits.reshape(-1, logits.shape[-1]), rows * logits.shape[1] + local), call.past()

    def _kv_kwargs(self, inputs: ModelInputs, start: int, end: int, past: PastKeyValues | None,
                   replace: bool) -> dict[str, Any]:
        """Keyword arguments of a cached call on model columns ``[start, end)``."""
        kwargs: dict[str, Any] = {"use_cache": True}
        if inputs.attention_mask is not None:
            if not self._pass_attention_mask:
                raise ValueError(f"{type(self.model).__name__}.forward takes no attention_mask, so rows of different "
                                 "lengths cannot be batched: pass prompts of equal length (or batch them separately)")
            # every key, cached and run columns (HF / Fast-dLLM convention); a pairwise [B, 1, W, W] mask (Dream)
            # keeps only the run columns' query rows, as Fast-dLLM's Dream slices it
            mask = self.layout.forward_mask(inputs.attention_mask)
            kwargs["attention_mask"] = mask[:, :, start:end, :] if mask is not None and mask.ndim == 4 else mask
        if inputs.position_ids is not None:
            kwargs["position_ids"] = inputs.position_ids[:, start:end]
        if past is not None:
            kwargs["past_key_values"] = past
            if replace:
                where = torch.zeros((1, inputs.input_ids.shape[1]), dtype=torch.bool, device=inputs.input_ids.device)
                where[:, start:end] = True
                kwargs["replace_position"] = where
                if "dual_cache" in parameter_names(self.model.forward):  # Fast-dLLM's Dream also wants the flag
                    kwargs["dual_cache"] = True
        return kwargs


class _CachedCall:
    """The module called on ``query`` with cache arguments (any other ids, e.g. the head's verification probe,
    get a plain call); keeps the cache the call returns."""

    def __init__(self, mlm: MaskedLM, query: torch.Tensor, kwargs: dict[str, Any]) -> None:
        self.mlm, self.query, self.kwargs = mlm, query, kwargs
        self._past: PastKeyValues | None = None

    def __call__(self, ids: torch.Tensor, attention_mask: torch.Tensor | None,
                 position_ids: torch.Tensor | None) -> torch.Tensor:
        if ids is not self.query:
            return self.mlm._forward(ids, attention_mask, position_ids)
        name = type(self.mlm.model).__name__
        try:
            out = self.mlm.model(ids, **self.kwargs)
        except AssertionError as exc:  # e.g. the original LLaDA modeling file: "The kvcache is not supported for MDM."
            raise ValueError(f"{name}.forward refused a KV cache ({exc}); use a modeling file that supports it "
                             "(Fast-dLLM's) or cache=None") from exc
        past = out.get("past_key_values") if isinstance(out, dict) else getattr(out, "past_key_values", None)
        if past is None:
            raise ValueError(f"{name} returned no past_key_values with use_cache=True; cache= needs a forward that "
                             "returns per-layer (key, value) tensors (Fast-dLLM's modeling files)")
        if not isinstance(past, (list, tuple)) or not all(
                isinstance(layer, (list, tuple)) and all(isinstance(t, torch.Tensor) for t in layer) for layer in past):
            raise TypeError(f"{name} returned past_key_values of type {type(past).__name__}; cache= needs per-layer "
                            "(key, value) tensors with the sequence on dimension -2 (Fast-dLLM's format)")
        self._past = past
        return _extract_logits(out)

    def past(self) -> PastKeyValues:
        assert self._past is not None
        return self._past


# --------------------------------------------------------------------------------------------------
# wrap, with adapters cached per module
# --------------------------------------------------------------------------------------------------

_CACHE_ATTR = "_mdm_sched_adapters"


class _AdapterCache(dict):
    """A module's adapters by wrap arguments. Tied to its owner; never copied or pickled with the module
    (a copy starts empty, so ``copy.deepcopy(model)`` or ``torch.save(model)`` never carry adapters)."""

    def __init__(self, owner: nn.Module | None = None) -> None:
        super().__init__()
        self.owner = weakref.ref(owner) if owner is not None else None

    def __reduce__(self) -> tuple[type, tuple[()]]:
        return (_AdapterCache, ())

    def __copy__(self) -> _AdapterCache:
        return _AdapterCache()

    def __deepcopy__(self, memo: dict) -> _AdapterCache:
        return _AdapterCache()


def _adapter_cache(module: nn.Module) -> _AdapterCache | None:
    """The module's adapter cache (created on first use); ``None`` for a module that cannot hold one."""
    try:
        cache = module.__dict__.get(_CACHE_ATTR)
        if not isinstance(cache, _AdapterCache) or cache.owner is None or cache.owner() is not module:
            cache = _AdapterCache(module)  # none yet, or one a shallow copy shares with its original
            module.__dict__[_CACHE_ATTR] = cache
    except (AttributeError, TypeError):  # e.g. no writable __dict__ or no weak references
        return None
    return cache


def _freeze(value: object) -> object:
    """A hashable stand-in for a wrap argument; TypeError for what cannot key a cache (e.g. iterators)."""
    if value is None or isinstance(value, (bool, int, float, str, Family)):
        return value
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.detach().cpu().flatten().tolist()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, (set, frozenset)):
        return frozenset(_freeze(v) for v in value)
    if type(value).__module__ == "numpy" and hasattr(value, "item"):
        return _freeze(value.item())  # type: ignore[attr-defined]
    raise TypeError(f"cannot use a {type(value).__name__} as a cache key")


def wrap(model: nn.Module | MaskedLM, tokenizer: Any = None, mask_token_id: int | None = None,
         family: str | Family | None = None, *, suppress_tokens: Iterable[int | str] | None = None,
         allowed_tokens: Iterable[int | str] | None = None, framing: Framing | None = None,
         pad_token_id: int | None = None, eos_token_id: int | None = None, max_length: int | None = None,
         positions_only: bool | None = None, residue_separator: str | None = None,
         name_or_path: str | None = None, force_mask_token_id: bool = False) -> MaskedLM:
    """Wrap a model in the library's :class:`MaskedLM` adapter (a ``MaskedLM`` is returned unchanged).

    The same module with the same arguments returns the same adapter (cached on the module), so the
    config is hashed and the LM head verified once, however often ``generate(module, ...)`` is called.

    Args:
        model: an HF masked LM, a LLaDA/Dream-style model, or any ``nn.Module`` whose forward returns ``.logits``.
        tokenizer: optional HF tokenizer (text prompts, decoding, special token ids); default ``model.tokenizer``.
        mask_token_id: the mask id when neither the tokenizer nor the config has one; one that contradicts the
            tokenizer's mask token is an error unless ``force_mask_token_id=True``.
        family: a registered family name (``"bert" | "llada" | "dream" | "module"``, see
            :mod:`mdm_sched.families`) or a :class:`~mdm_sched.families.Family`; detected when omitted.
        suppress_tokens: extra token ids (or token strings) never to sample.
        allowed_tokens: restrict sampling to these ids/strings (e.g. the 20 amino acids).
        framing: ``(prefix_id, suffix_id)`` around the content, for families with framing (default CLS/SEP or BOS/EOS).
        positions_only: ``False`` disables head-only-at-positions logits (default: automatic, verified).
        residue_separator: for one-token-per-character models (proteins): join characters with this
            string before tokenizing, and decode to plain strings.
    """
    if isinstance(model, MaskedLM):
        if mask_token_id is not None and not is_int(mask_token_id):
            raise ValueError(f"mask_token_id must be an integer token id, got {mask_token_id!r} "
                             f"({type(mask_token_id).__name__})")
        if mask_token_id is not None and int(mask_token_id) != model.mask_token_id:
            raise ValueError(f"mask_token_id={mask_token_id} differs from the wrapped model's {model.mask_token_id}: "
                             "wrap the underlying module again to change it")
        return model
    if tokenizer is None:
        tokenizer = getattr(model, "tokenizer", None)
    options: dict[str, Any] = dict(
        mask_token_id=mask_token_id, family=family, suppress_tokens=suppress_tokens, allowed_tokens=allowed_tokens,
        framing=framing, pad_token_id=pad_token_id, eos_token_id=eos_token_id, max_length=max_length,
        positions_only=positions_only, residue_separator=residue_separator, name_or_path=name_or_path,
        force_mask_token_id=force_mask_token_id)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (or a MaskedLM), got {type(model).__name__}")
    try:
        key: tuple | None = (id(tokenizer), *sorted((k, _freeze(v)) for k, v in options.items()))
    except TypeError:
        key = None  # e.g. a one-shot iterator of token ids: build a fresh adapter
    cache = _adapter_cache(model) if key is not None else None
    found = cache.get(key) if cache is not None else None
    if found is not None and found.tokenizer is tokenizer:
        return found
    adapter = MaskedLM(model, tokenizer=tokenizer, **options)
    if cache is not None:
        cache[key] = adapter
    return adapter


# --------------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------------

def _source(name: str) -> tuple[str, dict]:
    """(loadable path or hub id, the directory's ``mdm_sched.json`` facts or ``{}``); a name that is neither a
    built-in model, an existing path nor shaped like a Hub id (``name`` or ``owner/name``) does not exist."""
    from .hub import _is_repo_id

    if name not in assets.BUILTIN_MODELS and not Path(name).expanduser().exists() and not _is_repo_id(name):
        raise FileNotFoundError(f"model {name} does not exist: give a built-in name ({', '.join(assets.BUILTIN_MODELS)}), "
                                "an existing model folder or a Hub id (owner/name)")
    path = str(assets.resolve(name)) if name in assets.BUILTIN_MODELS else name
    meta = assets.read_metadata(path) if Path(path).is_dir() else None
    return path, meta or {}


def _load_config(path: str, name: str, trust_remote_code: bool) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except ValueError as exc:
        if "trust_remote_code" in str(exc) and not trust_remote_code:
            raise ValueError(f"{name} ships its own modelling code; load it with "
                             "load_masked_lm(..., trust_remote_code=True) if you trust its source") from exc
        raise
    except OSError as exc:  # not a model folder, or a Hub id that is not in the cache / cannot be reached
        where = "folder" if Path(path).is_dir() else "Hub id"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"model {name}: cannot load a model config from this {where} ({first})") from exc


def _loading_family(name: str, config: Any, explicit: str | Family | None, meta: dict, trust_remote_code: bool) -> Family:
    """The family to load ``name`` as: explicit, the directory's metadata, or detected from the config."""
    chosen = explicit or meta.get("family") or detect_family(config)
    if chosen is None:
        raise ValueError(f"cannot tell the model family of {name} from its config (model_type="
                         f"{getattr(config, 'model_type', None)!r}); pass family= one of {', '.join(FAMILIES)}")
    spec = get_family(chosen)
    if spec.remote_code and getattr(config, "auto_map", None) and not trust_remote_code:
        raise ValueError(f"{name} is a {spec.name}-style model with remote modelling code; pass trust_remote_code=True "
                         "if you trust its source")
    return spec


def _auto_class(spec: Family) -> Any:
    import transformers

    auto = getattr(transformers, spec.auto_class, None)
    if auto is None:
        raise ValueError(f"family {spec.name!r}: transformers has no {spec.auto_class}; fix the family's auto_class")
    return auto


def _load_tokenizer(path: str, name: str, trust_remote_code: bool) -> Any:
    """The tokenizer stored with the model, or ``None`` (with a warning) when there is no usable one."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as exc:  # a model without tokenizer files still works on token ids
        warnings.warn(f"no tokenizer could be loaded from {name} ({exc}); only token ids will work", stacklevel=3)
        return None
    # transformers 5 builds a tokenizer holding only special tokens when the vocabulary file is
    # missing: every text would become [UNK]. Such a tokenizer is worse than none.
    if not _has_vocabulary(tokenizer):
        warnings.warn(f"the tokenizer found for {name} has no vocabulary beyond special tokens; ignoring it "
                      "(pass tokenizer=... to use text)", stacklevel=3)
        return None
    return tokenizer


def load_masked_lm(name_or_path: str | os.PathLike, *, trust_remote_code: bool = False,
                   device: str | torch.device | None = None, dtype: torch.dtype | str | None = None,
                   family: str | Family | None = None, tokenizer: Any = None, **wrap_kwargs: Any) -> MaskedLM:
    """Load a masked LM by built-in name (``"antiberty"``, ``"sapiens-vh"``, ``"sapiens-vl"``), local
    directory or hub id, and wrap it.

    Args:
        trust_remote_code: needed for LLaDA/Dream checkpoints that ship their modelling code; never implied.
        device: where to put the model (default: where it loads, CPU).
        dtype: e.g. ``torch.bfloat16``; default: float32.
        family: override the detected family (a registered name or a :class:`~mdm_sched.families.Family`).
        tokenizer: use this tokenizer instead of loading one from the same place.
        wrap_kwargs: passed to :func:`wrap` (``allowed_tokens``, ``suppress_tokens``, ``mask_token_id`` ...).
    """
    name = os.fspath(name_or_path) if isinstance(name_or_path, (str, os.PathLike)) else name_or_path
    if not isinstance(name, str) or not name:
        raise TypeError(f"name_or_path must be a model name, folder or Hub id (str or path), got {name_or_path!r}")
    check_device(device)
    path, meta = _source(name)
    if isinstance(dtype, str):
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ValueError(f"dtype={dtype!r} is not a torch dtype name; use e.g. 'float32' or 'bfloat16'")
        dtype = getattr(torch, dtype)
    config = _load_config(path, name, trust_remote_code)
    spec = _loading_family(name, config, family, meta, trust_remote_code)
    model = _auto_class(spec).from_pretrained(path, trust_remote_code=trust_remote_code,
                                              **dtype_kwargs(dtype or torch.float32))
    if device is not None:
        model = model.to(device)
    model.eval()
    if tokenizer is None:
        tokenizer = _load_tokenizer(path, name, trust_remote_code)
    for key in ("allowed_tokens", "residue_separator", "max_length"):
        if key in meta and key not in wrap_kwargs:
            wrap_kwargs[key] = meta[key]
    return wrap(model, tokenizer=tokenizer, family=spec, name_or_path=name, **wrap_kwargs)
