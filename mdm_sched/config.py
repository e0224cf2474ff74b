"""Every generation setting in one validated dataclass: :class:`MaskedGenerationConfig`.

:func:`mdm_sched.generate` builds one from its keyword arguments (or takes ``generation_config=`` and
applies keyword overrides on top) and validates it once, before any model call.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .draw import SamplingParams
from .orders import ORDERS, Order
from .rules import RevealRule
from .schedules import Schedule
from .validation import check_choice, check_float, check_int, check_optional_int, is_int

if TYPE_CHECKING:
    from ._types import CacheMode, ScheduleLike
    from .profile import InformationProfile

__all__ = ["MaskedGenerationConfig"]


@dataclass
class MaskedGenerationConfig:
    """Settings of :func:`mdm_sched.generate`.

    Attributes:
        gen_length: positions to generate after each prompt (0 = only infill the prompts' mask tokens).
        schedule: how many positions each call reveals: a :class:`~mdm_sched.schedules.Schedule` (sizes sum to
            ``block_length``, or ``gen_length`` without blocks), a list of sizes, an int ``T`` (**calls per block**,
            constant schedule; LLaDA's ``steps`` is the total over all blocks, i.e. ``T * number of blocks``), a
            builder name (``"constant"``, ``"cosine"``, ``"optimal"`` ... with ``steps``) or a reveal rule.
        steps: calls per block for a schedule given by name.
        profile: the information profile (or a path to one) for ``"optimal"`` / ``"sqrt"``.
        num_samples: rows without prompts (default 1), or samples per prompt.
        order: which positions a call reveals: ``"random"``, ``"confidence"``, ``"margin"``, ``"entropy"``.
        temperature: 0 = greedy; top_k, top_p: truncation before the draw.
        block_length: semi-autoregressive block size (the last block may be shorter).
        stop_at_eos: ``True`` (the model's EOS id), an EOS id or a list of ids: fill everything after a committed EOS.
        stop_strings: a row is finished once its filled prefix decodes to text containing one of these.
        cfg_scale: LLaDA's unsupervised classifier-free guidance scale (0 = off; prompt masked in the second pass).
        cache: Fast-dLLM's KV cache: ``"prefix"`` (later calls of a block run the block and what follows it) or
            ``"dual"`` (the block alone), for models whose forward takes ``past_key_values``; ``None`` = no cache.
            Approximate on bidirectional models (:mod:`mdm_sched.forward`); not with ``cfg_scale > 0``.
        return_history: keep ``(positions, tokens)`` of every call.
    """

    gen_length: int | None = None
    schedule: ScheduleLike | None = None
    steps: int | None = None
    profile: InformationProfile | str | None = None
    num_samples: int | None = None
    order: str | Order = "random"
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    block_length: int | None = None
    stop_at_eos: bool | int | list[int] = False
    stop_strings: list[str] | None = None
    cfg_scale: float = 0.0
    cache: CacheMode | None = None
    return_history: bool = False

    def replace(self, **overrides: Any) -> MaskedGenerationConfig:
        """A copy with ``overrides`` applied; unknown names are an error that lists the known ones."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise TypeError(f"unknown generation setting(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        return dataclasses.replace(self, **overrides)

    def validated(self) -> MaskedGenerationConfig:
        """A checked, normalised copy (ints as ``int``, floats as ``float``); raises on the first bad field."""
        if self.gen_length is None:
            raise ValueError("gen_length is required: the number of positions to generate (0 = only infill masks)")
        if self.schedule is None:
            raise ValueError("schedule is required: e.g. schedule=16 (calls per block, constant schedule), a Schedule, "
                             "or a builder name with steps=")
        gen_length = check_int(self.gen_length, "gen_length", minimum=0)
        if not isinstance(self.order, Order):
            check_choice(self.order, "order", ORDERS)
        temperature = check_float(self.temperature, "temperature", minimum=0.0, hint=" (0 = greedy)")
        top_k = check_optional_int(self.top_k, "top_k", minimum=1)
        top_p = None if self.top_p is None else check_float(self.top_p, "top_p", minimum=0.0, maximum=1.0,
                                                            min_inclusive=False)
        block_length = check_optional_int(self.block_length, "block_length", minimum=1)
        num_samples = check_optional_int(self.num_samples, "num_samples", minimum=1)
        steps = check_optional_int(self.steps, "steps", minimum=1, hint=" (model calls per block)")
        stop = self.stop_at_eos
        if isinstance(stop, (list, tuple)) and stop:
            stop = [check_int(s, f"stop_at_eos[{i}]", minimum=0) for i, s in enumerate(stop)]
        elif is_int(stop):
            stop = check_int(stop, "stop_at_eos", minimum=0)
        elif not isinstance(stop, bool):
            raise ValueError(f"stop_at_eos must be False, True (the model's EOS id), a token id or a non-empty list of "
                             f"ids, got {stop!r}")
        strings = self.stop_strings
        if isinstance(strings, str):
            strings = [strings]
        if strings is not None and (not all(isinstance(s, str) and s for s in strings) or not strings):
            raise ValueError(f"stop_strings must be a non-empty list of non-empty strings, got {self.stop_strings!r}")
        cfg_scale = check_float(self.cfg_scale, "cfg_scale", minimum=0.0, hint=" (0 = no guidance)")
        if self.cache is not None:
            check_choice(self.cache, "cache", ("prefix", "dual"))
            if cfg_scale > 0:
                raise ValueError(f"cache={self.cache!r} cannot be combined with classifier-free guidance "
                                 f"(cfg_scale={cfg_scale:g}): use cfg_scale=0 or cache=None")
        sched = self.schedule
        if not isinstance(sched, (Schedule, RevealRule, str, list, tuple)) and not is_int(sched):
            raise TypeError("schedule must be a Schedule, a list of per-call sizes, an int (calls per block, constant "
                            "schedule), a builder name or a reveal rule; got " + type(sched).__name__)
        return dataclasses.replace(self, gen_length=gen_length, temperature=temperature, top_k=top_k, top_p=top_p,
                                   block_length=block_length, num_samples=num_samples, steps=steps, stop_at_eos=stop,
                                   stop_strings=None if strings is None else list(strings), cfg_scale=cfg_scale,
                                   return_history=bool(self.return_history))

    @property
    def sampling(self) -> SamplingParams:
        """Temperature and truncation as the token draw needs them."""
        return SamplingParams(temperature=float(self.temperature), top_k=self.top_k, top_p=self.top_p)
