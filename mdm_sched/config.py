"""Every generation setting in one validated dataclass: :class:`MaskedGenerationConfig`.

:func:`mdm_sched.generate` builds one from its keyword arguments (or takes ``generation_config=`` and
applies keyword overrides on top) and validates it once, before any model call. The same fields drive the
``mdm-sched generate`` command line: each field's metadata holds its help text and how a flag parses it
(:func:`cli_fields`), so a flag cannot drift from the API. A config saves as JSON (``to_dict``/``from_dict``,
``save_pretrained``/``from_pretrained``/``push_to_hub`` as ``mdm_generation_config.json``), with the schedule
(int, sizes, name, a :class:`~mdm_sched.schedules.Schedule` or a reveal rule and its parameters) and the profile
(a path or Hub id kept as text; a profile object embedded) included.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._io import check_format, library_version
from .draw import SamplingParams
from .hub import PretrainedJSON
from .orders import ORDERS, Order
from .rules import RevealRule
from .schedules import Schedule, parse_spec, spec_from_json, spec_to_json
from .validation import check_choice, check_float, check_int, check_optional_int, is_int

if TYPE_CHECKING:
    from ._types import CacheMode, ScheduleLike
    from .profile import InformationProfile

__all__ = ["MaskedGenerationConfig", "cli_fields", "CliSpec"]

_FORMAT = "mdm_sched.generation_config"
_FORMAT_VERSION = 1


@dataclass(frozen=True)
class CliSpec:
    """How a config field appears on the command line (read by :mod:`mdm_sched.cli`).

    ``parse`` turns one argument string into the value; ``nargs``: argparse's; ``choices`` limits the values;
    ``flag``: a bool switch (``--name`` sets True); ``optional_list``: ``--name`` alone is True, ``--name 1 2`` a
    list of ints (one id stays an int); ``metavar``: shown in ``--help``.
    """

    parse: Callable[[str], Any] | None = None
    nargs: str | None = None
    choices: tuple[str, ...] | None = None
    flag: bool = False
    optional_list: bool = False
    metavar: str | None = None


def _meta(help: str, cli: CliSpec | None) -> dict[str, Any]:
    """A field's metadata: its help text and its command-line form (``cli=None``: API only)."""
    return {"help": help, "cli": cli}


@dataclass
class MaskedGenerationConfig(PretrainedJSON):
    """Settings of :func:`mdm_sched.generate` (each field's help text is also its ``--flag``'s help).

    Attributes:
        gen_length: positions to generate after each prompt (0 = only infill the prompts' mask tokens).
        schedule: how many positions each call reveals: a :class:`~mdm_sched.schedules.Schedule` (sizes sum to
            ``block_length``, or ``gen_length`` without blocks), a list of sizes, an int ``T`` (**calls per block**,
            constant schedule; LLaDA's ``steps`` is the total over all blocks, i.e. ``T * number of blocks``), a
            builder name (``"constant"``, ``"cosine"``, ``"optimal"`` ... with ``steps``), a path to a saved
            schedule, or a reveal rule (an object, or its text form ``"threshold:0.9"``).
        steps: calls per block for a schedule given by name.
        profile: the information profile (or a file, a folder with ``mdm_profile.json`` or a Hub id) for
            ``"optimal"`` / ``"sqrt"``.
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

    FILENAME = "mdm_generation_config.json"
    WHAT = "generation config"

    gen_length: int | None = field(default=None, metadata=_meta(
        "positions to generate after each prompt (0 = only infill the mask tokens inside the prompts)",
        CliSpec(parse=int, metavar="N")))
    schedule: ScheduleLike | None = field(default=None, metadata=_meta(
        "tokens revealed per call: an int T = calls PER BLOCK with a constant schedule (LLaDA's steps is the total, "
        "T x number of blocks); a builder name with --steps (constant, cosine, geometric, geometric_tc, optimal, sqrt); "
        "sizes such as 4,2,2; a saved schedule (JSON file or folder); or an adaptive rule: threshold:TAU, factor:F, "
        "entropy_bound:GAMMA (optionally followed by ,max_calls=N)",
        CliSpec(parse=parse_spec, metavar="SPEC")))
    steps: int | None = field(default=None, metadata=_meta(
        "model calls per block for a schedule given by name (not the total over all blocks)",
        CliSpec(parse=int, metavar="T")))
    profile: InformationProfile | str | None = field(default=None, metadata=_meta(
        "information profile for the optimal and sqrt schedules: a profile JSON file, a folder holding "
        "mdm_profile.json, or a Hub id", CliSpec(metavar="PATH_OR_HUB_ID")))
    num_samples: int | None = field(default=None, metadata=_meta(
        "rows to generate without prompts, or samples per prompt", CliSpec(parse=int, metavar="N")))
    order: str | Order = field(default="random", metadata=_meta(
        "which masked positions a call reveals: random (the order the theory is exact for) or ranked by the model's "
        "prediction (confidence, margin, entropy)", CliSpec(choices=tuple(ORDERS))))
    temperature: float = field(default=1.0, metadata=_meta(
        "sampling temperature (0 = greedy)", CliSpec(parse=float)))
    top_k: int | None = field(default=None, metadata=_meta(
        "keep only the k most likely tokens before drawing", CliSpec(parse=int, metavar="K")))
    top_p: float | None = field(default=None, metadata=_meta(
        "nucleus sampling: keep the smallest set of most likely tokens whose probability reaches p",
        CliSpec(parse=float, metavar="P")))
    block_length: int | None = field(default=None, metadata=_meta(
        "semi-autoregressive block size: the schedule applies within each block (the last may be shorter)",
        CliSpec(parse=int, metavar="L")))
    stop_at_eos: bool | int | list[int] = field(default=False, metadata=_meta(
        "fill everything after a committed EOS token; the flag alone uses the model's EOS id, or give the ids",
        CliSpec(optional_list=True, metavar="ID")))
    stop_strings: list[str] | None = field(default=None, metadata=_meta(
        "finish a row once its generated text contains one of these strings", CliSpec(nargs="+", metavar="TEXT")))
    cfg_scale: float = field(default=0.0, metadata=_meta(
        "LLaDA's unsupervised classifier-free guidance scale (0 = off)", CliSpec(parse=float)))
    cache: CacheMode | None = field(default=None, metadata=_meta(
        "Fast-dLLM's KV cache, refreshed at each block's first call: prefix reuses the keys/values of the columns "
        "before the block, dual also those after it (approximate); unset recomputes everything (exact)",
        CliSpec(choices=("prefix", "dual"))))
    return_history: bool = field(default=False, metadata=_meta(
        "keep the positions and tokens of every call in the output", None))

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

    # -- serialisation -----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field (the schedule and the profile in their saved forms, see the module docs)."""
        from .profile import InformationProfile

        out: dict[str, Any] = {"format": _FORMAT, "version": _FORMAT_VERSION, "mdm_sched_version": library_version()}
        for f in dataclasses.fields(self):
            out[f.name] = getattr(self, f.name)
        out["schedule"] = None if self.schedule is None else spec_to_json(self.schedule)
        if isinstance(self.profile, InformationProfile):
            out["profile"] = self.profile.to_dict()
        elif self.profile is not None:
            out["profile"] = str(self.profile)
        out["order"] = _order_name(self.order)
        if isinstance(self.stop_at_eos, tuple):
            out["stop_at_eos"] = list(self.stop_at_eos)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MaskedGenerationConfig:
        """Inverse of :meth:`to_dict`; foreign, newer-format or unknown fields raise ValueError."""
        from .profile import InformationProfile

        data = dict(check_format(dict(data) if isinstance(data, Mapping) else data, fmt=_FORMAT,
                                 version=_FORMAT_VERSION, what="generation config"))
        for key in ("format", "version", "mdm_sched_version"):
            data.pop(key, None)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown generation setting(s) {', '.join(unknown)} in a saved config; known: "
                             f"{', '.join(sorted(names))}")
        if data.get("schedule") is not None:
            data["schedule"] = spec_from_json(data["schedule"])
        if isinstance(data.get("profile"), Mapping):
            data["profile"] = InformationProfile.from_dict(data["profile"])
        return cls(**data)


def _order_name(order: str | Order) -> str:
    """The saved form of an order: its name (only registered orders can be saved)."""
    if isinstance(order, str):
        return order
    if isinstance(order, Order) and type(ORDERS.get(order.name)) is type(order):
        return order.name
    raise ValueError(f"order {order!r} cannot be saved: pass one of {', '.join(ORDERS)} by name")


def cli_fields() -> Iterator[tuple[dataclasses.Field, CliSpec]]:
    """The config fields that are command-line flags, with their :class:`CliSpec` (help is ``field.metadata['help']``)."""
    for f in dataclasses.fields(MaskedGenerationConfig):
        spec = f.metadata.get("cli")
        if spec is not None:
            yield f, spec
