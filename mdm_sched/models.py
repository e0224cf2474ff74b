"""One adapter for every masked LM family: :class:`MaskedLM`, :func:`wrap` and :func:`load_masked_lm`.

Every stage of the library (profile estimation, generation, evaluation) talks to a model through
:meth:`MaskedLM.logits`, which takes *content* token ids (the mask id where a position is masked,
left or right padding marked by an attention mask) and returns float32 logits aligned with those
content positions. The family-specific plumbing lives here and nowhere else:

========  =====================================================================================
family    what the adapter does
========  =====================================================================================
bert      HF masked LMs (BERT, RoBERTa, DistilBERT, ModernBERT, ESM, ...): adds the framing tokens
          (CLS/BOS before, SEP/EOS after) and strips them again; re-lays rows out right-padded
          internally, so absolute position embeddings (BERT's arange, RoBERTa's padding_idx
          offsets) see every row exactly as it would be seen alone.
llada     LLaDA-style masked diffusion LMs: ``model(input_ids, attention_mask).logits``, no framing.
dream     Dream-style: the logits at position ``i`` predict token ``i + 1``, so the adapter shifts
          them back by one (a row's first position uses its own logits, as Dream does).
module    any ``nn.Module`` whose forward returns ``.logits`` (or a tensor), given a mask id.
========  =====================================================================================

For llada/dream/module models whose ``forward`` accepts ``position_ids``, left-padded rows get
position ids that start at 0 on the first real token (what Dream's own generate does).

Tokens that are never sampled (``suppressed_ids``) get ``-inf`` logits: the mask token always
(models, and the oracles, give it a finite logit), padding, and for the bert family every special
token (framing tokens, unk). A model directory with an ``mdm_sched.json`` (see
:mod:`mdm_sched.assets`) can restrict sampling to ``allowed_tokens`` and declare a
``residue_separator`` (AntiBERTy's tokenizer wants residues separated by spaces).

Positions-only logits: when the model exposes its LM head (``model.cls``, ``model.lm_head`` or
``get_output_embeddings()``), :meth:`MaskedLM.logits` with ``positions=`` runs the transformer body
once, captures the hidden states that enter the head, and applies the head only at the requested
positions: the ``[B, L, V]`` tensor, the memory peak for large vocabularies, is never built. The
first such call also computes the full logits and checks that both agree; a head whose output is
post-processed by the model in a way the adapter cannot see fails that check and the adapter falls
back to full logits for good (with a warning), so the shortcut can never change results.
"""
from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
import re
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["MaskedLM", "wrap", "load_masked_lm", "detect_family", "FAMILIES", "LLADA_MASK_TOKEN_ID"]

FAMILIES = ("bert", "llada", "dream", "module")
#: LLaDA's mask token id (``<|mdm_mask|>``), used when neither the config nor the tokenizer names one.
LLADA_MASK_TOKEN_ID = 126336

# model_type values of HF encoder masked LMs (the family is also recognised from "...ForMaskedLM").
_ENCODER_TYPES = frozenset({
    "bert", "roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "distilbert", "modernbert", "esm",
    "electra", "albert", "deberta", "deberta-v2", "mpnet", "megatron-bert", "rembert", "roformer",
    "nomic_bert", "neobert", "eurobert", "ernie", "big_bird", "convbert", "funnel", "mobilebert",
    "squeezebert", "layoutlm", "luke", "data2vec-text", "ibert", "nystromformer", "yoso", "xmod",
})
_METADATA_FILE = "mdm_sched.json"


# --------------------------------------------------------------------------------------------------
# family detection
# --------------------------------------------------------------------------------------------------

def detect_family(config: Any) -> str | None:
    """Guess the adapter family from an HF config (``model_type``, ``architectures``, ``auto_map``).

    Returns ``None`` when nothing identifies the family (the caller then uses ``"module"`` or asks
    for ``family=``).
    """
    if config is None:
        return None
    model_type = str(getattr(config, "model_type", "") or "").lower()
    archs = [str(a).lower() for a in (getattr(config, "architectures", None) or [])]
    auto_map = getattr(config, "auto_map", None) or {}
    auto = [str(v).lower() for v in (auto_map.values() if isinstance(auto_map, dict) else [])]
    names = [model_type, *archs, *auto]
    if any("llada" in n for n in names):
        return "llada"
    if any("dream" in n for n in names):
        return "dream"
    if model_type in _ENCODER_TYPES or any(a.endswith("formaskedlm") for a in archs):
        return "bert"
    return None


def _family_of_module(model: nn.Module) -> str:
    found = detect_family(getattr(model, "config", None))
    if found is not None:
        return found
    if type(model).__name__.lower().endswith("formaskedlm"):
        return "bert"
    return "module"


# --------------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------------

def _cfg(model: nn.Module, *names: str) -> Any:
    """First non-None attribute of ``model.config`` among ``names``."""
    config = getattr(model, "config", None)
    for name in names:
        value = getattr(config, name, None) if config is not None else None
        if value is not None:
            return value
    return None


def _tok_attr(tokenizer: Any, name: str) -> int | None:
    value = getattr(tokenizer, name, None) if tokenizer is not None else None
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def _first_int(*values: Any) -> int | None:
    for v in values:
        if isinstance(v, (list, tuple)) and v:
            v = v[0]
        if isinstance(v, int) and not isinstance(v, bool):
            return int(v)
    return None


def _accepts(fn: Any, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _extract_logits(out: Any) -> torch.Tensor:
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


def _read_metadata(path: str | os.PathLike | None) -> dict:
    if path is None:
        return {}
    f = Path(path) / _METADATA_FILE
    if not f.is_file():
        return {}
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{f} is not valid JSON ({exc}); delete it or rebuild the model directory") from exc
    return data if isinstance(data, dict) else {}


# --------------------------------------------------------------------------------------------------
# the adapter
# --------------------------------------------------------------------------------------------------

class MaskedLM:
    """A masked LM behind one calling convention (see the module docstring).

    Build it with :func:`wrap` or :func:`load_masked_lm` rather than directly. Attributes:
    ``model`` (the ``nn.Module``), ``tokenizer`` (or ``None``), ``family``, ``mask_token_id``,
    ``pad_token_id``, ``eos_token_id``, ``framing`` (prefix, suffix ids for the bert family),
    ``max_length`` (content positions, or ``None`` when unknown), ``name_or_path``, ``config_hash``,
    ``residue_separator`` (``None`` for ordinary text tokenizers).
    """

    def __init__(self, model: nn.Module, *, tokenizer: Any = None, mask_token_id: int | None = None,
                 family: str | None = None, suppress_tokens: Iterable[int | str] | None = None,
                 allowed_tokens: Iterable[int | str] | None = None, framing: tuple[int | None, int | None] | None = None,
                 pad_token_id: int | None = None, eos_token_id: int | None = None, max_length: int | None = None,
                 positions_only: bool | None = None, residue_separator: str | None = None,
                 name_or_path: str | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module (or a MaskedLM), got {type(model).__name__}")
        self.model = model
        self.tokenizer = tokenizer
        if family is None:
            family = _family_of_module(model)
        if family not in FAMILIES:
            raise ValueError(f"family={family!r} is not supported; choose one of {', '.join(FAMILIES)}")
        self.family: str = family
        self.name_or_path = name_or_path if name_or_path is not None else (
            _cfg(model, "_name_or_path", "name_or_path") or None)
        self.residue_separator = residue_separator

        self.mask_token_id: int = self._resolve_mask_id(mask_token_id)
        self.pad_token_id: int | None = _first_int(pad_token_id, _tok_attr(tokenizer, "pad_token_id"),
                                                   _cfg(model, "pad_token_id"))
        self.eos_token_id: int | None = _first_int(eos_token_id, _tok_attr(tokenizer, "eos_token_id"),
                                                   _cfg(model, "eos_token_id"))
        self.framing: tuple[int | None, int | None] = self._resolve_framing(framing)
        if family == "bert" and framing is None and self.framing == (None, None):
            warnings.warn(f"{type(model).__name__}: no CLS/SEP (BOS/EOS) framing tokens known; the model will see "
                          "unframed content. Pass tokenizer=... or framing=(cls_id, sep_id)", stacklevel=3)
        self._vocab_size: int | None = _first_int(_cfg(model, "vocab_size"))
        head_out = self._output_embeddings()
        if self._vocab_size is None and isinstance(head_out, nn.Linear):
            self._vocab_size = head_out.out_features

        # forward signature: what may be passed
        fwd = model.forward
        self._pass_attention_mask = _accepts(fwd, "attention_mask")
        self._pass_position_ids = family in ("llada", "dream", "module") and _accepts(fwd, "position_ids")
        self.max_length: int | None = self._resolve_max_length(max_length)

        # tokens never sampled
        self._suppress_list = self._default_suppressed()
        if suppress_tokens is not None:
            self._suppress_list |= set(self._token_ids(suppress_tokens, "suppress_tokens"))
        self._allowed: set[int] | None = None
        if allowed_tokens is not None:
            self._allowed = set(self._token_ids(allowed_tokens, "allowed_tokens"))
            if not self._allowed:
                raise ValueError("allowed_tokens is empty: pass at least one token that may be sampled")
        self._suppress_mask: torch.Tensor | None = None

        # positions-only logits: candidate head modules, tried in order; None = not yet verified
        self._positions_only = positions_only
        self._heads: list[nn.Module] = self._head_candidates() if positions_only is not False else []
        self._head_verified = False
        self.config_hash: str = self._config_hash()

    # -- construction helpers --------------------------------------------------------------------
    def _resolve_mask_id(self, explicit: int | None) -> int:
        found = _first_int(explicit, _tok_attr(self.tokenizer, "mask_token_id"), _cfg(self.model, "mask_token_id"),
                           getattr(self.model, "mask_token_id", None))
        if found is None and self.family == "llada":
            found = LLADA_MASK_TOKEN_ID
        if found is None:
            raise ValueError("no mask token known for this model: pass mask_token_id=<id> (to wrap/generate), "
                             "or a tokenizer with a mask token, or a config with mask_token_id")
        if found < 0:
            raise ValueError(f"mask_token_id must be a non-negative token id, got {found}")
        return found

    def _resolve_framing(self, framing: tuple[int | None, int | None] | None) -> tuple[int | None, int | None]:
        if framing is not None:
            if not (isinstance(framing, (tuple, list)) and len(framing) == 2):
                raise ValueError("framing must be a pair (prefix_id or None, suffix_id or None), e.g. (cls_id, sep_id)")
            return (_first_int(framing[0]), _first_int(framing[1]))
        if self.family != "bert":
            return (None, None)
        tok = self.tokenizer
        prefix = _first_int(_tok_attr(tok, "cls_token_id"), _tok_attr(tok, "bos_token_id"),
                            _cfg(self.model, "cls_token_id", "bos_token_id") if tok is None else None)
        suffix = _first_int(_tok_attr(tok, "sep_token_id"), _tok_attr(tok, "eos_token_id"),
                            _cfg(self.model, "sep_token_id", "eos_token_id") if tok is None else None)
        return (prefix, suffix)

    @property
    def _n_framing(self) -> int:
        return int(self.framing[0] is not None) + int(self.framing[1] is not None)

    def _embeddings(self) -> nn.Module | None:
        base = getattr(self.model, "base_model", None)
        return getattr(base if isinstance(base, nn.Module) else self.model, "embeddings", None)

    def _resolve_max_length(self, explicit: int | None) -> int | None:
        if explicit is not None:
            return int(explicit)
        limit = None
        emb = self._embeddings()
        pos = getattr(emb, "position_embeddings", None) if emb is not None else None
        if isinstance(pos, nn.Embedding):
            limit = pos.num_embeddings
            if pos.padding_idx is not None:  # RoBERTa-style: positions start after padding_idx
                limit -= pos.padding_idx + 1
        if limit is None:
            limit = _first_int(_cfg(self.model, "max_position_embeddings", "max_sequence_length", "n_positions"))
        if limit is None:
            return None
        return max(int(limit) - self._n_framing, 0)

    def _default_suppressed(self) -> set[int]:
        ids = {self.mask_token_id}
        tok = self.tokenizer
        if self.family == "bert":
            ids |= {i for i in self.framing if i is not None}
            if self.pad_token_id is not None:
                ids.add(self.pad_token_id)
            if tok is not None:
                ids |= {int(i) for i in (getattr(tok, "all_special_ids", None) or [])}
        elif self.pad_token_id is not None and self.pad_token_id != self.eos_token_id:
            # Diffusion LMs often pad with EOS; EOS must stay samplable (it ends the text).
            ids.add(self.pad_token_id)
        return ids

    def _token_ids(self, tokens: Iterable[int | str], argname: str) -> list[int]:
        if isinstance(tokens, (str, int)):
            tokens = [tokens]
        out = []
        for t in tokens:
            if isinstance(t, str):
                if self.tokenizer is None:
                    raise ValueError(f"{argname} contains the string {t!r} but no tokenizer is known: "
                                     "pass token ids or wrap(..., tokenizer=...)")
                tid = self.tokenizer.convert_tokens_to_ids(t)
                unk = _tok_attr(self.tokenizer, "unk_token_id")
                if tid is None or (tid == unk and t != getattr(self.tokenizer, "unk_token", None)):
                    raise ValueError(f"{argname}: token {t!r} is not in the tokenizer's vocabulary")
                out.append(int(tid))
            elif isinstance(t, int) or (isinstance(t, torch.Tensor) and t.numel() == 1):
                out.append(int(t))
            else:
                raise TypeError(f"{argname} must hold token ids (int) or token strings, got {type(t).__name__}")
        return out

    def _output_embeddings(self) -> nn.Module | None:
        getter = getattr(self.model, "get_output_embeddings", None)
        if callable(getter):
            try:
                head = getter()
            except Exception:  # some remote-code models raise NotImplementedError here
                return None
            return head if isinstance(head, nn.Module) else None
        return None

    def _head_candidates(self) -> list[nn.Module]:
        """Modules whose output may be the logits: the full MLM head first (so its transform also runs
        only where needed), then the output embedding. Verified on first use."""
        if self.family == "module":
            return []
        found: list[nn.Module] = []
        for cand in (getattr(self.model, "cls", None), getattr(self.model, "lm_head", None), self._output_embeddings()):
            if isinstance(cand, nn.Module) and all(cand is not f for f in found):
                found.append(cand)
        return found

    def _config_hash(self) -> str:
        config = getattr(self.model, "config", None)
        if config is None:
            cfg: dict = {}
        elif hasattr(config, "to_dict"):
            cfg = dict(config.to_dict())
        else:
            cfg = dict(vars(config))
        for volatile in ("_name_or_path", "name_or_path", "transformers_version", "torch_dtype", "dtype"):
            cfg.pop(volatile, None)
        shapes = [(n, tuple(p.shape)) for n, p in self.model.named_parameters()]
        blob = json.dumps({"class": type(self.model).__name__, "family": self.family, "mask": self.mask_token_id,
                           "config": cfg, "params": shapes}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    # -- properties ------------------------------------------------------------------------------
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
    def vocab_size(self) -> int:
        """Size of the logits' last dimension (probed with one tiny forward when the config has none)."""
        if self._vocab_size is None:
            probe = torch.full((1, 1), self.mask_token_id, dtype=torch.long, device=self.device)
            self._vocab_size = int(self._raw_forward(probe, None).shape[-1])
        return self._vocab_size

    @property
    def suppressed_ids(self) -> torch.Tensor:
        """Token ids that are never sampled (sorted LongTensor on CPU)."""
        return self._suppression(self.vocab_size, torch.device("cpu")).nonzero().squeeze(1)

    @property
    def allowed_ids(self) -> torch.Tensor:
        """Token ids that may be sampled (sorted LongTensor on CPU)."""
        return (~self._suppression(self.vocab_size, torch.device("cpu"))).nonzero().squeeze(1)

    def _suppression(self, vocab: int, device: torch.device) -> torch.Tensor:
        if self._suppress_mask is None or self._suppress_mask.numel() != vocab:
            mask = torch.zeros(vocab, dtype=torch.bool)
            ids = [i for i in self._suppress_list if 0 <= i < vocab]
            if ids:
                mask[torch.tensor(ids)] = True
            if self._allowed is not None:
                allowed = torch.zeros(vocab, dtype=torch.bool)
                allowed[torch.tensor([i for i in self._allowed if 0 <= i < vocab], dtype=torch.long)] = True
                mask |= ~allowed
            if bool(mask.all()):
                raise ValueError("every token is suppressed: check allowed_tokens / suppress_tokens")
            self._suppress_mask = mask
        if self._suppress_mask.device != device:
            self._suppress_mask = self._suppress_mask.to(device)
        return self._suppress_mask

    def __repr__(self) -> str:
        return (f"MaskedLM(family={self.family!r}, model={type(self.model).__name__}, name_or_path={self.name_or_path!r}, "
                f"mask_token_id={self.mask_token_id}, max_length={self.max_length})")

    def to(self, *args: Any, **kwargs: Any) -> MaskedLM:
        self.model.to(*args, **kwargs)
        return self

    # -- text ------------------------------------------------------------------------------------
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
            # one token per residue; a literal mask token stays whole
            mask_str = getattr(tok, "mask_token", None)
            pattern = re.compile(("(" + re.escape(mask_str) + ")|" if mask_str else "") + r"(\S)")
            texts = [self.residue_separator.join(m.group(0) for m in pattern.finditer(t)) for t in texts]
        return [list(map(int, ids)) for ids in tok(texts, add_special_tokens=False)["input_ids"]]

    def decode(self, ids: torch.Tensor | Sequence[Sequence[int]]) -> list[str]:
        """Texts of rows of token ids; padding, framing and other special tokens are dropped.

        Residue models (``residue_separator`` set) give plain residue strings (``"EVQLV..."``).
        """
        tok = self._require_tokenizer("decode")
        rows = ids.tolist() if isinstance(ids, torch.Tensor) else [list(r) for r in ids]
        if rows and isinstance(rows[0], int):
            rows = [rows]
        if self.residue_separator is not None:
            special = set(getattr(tok, "all_special_ids", None) or []) | {self.pad_token_id}
            return ["".join(tok.convert_ids_to_tokens([i for i in r if i not in special])) for r in rows]
        return tok.batch_decode(rows, skip_special_tokens=True)

    # -- model calls -----------------------------------------------------------------------------
    def _raw_forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                     position_ids: torch.Tensor | None = None) -> torch.Tensor:
        kwargs: dict[str, Any] = {}
        if attention_mask is not None:
            if not self._pass_attention_mask:
                raise ValueError(f"{type(self.model).__name__}.forward takes no attention_mask, so rows of different "
                                 "lengths cannot be batched: pass prompts of equal length (or batch them separately)")
            kwargs["attention_mask"] = attention_mask.long()
        if position_ids is not None:
            kwargs["position_ids"] = position_ids
        return _extract_logits(self.model(input_ids, **kwargs))

    def _layout(self, ids: torch.Tensor, attn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None,
                                                                       torch.Tensor | None, torch.Tensor]:
        """Model inputs for content ``ids`` and, per content position, the model position whose logits predict it.

        Returns ``(model_ids, model_attention_mask or None, position_ids or None, index [B, L])``.
        """
        b, l = ids.shape
        device = ids.device
        cols = torch.arange(l, device=device)
        padded = not bool(attn.all())
        pad = self.pad_token_id if self.pad_token_id is not None else 0
        if self.family == "bert":
            # Right-pad internally: [prefix] content [suffix] pad...; every row then has the positions it
            # would have alone, whatever the model's position scheme. A stable sort keeps content order.
            order = torch.argsort((~attn).to(torch.int8), dim=1, stable=True)
            compact = ids.gather(1, order)
            n_valid = attn.sum(1)
            prefix, suffix = self.framing
            n_pre = int(prefix is not None)
            width = l + self._n_framing
            model_ids = torch.full((b, width), pad, dtype=ids.dtype, device=device)
            body_valid = cols.unsqueeze(0) < n_valid.unsqueeze(1)
            model_ids[:, n_pre:n_pre + l] = torch.where(body_valid, compact, torch.full_like(compact, pad))
            if prefix is not None:
                model_ids[:, 0] = prefix
            if suffix is not None:
                model_ids.scatter_(1, (n_valid + n_pre).unsqueeze(1), suffix)
            total = n_valid + self._n_framing
            model_attn = torch.arange(width, device=device).unsqueeze(0) < total.unsqueeze(1)
            index = torch.argsort(order, dim=1) + n_pre  # inverse permutation: content col -> model col
            return model_ids, (model_attn if padded else None), None, index
        model_ids = torch.where(attn, ids, torch.full_like(ids, pad))
        position_ids = None
        if padded and self._pass_position_ids:
            position_ids = (attn.long().cumsum(1) - 1).clamp(min=0)
        index = cols.unsqueeze(0).expand(b, l)
        if self.family == "dream":
            # logits at i predict token i+1: content j reads position j-1 unless that is padding (row start)
            prev_ok = torch.zeros_like(attn)
            prev_ok[:, 1:] = attn[:, :-1]
            index = torch.where(prev_ok, index - 1, index)
        return model_ids, (attn if padded else None), position_ids, index

    @contextlib.contextmanager
    def _eval_mode(self):
        was_training = self.model.training
        if was_training:
            self.model.eval()  # dropout off while sampling, even when called from a training loop
        try:
            yield
        finally:
            if was_training:
                self.model.train()

    def _forward_capturing(self, head: nn.Module, model_ids: torch.Tensor, model_attn: torch.Tensor | None,
                           position_ids: torch.Tensor | None, full: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """One forward with ``head`` intercepted: returns (hidden states entering the head, full logits or None)."""
        store: list[torch.Tensor] = []
        had_attr = "forward" in head.__dict__
        original = head.forward

        def capture(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            store.append(x)
            if full:
                return original(x, *args, **kwargs)
            return x.new_zeros(x.shape[:-1] + (0,))  # the [.., V] product is what we avoid

        head.forward = capture
        try:
            logits = self._raw_forward(model_ids, model_attn, position_ids)
        finally:
            if had_attr:
                head.forward = original
            else:
                del head.forward
        hidden = store[-1] if len(store) == 1 else None  # a head called twice is not a plain head
        return hidden, (logits if full else None)

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               positions: torch.Tensor | None = None) -> torch.Tensor:
        """Float32 logits for content ids (mask id where masked), suppressed ids at ``-inf``.

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
        if self.max_length is not None and ids.shape[1] > self.max_length:
            longest = int(attn.sum(1).max())
            if longest > self.max_length:
                raise ValueError(f"a row has {longest} content tokens but {self.name_or_path or type(self.model).__name__} "
                                 f"takes at most max_length={self.max_length}: shorten the prompt or gen_length")
        with torch.inference_mode(), self._eval_mode():
            model_ids, model_attn, position_ids, index = self._layout(ids, attn)
            out = self._select_logits(model_ids, model_attn, position_ids, index, positions)
            out = out.float()
            peak = out.amax(dim=-1)  # NaN and +inf propagate through max: no [P, V] boolean temporaries
            if bool((torch.isnan(peak) | (peak == float("inf"))).any()):
                raise ValueError(f"model {self.name_or_path or type(self.model).__name__} returned NaN or +inf logits "
                                 f"(dtype {self.dtype}); run it in float32 (load_masked_lm(..., dtype=torch.float32)) "
                                 "or check its weights")
            if self._vocab_size is None:
                self._vocab_size = int(out.shape[-1])
            return out.masked_fill_(self._suppression(out.shape[-1], out.device), float("-inf"))

    def _select_logits(self, model_ids: torch.Tensor, model_attn: torch.Tensor | None,
                       position_ids: torch.Tensor | None, index: torch.Tensor,
                       positions: torch.Tensor | None) -> torch.Tensor:
        """Model-dtype logits at the requested content positions (``[P, V]``) or everywhere (``[B, L, V]``)."""
        if positions is not None and self._heads and not self._head_verified:
            self._check_heads(model_ids, model_attn)
        if positions is None or not self._head_verified:
            full = self._raw_forward(model_ids, model_attn, position_ids)
            if positions is None:
                return full.gather(1, index.unsqueeze(-1).expand(-1, -1, full.shape[-1]))
            rows, cols = positions.nonzero(as_tuple=True)
            return full[rows, index[rows, cols]]
        rows, cols = positions.nonzero(as_tuple=True)
        head = self._heads[0]
        hidden, _ = self._forward_capturing(head, model_ids, model_attn, position_ids, full=False)
        if hidden is None:
            raise RuntimeError(f"{type(self.model).__name__}: the LM head was not called during the forward; "
                               "wrap(..., positions_only=False)")
        return head(hidden[rows, index[rows, cols]])

    def _check_heads(self, model_ids: torch.Tensor, model_attn: torch.Tensor | None) -> None:
        """Pick the first candidate head whose output at selected rows equals the model's own logits.

        Checked once, on a short probe (the first tokens of the longest row, at most 16), so the check
        never builds the large ``[B, L, V]`` tensor the shortcut exists to avoid.
        """
        counts = (model_attn.sum(1) if model_attn is not None
                  else torch.full((model_ids.shape[0],), model_ids.shape[1], device=model_ids.device))
        row = int(counts.argmax())
        valid = model_ids[row] if model_attn is None else model_ids[row][model_attn[row].bool()]
        probe = valid[:16].unsqueeze(0)
        while self._heads:
            head = self._heads[0]
            try:
                hidden, full = self._forward_capturing(head, probe, None, None, full=True)
            except Exception:
                hidden, full = None, None
            if full is not None and bool((torch.isnan(full) | (full == float("inf"))).any()):
                return  # undecidable on broken logits; the caller's full path raises on them
            if full is not None and self._head_matches(head, hidden, full):
                self._head_verified = True
                return
            self._heads.pop(0)
        warnings.warn(f"{type(self.model).__name__}: could not apply the LM head at selected positions only; "
                      "using full logits (same results, more memory)", stacklevel=4)

    @staticmethod
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


# --------------------------------------------------------------------------------------------------
# constructors
# --------------------------------------------------------------------------------------------------

def wrap(model: nn.Module | MaskedLM, tokenizer: Any = None, mask_token_id: int | None = None,
         family: str | None = None, *, suppress_tokens: Iterable[int | str] | None = None,
         allowed_tokens: Iterable[int | str] | None = None, framing: tuple[int | None, int | None] | None = None,
         pad_token_id: int | None = None, eos_token_id: int | None = None, max_length: int | None = None,
         positions_only: bool | None = None, residue_separator: str | None = None,
         name_or_path: str | None = None) -> MaskedLM:
    """Wrap a model in the library's :class:`MaskedLM` adapter (a ``MaskedLM`` is returned unchanged).

    Args:
        model: an HF masked LM, a LLaDA/Dream-style model, or any ``nn.Module`` whose forward returns ``.logits``.
        tokenizer: optional HF tokenizer (text prompts, decoding, special token ids).
        mask_token_id: overrides the tokenizer's / config's mask id (required when neither has one).
        family: ``"bert" | "llada" | "dream" | "module"``; detected from the config when omitted.
        suppress_tokens: extra token ids (or token strings) never to sample.
        allowed_tokens: restrict sampling to these ids/strings (e.g. the 20 amino acids).
        framing: ``(prefix_id, suffix_id)`` added around the content (bert family; default CLS/SEP or BOS/EOS).
        positions_only: ``False`` disables head-only-at-positions logits (default: automatic, verified).
        residue_separator: for one-token-per-character models (proteins): join characters with this
            string before tokenizing, and decode to plain strings.
    """
    if isinstance(model, MaskedLM):
        if mask_token_id is not None and int(mask_token_id) != model.mask_token_id:
            raise ValueError(f"mask_token_id={mask_token_id} differs from the wrapped model's {model.mask_token_id}: "
                             "wrap the underlying module again to change it")
        return model
    if tokenizer is None:
        tokenizer = getattr(model, "tokenizer", None)
    return MaskedLM(model, tokenizer=tokenizer, mask_token_id=mask_token_id, family=family,
                    suppress_tokens=suppress_tokens, allowed_tokens=allowed_tokens, framing=framing,
                    pad_token_id=pad_token_id, eos_token_id=eos_token_id, max_length=max_length,
                    positions_only=positions_only, residue_separator=residue_separator, name_or_path=name_or_path)


def load_masked_lm(name_or_path: str | os.PathLike, *, trust_remote_code: bool = False,
                   device: str | torch.device | None = None, dtype: torch.dtype | str | None = None,
                   family: str | None = None, tokenizer: Any = None, **wrap_kwargs: Any) -> MaskedLM:
    """Load a masked LM by built-in name (``"antiberty"``, ``"sapiens-vh"``, ``"sapiens-vl"``), local
    directory or hub id, and wrap it.

    Args:
        trust_remote_code: needed for LLaDA/Dream checkpoints that ship their modelling code; never implied.
        device: where to put the model (default: where it loads, CPU).
        dtype: e.g. ``torch.bfloat16``; default: float32.
        family: override the detected family.
        tokenizer: use this tokenizer instead of loading one from the same place.
        wrap_kwargs: passed to :func:`wrap` (``allowed_tokens``, ``suppress_tokens``, ``mask_token_id`` ...).
    """
    from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, AutoTokenizer

    name = str(name_or_path)
    try:
        from . import assets
        builtin = name in assets.BUILTIN_MODELS
    except ImportError:  # assets module unavailable: only paths and hub ids
        builtin = False
    path: str = str(assets.resolve(name)) if builtin else name
    meta = _read_metadata(path) if Path(path).is_dir() else {}
    if isinstance(dtype, str):
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ValueError(f"dtype={dtype!r} is not a torch dtype name; use e.g. 'float32' or 'bfloat16'")
        dtype = getattr(torch, dtype)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except ValueError as exc:
        if "trust_remote_code" in str(exc) and not trust_remote_code:
            raise ValueError(f"{name} ships its own modelling code; load it with "
                             "load_masked_lm(..., trust_remote_code=True) if you trust its source") from exc
        raise
    fam = family or meta.get("family") or detect_family(config)
    if fam is None:
        raise ValueError(f"cannot tell the model family of {name} from its config (model_type="
                         f"{getattr(config, 'model_type', None)!r}); pass family='bert'|'llada'|'dream'")
    if fam not in FAMILIES:
        raise ValueError(f"family={fam!r} is not supported; choose one of {', '.join(FAMILIES)}")
    if fam in ("llada", "dream") and getattr(config, "auto_map", None) and not trust_remote_code:
        raise ValueError(f"{name} is a {fam}-style model with remote modelling code; pass trust_remote_code=True "
                         "if you trust its source")
    auto = AutoModelForMaskedLM if fam == "bert" else AutoModel
    load_kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code, "dtype": dtype or torch.float32}
    model = auto.from_pretrained(path, **load_kwargs)
    if device is not None:
        model = model.to(device)
    model.eval()
    if tokenizer is None:
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        except Exception as exc:  # a model without tokenizer files still works on token ids
            warnings.warn(f"no tokenizer could be loaded from {name} ({exc}); only token ids will work",
                          stacklevel=2)
            tokenizer = None
        # transformers 5 builds a tokenizer holding only special tokens when the vocabulary file is
        # missing: every text would become [UNK]. Such a tokenizer is worse than none.
        if tokenizer is not None and len(tokenizer) <= len(set(getattr(tokenizer, "all_special_ids", []) or [])):
            warnings.warn(f"the tokenizer found for {name} has no vocabulary beyond special tokens; ignoring it "
                          "(pass tokenizer=... to use text)", stacklevel=2)
            tokenizer = None
    for key in ("allowed_tokens", "residue_separator", "max_length"):
        if key in meta and key not in wrap_kwargs:
            wrap_kwargs[key] = meta[key]
    return wrap(model, tokenizer=tokenizer, family=fam, name_or_path=name, **wrap_kwargs)
