"""The information profile value: measured cross-entropy against the visible fraction, and its fit.

An :class:`InformationProfile` holds per-level statistics measured at visible counts ``i`` out of
``n_tokens`` generated positions (docs/theory.md §2 and §5): mean masked-token cross-entropy, its
standard error, mean predictive entropy, top-1 accuracy, token and row counts, plus the metadata needed
to reuse it safely (model, data, lengths, stop rule, ...). :meth:`InformationProfile.curve` turns the
noisy levels into the fitted non-increasing curve ``CE(0..n-1)`` (weighted isotonic regression,
:func:`isotonic_nonincreasing`) that :func:`mdm_sched.schedules.optimal` consumes; the profile also
gives bounds, predicted gains, a model/length check, JSON save/load and a plot.

Measuring one is :func:`mdm_sched.estimate.estimate_profile` (also importable from here and as
``mdm_sched.estimate_profile``); this module never runs a model.
"""
from __future__ import annotations

import copy
import math
import os
import textwrap
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from . import schedules as _schedules
from ._io import atomic_write_json, atomic_write_png, check_format, library_version, new_figure, read_json
from .hub import PretrainedJSON
from .validation import check_int

if TYPE_CHECKING:
    from ._types import ModelLike
    from .estimate import default_levels, estimate_profile

__all__ = ["InformationProfile", "isotonic_nonincreasing", "LENGTH_TOLERANCE", "usage_mismatch", "warn_schedule_mismatch",
           # measured by the estimator; re-exported lazily (mdm_sched.estimate imports this module)
           "estimate_profile", "default_levels"]

_FORMAT = "mdm_sched.profile"
#: Version 2 adds the policy profile's ``rank_ce`` table; random-order profiles are still written as version 1
#: (readable by older libraries), policy profiles as 2 (an older library refuses them instead of misreading
#: ``CE_1`` as a random-order curve).
_FORMAT_VERSION = 2
#: A profile used for a length outside [measured / LENGTH_TOLERANCE, measured * LENGTH_TOLERANCE] warns.
LENGTH_TOLERANCE = 2.0
#: Cross-entropies below ``-_CE_TOLERANCE`` are refused (a measured mean CE is >= 0; allow float round-off).
_CE_TOLERANCE = 1e-9
# Names that live in mdm_sched.estimate but have always been importable from here.
_FROM_ESTIMATE = ("estimate_profile", "default_levels", "DEFAULT_TOKENS_PER_LEVEL", "DEFAULT_N_LEVELS")


def __getattr__(name: str) -> Any:
    if name in _FROM_ESTIMATE:
        from . import estimate

        return getattr(estimate, name)
    raise AttributeError(f"module 'mdm_sched.profile' has no attribute {name!r}")


# ------------------------------------------------------------------------------------------------
# Isotonic fit
# ------------------------------------------------------------------------------------------------

def isotonic_nonincreasing(values: Sequence[float] | np.ndarray, weights: Sequence[float] | np.ndarray | None = None
                           ) -> np.ndarray:
    """Weighted least-squares non-increasing fit (pool adjacent violators), float64.

    Args:
        values: 1-D finite values, e.g. per-level cross-entropies in order of increasing visible count.
        weights: positive finite weights of the same length (use ``1 / SE**2``); default all ones.

    Returns:
        The non-increasing sequence ``z`` minimising ``sum w (z - values)**2``.
    """
    y = np.asarray(values, dtype=np.float64)
    if y.ndim != 1:
        raise ValueError(f"values must be 1-D, got shape {y.shape}")
    if not np.all(np.isfinite(y)):
        raise ValueError("values contain NaN or inf; drop those levels before fitting")
    w = np.ones_like(y) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != y.shape:
        raise ValueError(f"weights shape {w.shape} != values shape {y.shape}")
    if y.size and (not np.all(np.isfinite(w)) or w.min() <= 0):
        raise ValueError("weights must be positive and finite (use 1 / SE**2 with SE > 0)")
    # Blocks of pooled values; a new value that is larger than the previous block's mean violates
    # "non-increasing" and is merged backwards until the sequence of block means decreases.
    means: list[float] = []
    wsum: list[float] = []
    count: list[int] = []
    for v, wt in zip(y.tolist(), w.tolist()):
        means.append(v)
        wsum.append(wt)
        count.append(1)
        while len(means) > 1 and means[-1] > means[-2]:
            m2, w2, c2 = means.pop(), wsum.pop(), count.pop()
            m1, w1 = means[-1], wsum[-1]
            means[-1] = (m1 * w1 + m2 * w2) / (w1 + w2)
            wsum[-1] = w1 + w2
            count[-1] += c2
    return np.repeat(np.asarray(means, dtype=np.float64), count)


def _fit_weights(se: np.ndarray) -> np.ndarray:
    """``1 / SE**2``; levels with an unknown or zero SE get the weight of a tenth of the smallest known SE."""
    se = np.asarray(se, dtype=np.float64)
    ok = np.isfinite(se) & (se > 0)
    if not ok.any():
        return np.ones_like(se)
    floor = 0.1 * se[ok].min()
    return 1.0 / np.where(ok, se, floor) ** 2


def _rank_table(table: npt.ArrayLike, levels: np.ndarray, n: int) -> np.ndarray:
    """A validated rank table ``[levels, n]``: finite at ranks ``1..n-K`` of each level ``K``, NaN past them."""
    t = np.asarray(table, dtype=np.float64)
    if t.shape != (levels.size, n):
        raise ValueError(f"rank_ce must have shape (levels, n_tokens) = {(levels.size, n)}, got {t.shape}")
    valid = np.arange(n)[None, :] < (n - levels)[:, None]
    if not np.all(np.isfinite(t[valid])):
        raise ValueError("rank_ce must be finite at ranks 1..n_tokens-K of every level K")
    return np.where(valid, t, np.nan)


def _fit_ranks(table: np.ndarray, levels: np.ndarray, n: int) -> np.ndarray:
    """Each level's row fitted non-decreasing in the rank (isotonic, equal weights)."""
    out = np.full_like(table, np.nan)
    for j, k in enumerate(levels.tolist()):
        out[j, :n - k] = -isotonic_nonincreasing(-table[j, :n - k])
    return out


def usage_mismatch(profile_order: str, profile_conditioning: str, *, order: str | None = None,
                   conditioning: str | None = None) -> str | None:
    """Why a profile measured for ``profile_order`` / ``profile_conditioning`` does not fit a generation with
    ``order`` / ``conditioning`` (``None``: not checked); None when it fits."""
    parts = []
    if order is not None and order != profile_order:
        parts.append(f"order={profile_order!r} but the generation uses order={order!r}")
    if conditioning is not None and conditioning != profile_conditioning:
        parts.append(f"conditioning={profile_conditioning!r} but the generation's is {conditioning!r}")
    if not parts:
        return None
    how = (f"ms.estimate_profile(..., order={order!r})" if order not in (None, "random")
           else "ms.estimate_profile(...)")
    return ("the profile behind this schedule was measured with " + " and ".join(parts) + "; the schedule is optimal "
            f"only for the sampler its profile describes: estimate a matching one ({how} on data conditioned as in "
            "deployment)")


def warn_schedule_mismatch(schedule: Any, *, order: str, conditioning: str, stacklevel: int = 3) -> None:
    """Warn once when ``schedule`` (a :class:`~mdm_sched.schedules.Schedule` built from a profile, whose metadata
    names the profile's order and conditioning) is used with another order or conditioning."""
    meta = getattr(schedule, "metadata", None)
    if not isinstance(meta, Mapping) or "profile_order" not in meta:
        return
    why = usage_mismatch(str(meta["profile_order"]), str(meta.get("profile_conditioning") or "none"),
                         order=order, conditioning=conditioning)
    if why:
        warnings.warn(why, UserWarning, stacklevel=stacklevel)


# ------------------------------------------------------------------------------------------------
# InformationProfile
# ------------------------------------------------------------------------------------------------

def _as_array(x: npt.ArrayLike, name: str, n: int, dtype: npt.DTypeLike = np.float64) -> np.ndarray:
    arr = np.asarray(x, dtype=dtype)
    if arr.ndim != 1 or arr.size != n:
        raise ValueError(f"{name} must be a 1-D array with one value per level ({n}), got shape {arr.shape}")
    return arr


class InformationProfile(PretrainedJSON):
    """A measured cross-entropy profile: per-level statistics against the visible fraction.

    Levels are visible counts ``i`` out of :attr:`n_tokens` generated positions (the block length
    when the profile was measured within semi-autoregressive blocks); :attr:`fractions` ``= i / n_tokens``
    is what transfers to other lengths. Build one with :func:`estimate_profile` or :meth:`load`.

    Attributes (numpy arrays, one entry per level): ``levels``, ``fractions``, ``ce`` (mean masked-token
    cross-entropy, nats), ``se`` (its standard error over rows), ``entropy`` (mean predictive entropy),
    ``entropy_se``, ``accuracy`` (top-1), ``tokens`` (scored tokens), ``rows`` (forward rows).
    ``metadata``: model, data, lengths, conditioning, order, date, library version, ...
    Ordering-aware (policy) profiles also hold ``rank_ce [levels, n_tokens]``, the mean loss of the ``r``-th
    ranked masked position at each level (their ``ce`` is its first column; :mod:`mdm_sched.policy`).

    Two profiles compare equal when their measured arrays and ``n_tokens`` are identical (metadata such
    as the date is ignored).

    Saved as one JSON object: :meth:`save`/:meth:`load` for a single file; :meth:`save_pretrained` /
    :meth:`from_pretrained` / :meth:`push_to_hub` for a folder (``mdm_profile.json``, e.g. in the model's own
    folder so the profile ships with the model it describes) or a Hub repository.
    """

    FILENAME = "mdm_profile.json"
    WHAT = "information profile"

    def __init__(self, levels: Sequence[int] | np.ndarray, ce: Sequence[float] | np.ndarray,
                 se: Sequence[float] | np.ndarray, *, n_tokens: int,
                 entropy: Sequence[float] | np.ndarray | None = None,
                 entropy_se: Sequence[float] | np.ndarray | None = None,
                 accuracy: Sequence[float] | np.ndarray | None = None,
                 tokens: Sequence[int] | np.ndarray | None = None,
                 rows: Sequence[int] | np.ndarray | None = None,
                 metadata: Mapping[str, Any] | None = None,
                 rank_ce: npt.ArrayLike | None = None) -> None:
        n = check_int(n_tokens, "n_tokens", minimum=1)
        lv = np.asarray(levels)
        if lv.ndim != 1 or lv.size == 0:
            raise ValueError("levels must be a non-empty 1-D sequence of visible counts")
        if not np.all(np.equal(np.mod(lv, 1), 0)):
            raise ValueError("levels must be integer visible counts")
        lv = lv.astype(np.int64)
        if lv.min() < 0 or lv.max() >= n or np.any(np.diff(lv) <= 0):
            raise ValueError(f"levels must be strictly increasing visible counts in 0..{n - 1}")
        k = lv.size
        self._n_tokens = n
        self.levels = lv
        self.ce = _as_array(ce, "ce", k)
        if not np.all(np.isfinite(self.ce)):
            raise ValueError("ce contains NaN or inf: the model gave probability 0 to a data token "
                             "(a suppressed/special token in the data?)")
        if np.any(self.ce < -_CE_TOLERANCE):
            raise ValueError(f"ce must be >= 0 (a cross-entropy in nats), got {float(self.ce.min())!r} at level "
                             f"{int(lv[int(self.ce.argmin())])}")
        self.se = _as_array(se, "se", k)
        if np.any(self.se < 0):
            raise ValueError("se must be >= 0 (standard errors) or NaN")
        nan = np.full(k, np.nan)
        self.entropy = nan.copy() if entropy is None else _as_array(entropy, "entropy", k)
        self.entropy_se = nan.copy() if entropy_se is None else _as_array(entropy_se, "entropy_se", k)
        self.accuracy = nan.copy() if accuracy is None else _as_array(accuracy, "accuracy", k)
        self.tokens = np.zeros(k, np.int64) if tokens is None else _as_array(tokens, "tokens", k, np.int64)
        self.rows = np.zeros(k, np.int64) if rows is None else _as_array(rows, "rows", k, np.int64)
        for name, counts in (("tokens", self.tokens), ("rows", self.rows)):
            if np.any(counts < 0):
                raise ValueError(f"{name} must be counts >= 0, got {counts.tolist()[:8]}")
        if metadata is not None and not isinstance(metadata, Mapping):
            raise ValueError(f"metadata must be a dict, got {type(metadata).__name__}")
        self._metadata = dict(metadata or {})
        self.rank_ce = None if rank_ce is None else _rank_table(rank_ce, lv, n)
        self._fitted: np.ndarray | None = None
        self._fitted_ranks: np.ndarray | None = None

    # -- basic views -------------------------------------------------------------------------------
    @property
    def n_tokens(self) -> int:
        """Number of generated positions the levels refer to (the block length for block profiles)."""
        return self._n_tokens

    @property
    def fractions(self) -> np.ndarray:
        """Visible fraction of each level, ``levels / n_tokens``."""
        return self.levels / self._n_tokens

    @property
    def metadata(self) -> dict[str, Any]:
        """A copy of the metadata."""
        return dict(self._metadata)

    @property
    def kind(self) -> str:
        """``"random"`` (the random-order profile ``CE(i)``) or ``"policy"`` (ordering-aware: a rank table
        ``CE_r(K)`` measured along the model's own order, :mod:`mdm_sched.policy`)."""
        return "random" if self.rank_ce is None else "policy"

    @property
    def order(self) -> str:
        """The generation order the profile was measured for (``"random"`` for profiles from before orders)."""
        return str(self._metadata.get("order") or "random")

    @property
    def conditioning(self) -> str:
        """What the profile conditions on: ``"none"``, ``"prompt"`` (an always-visible prompt) or ``"infill"``."""
        cond = self._metadata.get("conditioning")
        if isinstance(cond, Mapping) and cond.get("kind"):
            return str(cond["kind"])
        return "prompt" if self._metadata.get("prompt_length") else "none"

    @property
    def source(self) -> str:
        """``"heldout"`` (held-out data) or ``"self"`` (the model's own N-call samples: data-free)."""
        return str(self._metadata.get("source") or "heldout")

    def with_metadata(self, **updates: Any) -> InformationProfile:
        """A copy whose metadata has ``updates`` applied (the measurements are shared, never copied)."""
        out = copy.copy(self)
        out._metadata = dict(self._metadata, **updates)
        return out

    @property
    def block_length(self) -> int | None:
        """Block length the profile was measured within (semi-autoregressive generation), or None."""
        return self._metadata.get("block_length")

    @property
    def lengths(self) -> list[int]:
        """Lengths (of the curve's domain) the profile was measured on."""
        return list(self._metadata.get("lengths") or [self._n_tokens])

    @property
    def description(self) -> str:
        """One line saying what was measured (stored in schedules built from the profile)."""
        m = self._metadata
        model = m.get("model") or "model"
        data = m.get("data") or "data"
        block = f", block_length={m['block_length']}" if m.get("block_length") else ""
        prompt = f", prompt_length={m['prompt_length']}" if m.get("prompt_length") else ""
        cond = f", conditioning={self.conditioning}" if self.conditioning not in ("none",) and not prompt else ""
        kind = f"{self.order}-order policy profile" if self.kind == "policy" else "profile"
        src = " (self: the model's own samples)" if self.source == "self" and "self" not in str(data) else ""
        return (f"{kind} of {model} on {data}{src}: n_tokens={m.get('sequence_tokens', self._n_tokens)}{block}{prompt}"
                f"{cond}, {self.levels.size} levels, {int(self.tokens.sum())} tokens")

    def __repr__(self) -> str:
        return (f"InformationProfile(n_tokens={self._n_tokens}, levels={self.levels.size}, "
                f"CE {self.ce[0]:.3f} -> {self.ce[-1]:.3f} nats, model={self._metadata.get('model')!r})")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, InformationProfile):
            return NotImplemented
        same = lambda a, b: a.shape == b.shape and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
        ranks = (self.rank_ce is None) == (other.rank_ce is None) and (
            self.rank_ce is None or same(self.rank_ce, other.rank_ce))
        return ranks and self._n_tokens == other._n_tokens and all(
            same(getattr(self, k), getattr(other, k))
            for k in ("levels", "ce", "se", "entropy", "entropy_se", "accuracy", "tokens", "rows"))

    __hash__ = None  # type: ignore[assignment]

    # -- fitted curves -----------------------------------------------------------------------------
    def fitted(self) -> np.ndarray:
        """Isotonic (non-increasing) fit of ``ce`` at the measured levels, weighted by ``1 / se**2``.

        Policy profiles: the rank-1 column of :meth:`fitted_ranks` (``CE_1(K)`` need not fall with ``K``
        under an ordered sampler: the easy positions are used up first).
        """
        if self._fitted is None:
            if self.rank_ce is not None:
                self._fitted = self.fitted_ranks()[:, 0]
            else:
                self._fitted = isotonic_nonincreasing(self.ce, _fit_weights(self.se))
        return self._fitted.copy()

    def fitted_ranks(self) -> np.ndarray:
        """Policy profiles: the rank table ``CE_r(K)`` ``[levels, n_tokens]`` fitted non-decreasing in the rank
        ``r`` at each level (worse-ranked positions are harder; NaN past the ``n_tokens - K`` masked positions)."""
        if self.rank_ce is None:
            raise ValueError("this is a random-order profile: it has no rank table (estimate one with order=...)")
        if self._fitted_ranks is None:
            self._fitted_ranks = _fit_ranks(self.rank_ce, self.levels, self._n_tokens)
        return self._fitted_ranks.copy()

    def block_costs(self, n_tokens: int | None = None) -> np.ndarray:
        """Policy profiles: ``C[a, b]`` = predicted loss (nats) of revealing the ``b - a`` top-ranked masked
        positions in one call at a state with ``a`` of ``n_tokens`` visible, ``sum_{r <= b-a} CE_r(a)``
        (``inf`` where ``b <= a``); ``[n + 1, n + 1]``. See :func:`mdm_sched.policy.block_costs`."""
        from .policy import block_costs

        n = self._n_tokens if n_tokens is None else check_int(n_tokens, "n_tokens", minimum=1)
        if n_tokens is not None:
            self._check_length(n)
        return block_costs(self.fitted_ranks(), self.levels, self._n_tokens, n)

    def _check_length(self, n: int) -> None:
        lo, hi = min(self.lengths), max(self.lengths)
        if n < lo / LENGTH_TOLERANCE or n > hi * LENGTH_TOLERANCE:
            warnings.warn(f"profile measured on length {lo if lo == hi else (lo, hi)} used for n_tokens={n}: far "
                          f"outside (more than {LENGTH_TOLERANCE:g}x); the CE at a given visible fraction changes "
                          "with length, so re-estimate the profile at this length", UserWarning, stacklevel=3)

    def curve(self, n_tokens: int | None = None, *, kind: str = "ce") -> np.ndarray:
        """Fitted non-increasing curve at visible counts ``i = 0..n_tokens-1`` (float64).

        The isotonic fit at the measured visible fractions is interpolated linearly at ``i / n_tokens``
        (constant beyond the first and last level). ``kind="entropy"`` fits the predictive entropy
        instead (label-free variant, docs/theory.md §2). Warns when ``n_tokens`` is far from the
        measured length.
        """
        n = self._n_tokens if n_tokens is None else check_int(n_tokens, "n_tokens", minimum=1)
        if n_tokens is not None:
            self._check_length(n)
        if kind == "ce":
            fit = self.fitted()
        elif kind == "entropy":
            if not np.all(np.isfinite(self.entropy)):
                raise ValueError("this profile has no entropy measurements; use kind='ce'")
            fit = isotonic_nonincreasing(self.entropy, _fit_weights(self.entropy_se))
        else:
            raise ValueError(f"kind must be 'ce' or 'entropy', got {kind!r}")
        x = np.arange(n, dtype=np.float64) / n
        out = np.interp(x, self.fractions, fit)
        if self.rank_ce is not None and kind == "ce":
            return out  # CE_1(K) of an ordered sampler need not fall (its block costs drive the schedule)
        return np.minimum.accumulate(out)  # interpolation is monotone already; this removes rounding ripples

    @property
    def drop_z(self) -> float:
        """Total CE drop ``CE(first level) - CE(last level)`` in units of its standard error."""
        se = float(np.hypot(self.se[0], self.se[-1]))
        drop = float(self.ce[0] - self.ce[-1])
        return drop / se if se > 0 else (math.inf if drop > 0 else 0.0)

    def predicted_gain(self, steps: int, n_tokens: int | None = None) -> float:
        """``J(constant) / J(optimal)`` for ``steps`` calls on the fitted curve (>= 1; 1 means no gain).

        Warns when the profile is flat within its error: the fitted curve is then a noise staircase that
        the optimum can exploit, so the ratio says nothing (any schedule is as good as constant). Policy
        profiles: the ratio of their costs ``J`` (:func:`mdm_sched.schedules.cost`); ``CE_1(K)`` of an ordered
        sampler need not fall, so the flatness check does not apply.
        """
        src, n = self._prediction_source(n_tokens)
        return _schedules.predicted_gain(src, steps, n_tokens=n)

    def predicted_calls_saved(self, steps: int, n_tokens: int | None = None) -> float:
        """How many times fewer calls the optimal ``steps``-call schedule needs than constant for the same bound on
        the fitted curve (:func:`mdm_sched.schedules.predicted_calls_saved`; 1 means nothing to save). Warns like
        :meth:`predicted_gain`."""
        src, n = self._prediction_source(n_tokens)
        return _schedules.predicted_calls_saved(src, steps, n_tokens=n)

    def _prediction_source(self, n_tokens: int | None) -> tuple[Any, int | None]:
        """(what a prediction is computed on, its length): the profile itself when ordering-aware, else its fitted
        curve, with a warning when that curve is flat within its error."""
        if self.rank_ce is not None:
            return self, n_tokens or self._n_tokens
        if self.drop_z < 3.0:
            warnings.warn(f"the profile drops by only {self.drop_z:.1f} standard errors from no to full context: "
                          "the model barely uses context, so predicted gains are not meaningful", stacklevel=3)
        return self.curve(n_tokens), None

    def bound(self, schedule: _schedules.Schedule | Sequence[int]) -> float:
        """Held-out bound ``NLL_T`` (nats per token) of ``schedule`` on the fitted curve at its length (policy
        profiles: the predicted NLL of the ordered sampler, ``(1/N) sum_t C[K_{t-1}, K_t]``)."""
        sched = schedule if isinstance(schedule, _schedules.Schedule) else _schedules.Schedule(schedule)
        if self.rank_ce is not None:
            return _schedules.nll_bound(self, sched)
        return _schedules.nll_bound(self.curve(sched.n_tokens), sched)

    def check(self, model: ModelLike | None = None, n_tokens: int | None = None, *, order: str | None = None,
              conditioning: str | None = None, strict: bool = False) -> None:
        """Warn (``strict=True``: raise ValueError) when ``model`` is not the model the profile was measured
        on (config hash; weights fingerprint and dtype when recorded), ``n_tokens`` is far from the measured length,
        or the generation ``order`` / ``conditioning`` (``"none"``, ``"prompt"``, ``"infill"``) is not the one the
        profile was measured for."""
        problems = []
        mismatch = usage_mismatch(self.order, self.conditioning, order=order, conditioning=conditioning)
        if mismatch:
            problems.append(mismatch)
        if model is not None:
            from .models import wrap

            mlm = wrap(model)
            mine = self._metadata.get("config_hash")
            if mine is not None and mlm.config_hash != mine:
                problems.append(f"the profile was measured on {self._metadata.get('model')!r} (config hash {mine}) "
                                f"but the model is {mlm.name_or_path!r} (config hash {mlm.config_hash}); "
                                "estimate a profile for this model")
            else:
                problems += self._weights_problems(mlm)
        if n_tokens is not None:
            lo, hi = min(self.lengths), max(self.lengths)
            if n_tokens < lo / LENGTH_TOLERANCE or n_tokens > hi * LENGTH_TOLERANCE:
                problems.append(f"the profile was measured on length {lo if lo == hi else (lo, hi)} but "
                                f"n_tokens={n_tokens}; estimate a profile at this length")
        if problems:
            if strict:
                raise ValueError("; ".join(problems))
            for p in problems:
                warnings.warn(p, UserWarning, stacklevel=2)

    def _weights_problems(self, mlm: Any) -> list[str]:
        """The model's dtype and weights against those recorded (profiles from before they were recorded pass)."""
        out = []
        dtype, weights = self._metadata.get("dtype"), self._metadata.get("weights")
        now = mlm.identity()
        if dtype is not None and dtype != now["dtype"]:
            out.append(f"the profile was measured in {dtype} but the model runs in {now['dtype']}; estimate a profile "
                       "in this dtype (or load the model in the profile's)")
        elif weights is not None and weights != now["weights"]:
            out.append(f"the profile was measured on other weights (fingerprint {weights}) than the model's "
                       f"({now['weights']}), though the architecture matches; estimate a profile for these weights")
        return out

    # -- serialisation -----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (format, version, measured arrays, the fitted CE and the metadata); NaN becomes None."""
        def floats(a: np.ndarray) -> list[float | None]:
            return [None if not math.isfinite(v) else float(v) for v in a.tolist()]

        return {"format": _FORMAT, "version": 1 if self.rank_ce is None else 2, "n_tokens": self._n_tokens,
                "levels": self.levels.tolist(), "fractions": self.fractions.tolist(),
                "ce": floats(self.ce), "se": floats(self.se), "entropy": floats(self.entropy),
                "entropy_se": floats(self.entropy_se), "accuracy": floats(self.accuracy),
                "tokens": self.tokens.tolist(), "rows": self.rows.tolist(),
                "fitted_ce": floats(self.fitted()), "metadata": self._metadata,
                "mdm_sched_version": library_version(),
                **({} if self.rank_ce is None else {"rank_ce": [floats(r) for r in self.rank_ce]})}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InformationProfile:
        """Inverse of :meth:`to_dict`; a foreign, newer or corrupted object raises ValueError."""
        data = check_format(dict(data) if isinstance(data, Mapping) else data, fmt=_FORMAT, version=_FORMAT_VERSION,
                            what="information profile")

        def floats(key: str) -> list[float] | None:
            v = data.get(key)
            return None if v is None else [math.nan if x is None else x for x in v]

        missing = [k for k in ("levels", "ce", "se", "n_tokens") if data.get(k) is None]
        if missing:
            raise ValueError(f"corrupted profile: no {', '.join(repr(k) for k in missing)} field; re-estimate it")
        try:
            return cls(data["levels"], floats("ce"), floats("se"), n_tokens=data["n_tokens"],
                       entropy=floats("entropy"), entropy_se=floats("entropy_se"), accuracy=floats("accuracy"),
                       tokens=data.get("tokens"), rows=data.get("rows"), metadata=data.get("metadata"),
                       rank_ce=None if data.get("rank_ce") is None else
                       [[math.nan if x is None else x for x in r] for r in data["rank_ce"]])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"corrupted profile ({type(exc).__name__}: {exc}); re-estimate it") from exc

    def save(self, path: str | os.PathLike) -> None:
        """Write the profile as a single JSON file (atomically); see :meth:`save_pretrained` for a folder."""
        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> InformationProfile:
        """Read a profile written by :meth:`save`; a corrupted or foreign file raises ValueError naming it."""
        data = read_json(path, what="profile")
        try:
            return cls.from_dict(data)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc

    def plot(self, path: str | os.PathLike, *, title: str | None = None) -> None:
        """Write a PNG: CE (points with SE bars and the fitted curve) and predictive entropy vs visible fraction."""
        fig = new_figure((7.0, 4.5), dpi=120)
        ax = fig.add_subplot(1, 1, 1)
        x = self.fractions
        policy = self.rank_ce is not None
        ax.errorbar(x, self.ce, yerr=np.nan_to_num(self.se), fmt="o", ms=3, capsize=2, color="C0",
                    label="CE of the top-ranked position, CE_1(K) (± SE)" if policy else "cross-entropy (± SE)")
        if policy:
            self._plot_ranks(ax)
        else:
            fine = self.curve()
            ax.plot(np.arange(self._n_tokens) / self._n_tokens, fine, "-", color="C0", lw=1.2, label="isotonic fit")
        if np.all(np.isfinite(self.entropy)):
            ax.errorbar(x, self.entropy, yerr=np.nan_to_num(self.entropy_se), fmt="s", ms=3, capsize=2,
                        color="C1", alpha=0.8, label="predictive entropy (± SE)")
        ax.set_xlabel("visible fraction K / N" + (f" ({self.order}-order path)" if policy else ""))
        ax.set_ylabel("nats per masked token")
        ax.set_xlim(-0.02, 1.0)
        ax.grid(alpha=0.3)
        ax.legend(loc="best" if policy else "upper right", fontsize=7 if policy else 8)
        ax.set_title(textwrap.fill(title or self.description, 120), fontsize=8)
        atomic_write_png(fig, path)

    def _plot_ranks(self, ax: Any) -> None:
        """Policy profiles: the fitted rank table, one line per rank r = 1, 2, 4, 8, ... (CE_r(K) against K / N)."""
        fit = self.fitted_ranks()
        ranks = [r for r in (2 ** np.arange(12)).tolist() if r <= self._n_tokens]
        for i, r in enumerate(ranks):
            ok = np.isfinite(fit[:, r - 1])
            ax.plot(self.fractions[ok], fit[ok, r - 1], "-", lw=1.0, color=f"C{(i + 2) % 10}", label=f"CE_{r}(K), fitted")
