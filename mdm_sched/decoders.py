"""The decoders the evaluation harness compares: a name and how to build its reveal rule for a budget or a parameter.

A decoder is either a **fixed schedule** (its parameter is the budget ``T``: exactly ``T`` calls) or an
**adaptive rule** (its parameter is a threshold, ``tau``, ``gamma``...: it chooses its own number of calls, which
the harness measures). Everything a decoder may need to build its rule is in a :class:`DecoderContext`: the
number of positions it plans for, the order it is run under and the profiles measured for the run and that order:
a CE curve (random-order profiles, read at the run's numbers of masked positions) or an
:class:`~mdm_sched.InformationProfile` (ordering-aware profiles, whose schedule cost is a block-cost table).

Adding a decoder is one entry in :data:`DECODERS`; a decoder that needs another profile names it in ``profile``
(and, when that profile exists only for some orders, lists them in ``orders``), and the harness must put it in the
context (:data:`mdm_sched.infill_eval.PROFILE_SOURCES`, :mod:`mdm_sched.profile_stage`). The harness measures
every profile for the order it is used with, so :func:`mdm_sched.generate` has no order/conditioning mismatch to
warn about: ``optimal_policy`` runs only under the ordered samplers its profile describes, ``optimal_self`` gets the
self profile of the run's order, and random-order profiles reach their schedules as bare curves (the random-order
baselines under ranked orders are deliberate: "what the random-order optimum does under confidence order").
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from . import schedules as _schedules
from .policy import POLICY_ORDERS
from .rules import RevealRule, confidence_factor, entropy_bound, threshold
from .schedules import Schedule

if TYPE_CHECKING:
    from .profile import InformationProfile

__all__ = ["Decoder", "DecoderContext", "DECODERS", "get_decoder", "RANDOM_PROFILE", "REGION_PROFILE", "POLICY_PROFILE",
           "SELF_PROFILE"]

#: the key of the (unconditional) random-order profile's curve in :attr:`DecoderContext.curves`
RANDOM_PROFILE = "random"
#: the profile conditioned on the task's context (the region infilled, the rest visible), random order
REGION_PROFILE = "region"
#: the ordering-aware (policy) profile of the run's order, conditioned like the task (:mod:`mdm_sched.policy`)
POLICY_PROFILE = "policy"
#: the self profile (data-free: the model's own samples of its N-call sampler) for the run's order and conditioning
SELF_PROFILE = "self"


@dataclass(frozen=True)
class DecoderContext:
    """What a decoder's rule is built from: ``n_tokens`` positions to plan for (a block, or the largest number of
    masks in a row when infilling), ``curves``: profile name -> CE curve at visible counts ``0..n_tokens-1``,
    ``profiles``: profile name -> :class:`~mdm_sched.InformationProfile` (ordering-aware profiles, which a curve
    cannot carry), and the ``order`` the rules will be run under."""

    n_tokens: int
    curves: Mapping[str, np.ndarray] = field(default_factory=dict)
    profiles: Mapping[str, InformationProfile] = field(default_factory=dict)
    order: str = "random"

    def source(self, profile: str) -> np.ndarray | InformationProfile:
        """What :func:`mdm_sched.schedules.optimal` is given for ``profile``: its profile object when the context
        holds one, else its curve (``ValueError`` when the run provided neither)."""
        if profile in self.profiles:
            return self.profiles[profile]
        return self.curve(profile)

    def curve(self, profile: str) -> np.ndarray:
        """The curve of ``profile``; ``ValueError`` when the run did not measure it."""
        if profile not in self.curves:
            have = sorted({*self.curves, *self.profiles})
            raise ValueError(f"this decoder needs the {profile!r} profile, which the run did not provide "
                             f"(available: {have or 'none'})")
        curve = np.asarray(self.curves[profile], dtype=np.float64)
        if curve.shape != (self.n_tokens,):
            raise ValueError(f"the {profile!r} curve has {curve.size} levels for {self.n_tokens} positions")
        return curve


Build = Callable[[DecoderContext, float], "Schedule | RevealRule"]


@dataclass(frozen=True)
class Decoder:
    """One decoder: ``build(context, value)`` returns its rule for the budget ``T`` (``parameter == "T"``: a
    :class:`~mdm_sched.schedules.Schedule`) or for its own parameter (an adaptive :class:`~mdm_sched.rules.RevealRule`).

    ``grid``: the :class:`~mdm_sched.results.EvalConfig` field listing the values the harness runs it at;
    ``orders``: the orders it is defined for (None: every order), e.g. a policy profile exists for ranked orders only.
    """

    name: str
    parameter: str
    grid: str
    build: Build
    profile: str | None = None
    description: str = ""
    orders: tuple[str, ...] | None = None

    def runs_under(self, order: str) -> bool:
        """Whether the harness runs this decoder under ``order``."""
        return self.orders is None or order in self.orders

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


def _optimal_on(profile: str) -> Build:
    def build(ctx: DecoderContext, steps: float) -> Schedule:
        return _schedules.optimal(ctx.source(profile), int(steps), n_tokens=ctx.n_tokens)

    return build


def _optimal(name: str, profile: str, description: str, orders: tuple[str, ...] | None = None) -> Decoder:
    return Decoder(name, "T", "infill_budgets", _optimal_on(profile), profile, description, orders)


DECODERS: dict[str, Decoder] = {d.name: d for d in (
    _fixed("constant", "equal tokens per call (LLaDA's default)"),
    _fixed("cosine", "MaskGIT's cosine schedule"),
    _fixed("geometric", "geometric schedule"),
    _fixed("optimal", "exact DP on the random-order profile", RANDOM_PROFILE),
    _fixed("sqrt", "square-root rule on the random-order profile", RANDOM_PROFILE),
    _optimal("optimal_region", REGION_PROFILE, "exact DP on the random-order profile conditioned on the task's context "
             "(measured on the profile split with the same positions infilled)"),
    _optimal("optimal_policy", POLICY_PROFILE, "exact table DP on the ordering-aware profile of the run's order "
             "(teacher forcing along the model's own ranking, conditioned like the task)", POLICY_ORDERS),
    _optimal("optimal_self", SELF_PROFILE, "exact DP on the self profile of the run's order (the model's own "
             "N-call samples with the task's context: data-free)"),
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
