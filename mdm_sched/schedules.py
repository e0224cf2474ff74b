"""Unmasking schedules: how many tokens each model call reveals, hand-picked or provably optimal.

A schedule ``k = (k_1, ..., k_T)`` is a tuple of positive integers summing to the number of generated
tokens ``N``; ``T`` is the number of model calls (NFE). Builders return :class:`Schedule` objects;
:func:`optimal` solves the exact dynamic program of docs/theory.md §4 on a non-increasing
cross-entropy curve ``CE(i)``, ``i = 0..N-1`` (or on an :class:`~mdm_sched.InformationProfile`).
"""
from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ._io import atomic_write_json, check_format, library_version, read_json
from .hub import PretrainedJSON
from .rules import RULES, FixedSchedule, RevealRule, confidence_factor, entropy_bound, from_description, parse_rule, threshold
from .validation import check_int, is_int

if TYPE_CHECKING:
    from ._types import ScheduleLike

__all__ = [
    "Schedule",
    "BUILDERS",
    "build",
    "constant",
    "cosine",
    "geometric",
    "optimal",
    "optimal_blocks",
    "sqrt_rule",
    "cost",
    "nll_bound",
    "predicted_gain",
    "predicted_calls_saved",
    "factorization_error",
    "resolve",
    "threshold",
    "entropy_bound",
    "confidence_factor",
    "as_rule",
    "NEED_PROFILE",
    "spec_to_json",
    "spec_from_json",
    "parse_spec",
]

_FORMAT = "mdm_sched.schedule"
_FORMAT_VERSION = 1


def _check_steps(n_tokens: Any, steps: Any) -> tuple[int, int]:
    n = check_int(n_tokens, "n_tokens", minimum=1)
    t = check_int(steps, "steps", minimum=1)
    if t > n:
        raise ValueError(
            f"steps={t} exceeds n_tokens={n}: every call must reveal at least one token; use steps <= {n}"
        )
    return n, t


class Schedule(PretrainedJSON):
    """Tokens revealed per model call: an immutable tuple of positive integers.

    >>> s = Schedule([2, 3])
    >>> s.steps, s.n_tokens, s.cumulative
    (2, 5, (0, 2, 5))

    Saved as one JSON object: :meth:`save`/:meth:`load` for a single file, :meth:`save_pretrained` /
    :meth:`from_pretrained` / :meth:`push_to_hub` for a folder (``mdm_schedule.json``, e.g. next to a model)
    or a Hub repository.
    """

    __slots__ = ("_metadata", "_name", "_sizes")
    FILENAME = "mdm_schedule.json"
    WHAT = "schedule"

    def __init__(self, sizes: Sequence[int] | np.ndarray | torch.Tensor, *, name: str | None = None,
                 metadata: Mapping[str, Any] | None = None) -> None:
        if isinstance(sizes, (torch.Tensor, np.ndarray)):
            if sizes.ndim != 1:
                raise ValueError(f"sizes must be 1-D, got shape {tuple(sizes.shape)}")
            sizes = sizes.tolist()
        if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence):
            raise ValueError(f"sizes must be a sequence of positive integers, got {type(sizes).__name__}")
        if len(sizes) == 0:
            raise ValueError("sizes must contain at least one step")
        out = []
        for i, k in enumerate(sizes):
            k = check_int(k, f"sizes[{i}]")
            if k < 1:
                raise ValueError(f"sizes[{i}] = {k}: every call must reveal at least one token")
            out.append(k)
        self._sizes = tuple(out)
        self._name = name
        if metadata is not None and not isinstance(metadata, Mapping):
            raise ValueError(f"metadata must be a dict, got {type(metadata).__name__}")
        if name is not None and not isinstance(name, str):
            raise ValueError(f"name must be a string, got {type(name).__name__}")
        self._metadata = dict(metadata or {})

    # -- read-only views -------------------------------------------------------------------------
    @property
    def sizes(self) -> tuple[int, ...]:
        """Tokens revealed at each call, ``(k_1, ..., k_T)``."""
        return self._sizes

    @property
    def steps(self) -> int:
        """Number of model calls ``T``."""
        return len(self._sizes)

    @property
    def n_tokens(self) -> int:
        """Number of tokens the schedule reveals, ``N = sum(k)``."""
        return sum(self._sizes)

    @property
    def cumulative(self) -> tuple[int, ...]:
        """Revealed counts ``(K_0 = 0, K_1, ..., K_T = N)``."""
        return tuple(int(x) for x in np.concatenate([[0], np.cumsum(self._sizes)]))

    @property
    def name(self) -> str | None:
        return self._name

    @property
    def metadata(self) -> dict[str, Any]:
        """A copy of the metadata (builder parameters, provenance)."""
        return dict(self._metadata)

    @property
    def max_size(self) -> int:
        return max(self._sizes)

    def transfer_counts(self, n_masked: int | torch.Tensor) -> torch.Tensor:
        """Tokens each call reveals for rows with ``n_masked`` masked positions, shaped like LLaDA's
        ``get_num_transfer_tokens``: ``[T]`` for an int, ``[B, T]`` for a ``[B]`` tensor.

        Call ``t`` reveals ``floor(K_t n / N) - floor(K_{t-1} n / N)`` positions, so a row with ``n == N``
        gets exactly :attr:`sizes` and any ``n`` is revealed in ``T`` calls with the schedule's shape.
        This is what :func:`mdm_sched.generate` applies per block; it also drops the schedule into another
        loop (see the README: the optimal schedule inside LLaDA's own ``generate``).
        """
        scalar = not isinstance(n_masked, torch.Tensor)
        n = torch.as_tensor(n_masked, dtype=torch.long).reshape(-1, 1)
        if bool((n < 0).any()):
            raise ValueError(f"n_masked must be >= 0, got {n_masked!r}")
        cum = torch.tensor(self.cumulative, dtype=torch.long, device=n.device)
        counts = torch.diff((cum.unsqueeze(0) * n) // self.n_tokens, dim=1)
        return counts[0] if scalar else counts

    def as_tensor(self, device: torch.device | str | None = None) -> torch.Tensor:
        """Sizes as a LongTensor."""
        return torch.tensor(self._sizes, dtype=torch.long, device=device)

    def __len__(self) -> int:
        return len(self._sizes)

    def __iter__(self) -> Iterator[int]:
        return iter(self._sizes)

    def __getitem__(self, idx: int) -> int:
        return self._sizes[idx]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Schedule):
            return self._sizes == other._sizes
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._sizes)

    def __repr__(self) -> str:
        shown = self._sizes if len(self._sizes) <= 12 else self._sizes[:6] + ("...",) + self._sizes[-3:]
        name = f"{self._name!r}, " if self._name else ""
        return f"Schedule({name}steps={self.steps}, n_tokens={self.n_tokens}, sizes={shown})"

    # -- transformations -------------------------------------------------------------------------
    def rescale(self, n_tokens: int) -> Schedule:
        """The same shape (cumulative fractions) for another length; steps are capped at ``n_tokens``."""
        n = check_int(n_tokens, "n_tokens", minimum=1)
        if n == self.n_tokens:
            return self
        steps = min(self.steps, n)
        frac = np.asarray(self.cumulative[1:], dtype=np.float64) / self.n_tokens
        # Sample the cumulative curve at `steps` evenly spaced call fractions.
        src = np.linspace(0.0, 1.0, self.steps + 1)[1:]
        targets = np.interp(np.arange(1, steps + 1) / steps, src, frac)
        meta = dict(self._metadata, rescaled_from=self.n_tokens)
        return Schedule(_sizes_from_fractions(targets, n), name=self._name, metadata=meta)

    # -- serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: format and version, sizes, name and metadata (and the library version that wrote it)."""
        return {"format": _FORMAT, "version": _FORMAT_VERSION, "name": self._name,
                "sizes": list(self._sizes), "steps": self.steps, "n_tokens": self.n_tokens,
                "metadata": self._metadata, "mdm_sched_version": library_version()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Schedule:
        """Inverse of :meth:`to_dict`; a foreign, newer-format or corrupted object raises ValueError."""
        data = check_format(dict(data) if isinstance(data, Mapping) else data, fmt=_FORMAT, version=_FORMAT_VERSION,
                            what="schedule")
        if "sizes" not in data:
            raise ValueError("corrupted schedule: no 'sizes' field")
        try:
            sched = cls(data["sizes"], name=data.get("name"), metadata=data.get("metadata"))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"corrupted schedule ({type(exc).__name__}: {exc})") from exc
        if "n_tokens" in data and data["n_tokens"] != sched.n_tokens:
            raise ValueError(f"corrupted schedule: sizes sum to {sched.n_tokens} but n_tokens={data['n_tokens']}")
        return sched

    def save(self, path: str | Path) -> None:
        """Write the schedule as a single JSON file (atomically); see :meth:`save_pretrained` for a folder."""
        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> Schedule:
        """Read a file written by :meth:`save`; errors name the file (see :meth:`from_pretrained` for folders)."""
        data = read_json(path, what="schedule")
        try:
            return cls.from_dict(data)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc


# ------------------------------------------------------------------------------------------------
# Helpers shared by the builders
# ------------------------------------------------------------------------------------------------

def _sizes_from_fractions(fractions: np.ndarray, n_tokens: int) -> list[int]:
    """Integer sizes whose cumulative counts follow ``fractions`` (target K_t / N for t = 1..T).

    Rounds the targets, then projects onto the feasible set ``K_{t-1} + 1 <= K_t``, ``K_T = N``.
    """
    steps = len(fractions)
    t = np.arange(1, steps + 1)
    k_cum = np.rint(np.asarray(fractions, dtype=np.float64) * n_tokens).astype(np.int64)
    k_cum = np.clip(k_cum, t, n_tokens - (steps - t))  # room for >= 1 token in every call
    k_cum[-1] = n_tokens
    k_cum = np.maximum.accumulate(k_cum - t) + t  # strictly increasing, forward pass
    sizes = np.diff(np.concatenate([[0], k_cum]))
    assert sizes.min() >= 1 and sizes.sum() == n_tokens
    return sizes.tolist()


def _as_curve(curve_or_profile: Any, n_tokens: int | None, *, argname: str = "curve") -> np.ndarray:
    """A validated float64 CE curve of length N from an array-like or an InformationProfile."""
    if hasattr(curve_or_profile, "curve") and callable(curve_or_profile.curve):
        if n_tokens is None:
            raise ValueError(f"{argname} is a profile: pass n_tokens= (the generation length) to evaluate its curve")
        curve = np.asarray(curve_or_profile.curve(check_int(n_tokens, "n_tokens", minimum=1)), dtype=np.float64)
    else:
        if isinstance(curve_or_profile, torch.Tensor):
            curve_or_profile = curve_or_profile.detach().cpu().double().numpy()
        try:
            curve = np.asarray(curve_or_profile, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{argname} must be a 1-D array of cross-entropies or an InformationProfile") from exc
    if curve.ndim != 1 or curve.size == 0:
        raise ValueError(f"{argname} must be a non-empty 1-D array (CE(i) for i = 0..N-1), got shape {curve.shape}")
    if n_tokens is not None and curve.size != n_tokens:
        raise ValueError(f"{argname} has length {curve.size} but n_tokens={n_tokens}: the curve needs one value per "
                         "visible count i = 0..n_tokens-1")
    if not np.all(np.isfinite(curve)):
        raise ValueError(f"{argname} contains NaN or inf; fit the profile first (InformationProfile.curve)")
    return curve


def _check_nonincreasing(curve: np.ndarray, argname: str = "curve") -> None:
    rise = np.diff(curve)
    tol = 1e-9 * max(1.0, float(np.abs(curve).max()))
    if rise.size and rise.max() > tol:
        i = int(rise.argmax())
        raise ValueError(
            f"{argname} must be non-increasing (CE can only drop as more tokens are visible) but "
            f"CE({i + 1}) - CE({i}) = {rise[i]:.3g} > 0; fit it with mdm_sched.profile.isotonic_nonincreasing "
            "or use an InformationProfile, whose curve() is fitted"
        )


def _check_schedule_for(curve: np.ndarray, schedule: Schedule | Sequence[int]) -> Schedule:
    sched = schedule if isinstance(schedule, Schedule) else Schedule(schedule)
    if sched.n_tokens != curve.size:
        raise ValueError(f"schedule reveals {sched.n_tokens} tokens but the curve has length {curve.size}; "
                         "use a schedule built for this length (or Schedule.rescale)")
    return sched


# ------------------------------------------------------------------------------------------------
# Hand-picked builders
# ------------------------------------------------------------------------------------------------

def constant(n_tokens: int, steps: int) -> Schedule:
    """Even split, sizes differ by at most one, remainder first (LLaDA's per-step quota)."""
    n, t = _check_steps(n_tokens, steps)
    base, rem = divmod(n, t)
    return Schedule([base + 1] * rem + [base] * (t - rem), name="constant", metadata={"builder": "constant"})


def cosine(n_tokens: int, steps: int) -> Schedule:
    """MaskGIT's cosine schedule: the masked fraction after a fraction ``s`` of the calls is ``cos(pi/2 s)``."""
    n, t = _check_steps(n_tokens, steps)
    s = np.arange(1, t + 1) / t
    revealed = 1.0 - np.cos(0.5 * np.pi * s)
    return Schedule(_sizes_from_fractions(revealed, n), name="cosine", metadata={"builder": "cosine"})


def _geometric_path(n: int, t: int, eps: float) -> np.ndarray:
    """Cumulative counts of the fastest path with ``k_s - 1 <= eps (K_{s-1} + 1)`` that keeps room for later calls."""
    k_cum = np.empty(t, dtype=np.int64)
    prev = 0
    for s in range(t):
        cap = prev + 1 + math.floor(eps * (prev + 1) + 1e-12)
        prev = min(cap, n - (t - 1 - s))
        k_cum[s] = prev
    return k_cum


def geometric(n_tokens: int, steps: int, kind: str = "dtc") -> Schedule:
    """Geometric schedule with the smallest ``eps`` that fits ``steps`` calls (docs/theory.md §4).

    ``kind="dtc"``: the revealed count grows geometrically, ``k_t - 1 <= eps (K_{t-1} + 1)``, so
    ``E_fact <= eps * DTC``. ``kind="tc"``: the masked count shrinks geometrically,
    ``k_t - 1 <= eps (N - K_t + 1)``, so ``E_fact <= eps * TC``. ``eps`` is stored in the metadata.
    """
    n, t = _check_steps(n_tokens, steps)
    if kind not in ("dtc", "tc"):
        raise ValueError(f"kind must be 'dtc' (revealed count grows) or 'tc' (masked count shrinks), got {kind!r}")
    lo, hi = 0.0, float(n)
    if _geometric_path(n, t, lo)[-1] >= n:
        hi = 0.0
    for _ in range(200):  # bisection on eps: the path is monotone in eps
        if hi - lo <= 1e-12 * max(1.0, hi):
            break
        mid = 0.5 * (lo + hi)
        if _geometric_path(n, t, mid)[-1] >= n:
            hi = mid
        else:
            lo = mid
    sizes = np.diff(np.concatenate([[0], _geometric_path(n, t, hi)]))
    if kind == "tc":  # time reversal maps one condition onto the other
        sizes = sizes[::-1]
    return Schedule(sizes.tolist(), name=f"geometric_{kind}" if kind == "tc" else "geometric",
                    metadata={"builder": "geometric", "kind": kind, "eps": hi})


# ------------------------------------------------------------------------------------------------
# The exact optimum (docs/theory.md §4)
# ------------------------------------------------------------------------------------------------

def _dp_layer(d_prev: np.ndarray, curve: np.ndarray, prefix: np.ndarray, cols: np.ndarray,
              row_lo: np.ndarray, row_hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``min_a d_prev[a] + C(a, b)`` for each column ``b`` in ``cols`` over rows ``row_lo[b] <= a <= row_hi[b]``.

    ``C(a, b) = (b - a) CE(a) - sum_{a <= i < b} CE(i)`` is a Monge array when CE is non-increasing
    (C(a,b) + C(a',b') - C(a,b') - C(a',b) = (b'-b)(CE(a') - CE(a)) <= 0), so the largest argmin is
    non-decreasing in b and divide and conquer over columns needs O(N log N) work per layer.
    All subproblems of one recursion depth are evaluated in a single vectorised numpy pass.
    """
    ncol = cols.size
    best = np.empty(ncol)
    arg = np.empty(ncol, dtype=np.int64)
    # Segments of columns [c_lo, c_hi) (indices into cols) with a row window [r_lo, r_hi].
    c_lo, c_hi = np.array([0]), np.array([ncol])
    r_lo, r_hi = np.array([row_lo[0]]), np.array([row_hi[-1]])
    while c_lo.size:
        mid = (c_lo + c_hi) // 2
        b = cols[mid]
        lo = np.maximum(r_lo, row_lo[mid])
        hi = np.minimum(r_hi, row_hi[mid])
        length = hi - lo + 1
        starts = np.concatenate([[0], np.cumsum(length)[:-1]])
        seg = np.repeat(np.arange(mid.size), length)
        offset = np.arange(seg.size) - starts[seg]
        a = lo[seg] + offset
        bb = b[seg]
        vals = d_prev[a] + (bb - a) * curve[a] - (prefix[bb] - prefix[a])
        seg_min = np.minimum.reduceat(vals, starts)
        # largest argmin per segment (ties broken the same way everywhere keeps the argmin monotone)
        last = np.maximum.reduceat(np.where(vals == seg_min[seg], offset, -1), starts)
        best[mid] = seg_min
        arg[mid] = lo + last
        # children: left half keeps rows up to the argmin, right half starts from it
        left = c_lo < mid
        right = mid + 1 < c_hi
        c_lo, c_hi, r_lo, r_hi = (
            np.concatenate([c_lo[left], (mid + 1)[right]]),
            np.concatenate([mid[left], c_hi[right]]),
            np.concatenate([r_lo[left], arg[mid][right]]),
            np.concatenate([arg[mid][left], r_hi[right]]),
        )
    return best, arg


def _is_policy(obj: Any) -> bool:
    """An ordering-aware profile (its schedule cost comes from a block-cost table, not a curve)."""
    return getattr(obj, "kind", None) == "policy" and callable(getattr(obj, "block_costs", None))


def _profile_metadata(profile: Any) -> dict[str, Any]:
    """What a schedule built from ``profile`` records about it (``generate`` warns on a mismatch)."""
    if not hasattr(profile, "curve"):
        return {}
    return {"profile": getattr(profile, "description", None), "profile_kind": getattr(profile, "kind", "random"),
            "profile_order": getattr(profile, "order", "random"),
            "profile_conditioning": getattr(profile, "conditioning", "none"),
            "profile_source": getattr(profile, "source", "heldout")}


def _check_cap(n: int, t: int, max_tokens_per_step: int | None) -> int:
    cap = n if max_tokens_per_step is None else check_int(max_tokens_per_step, "max_tokens_per_step", minimum=1)
    if cap * t < n:
        raise ValueError(f"max_tokens_per_step={cap} with steps={t} can reveal at most {cap * t} < n_tokens={n} "
                         f"tokens; raise max_tokens_per_step to >= {math.ceil(n / t)} or use more steps")
    return min(cap, n)


def _table_dp(costs: np.ndarray, t: int, cap: int) -> tuple[list[int], float]:
    """Exact ``min sum_s costs[K_{s-1}, K_s]`` over ``t`` calls, each revealing ``1..cap``: O(T N^2), any costs."""
    n = costs.shape[0] - 1
    a = np.arange(n + 1)
    allowed = (a[None, :] > a[:, None]) & (a[None, :] - a[:, None] <= cap)
    c = np.where(allowed, costs, np.inf)
    d = np.full(n + 1, np.inf)
    d[0] = 0.0
    back = []
    for _ in range(t):
        total = d[:, None] + c  # [a, b]
        arg = total.argmin(0)  # the smallest a among ties
        d = total[arg, a]
        back.append(arg)
    if not math.isfinite(d[n]):
        raise ValueError(f"no schedule of {t} calls reveals {n} tokens at a finite cost")
    k_cum = [n]
    for arg in reversed(back):
        k_cum.append(int(arg[k_cum[-1]]))
    return np.diff(k_cum[::-1]).tolist(), float(d[n])


def optimal_blocks(costs: Any, steps: int, max_tokens_per_step: int | None = None) -> Schedule:
    """The schedule minimising ``sum_t costs[K_{t-1}, K_t]`` exactly, for any block-cost table.

    ``costs`` is ``[N + 1, N + 1]`` (entries with ``b <= a`` are ignored; ``inf`` forbids a block). This is
    the DP of THEORY.md section 4 without the Monge shortcut, O(T N^2) time: ordering-aware profiles give
    block costs ``sum_{r <= b-a} CE_r(a)`` that need not be Monge (:mod:`mdm_sched.policy`).
    """
    c = np.asarray(costs.detach().cpu().double().numpy() if isinstance(costs, torch.Tensor) else costs,
                   dtype=np.float64)
    if c.ndim != 2 or c.shape[0] != c.shape[1] or c.shape[0] < 2:
        raise ValueError(f"costs must be a square [N + 1, N + 1] table with N >= 1, got shape {c.shape}")
    n, t = _check_steps(c.shape[0] - 1, steps)
    sizes, total = _table_dp(c, t, _check_cap(n, t, max_tokens_per_step))
    return Schedule(sizes, name="optimal", metadata={"builder": "optimal", "cost": total, "dp": "table",
                                                     "max_tokens_per_step": max_tokens_per_step})


def _optimal_policy(profile: Any, steps: int, max_tokens_per_step: int | None, n_tokens: int | None) -> Schedule:
    """:func:`optimal` for an ordering-aware profile: the table DP on its block costs; ``cost`` is ``J``."""
    n = profile.n_tokens if n_tokens is None else check_int(n_tokens, "n_tokens", minimum=1)
    costs = profile.block_costs(n)
    sched = optimal_blocks(costs, steps, max_tokens_per_step)
    meta = dict(sched.metadata, cost=float(sched.metadata["cost"] - _one_per_call(costs)), **_profile_metadata(profile))
    return Schedule(sched.sizes, name="optimal", metadata=meta)


def _one_per_call(costs: np.ndarray) -> float:
    """``sum_i costs[i, i+1]``: the N-call sampler's loss, the baseline the cost ``J`` is measured from."""
    i = np.arange(costs.shape[0] - 1)
    return float(costs[i, i + 1].sum())


def optimal(curve_or_profile: Any, steps: int, max_tokens_per_step: int | None = None, *,
            n_tokens: int | None = None) -> Schedule:
    """The schedule with ``steps`` calls that minimises the cost ``J`` (hence the held-out bound) exactly.

    Args:
        curve_or_profile: non-increasing CE curve ``CE(0..N-1)`` (array-like), or an
            :class:`~mdm_sched.InformationProfile` of any kind: random-order (the DP on its fitted curve,
            Monge, O(T N log N)) or ordering-aware (``order=`` confidence/margin/entropy: the DP on its
            block-cost table, O(T N^2)).
        steps: number of model calls ``T`` (1 <= T <= N).
        max_tokens_per_step: optional cap on tokens revealed per call.
        n_tokens: generation length; checked against a curve; for a profile, default its measured length.

    The schedule's metadata names the profile (``profile``, ``profile_kind``, ``profile_order``,
    ``profile_conditioning``): :func:`mdm_sched.generate` warns when it is used for another order or conditioning.
    """
    if _is_policy(curve_or_profile):
        return _optimal_policy(curve_or_profile, steps, max_tokens_per_step, n_tokens)
    if hasattr(curve_or_profile, "curve") and n_tokens is None:
        n_tokens = getattr(curve_or_profile, "n_tokens", None)  # a profile: its measured length
    curve = _as_curve(curve_or_profile, n_tokens, argname="curve_or_profile")
    _check_nonincreasing(curve, "curve_or_profile")
    n, t = _check_steps(curve.size, steps)
    cap = _check_cap(n, t, max_tokens_per_step)
    prefix = np.concatenate([[0.0], np.cumsum(curve)])
    d_prev = np.full(n + 1, np.inf)
    d_prev[0] = 0.0
    back = []
    prev_lo, prev_hi = 0, 0  # reachable revealed counts after t-1 calls
    for s in range(1, t + 1):
        b_lo = max(s, n - (t - s) * cap)
        b_hi = min(n - (t - s), s * cap)
        cols = np.arange(b_lo, b_hi + 1)
        row_lo = np.maximum(prev_lo, cols - cap)
        row_hi = np.minimum(prev_hi, cols - 1)
        best, arg = _dp_layer(d_prev, curve, prefix, cols, row_lo, row_hi)
        d_prev = np.full(n + 1, np.inf)
        d_prev[cols] = best
        parent = np.full(n + 1, -1, dtype=np.int64)
        parent[cols] = arg
        back.append(parent)
        prev_lo, prev_hi = b_lo, b_hi
    k_cum = [n]
    for parent in reversed(back):
        k_cum.append(int(parent[k_cum[-1]]))
    k_cum = k_cum[::-1]
    sizes = np.diff(k_cum)
    meta = {"builder": "optimal", "cost": float(d_prev[n]), "max_tokens_per_step": max_tokens_per_step,
            **_profile_metadata(curve_or_profile)}
    return Schedule(sizes.tolist(), name="optimal", metadata=meta)


def sqrt_rule(curve_or_profile: Any, steps: int, *, n_tokens: int | None = None) -> Schedule:
    """Closed-form approximation of the optimum: equal square-root-information mass per call.

    The continuum minimiser reveals ``int_0^x sqrt(F'(u)) du = s G`` after a fraction ``s`` of the calls
    (docs/theory.md §4), i.e. small steps where information arrives fast. It assumes the profile's
    slope is nearly constant within each call, so it is within ~1% of :func:`optimal` once T resolves the
    profile's curvature (N = 2000, T >= 50 on smooth profiles) and a few % off for very small T.
    Random-order profiles only (an ordering-aware profile has no such closed form: use :func:`optimal`).
    """
    if _is_policy(curve_or_profile):
        raise ValueError("the sqrt rule needs a random-order profile; for an ordering-aware (policy) profile use "
                         "schedules.optimal (the exact DP on its block costs)")
    if hasattr(curve_or_profile, "curve") and n_tokens is None:
        n_tokens = getattr(curve_or_profile, "n_tokens", None)  # a profile: its measured length
    curve = _as_curve(curve_or_profile, n_tokens, argname="curve_or_profile")
    _check_nonincreasing(curve, "curve_or_profile")
    n, t = _check_steps(curve.size, steps)
    # F' at the midpoint of [i, i+1] is the drop CE(i) - CE(i+1); position N-1 has no successor.
    density = np.sqrt(np.clip(-np.diff(curve), 0.0, None))
    if n < 3 or density.sum() <= 0:
        sched = constant(n, t)
        return Schedule(sched.sizes, name="sqrt", metadata={"builder": "sqrt", "fallback": "constant (flat profile)"})
    # cumulative mass at knots 0.5, 1.5, ..., N-1.5 plus the ends 0 and N
    knots = np.concatenate([[0.0], np.arange(n - 1) + 0.5, [float(n)]])
    mass = np.concatenate([[0.0], np.cumsum(density) - 0.5 * density, [density.sum()]])
    mass = np.maximum.accumulate(mass)
    targets = np.arange(1, t + 1) / t * mass[-1]
    # invert the non-decreasing cumulative mass (flat stretches map to their right end)
    idx = np.searchsorted(mass, targets, side="left").clip(1, len(mass) - 1)
    m0, m1 = mass[idx - 1], mass[idx]
    w = np.where(m1 > m0, (targets - m0) / np.where(m1 > m0, m1 - m0, 1.0), 1.0)
    x = knots[idx - 1] + w * (knots[idx] - knots[idx - 1])
    return Schedule(_sizes_from_fractions(x / n, n), name="sqrt",
                    metadata={"builder": "sqrt", **_profile_metadata(curve_or_profile)})


# ------------------------------------------------------------------------------------------------
# Evaluating a schedule on a curve
# ------------------------------------------------------------------------------------------------

def _policy_sums(profile: Any, schedule: Schedule | Sequence[int]) -> tuple[float, float, int]:
    """``(sum_t C[K_{t-1}, K_t], sum_i C[i, i+1], N)`` of a policy profile's block costs at the schedule's length."""
    sched = schedule if isinstance(schedule, Schedule) else Schedule(schedule)
    costs = profile.block_costs(sched.n_tokens)
    k_cum = np.asarray(sched.cumulative)
    return float(costs[k_cum[:-1], k_cum[1:]].sum()), _one_per_call(costs), sched.n_tokens


def cost(curve: Any, schedule: Schedule | Sequence[int]) -> float:
    """``J(k) = sum_t sum_{K_{t-1} <= i < K_t} [CE(K_{t-1}) - CE(i)]``: the part of the bound the schedule controls.

    For an ordering-aware profile: ``J(k) = sum_t C[K_{t-1}, K_t] - sum_i C[i, i+1]``, the predicted excess
    loss over the one-token-per-call ordered sampler (:mod:`mdm_sched.policy`).
    """
    if _is_policy(curve):
        total, base, _ = _policy_sums(curve, schedule)
        return total - base
    c = _as_curve(curve, None)
    sched = _check_schedule_for(c, schedule)
    k_cum = np.asarray(sched.cumulative)
    prefix = np.concatenate([[0.0], np.cumsum(c)])
    a, b = k_cum[:-1], k_cum[1:]
    return float(np.sum((b - a) * c[a] - (prefix[b] - prefix[a])))


def factorization_error(curve: Any, schedule: Schedule | Sequence[int]) -> float:
    """``E_fact`` when ``curve`` is the data's entropy profile ``g`` (then ``J = E_fact``), same formula as :func:`cost`."""
    return cost(curve, schedule)


def nll_bound(curve: Any, schedule: Schedule | Sequence[int]) -> float:
    """Held-out bound ``NLL_T(k) = (1/N) sum_t k_t CE(K_{t-1})`` in nats per token (ordering-aware profile:
    ``(1/N) sum_t C[K_{t-1}, K_t]``, the ordered sampler's predicted NLL)."""
    if _is_policy(curve):
        total, _, n = _policy_sums(curve, schedule)
        return total / n
    c = _as_curve(curve, None)
    sched = _check_schedule_for(c, schedule)
    k_cum = np.asarray(sched.cumulative)
    return float(np.sum(np.asarray(sched.sizes) * c[k_cum[:-1]]) / c.size)


def predicted_gain(curve: Any, steps: int, *, n_tokens: int | None = None) -> float:
    """``J(constant) / J(optimal)`` for ``steps`` calls: how much the optimum shrinks the schedule's cost."""
    if _is_policy(curve):
        n = curve.n_tokens if n_tokens is None else n_tokens
        j_const, j_opt = cost(curve, constant(n, steps)), cost(curve, optimal(curve, steps, n_tokens=n))
        if j_opt <= 0.0:
            warnings.warn(f"the policy profile predicts the optimal {steps}-call schedule to lose nothing against one "
                          f"token per call (J = {j_opt:.3g} <= 0): the ratio is not meaningful; compare the costs J "
                          "(schedules.cost) instead", UserWarning, stacklevel=3)
            return 1.0 if j_const <= j_opt else math.inf
        return j_const / j_opt
    c = _as_curve(curve, n_tokens)
    j_const = cost(c, constant(c.size, steps))
    j_opt = cost(c, optimal(c, steps))
    if j_opt <= 0.0:
        return 1.0 if j_const <= 0.0 else math.inf
    return j_const / j_opt


def predicted_calls_saved(curve: Any, steps: int, *, n_tokens: int | None = None) -> float:
    """``T_c / steps``: the calls the constant schedule needs for the optimal ``steps``-call schedule's cost ``J``
    (so its bound) over ``steps`` -- the profile's prediction in the unit "x fewer calls at equal quality".

    ``T_c`` is interpolated linearly between the two integer budgets whose constant-schedule costs bracket the
    optimum's. 1 means constant is already optimal (a nearly linear curve: nothing to save); the ratio of costs at
    equal calls is :func:`predicted_gain`.
    """
    policy = _is_policy(curve)
    c = None if policy else _as_curve(curve, n_tokens)
    n = (curve.n_tokens if n_tokens is None else n_tokens) if policy else c.size
    steps = _check_steps(n, steps)[1]
    prof = curve if policy else c
    target = cost(prof, optimal(prof, steps, n_tokens=n if policy else None))
    prev = cost(prof, constant(n, steps))
    if prev <= target:
        return 1.0
    for t in range(steps + 1, n + 1):
        j = cost(prof, constant(n, t))
        if j <= target:  # between t-1 (cost prev > target) and t
            return (t - 1 + (prev - target) / (prev - j)) / steps
        prev = j
    return n / steps  # only one token per call is as good (rounding can leave constant just above the optimum)


BUILDERS = ("constant", "linear", "cosine", "geometric", "geometric_tc", "optimal", "sqrt")
#: builders that need a CE curve or an information profile
NEED_PROFILE = ("optimal", "sqrt")


def build(name: str, n_tokens: int, steps: int, curve_or_profile: Any = None) -> Schedule:
    """Build a schedule by name (one of :data:`BUILDERS`); optimal and sqrt need a curve or profile."""
    if name in ("constant", "linear"):
        return constant(n_tokens, steps)
    if name == "cosine":
        return cosine(n_tokens, steps)
    if name in ("geometric", "geometric_dtc"):
        return geometric(n_tokens, steps, "dtc")
    if name == "geometric_tc":
        return geometric(n_tokens, steps, "tc")
    if name in ("optimal", "sqrt"):
        if curve_or_profile is None:
            raise ValueError(f"schedule {name!r} needs a CE curve or an InformationProfile "
                             "(estimate one with ms.estimate_profile)")
        fn = optimal if name == "optimal" else sqrt_rule
        return fn(curve_or_profile, steps, n_tokens=n_tokens)
    raise ValueError(f"unknown schedule name {name!r}; choose one of {', '.join(BUILDERS)}")


def _profile_or_path(profile: Any) -> Any:
    """An InformationProfile from a JSON file, a folder holding ``mdm_profile.json`` or a Hub repository id
    (str / PathLike), or the argument unchanged."""
    if isinstance(profile, (str, os.PathLike)):
        from .profile import InformationProfile

        return InformationProfile.from_pretrained(profile)
    return profile


def resolve(spec: ScheduleLike, n_tokens: int, *, steps: int | None = None, profile: Any = None,
            argname: str = "n_tokens") -> Schedule | RevealRule:
    """What a ``schedule=`` argument means for blocks of ``n_tokens`` positions.

    A :class:`Schedule` or a list of sizes must reveal exactly ``n_tokens``; an int ``T`` is
    ``constant(n_tokens, T)`` (``T`` calls **per block**; LLaDA's ``steps`` is the total over all blocks); a builder
    name needs ``steps`` (calls per block; and ``profile`` for ``"optimal"``/``"sqrt"``: an InformationProfile, a CE
    curve, a profile file, a folder holding ``mdm_profile.json`` or a Hub id); a path to a saved schedule (file or
    folder) is loaded; a reveal rule (e.g. :func:`threshold`) is returned as it is, and so is its text form
    (``"threshold:0.9"``, :func:`mdm_sched.rules.parse_rule`).
    """
    if isinstance(spec, RevealRule):
        return spec
    if isinstance(spec, (list, tuple)) and all(is_int(k) for k in spec):
        spec = Schedule(spec)
    if isinstance(spec, Schedule):
        FixedSchedule(spec).check_length(n_tokens, argname)
        return spec
    if is_int(spec):
        t = check_int(spec, "schedule", minimum=1, hint=" (model calls per block)")
        if t > n_tokens:
            raise ValueError(f"schedule={t} calls per block > {argname}={n_tokens} tokens: each call reveals at least "
                             f"one token, so use at most {n_tokens} calls per block")
        return constant(n_tokens, t)
    if isinstance(spec, str) and (":" in spec or (spec in RULES and spec != "schedule")):
        return parse_rule(spec)
    if isinstance(spec, str) and spec not in BUILDERS and os.path.exists(spec):
        return resolve(Schedule.from_pretrained(spec), n_tokens, argname=argname)
    if isinstance(spec, str) and spec not in BUILDERS and (os.sep in spec or "/" in spec or spec.endswith(".json")):
        raise FileNotFoundError(f"schedule file {spec} does not exist (a schedule= string is a builder name, a rule such "
                                "as 'threshold:0.9', or a saved schedule's file or folder)")
    if isinstance(spec, str):
        if steps is None:
            raise ValueError(f"schedule={spec!r} needs steps=<number of model calls per block> (not the total over "
                             "all blocks, as LLaDA's steps)")
        t = check_int(steps, "steps", minimum=1, maximum=n_tokens, hint=f" (calls per block, at most {argname}={n_tokens})")
        return build(spec, n_tokens, t, _profile_or_path(profile))
    raise TypeError("schedule must be a Schedule, a list of per-call sizes, an int (calls per block, constant schedule), "
                    f"a builder name ({', '.join(BUILDERS)}) or a reveal rule; got {type(spec).__name__}")


def as_rule(spec: ScheduleLike, n_tokens: int, *, steps: int | None = None, profile: Any = None,
            argname: str = "n_tokens") -> RevealRule:
    """:func:`resolve`, with a schedule wrapped as a :class:`~mdm_sched.rules.FixedSchedule` rule."""
    found = resolve(spec, n_tokens, steps=steps, profile=profile, argname=argname)
    rule = found if isinstance(found, RevealRule) else FixedSchedule(found)
    rule.check_length(n_tokens, argname)
    return rule


def spec_to_json(spec: ScheduleLike) -> int | str | list[int] | dict[str, Any]:
    """A ``schedule=`` value as JSON: an int, a name, a list of sizes, a :class:`Schedule`'s dict or a rule's
    :meth:`~mdm_sched.rules.RevealRule.describe`; :func:`spec_from_json` inverts it."""
    if isinstance(spec, Schedule):
        return spec.to_dict()
    if isinstance(spec, RevealRule):
        desc = spec.describe()
        if desc.get("rule") not in RULES:
            raise ValueError(f"the reveal rule {spec!r} cannot be saved: describe() must name a registered rule "
                             "(mdm_sched.rules.register_rule) and return its parameters")
        return desc
    if is_int(spec):
        return int(spec)
    if isinstance(spec, str):
        return spec
    if isinstance(spec, (list, tuple)) and all(is_int(k) for k in spec):
        return [int(k) for k in spec]
    raise TypeError("schedule must be a Schedule, a list of per-call sizes, an int (calls per block), a builder or rule "
                    f"name, or a reveal rule to be saved; got {type(spec).__name__}")


def spec_from_json(data: Any) -> ScheduleLike:
    """Inverse of :func:`spec_to_json`."""
    if isinstance(data, Mapping):
        return Schedule.from_dict(data) if "format" in data else from_description(data)
    if isinstance(data, list):
        return [check_int(k, f"schedule[{i}]") for i, k in enumerate(data)]
    if is_int(data) or isinstance(data, str):
        return data
    raise ValueError(f"corrupted schedule entry {data!r}: expected an int, a name, a list of sizes, a saved schedule "
                     "or a rule description")


def parse_spec(text: str) -> ScheduleLike:
    """A ``schedule=`` value from text (the command line): ``"16"`` is 16 calls per block, ``"4,2,2"`` a list of
    sizes; anything else (a builder name, a rule such as ``"threshold:0.9"``, a path to a saved schedule) stays text,
    which :func:`resolve` understands."""
    text = str(text).strip()
    if text.isdigit():
        return int(text)
    parts = [p.strip() for p in text.split(",")]
    if len(parts) > 1 and all(p.isdigit() for p in parts):
        return [int(p) for p in parts]
    if not text:
        raise ValueError("schedule must not be empty: give calls per block (e.g. 16), a builder name, sizes or a rule")
    return text
