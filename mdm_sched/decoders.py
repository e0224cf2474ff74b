"""The decoders the evaluation harness compares: a name and how to build its reveal rule for a budget or a parameter.

A decoder is either a **fixed schedule** (its parameter is the budget ``T``: exactly ``T`` calls) or an
**adaptive rule** (its parameter is a threshold, ``tau``, ``gamma``...: it chooses its own number of calls, which
the harness measures). Everything a decoder may need to build its rule is in a :class:`DecoderContext`: the
number of positions it plans for and the CE curves of the profiles measured for the run.

Adding a decoder is one entry in :data:`DECODERS`; a decoder that needs another profile (a conditional or an
ordering-aware one) names it in ``profile``, and the harness must put that curve in the context.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from . import schedules as _schedules
from .rules import RevealRule, confidence_factor, entropy_bound, threshold
from .schedules import Schedule

__all__ = ["Decoder", "DecoderContext", "DECODERS", "get_decoder", "RANDOM_PROFILE"]

#: the key of the random-order profile's curve in :attr:`DecoderContext.curves`
RANDOM_PROFILE = "random"


@dataclass(frozen=True)
class DecoderContext:
    """What a decoder's rule is built from: ``n_tokens`` positions to plan for (a block, or the largest number of
    masks in a row when infilling) and ``curves``: profile name -> CE curve at visible counts ``0..n_tokens-1``."""

    n_tokens: int
    curves: Mapping[str, np.ndarray] = field(default_factory=dict)

    def curve(self, profile: str) -> np.ndarray:
        """The curve of ``profile``; ``ValueError`` when the run did not measure it."""
        if profile not in self.curves:
            raise ValueError(f"this decoder needs the {profile!r} profile, which the run did not provide "
                             f"(available: {sorted(self.curves) or 'none'})")
        curve = np.asarray(self.curves[profile], dtype=np.float64)
        if curve.shape != (self.n_tokens,):
            raise ValueError(f"the {profile!r} curve has {curve.size} levels for {self.n_tokens} positions")
        return curve


Build = Callable[[DecoderContext, float], "Schedule | RevealRule"]


@dataclass(frozen=True)
class Decoder:
    """One decoder: ``build(context, value)`` returns its rule for the budget ``T`` (``parameter == "T"``: a
    :class:`~mdm_sched.schedules.Schedule`) or for its own parameter (an adaptive :class:`~mdm_sched.rules.RevealRule`).

    ``grid``: the :class:`~mdm_sched.results.EvalConfig` field listing the values the harness runs it at.
    """

    name: str
    parameter: str
    grid: str
    build: Build
    profile: str | None = None
    description: str = ""

    @property
    def fixed(self) -> bool:
        """True for a fixed schedule (exactly ``T`` calls), False for an adaptive rule."""
        return self.parameter == "T"

    def rule(self, context: DecoderContext, value: float) -> Schedule | RevealRule:
        """The schedule (fixed) or rule (adaptive) at ``value``."""
        return self.build(context, value)

    def label(self, value: float) -> str:
        """``"constant"`` for fixed schedules (the budget is the row's), ``"threshold(tau=0.9)"`` for adaptive ones."""
        return self.name if self.fixed else f"{self.name}({self.parameter}={value:g})"


def _schedule(name: str, profile: str | None = None) -> Build:
    def build(ctx: DecoderContext, steps: float) -> Schedule:
        curve = ctx.curve(profile) if profile is not None else None
        return _schedules.build(name, ctx.n_tokens, int(steps), curve)

    return build


def _fixed(name: str, description: str, profile: str | None = None) -> Decoder:
    return Decoder(name, "T", "infill_budgets", _schedule(name, profile), profile, description)


DECODERS: dict[str, Decoder] = {d.name: d for d in (
    _fixed("constant", "equal tokens per call (LLaDA's default)"),
    _fixed("cosine", "MaskGIT's cosine schedule"),
    _fixed("geometric", "geometric schedule"),
    _fixed("optimal", "exact DP on the random-order profile", RANDOM_PROFILE),
    _fixed("sqrt", "square-root rule on the random-order profile", RANDOM_PROFILE),
    Decoder("threshold", "tau", "thresholds", lambda ctx, v: threshold(v),
            description="Fast-dLLM: reveal every position whose drawn token has probability >= tau (at least one)"),
    Decoder("entropy_bound", "gamma", "entropy_bounds", lambda ctx, v: entropy_bound(v),
            description="EB-Sampler: the longest ranked prefix whose entropy sum minus its largest entropy is <= gamma"),
    Decoder("factor", "factor", "factors", lambda ctx, v: confidence_factor(v),
            description="Fast-dLLM's factor rule: the r most confident while c_r >= 1 - factor / (r + 1)"),
)}


def get_decoder(name: str) -> Decoder:
    """The decoder called ``name`` (``ValueError`` listing the known ones otherwise)."""
    if name not in DECODERS:
        raise ValueError(f"unknown decoder {name!r}; choose from {', '.join(DECODERS)}")
    return DECODERS[name]
