"""Model families as data: one :class:`Family` entry per family, a registry, and detection.

A family says how a model of that kind is called, so that :class:`~mdm_sched.models.MaskedLM` can
read the entry's fields instead of branching on family names:

========  ==========================================================================================
family    entry
========  ==========================================================================================
bert      HF encoder masked LMs (BERT, RoBERTa, ModernBERT, ESM, ...): CLS/SEP framing, rows re-laid
          out right-padded (absolute position embeddings), every special token never sampled,
          loaded with ``AutoModelForMaskedLM``.
llada     LLaDA-style masked diffusion LMs: no framing, position ids for left-padded rows when the
          forward accepts them, default mask id 126336, ``AutoModel`` with remote code; chat prompts
          are rendered to text and tokenized with the tokenizer's BOS (LLaDA's ``chat.py``).
dream     Dream-style: like llada, but the logits at position ``i`` predict token ``i + 1``, the attention
          mask is the ``[B, 1, L, L]`` boolean one of Dream's generator, and chat prompts are the
          template's own tokens.
module    any ``nn.Module`` returning ``.logits``: never detected, the fallback; position ids like llada,
          no LM-head shortcut.
========  ==========================================================================================

Where to add a family
---------------------
Write one :class:`Family` and call :func:`register_family` (here for a built-in one, or in user code
before wrapping)::

    register_family(Family("mdlm", position_ids=True, default_mask_token_id=50257,
                           detect=name_contains("mdlm")))

Nothing else changes: :func:`~mdm_sched.models.wrap` and :func:`~mdm_sched.models.load_masked_lm`
find it by name (``family="mdlm"``) or through ``detect``. Detection tries the most recently
registered family first, so a new, narrower entry can claim models that an older, broader one
(``bert`` matches any ``...ForMaskedLM``) would also match. A behaviour no field expresses yet
becomes a new field with a default that keeps the existing entries unchanged.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from torch import nn

__all__ = ["Family", "ModelFacts", "FAMILIES", "LLADA_MASK_TOKEN_ID", "CHAT_TOKENIZATIONS", "register_family", "get_family",
           "detect_family", "family_of", "name_contains"]

#: Values of :attr:`Family.chat_tokenization` (see there).
CHAT_TOKENIZATIONS = ("template", "text")
#: LLaDA's mask token id (``<|mdm_mask|>``), used when neither the config nor the tokenizer names one.
LLADA_MASK_TOKEN_ID = 126336


@dataclass(frozen=True)
class ModelFacts:
    """What detection may look at: lower-cased names from a config (and the module's class name)."""

    model_type: str = ""
    architectures: tuple[str, ...] = ()
    auto_map: tuple[str, ...] = ()
    class_name: str = ""

    @property
    def names(self) -> tuple[str, ...]:
        """The config's own names: ``model_type``, ``architectures`` and ``auto_map`` targets."""
        return (self.model_type, *self.architectures, *self.auto_map)

    @classmethod
    def of(cls, config_or_module: object) -> ModelFacts:
        """Facts of an HF config, of a module (its ``.config`` plus its class name), or of ``None``."""
        class_name = ""
        config = config_or_module
        if isinstance(config_or_module, nn.Module):
            class_name = type(config_or_module).__name__.lower()
            config = getattr(config_or_module, "config", None)
        if config is None:
            return cls(class_name=class_name)
        auto_map = getattr(config, "auto_map", None) or {}
        return cls(model_type=str(getattr(config, "model_type", "") or "").lower(),
                   architectures=tuple(str(a).lower() for a in (getattr(config, "architectures", None) or [])),
                   auto_map=tuple(str(v).lower() for v in (auto_map.values() if isinstance(auto_map, dict) else [])),
                   class_name=class_name)


Detector = Callable[[ModelFacts], bool]


@dataclass(frozen=True)
class Family:
    """How one family of models is called. Every field has the default of a plain ``nn.Module``.

    Attributes:
        name: the registry key and ``MaskedLM.family``.
        framing: put the framing tokens (CLS/BOS before, SEP/EOS after) around the content (this
            implies the right-padded layout: the suffix follows each row's last real token).
        right_pad: re-lay rows out right-padded inside the forward, so absolute position embeddings
            (BERT's arange, RoBERTa's padding_idx offsets) see each row as if it were alone.
        shifted_logits: the logits at position ``i`` predict token ``i + 1`` (Dream); the adapter reads
            them back one position (a row's first position reads its own).
        position_ids: for left-padded rows pass position ids that start at 0 on the first real token,
            when the forward accepts ``position_ids`` (Dream's ``tok_idx``).
        pairwise_mask: the forward takes the attention mask as Dream's own generator builds it, a boolean
            ``[B, 1, L, L]`` tensor (query ``i`` may attend key ``j`` when both are real tokens), which its
            attention hands to ``scaled_dot_product_attention`` unchanged; otherwise the ``[B, L]`` 0/1
            padding mask of the Hugging Face convention (LLaDA, BERT).
        suppress_special_tokens: never sample any special token (the tokenizer's, the framing ids, pad);
            otherwise only the mask token and padding (padding stays samplable when it equals EOS).
        default_mask_token_id: mask id when neither the arguments, tokenizer nor config name one.
        auto_class: the ``transformers`` auto class that loads a checkpoint of the family.
        remote_code: checkpoints ship their own modelling code (``auto_map``), so loading one needs
            ``trust_remote_code=True``.
        head_shortcut: look for an LM head to apply only at requested positions (verified on first use).
        chat_tokenization: how chat messages become prompt ids, as the family's reference sampler does it:
            ``"template"``: the chat template's own tokens (``apply_chat_template(..., tokenize=True)``,
            Dream's demos and the Hugging Face convention); ``"text"``: the template rendered to text, then
            tokenized with the tokenizer's special tokens (LLaDA's ``chat.py``: the tokenizer adds BOS),
            keeping one BOS where the template rendered one too.
        detect: recognises the family from :class:`ModelFacts`; ``None``: only chosen by name.
        description: one line for error messages and listings.
    """

    name: str
    framing: bool = False
    right_pad: bool = False
    shifted_logits: bool = False
    position_ids: bool = False
    pairwise_mask: bool = False
    suppress_special_tokens: bool = False
    default_mask_token_id: int | None = None
    auto_class: str = "AutoModel"
    remote_code: bool = False
    head_shortcut: bool = True
    chat_tokenization: str = "template"
    detect: Detector | None = field(default=None, compare=False)
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name):
            raise ValueError(f"Family name must be letters, digits, '_', '.' or '-' (e.g. 'mdlm'), got {self.name!r}")
        mask = self.default_mask_token_id
        if mask is not None and (not isinstance(mask, int) or isinstance(mask, bool) or mask < 0):
            raise ValueError(f"default_mask_token_id must be None or a non-negative int, got {mask!r}")
        if not isinstance(self.auto_class, str) or not self.auto_class.startswith("Auto"):
            raise ValueError(f"auto_class must name a transformers auto class such as 'AutoModel', got {self.auto_class!r}")
        if self.chat_tokenization not in CHAT_TOKENIZATIONS:
            raise ValueError(f"chat_tokenization must be one of {', '.join(CHAT_TOKENIZATIONS)}, got {self.chat_tokenization!r}")
        if self.detect is not None and not callable(self.detect):
            raise TypeError(f"detect must be None or a function ModelFacts -> bool, got {type(self.detect).__name__}")


_REGISTRY: dict[str, Family] = {}
#: Read-only live view of the registry: family name -> :class:`Family` (``", ".join(FAMILIES)`` lists names).
FAMILIES: Mapping[str, Family] = MappingProxyType(_REGISTRY)


def register_family(family: Family, *, replace: bool = False) -> Family:
    """Add ``family`` to the registry (``replace=True`` to redefine an existing name); returns it."""
    if not isinstance(family, Family):
        raise TypeError(f"register_family expects a Family, got {type(family).__name__}")
    if family.name in _REGISTRY and not replace:
        raise ValueError(f"family {family.name!r} is already registered; pass replace=True to redefine it")
    _REGISTRY.pop(family.name, None)  # re-registration moves it to the front of detection
    _REGISTRY[family.name] = family
    return family


def get_family(name: str | Family) -> Family:
    """The registered entry called ``name`` (a :class:`Family` is returned as is)."""
    if isinstance(name, Family):
        return name
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"family={name!r} is not supported; choose one of {', '.join(_REGISTRY)} "
                         "(or register_family(...) a new one)")
    return _REGISTRY[name]


def detect_family(config: object) -> str | None:
    """Name of the family an HF config (or a module, through its config and class name) belongs to.

    Returns ``None`` when no entry recognises it (the caller then uses ``"module"`` or asks for
    ``family=``). Entries are tried from the most recently registered to the oldest.
    """
    if config is None:
        return None
    facts = ModelFacts.of(config)
    for family in reversed(_REGISTRY.values()):
        if family.detect is not None and family.detect(facts):
            return family.name
    return None


def family_of(model: nn.Module) -> Family:
    """The detected family of a module, or the ``module`` fallback."""
    found = detect_family(model)
    return _REGISTRY[found] if found is not None else get_family("module")


def name_contains(fragment: str) -> Detector:
    """Detector: ``fragment`` (case-insensitive) occurs in the config's model_type, architectures or auto_map."""
    needle = fragment.lower()
    return lambda facts: any(needle in n for n in facts.names)


# model_type values of HF encoder masked LMs (the family is also recognised from "...ForMaskedLM").
_ENCODER_TYPES = frozenset({
    "bert", "roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "distilbert", "modernbert", "esm",
    "electra", "albert", "deberta", "deberta-v2", "mpnet", "megatron-bert", "rembert", "roformer",
    "nomic_bert", "neobert", "eurobert", "ernie", "big_bird", "convbert", "funnel", "mobilebert",
    "squeezebert", "layoutlm", "luke", "data2vec-text", "ibert", "nystromformer", "yoso", "xmod",
})


def _is_encoder_mlm(facts: ModelFacts) -> bool:
    return (facts.model_type in _ENCODER_TYPES or any(a.endswith("formaskedlm") for a in facts.architectures)
            or facts.class_name.endswith("formaskedlm"))


# Registration order = reverse detection order: llada is tried first, then dream, then bert.
register_family(Family("module", position_ids=True, head_shortcut=False,
                       description="any nn.Module whose forward returns .logits (given a mask id)"))
register_family(Family("bert", framing=True, right_pad=True, suppress_special_tokens=True,
                       auto_class="AutoModelForMaskedLM", detect=_is_encoder_mlm,
                       description="HF encoder masked LMs (BERT, RoBERTa, ModernBERT, ESM, ...)"))
register_family(Family("dream", shifted_logits=True, position_ids=True, pairwise_mask=True, remote_code=True,
                       detect=name_contains("dream"), description="Dream-style masked diffusion LMs (logits at i predict i + 1)"))
register_family(Family("llada", position_ids=True, default_mask_token_id=LLADA_MASK_TOKEN_ID, remote_code=True,
                       chat_tokenization="text", detect=name_contains("llada"),
                       description="LLaDA-style masked diffusion LMs"))
