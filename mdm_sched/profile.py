"""Information profiles: measure a model's masked-token cross-entropy against the visible fraction.

:func:`estimate_profile` runs forward passes of a masked LM on held-out data with exactly ``i`` of
the ``N`` generated positions visible, for a grid of levels ``i`` (THEORY.md sections 2 and 5), and
returns an :class:`InformationProfile`: per-level mean cross-entropy, its standard error, the mean
predictive entropy, top-1 accuracy and token counts, plus the metadata needed to reuse it safely.
:meth:`InformationProfile.curve` turns the noisy levels into the fitted non-increasing curve
``CE(0..n-1)`` that :func:`mdm_sched.schedules.optimal` consumes.

Length policy (what happens to held-out sequences of different lengths)
    Every sequence is ``prompt_length`` prompt tokens (always visible, never scored) followed by the
    ``n_tokens`` generated tokens whose profile is measured.

    - ``n_tokens=None``: the most common total length ``L`` is used (ties: the longer) and
      ``n_tokens = L - prompt_length``; sequences of any other length are dropped with a warning
      that counts them. Nothing is cropped, so every sequence keeps its natural end.
    - ``n_tokens=N``: sequences longer than ``prompt_length + N`` are cropped to that length (the
      tail is cut), shorter ones are dropped with a warning that counts them.
    - No sequence left: ``ValueError`` naming the longest length available.

Determinism, resuming and data parallelism
    The rows of batch ``b`` are a seeded permutation of the data (one per pass), and the masks for
    (batch ``b``, level ``i``) come from a generator seeded by ``(seed, b, i)``. Work proceeds in
    rounds of ``checkpoint_every`` batches; stop decisions are taken only between rounds, from the
    global sums, so the set of forward passes does not depend on how many processes run them. Under
    ``accelerate launch`` / ``torchrun`` the (batch, level) forwards of a round are dealt out
    round-robin to the processes and the per-(batch, level) sums are all-reduced (each entry is
    produced by exactly one process, so the reduction is exact): 2 processes give the 1-process result.
    After every round the sums are written atomically to ``checkpoint``; rerunning with the same
    arguments resumes from there and replays exactly the same masks, so the profile is identical.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import io
import json
import math
import os
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import data as _data
from . import schedules as _schedules
from ._io import atomic_write_bytes, atomic_write_json, atomic_write_png, new_figure, read_json

__all__ = [
    "InformationProfile",
    "estimate_profile",
    "isotonic_nonincreasing",
    "default_levels",
    "add_profile_arguments",
    "profile_command",
    "add_schedule_arguments",
    "schedule_command",
]

_FORMAT = "mdm_sched.profile"
_FORMAT_VERSION = 1
_CKPT_FORMAT = "mdm_sched.profile_checkpoint"
_CKPT_VERSION = 1
DEFAULT_TOKENS_PER_LEVEL = 4096
DEFAULT_N_LEVELS = 48
#: A profile used for a length outside [measured / LENGTH_TOLERANCE, measured * LENGTH_TOLERANCE] warns.
LENGTH_TOLERANCE = 2.0


def _library_version() -> str:
    from . import __version__

    return __version__


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


# ------------------------------------------------------------------------------------------------
# InformationProfile
# ------------------------------------------------------------------------------------------------

def _as_array(x: Any, name: str, n: int, dtype: Any = np.float64) -> np.ndarray:
    arr = np.asarray(x, dtype=dtype)
    if arr.ndim != 1 or arr.size != n:
        raise ValueError(f"{name} must be a 1-D array with one value per level ({n}), got shape {arr.shape}")
    return arr


class InformationProfile:
    """A measured cross-entropy profile: per-level statistics against the visible fraction.

    Levels are visible counts ``i`` out of :attr:`n_tokens` generated positions (the block length
    when the profile was measured within semi-autoregressive blocks); :attr:`fractions` ``= i / n_tokens``
    is what transfers to other lengths. Build one with :func:`estimate_profile` or :meth:`load`.

    Attributes (numpy arrays, one entry per level): ``levels``, ``fractions``, ``ce`` (mean masked-token
    cross-entropy, nats), ``se`` (its standard error over rows), ``entropy`` (mean predictive entropy),
    ``entropy_se``, ``accuracy`` (top-1), ``tokens`` (scored tokens), ``rows`` (forward rows).
    ``metadata``: model, data, lengths, date, library version, ...

    Two profiles compare equal when their measured arrays and ``n_tokens`` are identical (metadata such
    as the date is ignored).
    """

    def __init__(self, levels: Sequence[int] | np.ndarray, ce: Sequence[float] | np.ndarray,
                 se: Sequence[float] | np.ndarray, *, n_tokens: int,
                 entropy: Sequence[float] | np.ndarray | None = None,
                 entropy_se: Sequence[float] | np.ndarray | None = None,
                 accuracy: Sequence[float] | np.ndarray | None = None,
                 tokens: Sequence[int] | np.ndarray | None = None,
                 rows: Sequence[int] | np.ndarray | None = None,
                 metadata: Mapping[str, Any] | None = None) -> None:
        n = _schedules.check_int(n_tokens, "n_tokens", minimum=1)
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
        self.se = _as_array(se, "se", k)
        nan = np.full(k, np.nan)
        self.entropy = nan.copy() if entropy is None else _as_array(entropy, "entropy", k)
        self.entropy_se = nan.copy() if entropy_se is None else _as_array(entropy_se, "entropy_se", k)
        self.accuracy = nan.copy() if accuracy is None else _as_array(accuracy, "accuracy", k)
        self.tokens = np.zeros(k, np.int64) if tokens is None else _as_array(tokens, "tokens", k, np.int64)
        self.rows = np.zeros(k, np.int64) if rows is None else _as_array(rows, "rows", k, np.int64)
        self._metadata = dict(metadata or {})
        self._fitted: np.ndarray | None = None

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
    def block_length(self) -> int | None:
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
        return (f"profile of {model} on {data}: n_tokens={m.get('sequence_tokens', self._n_tokens)}{block}{prompt}, "
                f"{self.levels.size} levels, {int(self.tokens.sum())} tokens")

    def __repr__(self) -> str:
        return (f"InformationProfile(n_tokens={self._n_tokens}, levels={self.levels.size}, "
                f"CE {self.ce[0]:.3f} -> {self.ce[-1]:.3f} nats, model={self._metadata.get('model')!r})")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, InformationProfile):
            return NotImplemented
        same = lambda a, b: a.shape == b.shape and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
        return self._n_tokens == other._n_tokens and all(
            same(getattr(self, k), getattr(other, k))
            for k in ("levels", "ce", "se", "entropy", "entropy_se", "accuracy", "tokens", "rows"))

    __hash__ = None  # type: ignore[assignment]

    # -- fitted curves -----------------------------------------------------------------------------
    def fitted(self) -> np.ndarray:
        """Isotonic (non-increasing) fit of ``ce`` at the measured levels, weighted by ``1 / se**2``."""
        if self._fitted is None:
            self._fitted = isotonic_nonincreasing(self.ce, _fit_weights(self.se))
        return self._fitted.copy()

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
        instead (label-free variant, THEORY.md section 2). Warns when ``n_tokens`` is far from the
        measured length.
        """
        n = self._n_tokens if n_tokens is None else _schedules.check_int(n_tokens, "n_tokens", minimum=1)
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
        the optimum can exploit, so the ratio says nothing (any schedule is as good as constant).
        """
        if self.drop_z < 3.0:
            warnings.warn(f"the profile drops by only {self.drop_z:.1f} standard errors from no to full context: "
                          "the model barely uses context, so predicted gains are not meaningful", stacklevel=2)
        return _schedules.predicted_gain(self.curve(n_tokens), steps)

    def bound(self, schedule: _schedules.Schedule | Sequence[int]) -> float:
        """Held-out bound ``NLL_T`` (nats per token) of ``schedule`` on the fitted curve at its length."""
        sched = schedule if isinstance(schedule, _schedules.Schedule) else _schedules.Schedule(schedule)
        return _schedules.nll_bound(self.curve(sched.n_tokens), sched)

    def check(self, model: Any = None, n_tokens: int | None = None, *, strict: bool = False) -> None:
        """Warn (``strict=True``: raise ValueError) when ``model`` is not the model the profile was measured
        on (config hash) or ``n_tokens`` is far from the measured length."""
        problems = []
        if model is not None:
            from .models import wrap

            mlm = wrap(model)
            mine = self._metadata.get("config_hash")
            if mine is not None and mlm.config_hash != mine:
                problems.append(f"the profile was measured on {self._metadata.get('model')!r} (config hash {mine}) "
                                f"but the model is {mlm.name_or_path!r} (config hash {mlm.config_hash}); "
                                "estimate a profile for this model")
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

    # -- serialisation -----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        def floats(a: np.ndarray) -> list[float | None]:
            return [None if not math.isfinite(v) else float(v) for v in a.tolist()]

        return {"format": _FORMAT, "version": _FORMAT_VERSION, "n_tokens": self._n_tokens,
                "levels": self.levels.tolist(), "fractions": self.fractions.tolist(),
                "ce": floats(self.ce), "se": floats(self.se), "entropy": floats(self.entropy),
                "entropy_se": floats(self.entropy_se), "accuracy": floats(self.accuracy),
                "tokens": self.tokens.tolist(), "rows": self.rows.tolist(),
                "fitted_ce": floats(self.fitted()), "metadata": self._metadata}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InformationProfile:
        if not isinstance(data, Mapping) or data.get("format") != _FORMAT:
            raise ValueError("not an mdm_sched information profile: expected a JSON object with "
                             f"format={_FORMAT!r} (written by InformationProfile.save / `mdm-sched profile`)")
        if data.get("version", 0) > _FORMAT_VERSION:
            raise ValueError(f"profile format version {data.get('version')} is newer than this library understands "
                             f"({_FORMAT_VERSION}); upgrade mdm_sched")

        def floats(key: str) -> list[float] | None:
            v = data.get(key)
            return None if v is None else [math.nan if x is None else x for x in v]

        try:
            return cls(data["levels"], floats("ce"), floats("se"), n_tokens=data["n_tokens"],
                       entropy=floats("entropy"), entropy_se=floats("entropy_se"), accuracy=floats("accuracy"),
                       tokens=data.get("tokens"), rows=data.get("rows"), metadata=data.get("metadata"))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"corrupted profile ({type(exc).__name__}: {exc}); re-estimate it") from exc

    def save(self, path: str | os.PathLike) -> None:
        """Write the profile as JSON (atomically)."""
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
        ax.errorbar(x, self.ce, yerr=np.nan_to_num(self.se), fmt="o", ms=3, capsize=2, color="C0",
                    label="cross-entropy (± SE)")
        fine = self.curve()
        ax.plot(np.arange(self._n_tokens) / self._n_tokens, fine, "-", color="C0", lw=1.2, label="isotonic fit")
        if np.all(np.isfinite(self.entropy)):
            ax.errorbar(x, self.entropy, yerr=np.nan_to_num(self.entropy_se), fmt="s", ms=3, capsize=2,
                        color="C1", alpha=0.8, label="predictive entropy (± SE)")
        ax.set_xlabel("visible fraction i / N")
        ax.set_ylabel("nats per masked token")
        ax.set_xlim(-0.02, 1.0)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize=8)
        ax.set_title(title or self.description, fontsize=8)
        atomic_write_png(fig, path)


# ------------------------------------------------------------------------------------------------
# Input preparation: data, lengths, levels
# ------------------------------------------------------------------------------------------------

def default_levels(n_tokens: int, n_levels: int = DEFAULT_N_LEVELS) -> np.ndarray:
    """About ``n_levels`` visible counts in ``0..n_tokens-1``, denser near both ends (cosine spacing).

    Real CE curves are S-shaped (flat while little is visible, a steep drop, flat again), so both ends
    need resolution. All counts when ``n_tokens <= n_levels``.
    """
    n = _schedules.check_int(n_tokens, "n_tokens", minimum=1)
    k = _schedules.check_int(n_levels, "levels", minimum=2)
    if n <= k:
        return np.arange(n, dtype=np.int64)
    u = np.linspace(0.0, 1.0, k)
    x = 0.5 * (1.0 - np.cos(np.pi * u))
    return np.unique(np.rint(x * (n - 1)).astype(np.int64))


def _resolve_levels(levels: Any, n_eff: int) -> np.ndarray:
    if levels is None:
        return default_levels(n_eff)
    if isinstance(levels, (int, np.integer)) and not isinstance(levels, bool):
        if levels < 2:
            raise ValueError(f"levels={levels}: ask for at least 2 levels")
        return default_levels(n_eff, int(levels))
    arr = np.asarray(levels.tolist() if isinstance(levels, torch.Tensor) else list(levels), dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0 or not np.all(np.isfinite(arr)):
        raise ValueError("levels must be an int (how many) or a non-empty list of visible counts / fractions")
    if np.all(np.equal(np.mod(arr, 1), 0)) and (arr.max() >= 1 or (arr.size == 1 and arr[0] == 0)):
        out = arr.astype(np.int64)
    elif arr.min() >= 0 and arr.max() < 1:
        out = np.rint(arr * n_eff).astype(np.int64)  # fractions of the generated length
    else:
        raise ValueError("levels must be visible counts (ints in 0..n_tokens-1) or visible fractions in [0, 1)")
    if out.min() < 0 or out.max() >= n_eff:
        raise ValueError(f"levels must lie in 0..{n_eff - 1} (visible counts among the {n_eff} scored positions), "
                         f"got {out.min()}..{out.max()}")
    return np.unique(out)


def _token_sequences(mlm: Any, data: Any, text_column: str | None) -> tuple[list[list[int]], str]:
    """Token-id sequences of ``data`` and a short description of it."""
    desc = None
    if isinstance(data, (str, os.PathLike)):
        desc = str(data)
        data = _data.load_source(str(data), text_column=text_column)
        text_column = None
    if isinstance(data, torch.Tensor):
        if data.ndim != 2 or data.is_floating_point():
            raise TypeError(f"data as a tensor must be a 2-D integer tensor [examples, length], got {data.dtype} "
                            f"{tuple(data.shape)}")
        data = list(data)

    def no_tokenizer(texts: list[str]) -> list[list[int]]:
        raise ValueError("data holds text but the model has no tokenizer: wrap(model, tokenizer=...) or pass "
                         "token ids (an iterable of id sequences, or a dataset with an input_ids column)")

    encode: Callable[[list[str]], list[list[int]]] = mlm.encode if mlm.tokenizer is not None else no_tokenizer
    seqs = _data.token_sequences(data, encode, text_column=text_column)
    if desc is None:
        name = type(data).__name__
        info = getattr(data, "info", None)
        ds_name = getattr(info, "dataset_name", None) if info is not None else None
        desc = f"{name}{f' {ds_name}' if ds_name else ''} ({len(seqs)} sequences)"
    return seqs, desc


def _check_tokens(mlm: Any, x: torch.Tensor) -> None:
    """Every data token must be one the model can put probability on, or the CE is infinite."""
    vocab = mlm.vocab_size
    if int(x.max()) >= vocab:
        raise ValueError(f"data contain token id {int(x.max())} >= the model's vocabulary size {vocab}: "
                         "tokenise with the model's own tokenizer")
    present = torch.zeros(vocab, dtype=torch.bool)
    present[x.unique()] = True
    bad = (present & torch.isin(torch.arange(vocab), mlm.suppressed_ids)).nonzero().squeeze(1).tolist()
    if bad:
        raise ValueError(f"data contain token ids {bad[:10]} that the model never samples (mask, padding or special "
                         "tokens): strip them from the data (framing tokens are added by the adapter) or choose "
                         "n_tokens so that padding is excluded")


# ------------------------------------------------------------------------------------------------
# Distributed context
# ------------------------------------------------------------------------------------------------

class _Dist:
    """Rank, world size and an exact all-reduce for the (batch, level) statistics."""

    def __init__(self, accelerator: Any = None) -> None:
        import torch.distributed as dist

        self.world, self.rank = 1, 0
        if accelerator is not None:
            self.world = int(getattr(accelerator, "num_processes", 1))
            self.rank = int(getattr(accelerator, "process_index", 0))
        elif dist.is_available() and dist.is_initialized():
            self.world, self.rank = dist.get_world_size(), dist.get_rank()
        elif int(os.environ.get("WORLD_SIZE", "1")) > 1:
            # launched by `accelerate launch` / `torchrun` without an Accelerator: join the process group
            # they describe in the environment (nccl on GPU machines, gloo on CPU).
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            if backend == "nccl":
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group(backend=backend)
            self.world, self.rank = dist.get_world_size(), dist.get_rank()
        if self.world > 1 and not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("several processes but no torch.distributed process group: launch with "
                               "`accelerate launch` or `torchrun`")

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        if self.world == 1:
            return t
        import torch.distributed as dist

        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
        buf = t.to(device)
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        return buf.cpu()

    def broadcast_flag(self, flag: bool) -> bool:
        """True when any process says so (to agree on raising)."""
        t = torch.tensor([1.0 if flag else 0.0], dtype=torch.float64)
        return bool(self.all_reduce(t).item() > 0)

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()


# ------------------------------------------------------------------------------------------------
# One forward pass: (batch b, level i) -> sums
# ------------------------------------------------------------------------------------------------

def _mask_seed(seed: int, batch: int, level: int) -> int:
    """A 63-bit seed for the masks of (batch, level): independent of everything else in the run."""
    return int(np.random.SeedSequence([seed, batch, level]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def _forward_rows(mlm: Any, x: torch.Tensor, level: int, *, n_eff: int, prompt_length: int,
                  block_length: int | None, seed: int, batch: int) -> torch.Tensor:
    """Per-row mean CE, predictive entropy and top-1 accuracy ``[R, 3]`` (float64) for one forward at
    visible count ``level`` on rows ``x`` ``[R, prompt_length + N]``."""
    r, width = x.shape
    n = width - prompt_length
    gen = torch.Generator().manual_seed(_mask_seed(seed, batch, level))
    # exactly `level` visible positions per row: the `level` smallest of iid uniforms
    ranks = torch.rand(r, n_eff, generator=gen).argsort(1).argsort(1)
    scored_local = ranks >= level
    if block_length is None:
        scored = scored_local
        masked = scored
    else:
        # a uniformly chosen block per row: earlier blocks visible, later blocks masked (not scored)
        blk = torch.randint(n // block_length, (r,), generator=gen)
        cols = blk.unsqueeze(1) * block_length + torch.arange(block_length)
        scored = torch.zeros(r, n, dtype=torch.bool).scatter_(1, cols, scored_local)
        later = torch.arange(n).unsqueeze(0) >= ((blk + 1) * block_length).unsqueeze(1)
        masked = scored | later
    if prompt_length:
        pad = torch.zeros(r, prompt_length, dtype=torch.bool)
        scored = torch.cat([pad, scored], 1)
        masked = torch.cat([pad, masked], 1)
    canvas = x.masked_fill(masked, mlm.mask_token_id)
    logits = mlm.logits(canvas, None, positions=scored)
    logp = torch.log_softmax(logits.float(), dim=-1)
    true = x[scored].to(logp.device)
    ce = -logp.gather(1, true.unsqueeze(1)).squeeze(1)
    if not bool(torch.isfinite(ce).all()):
        raise ValueError("a data token got probability 0 under the model (infinite cross-entropy): the data contain "
                         "tokens the adapter suppresses; strip special tokens from the data")
    ent = torch.special.entr(logp.exp()).sum(-1)
    acc = (logits.argmax(-1) == true)
    m = n_eff - level  # every row scores exactly m tokens, so row means are a reshape away
    vals = torch.stack([ce.double(), ent.double(), acc.double()], dim=1).view(r, m, 3).mean(1)
    return vals.cpu()


class _Accumulator:
    """Running sums per level, and per (level, sequence) for standard errors clustered by sequence.

    Sequences are indexed by their position in the run's fixed permutation; only the prefix that has
    been used is stored, so a huge data set costs memory only for the rows actually processed.
    """

    def __init__(self, n_levels: int) -> None:
        self.count = np.zeros((n_levels, 0))       # rows per (level, sequence)
        self.sums = np.zeros((n_levels, 0, 3))     # sums of row means (ce, entropy, accuracy)
        self.sq = np.zeros((n_levels, 3))          # sums of squared row means per level
        self.tokens = np.zeros(n_levels)

    def _grow(self, k: int) -> None:
        if k > self.count.shape[1]:
            extra = k - self.count.shape[1]
            self.count = np.pad(self.count, ((0, 0), (0, extra)))
            self.sums = np.pad(self.sums, ((0, 0), (0, extra), (0, 0)))

    def add(self, start: int, active: np.ndarray, vals: np.ndarray, scored: np.ndarray) -> None:
        """Rows at sequence positions ``start..start+R-1``; ``vals`` ``[L, R, 3]``; ``active`` ``[L]``."""
        r = vals.shape[1]
        self._grow(start + r)
        a = active.astype(np.float64)
        self.count[:, start:start + r] += a[:, None]
        self.sums[:, start:start + r] += vals * a[:, None, None]
        self.sq += (vals ** 2).sum(1) * a[:, None]
        self.tokens += a * r * scored

    @property
    def rows(self) -> np.ndarray:
        return self.count.sum(1)

    def mean(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.sums.sum(1) / self.rows[:, None]

    def mc_se(self) -> np.ndarray:
        """Row standard error ``[L, 3]`` (Monte Carlo error of the masks; ignores reuse of sequences)."""
        rows = self.rows[:, None]
        mean = self.mean()
        with np.errstate(invalid="ignore", divide="ignore"):
            var = (self.sq - rows * mean ** 2) / (rows - 1)
            se = np.sqrt(np.clip(var, 0.0, None) / rows)
        return np.where(rows > 1, se, np.nan)

    def cluster_se(self) -> np.ndarray:
        """Standard error ``[L, 3]`` with rows clustered by sequence: includes the finite-data error when
        sequences are reused over several passes (equals :meth:`mc_se` up to ``C/(C-1)`` when none is)."""
        rows = self.rows[:, None]
        mean = self.mean()
        clusters = (self.count > 0).sum(1)[:, None].astype(np.float64)
        resid = self.sums - self.count[..., None] * mean[:, None, :]
        with np.errstate(invalid="ignore", divide="ignore"):
            var = clusters / (clusters - 1) * (resid ** 2).sum(1) / rows ** 2
        return np.where(clusters > 1, np.sqrt(np.clip(var, 0.0, None)), np.nan)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"count": self.count, "sums": self.sums, "sq": self.sq, "tokens": self.tokens}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], n_levels: int) -> _Accumulator:
        acc = cls(n_levels)
        count, sums, sq, tokens = (np.asarray(arrays[k], dtype=np.float64) for k in ("count", "sums", "sq", "tokens"))
        if (count.ndim != 2 or count.shape[0] != n_levels or sums.shape != count.shape + (3,)
                or sq.shape != (n_levels, 3) or tokens.shape != (n_levels,)):
            raise ValueError("array shapes do not match the levels")
        acc.count, acc.sums, acc.sq, acc.tokens = count, sums, sq, tokens
        return acc


# ------------------------------------------------------------------------------------------------
# estimate_profile
# ------------------------------------------------------------------------------------------------

def _data_hash(x: torch.Tensor) -> str:
    return hashlib.sha256(x.numpy().astype(np.int64).tobytes() + str(tuple(x.shape)).encode()).hexdigest()[:16]


def _save_checkpoint(path: Path, fingerprint: dict[str, Any], acc: _Accumulator, planned: np.ndarray,
                     next_batch: int, forwards: int) -> None:
    """Binary .npz (exact float64 sums), written atomically; the fingerprint travels as JSON text."""
    header = json.dumps({"format": _CKPT_FORMAT, "version": _CKPT_VERSION, "fingerprint": fingerprint,
                         "next_batch": next_batch, "forwards": forwards})
    buf = io.BytesIO()
    np.savez(buf, header=np.array(header), planned=planned, **acc.to_arrays())
    atomic_write_bytes(path, buf.getvalue())


def _load_checkpoint(path: Path, fingerprint: dict[str, Any], n_levels: int) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        header = json.loads(str(arrays.pop("header")))
    except Exception as exc:  # zip/npz/json errors of many kinds: all mean "not a usable checkpoint"
        raise ValueError(f"checkpoint {path} is corrupted or not an mdm_sched profile checkpoint ({exc}); "
                         "delete it to start over or pass another checkpoint= path") from exc
    if not isinstance(header, dict) or header.get("format") != _CKPT_FORMAT:
        raise ValueError(f"checkpoint {path} is not an mdm_sched profile checkpoint; pass another checkpoint= path")
    old = header.get("fingerprint") or {}
    diff = [f"{k}: {old.get(k)!r} (checkpoint) != {fingerprint.get(k)!r} (now)"
            for k in sorted(set(old) | set(fingerprint)) if old.get(k) != fingerprint.get(k)]
    if diff:
        raise ValueError(f"checkpoint {path} was made with different arguments ({'; '.join(diff)}); rerun with the "
                         "same arguments to resume, or delete the file / pass another checkpoint= path to start over")
    try:
        acc = _Accumulator.from_arrays(arrays, n_levels)
        planned = np.asarray(arrays["planned"], dtype=np.int64)
        return {"acc": acc, "planned": planned, "next_batch": int(header["next_batch"]),
                "forwards": int(header.get("forwards", 0))}
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"checkpoint {path} is corrupted ({exc}); delete it to start over") from exc


def estimate_profile(model: Any, data: Any, *, n_tokens: int | None = None, levels: Any = None,
                     batch_size: int = 16, tokens_per_level: int | None = None, target_se: float | None = None,
                     prompt_length: int = 0, block_length: int | None = None, text_column: str | None = None,
                     seed: int = 0, progress: bool = True, checkpoint: str | os.PathLike | None = None,
                     checkpoint_every: int = 8, max_batches: int | None = None, accelerator: Any = None,
                     mask_token_id: int | None = None, data_description: str | None = None) -> InformationProfile:
    """Measure the masked-token cross-entropy profile of ``model`` on held-out ``data``.

    Args:
        model: a :class:`~mdm_sched.MaskedLM` or anything :func:`mdm_sched.wrap` accepts (HF masked LM,
            LLaDA/Dream-style model, an oracle, any module returning ``.logits`` with ``mask_token_id=``).
        data: a ``datasets.Dataset``/``IterableDataset`` (``input_ids`` column, or a text column
            tokenised with the model's tokenizer), an iterable of token-id sequences or of strings, a 2-D
            LongTensor, or a source spec string for :func:`mdm_sched.data.load_source`
            (e.g. ``"antibody-germlines:human:H:test"``, a file path).
        n_tokens: generated length ``N`` to profile; ``None`` = most common length (module docstring).
        levels: number of levels (default 48, denser near both ends), or explicit visible counts
            (ints) or visible fractions (floats in [0, 1)).
        batch_size: rows per forward pass; one forward per (batch, level).
        tokens_per_level: stop a level after this many scored tokens (default 4096).
        target_se: instead, stop a level once the Monte Carlo standard error of its mean CE
            (``mc_se``: the error more forward passes reduce) is <= this many nats.
        prompt_length: the first ``prompt_length`` tokens of each sequence are a prompt: always visible,
            never scored (measure on data formatted as in deployment).
        block_length: profile within blocks of this length (earlier blocks visible, later ones masked),
            for semi-autoregressive generation; the profile's ``n_tokens`` is then the block length.
        text_column: the text column of a dataset.
        seed: seed of the data order and of every mask.
        progress: show a tqdm progress bar (process 0 only).
        checkpoint: file for partial sums (.npz content); an existing one made with the same arguments
            is resumed, one made with other arguments is refused.
        checkpoint_every: batches per round (stop decisions and checkpoint writes happen between rounds).
        max_batches: cap on data batches (default: none with ``tokens_per_level``; 1000 with ``target_se``).
        accelerator: an ``accelerate.Accelerator``/``PartialState`` (default: detected from the launcher).
        mask_token_id: for bare modules without a known mask id.
        data_description: how to describe the data in the metadata (default: derived).

    Returns:
        An :class:`InformationProfile` (identical on every process). Its ``se`` clusters rows by
        sequence, so it includes the error of having finitely many held-out sequences.
    """
    from .models import wrap

    mlm = wrap(model, mask_token_id=mask_token_id)
    if tokens_per_level is not None and target_se is not None:
        raise ValueError("pass either tokens_per_level= or target_se= (the stop criterion), not both")
    if target_se is None:
        tokens_per_level = _schedules.check_int(DEFAULT_TOKENS_PER_LEVEL if tokens_per_level is None
                                                 else tokens_per_level, "tokens_per_level", minimum=1)
    else:
        if isinstance(target_se, bool) or not isinstance(target_se, (int, float)) or not target_se > 0:
            raise ValueError(f"target_se must be a positive number (nats), got {target_se!r}")
        target_se = float(target_se)
    batch_size = _schedules.check_int(batch_size, "batch_size", minimum=1)
    checkpoint_every = _schedules.check_int(checkpoint_every, "checkpoint_every", minimum=1)
    prompt_length = _schedules.check_int(prompt_length, "prompt_length", minimum=0)
    seed = _schedules.check_int(seed, "seed", minimum=0)
    if n_tokens is not None:
        n_tokens = _schedules.check_int(n_tokens, "n_tokens", minimum=1)
    if max_batches is None and target_se is not None:
        max_batches = 1000
    if max_batches is not None:
        max_batches = _schedules.check_int(max_batches, "max_batches", minimum=1)

    seqs, desc = _token_sequences(mlm, data, text_column)
    x, n, counts = _data.fixed_length(seqs, n_tokens, prompt_length, stacklevel=3)
    if block_length is not None:
        block_length = _schedules.check_int(block_length, "block_length", minimum=1)
        if n % block_length:
            raise ValueError(f"block_length={block_length} does not divide n_tokens={n}; choose a divisor "
                             f"(e.g. {math.gcd(n, block_length)}) or set n_tokens to a multiple of it")
    n_eff = block_length or n
    if mlm.max_length is not None and x.shape[1] > mlm.max_length:
        raise ValueError(f"prompt_length + n_tokens = {x.shape[1]} exceeds the model's max_length={mlm.max_length}: "
                         "pass a smaller n_tokens")
    _check_tokens(mlm, x)
    lv = _resolve_levels(levels, n_eff)
    n_levels = lv.size

    fingerprint = {"model": mlm.name_or_path, "config_hash": mlm.config_hash, "data_sha256": _data_hash(x),
                   "n_tokens": n, "prompt_length": prompt_length, "block_length": block_length,
                   "levels": lv.tolist(), "batch_size": batch_size, "tokens_per_level": tokens_per_level,
                   "target_se": target_se, "seed": seed, "checkpoint_every": checkpoint_every,
                   "max_batches": max_batches}
    dist = _Dist(accelerator)
    ckpt_path = Path(checkpoint) if checkpoint is not None else None
    state = _load_checkpoint(ckpt_path, fingerprint, n_levels) if ckpt_path is not None else None
    acc = _Accumulator(n_levels) if state is None else state["acc"]
    planned = np.zeros(n_levels, np.int64) if state is None else state["planned"]
    next_batch = 0 if state is None else state["next_batch"]
    forwards = 0 if state is None else state["forwards"]

    # One seeded permutation of the data; batch b takes its slice (b mod batches per pass). Any prefix
    # of batches is then a random subset, whatever order the data came in.
    m_rows = x.shape[0]
    per_pass = math.ceil(m_rows / batch_size)
    x = x[torch.randperm(m_rows, generator=torch.Generator().manual_seed(_perm_seed(seed)))]

    def batch_start(b: int) -> int:
        return (b % per_pass) * batch_size

    def rows_in(b: int) -> int:
        return min(batch_size, m_rows - batch_start(b))

    scored_per_row = n_eff - lv  # tokens each row contributes at each level
    bar = None
    if progress and dist.rank == 0:
        from tqdm.auto import tqdm

        total_fwd = None
        if target_se is None:
            total_fwd = _planned_forwards(planned.copy(), next_batch, tokens_per_level, scored_per_row, rows_in,
                                          max_batches) + forwards
        bar = tqdm(total=total_fwd, initial=forwards, unit="fwd", desc="profile", dynamic_ncols=True)

    def se_active() -> np.ndarray:
        return (acc.rows < 2) | ~(acc.mc_se()[:, 0] <= target_se)

    try:
        while max_batches is None or next_batch < max_batches:
            end = next_batch + checkpoint_every
            if max_batches is not None:
                end = min(end, max_batches)
            # which levels each batch of the round runs: decided from global state only, so every process
            # (and a resumed run) agrees
            active = np.zeros((end - next_batch, n_levels), dtype=bool)
            if target_se is None:
                for b in range(next_batch, end):
                    act = planned < tokens_per_level
                    active[b - next_batch] = act
                    planned[act] += rows_in(b) * scored_per_row[act]
            else:
                active[:] = se_active()
            pairs = [(int(b), int(li)) for b, li in zip(*np.nonzero(active))]
            if not pairs:
                break
            vals = torch.zeros(end - next_batch, n_levels, batch_size, 3, dtype=torch.float64)
            for k, (bi, li) in enumerate(pairs):
                if k % dist.world != dist.rank:  # round-robin over processes
                    continue
                b = next_batch + bi
                rows = x[batch_start(b):batch_start(b) + rows_in(b)]
                vals[bi, li, :rows_in(b)] = _forward_rows(mlm, rows, int(lv[li]), n_eff=n_eff,
                                                          prompt_length=prompt_length, block_length=block_length,
                                                          seed=seed, batch=b)
                if bar is not None:
                    bar.update(dist.world)
            vals = dist.all_reduce(vals).numpy()  # every entry comes from one process: the sum is exact
            for bi in range(end - next_batch):
                b = next_batch + bi
                acc.add(batch_start(b), active[bi], vals[bi, :, :rows_in(b)], scored_per_row)
            forwards += len(pairs)
            next_batch = end
            if ckpt_path is not None and dist.rank == 0:
                _save_checkpoint(ckpt_path, fingerprint, acc, planned, next_batch, forwards)
            if bar is not None:
                bar.n = forwards
                bar.refresh()
    finally:
        if bar is not None:
            bar.close()

    rows = acc.rows
    if (rows == 0).any():
        missing = lv[rows == 0].tolist()
        raise ValueError(f"levels {missing[:10]} got no forward pass (max_batches={max_batches} too small); "
                         "raise max_batches")
    mean, se, mc = acc.mean(), acc.cluster_se(), acc.mc_se()
    if target_se is not None:
        short = lv[~(mc[:, 0] <= target_se)]
        if short.size:
            warnings.warn(f"estimate_profile: {short.size} levels (e.g. visible counts {short[:5].tolist()}) did not "
                          f"reach target_se={target_se:g} within max_batches={max_batches}; raise max_batches",
                          UserWarning, stacklevel=2)
    config = getattr(mlm.model, "config", None)
    meta = {"model": mlm.name_or_path or type(mlm.model).__name__, "model_class": type(mlm.model).__name__,
            "family": mlm.family, "revision": getattr(config, "_commit_hash", None), "config_hash": mlm.config_hash,
            "data": data_description or desc, "data_sha256": fingerprint["data_sha256"],
            "sequences": counts["kept"], "sequences_dropped": counts["dropped"],
            "sequences_cropped": counts["cropped"], "sequence_tokens": n, "prompt_length": prompt_length,
            "prompt_handling": "the first prompt_length tokens of each sequence are always visible and never scored",
            "block_length": block_length, "lengths": [n_eff], "batch_size": batch_size,
            "stop": ({"tokens_per_level": tokens_per_level} if target_se is None else {"target_se": target_se}),
            "seed": seed, "forwards": forwards, "processes": dist.world, "dtype": str(mlm.dtype).replace("torch.", ""),
            "mc_se": [float(v) if math.isfinite(v) else None for v in mc[:, 0].tolist()],
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "library_version": _library_version()}
    return InformationProfile(lv, mean[:, 0], se[:, 0], n_tokens=n_eff, entropy=mean[:, 1], entropy_se=se[:, 1],
                              accuracy=mean[:, 2], tokens=acc.tokens.astype(np.int64), rows=rows.astype(np.int64),
                              metadata=meta)


def _perm_seed(seed: int) -> int:
    """Seed of the data permutation (tagged, so it never coincides with a mask seed)."""
    return int(np.random.SeedSequence([seed, 0x5EED]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def _planned_forwards(planned: np.ndarray, b: int, target: int, per_row: np.ndarray, rows_in: Callable[[int], int],
                      max_batches: int | None) -> int:
    """Forwards still to run under ``tokens_per_level`` (for the progress bar's total)."""
    total = 0
    while (planned < target).any() and (max_batches is None or b < max_batches):
        act = planned < target
        total += int(act.sum())
        planned[act] += rows_in(b) * per_row[act]
        b += 1
    return total


# ------------------------------------------------------------------------------------------------
# CLI pieces (wired into `mdm-sched` by cli.py)
# ------------------------------------------------------------------------------------------------

def add_profile_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``mdm-sched profile``."""
    parser.add_argument("--model", required=True, help="built-in name (antiberty, sapiens-vh, sapiens-vl), "
                        "local directory or hub id")
    parser.add_argument("--data", required=True, help="held-out data: antibody-germlines:SPECIES:CHAIN[:train|test], "
                        "kjv[:train|test], a .txt/.json/.jsonl/.csv/.parquet/.fasta file, or a saved dataset dir")
    parser.add_argument("--text-column", default=None, help="column holding the text (default: input_ids, else text)")
    parser.add_argument("--n-tokens", type=int, default=None,
                        help="generated length N (default: the most common sequence length; longer ones are "
                             "cropped to N, shorter dropped)")
    parser.add_argument("--prompt-length", type=int, default=0,
                        help="leading tokens of each sequence that are a prompt: always visible, never scored")
    parser.add_argument("--levels", type=int, default=None, help=f"number of levels (default {DEFAULT_N_LEVELS})")
    parser.add_argument("--batch-size", type=int, default=16)
    stop = parser.add_mutually_exclusive_group()
    stop.add_argument("--tokens-per-level", type=int, default=None,
                      help=f"scored tokens per level (default {DEFAULT_TOKENS_PER_LEVEL})")
    stop.add_argument("--target-se", type=float, default=None, help="stop a level once its standard error <= this")
    parser.add_argument("--max-batches", type=int, default=None, help="cap on data batches")
    parser.add_argument("--block-length", type=int, default=None, help="profile within semi-autoregressive blocks")
    parser.add_argument("--checkpoint", default=None, help="resumable partial sums (JSON)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="e.g. cuda, cpu (default: the process's accelerate device)")
    parser.add_argument("--dtype", default=None, help="e.g. bfloat16 (default float32)")
    parser.add_argument("--trust-remote-code", action="store_true", help="needed for LLaDA / Dream checkpoints")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--out", required=True, help="profile JSON to write")
    parser.add_argument("--plot", default=None, help="also write a PNG plot here")
    parser.add_argument("--gain-steps", default="8,16,32", help="comma-separated budgets for the printed gains")


def _parse_steps(text: str) -> list[int]:
    try:
        steps = [int(s) for s in str(text).split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--gain-steps={text!r}: expected comma-separated integers like 8,16,32") from None
    return steps


def profile_command(args: argparse.Namespace) -> int:
    """``mdm-sched profile``: estimate, save (process 0), print a summary and predicted gains."""
    from .models import load_masked_lm

    device = args.device
    if device is None and torch.cuda.is_available():
        # one GPU per process under accelerate launch / torchrun
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    model = load_masked_lm(args.model, trust_remote_code=args.trust_remote_code, device=device, dtype=args.dtype)
    profile = estimate_profile(model, args.data, n_tokens=args.n_tokens, levels=args.levels, batch_size=args.batch_size,
                               tokens_per_level=args.tokens_per_level, target_se=args.target_se,
                               prompt_length=args.prompt_length, block_length=args.block_length,
                               text_column=args.text_column, seed=args.seed, progress=not args.no_progress,
                               checkpoint=args.checkpoint, max_batches=args.max_batches)
    import torch.distributed as tdist

    if tdist.is_available() and tdist.is_initialized() and tdist.get_rank() != 0:
        return 0
    profile.save(args.out)
    if args.plot:
        profile.plot(args.plot)
    print(profile.description)
    print(f"wrote {args.out}" + (f" and {args.plot}" if args.plot else ""))
    _print_profile_table(profile)
    for t in _parse_steps(args.gain_steps):
        if 1 <= t <= profile.n_tokens:
            print(f"predicted gain of the optimal schedule over constant at {t} steps: {profile.predicted_gain(t):.3f}x")
    return 0


def _print_profile_table(profile: InformationProfile, file: Any = None) -> None:
    file = file or sys.stdout
    print(f"{'visible':>8} {'frac':>6} {'CE':>8} {'SE':>8} {'fit':>8} {'entropy':>8} {'acc':>6} {'tokens':>8}", file=file)
    fit = profile.fitted()
    for k in range(profile.levels.size):
        print(f"{profile.levels[k]:>8d} {profile.fractions[k]:>6.3f} {profile.ce[k]:>8.4f} {profile.se[k]:>8.4f} "
              f"{fit[k]:>8.4f} {profile.entropy[k]:>8.4f} {profile.accuracy[k]:>6.3f} {profile.tokens[k]:>8d}",
              file=file)


def add_schedule_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``mdm-sched schedule``."""
    parser.add_argument("--profile", required=True, help="profile JSON written by `mdm-sched profile`")
    parser.add_argument("--steps", type=int, required=True, help="number of model calls T")
    parser.add_argument("--n-tokens", type=int, default=None, help="generation length (default: the profile's)")
    parser.add_argument("--max-tokens-per-step", type=int, default=None)
    parser.add_argument("--out", default=None, help="write the optimal schedule as JSON here")


def schedule_command(args: argparse.Namespace) -> int:
    """``mdm-sched schedule``: optimal sizes, bounds and predicted gains against constant and cosine."""
    profile = InformationProfile.load(args.profile)
    n = args.n_tokens or profile.n_tokens
    curve = profile.curve(n)
    opt = _schedules.optimal(curve, args.steps, args.max_tokens_per_step)
    opt = _schedules.Schedule(opt.sizes, name="optimal",
                              metadata=dict(opt.metadata, profile=profile.description, profile_file=str(args.profile)))
    rows = [("optimal", opt), ("constant", _schedules.constant(n, args.steps)), ("cosine", _schedules.cosine(n, args.steps))]
    print(f"{profile.description}\nn_tokens={n}, steps={args.steps}")
    print(f"optimal sizes: {list(opt.sizes)}")
    j_opt = _schedules.cost(curve, opt)
    print(f"{'schedule':>10} {'bound (nats/token)':>19} {'cost J':>10} {'J / J(optimal)':>15}")
    for name, s in rows:
        j = _schedules.cost(curve, s)
        ratio = j / j_opt if j_opt > 0 else (1.0 if j <= 0 else math.inf)
        print(f"{name:>10} {_schedules.nll_bound(curve, s):>19.4f} {j:>10.4f} {ratio:>15.3f}")
    gains = [_schedules.cost(curve, s) / j_opt if j_opt > 0 else 1.0 for _, s in rows[1:]]
    print(f"predicted gain of optimal: {gains[0]:.3f}x over constant, {gains[1]:.3f}x over cosine")
    if args.out:
        opt.save(args.out)
        print(f"wrote {args.out}")
    return 0
