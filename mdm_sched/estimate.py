"""Estimate an information profile: a masked LM's cross-entropy at fixed visible counts on held-out data.

:func:`estimate_profile` runs forward passes with exactly ``i`` of the ``N`` generated positions visible,
for a grid of levels ``i`` (docs/theory.md §2 and §5), and returns an
:class:`~mdm_sched.profile.InformationProfile`.

Pieces, in the order a run uses them:

- levels (:func:`default_levels`, explicit counts or fractions) and held-out data, under the library's one
  length policy (:func:`mdm_sched.data.fixed_length`: ``prompt_length`` always-visible prompt tokens
  followed by the ``N`` scored tokens), with a check that every data token can get probability;
- a stop rule (:class:`TokensPerLevel` or :class:`TargetSE`): one object that says which levels the batches
  of the next round run. The same call, replayed on a dry copy of the sums, sizes the progress bar
  (:func:`planned_forwards`), so the bar's total is the number of forwards the run performs;
- one forward at (batch ``b``, level ``i``) turned into per-row sums, accumulated per level and per sequence;
- a checkpoint (``.npz``) of those sums, written after every round.

Determinism, resuming and data parallelism
    The rows of batch ``b`` are a seeded permutation of the data (one per pass), and the masks for
    (batch ``b``, level ``i``) come from a generator seeded by ``(seed, b, i)``. Work proceeds in
    rounds of ``checkpoint_every`` batches; stop decisions are taken only between rounds, from the
    global sums, so the set of forward passes does not depend on how many processes run them. With an
    initialised process group or an ``accelerate`` state (:mod:`mdm_sched.distributed`) the (batch, level)
    forwards of a round are dealt out round-robin to the processes and the per-(batch, level) sums are
    all-reduced (each entry is produced by exactly one process, so the reduction is exact): 2 processes
    give the 1-process result. After every round the sums are written atomically to ``checkpoint``;
    rerunning with the same arguments resumes from there and replays exactly the same masks, so the
    profile is identical.
"""
from __future__ import annotations

import datetime
import io
import json
import math
import os
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from . import conditioning as _conditioning
from . import data as _data
from ._io import atomic_write_bytes, check_format
from .conditioning import Examples
from .distributed import AcceleratorLike, DistContext
from .masking import Rows, forward_rows
from .profile import InformationProfile
from .validation import check_choice, check_float, check_int, check_optional_int, check_output_path

if TYPE_CHECKING:
    from ._types import DataLike, ModelLike, PathLike
    from .models import MaskedLM

__all__ = ["estimate_profile", "default_levels", "StopRule", "TokensPerLevel", "TargetSE", "stop_rule", "BatchGrid",
           "Accumulator", "planned_forwards", "DEFAULT_TOKENS_PER_LEVEL", "DEFAULT_N_LEVELS", "DEFAULT_MAX_BATCHES_SE"]

DEFAULT_TOKENS_PER_LEVEL = 4096
DEFAULT_N_LEVELS = 48
#: Cap on data batches under ``target_se`` when ``max_batches`` is not given.
DEFAULT_MAX_BATCHES_SE = 1000
#: ``levels=``: how many (int), explicit visible counts, or visible fractions in [0, 1); None: the default grid.
LevelsLike = int | Sequence[float] | np.ndarray | torch.Tensor | None
_CKPT_FORMAT = "mdm_sched.profile_checkpoint"
#: Fingerprint entries added after the format's first release: compared only when the checkpoint has them.
_IDENTITY_KEYS = ("weights", "dtype")
# 2: the stop rule keeps no state of its own (version 1 also stored "planned", equal to the token sums).
_CKPT_VERSION = 2


# ------------------------------------------------------------------------------------------------
# Levels
# ------------------------------------------------------------------------------------------------

def default_levels(n_tokens: int, n_levels: int = DEFAULT_N_LEVELS) -> np.ndarray:
    """About ``n_levels`` visible counts in ``0..n_tokens-1``, denser near both ends (cosine spacing).

    Real CE curves are S-shaped (flat while little is visible, a steep drop, flat again), so both ends
    need resolution. All counts when ``n_tokens <= n_levels``.
    """
    n = check_int(n_tokens, "n_tokens", minimum=1)
    k = check_int(n_levels, "levels", minimum=2)
    if n <= k:
        return np.arange(n, dtype=np.int64)
    u = np.linspace(0.0, 1.0, k)
    x = 0.5 * (1.0 - np.cos(np.pi * u))
    return np.unique(np.rint(x * (n - 1)).astype(np.int64))


def _resolve_levels(levels: LevelsLike, n_eff: int) -> np.ndarray:
    """Sorted unique visible counts in ``0..n_eff-1`` from a count of levels, counts or fractions."""
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


# ------------------------------------------------------------------------------------------------
# Held-out data
# ------------------------------------------------------------------------------------------------

def _token_sequences(mlm: MaskedLM, data: DataLike, text_column: str | None) -> tuple[list[list[int]], str]:
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


@dataclass(frozen=True)
class _Heldout:
    """The data a run measures on: the examples (ids, widths, generated positions; input order), the nominal
    generated length ``n`` (the most generated positions of any example), the scored span ``n_eff`` (block
    length or ``n``) and the levels (visible counts on the nominal grid ``0..n_eff-1``)."""

    ex: Examples
    n: int
    n_eff: int
    levels: np.ndarray
    description: str

    @property
    def counts(self) -> Mapping[str, int]:
        return self.ex.counts

    @property
    def sha256(self) -> str:
        """Identifies the data in checkpoints and metadata (:attr:`Examples.sha256`)."""
        return self.ex.sha256

    def lengths(self) -> list[int]:
        """Scored lengths the profile's fractions stand for: ``[n_eff]``, or ``[shortest, longest]``."""
        if self.ex.equal_targets:
            return [self.n_eff]
        short = int(self.ex.n_targets.min())
        return [min(short, self.n_eff), self.n_eff]


def _check_tokens(mlm: MaskedLM, ex: Examples) -> None:
    """Every token must be in the vocabulary, and every generated one must be a token the model can put
    probability on (else the CE is infinite); context tokens may be special (chat templates are)."""
    vocab = mlm.vocab_size
    if int(ex.ids.max()) >= vocab:
        raise ValueError(f"data contain token id {int(ex.ids.max())} >= the model's vocabulary size {vocab}: "
                         "tokenise with the model's own tokenizer")
    present = torch.zeros(vocab, dtype=torch.bool)
    present[ex.ids[ex.target].unique()] = True
    bad = (present & torch.isin(torch.arange(vocab), mlm.suppressed_ids)).nonzero().squeeze(1).tolist()
    if bad:
        raise ValueError(f"data contain token ids {bad[:10]} that the model never samples (mask, padding or special "
                         "tokens) at generated positions: strip them from the data (framing tokens are added by the "
                         "adapter) or choose n_tokens so that padding is excluded")


def _prepare_heldout(mlm: MaskedLM, data: DataLike, *, n_tokens: int | None, prompt_length: int,
                     block_length: int | None, levels: LevelsLike, text_column: str | None,
                     conditioning: Mapping[str, Any]) -> _Heldout:
    ex = _conditioning.prepare(mlm, data, n_tokens=n_tokens, prompt_length=prompt_length, text_column=text_column,
                               **conditioning)
    n = int(ex.n_targets.max())
    if block_length is not None and ex.equal_targets and n % block_length:
        raise ValueError(f"block_length={block_length} does not divide n_tokens={n}; choose a divisor "
                         f"(e.g. {math.gcd(n, block_length)}) or set n_tokens to a multiple of it")
    n_eff = min(block_length, n) if block_length else n
    if mlm.max_length is not None and int(ex.widths.max()) > mlm.max_length:
        raise ValueError(f"an example has {int(ex.widths.max())} tokens (context + generated), more than the model's "
                         f"max_length={mlm.max_length}: pass a smaller n_tokens or shorter prompts")
    _check_tokens(mlm, ex)
    return _Heldout(ex, n, n_eff, _resolve_levels(levels, n_eff), ex.description)


# ------------------------------------------------------------------------------------------------
# The (batch, level) grid and the stop rules
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BatchGrid:
    """Where batch ``b`` lies in the run's fixed permutation of ``n_rows`` rows (it wraps around: batch ``b``
    is slice ``b mod ceil(n_rows / batch_size)``), and how many tokens each row scores at each level."""

    n_rows: int
    batch_size: int
    scored_per_row: np.ndarray  # [levels]: n_eff - level
    #: scored tokens of each row (permutation order) at each level ``[n_rows, levels]``, when rows differ
    row_scored: np.ndarray | None = None

    @property
    def per_pass(self) -> int:
        """Batches in one pass over the data."""
        return math.ceil(self.n_rows / self.batch_size)

    def start(self, b: int) -> int:
        """Position of batch ``b``'s first row in the permutation."""
        return (b % self.per_pass) * self.batch_size

    def rows(self, b: int) -> int:
        """Rows in batch ``b`` (the last batch of a pass may be short)."""
        return min(self.batch_size, self.n_rows - self.start(b))

    def tokens(self, b: int) -> np.ndarray:
        """Scored tokens batch ``b`` adds to each level it runs ``[levels]``."""
        if self.row_scored is not None:
            return self.row_scored[self.start(b):self.start(b) + self.rows(b)].sum(0)
        return self.rows(b) * self.scored_per_row


class StopRule(ABC):
    """When a level has been measured enough: decides which levels each batch of the next round runs.

    :meth:`active` sees only the sums of finished rounds, so every process (and a resumed run) takes the
    same decisions. A rule whose decisions depend only on counts (tokens, rows), not on measured values,
    sets ``plans_ahead``: the rounds after the next can then be planned by replaying :meth:`active` on a
    dry copy of the sums (:func:`planned_forwards`), which sizes the progress bar exactly.
    """

    plans_ahead: ClassVar[bool] = False
    #: Cap on data batches when the caller gives none (None: the rule always ends by itself).
    default_max_batches: ClassVar[int | None] = None

    @abstractmethod
    def active(self, acc: Accumulator, grid: BatchGrid, batches: range) -> np.ndarray:
        """Which levels each of ``batches`` runs: bool ``[len(batches), levels]``, from ``acc`` (finished rounds)."""

    @abstractmethod
    def fingerprint(self) -> dict[str, int | float | None]:
        """The rule's arguments, as stored in checkpoints (``tokens_per_level``, ``target_se``)."""

    def metadata(self) -> dict[str, int | float]:
        """The rule as recorded in the profile's metadata (``"stop"``)."""
        return {k: v for k, v in self.fingerprint().items() if v is not None}

    def finish(self, acc: Accumulator, levels: np.ndarray, max_batches: int | None) -> None:  # noqa: B027
        """Called once after the last round (e.g. to warn about levels that did not reach the target)."""


class TokensPerLevel(StopRule):
    """Run a level until it has scored ``tokens`` tokens (decided batch by batch, from counts only)."""

    plans_ahead = True

    def __init__(self, tokens: int) -> None:
        self.tokens = check_int(tokens, "tokens_per_level", minimum=1)

    def active(self, acc: Accumulator, grid: BatchGrid, batches: range) -> np.ndarray:
        done = acc.tokens.copy()
        out = np.zeros((len(batches), done.size), dtype=bool)
        for k, b in enumerate(batches):
            out[k] = done < self.tokens
            done[out[k]] += grid.tokens(b)[out[k]]
        return out

    def fingerprint(self) -> dict[str, int | float | None]:
        return {"tokens_per_level": self.tokens, "target_se": None}


class TargetSE(StopRule):
    """Run a level until the Monte Carlo standard error of its mean CE (``mc_se``) is <= ``se`` nats.

    Decided per round from the measured spread, so only the next round can be planned.
    """

    default_max_batches = DEFAULT_MAX_BATCHES_SE

    def __init__(self, se: float) -> None:
        self.se = check_float(se, "target_se", minimum=0.0, min_inclusive=False, hint=" (nats)")

    def active(self, acc: Accumulator, grid: BatchGrid, batches: range) -> np.ndarray:
        need = (acc.rows < 2) | ~(acc.mc_se()[:, 0] <= self.se)
        return np.broadcast_to(need, (len(batches), need.size)).copy()

    def fingerprint(self) -> dict[str, int | float | None]:
        return {"tokens_per_level": None, "target_se": self.se}

    def finish(self, acc: Accumulator, levels: np.ndarray, max_batches: int | None) -> None:
        short = levels[~(acc.mc_se()[:, 0] <= self.se)]
        if short.size:
            warnings.warn(f"estimate_profile: {short.size} levels (e.g. visible counts {short[:5].tolist()}) did not "
                          f"reach target_se={self.se:g} within max_batches={max_batches}; raise max_batches",
                          UserWarning, stacklevel=4)


def stop_rule(tokens_per_level: int | None = None, target_se: float | None = None) -> StopRule:
    """The rule for ``estimate_profile``'s arguments: ``target_se`` if given, else ``tokens_per_level``
    (default :data:`DEFAULT_TOKENS_PER_LEVEL`); both is an error."""
    if tokens_per_level is not None and target_se is not None:
        raise ValueError("pass either tokens_per_level= or target_se= (the stop criterion), not both")
    if target_se is not None:
        return TargetSE(target_se)
    return TokensPerLevel(DEFAULT_TOKENS_PER_LEVEL if tokens_per_level is None else tokens_per_level)


def _rounds(rule: StopRule, acc: Accumulator, grid: BatchGrid, first: int, max_batches: int | None,
            every: int) -> Iterator[tuple[int, np.ndarray]]:
    """The rounds from batch ``first``: ``(start, active [batches, levels])`` until the rule runs nothing.

    The caller adds each round's results to ``acc`` before asking for the next.
    """
    start = first
    while max_batches is None or start < max_batches:
        end = start + every if max_batches is None else min(start + every, max_batches)
        active = rule.active(acc, grid, range(start, end))
        if not active.any():
            return
        yield start, active
        start = end


def _add_round(acc: Accumulator, grid: BatchGrid, start: int, active: np.ndarray, vals: np.ndarray | None) -> None:
    """Add a round's per-row values ``[batches, levels, batch_size, 3]`` (None: a dry run, zeros) to ``acc``."""
    for k in range(active.shape[0]):
        b = start + k
        r = grid.rows(b)
        v = np.zeros((active.shape[1], r, 3)) if vals is None else vals[k, :, :r]
        acc.add(grid.start(b), active[k], v, grid.tokens(b))


def planned_forwards(rule: StopRule, acc: Accumulator, grid: BatchGrid, first: int, max_batches: int | None,
                     every: int) -> int:
    """Forwards the run will do from batch ``first`` on: all of them when ``rule.plans_ahead`` (the rounds
    replayed on a dry copy of ``acc``), else those of the next round (later ones depend on the results)."""
    sim = acc.copy() if rule.plans_ahead else acc
    total = 0
    for start, active in _rounds(rule, sim, grid, first, max_batches, every):
        total += int(active.sum())
        if not rule.plans_ahead:
            break
        _add_round(sim, grid, start, active, None)
    return total


# ------------------------------------------------------------------------------------------------
# Seeds of the masks and of the data order (the forward itself: mdm_sched.masking)
# ------------------------------------------------------------------------------------------------

def _mask_seed(seed: int, batch: int, level: int) -> int:
    """A 63-bit seed for the masks of (batch, level): independent of everything else in the run."""
    return int(np.random.SeedSequence([seed, batch, level]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def _perm_seed(seed: int) -> int:
    """Seed of the data permutation (tagged, so it never coincides with a mask seed)."""
    return int(np.random.SeedSequence([seed, 0x5EED]).generate_state(1, np.uint64)[0] >> np.uint64(1))


# ------------------------------------------------------------------------------------------------
# Sums
# ------------------------------------------------------------------------------------------------

class Accumulator:
    """Running sums per level, and per (level, sequence) for standard errors clustered by sequence.

    Sequences are indexed by their position in the run's fixed permutation; only the prefix that has
    been used is stored, so a huge data set costs memory only for the rows actually processed.
    """

    def __init__(self, n_levels: int) -> None:
        self.count = np.zeros((n_levels, 0))       # rows per (level, sequence)
        self.sums = np.zeros((n_levels, 0, 3))     # sums of row means (ce, entropy, accuracy)
        self.sq = np.zeros((n_levels, 3))          # sums of squared row means per level
        self.tokens = np.zeros(n_levels)

    def copy(self) -> Accumulator:
        return Accumulator.from_arrays({k: v.copy() for k, v in self.to_arrays().items()}, self.tokens.size)

    def _grow(self, k: int) -> None:
        if k > self.count.shape[1]:
            extra = k - self.count.shape[1]
            self.count = np.pad(self.count, ((0, 0), (0, extra)))
            self.sums = np.pad(self.sums, ((0, 0), (0, extra), (0, 0)))

    def add(self, start: int, active: np.ndarray, vals: np.ndarray, tokens: np.ndarray) -> None:
        """Rows at sequence positions ``start..start+R-1``; ``vals`` ``[L, R, 3]``; ``active`` ``[L]``;
        ``tokens`` ``[L]``: the tokens the rows scored at each level."""
        r = vals.shape[1]
        self._grow(start + r)
        a = active.astype(np.float64)
        self.count[:, start:start + r] += a[:, None]
        self.sums[:, start:start + r] += vals * a[:, None, None]
        self.sq += (vals ** 2).sum(1) * a[:, None]
        self.tokens += a * tokens

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
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], n_levels: int) -> Accumulator:
        acc = cls(n_levels)
        count, sums, sq, tokens = (np.asarray(arrays[k], dtype=np.float64) for k in ("count", "sums", "sq", "tokens"))
        if (count.ndim != 2 or count.shape[0] != n_levels or sums.shape != count.shape + (3,)
                or sq.shape != (n_levels, 3) or tokens.shape != (n_levels,)):
            raise ValueError("array shapes do not match the levels")
        acc.count, acc.sums, acc.sq, acc.tokens = count, sums, sq, tokens
        return acc


# ------------------------------------------------------------------------------------------------
# Checkpoint
# ------------------------------------------------------------------------------------------------

@dataclass
class _Progress:
    """What a checkpoint restores: the sums, the next batch to run and the forwards done so far."""

    acc: Accumulator
    next_batch: int = 0
    forwards: int = 0


def _save_checkpoint(path: Path, fingerprint: dict[str, Any], progress: _Progress) -> None:
    """Binary .npz (exact float64 sums), written atomically; the fingerprint travels as JSON text."""
    header = json.dumps({"format": _CKPT_FORMAT, "version": _CKPT_VERSION, "fingerprint": fingerprint,
                         "next_batch": progress.next_batch, "forwards": progress.forwards})
    buf = io.BytesIO()
    np.savez(buf, header=np.array(header), **progress.acc.to_arrays())
    atomic_write_bytes(path, buf.getvalue())


def _load_checkpoint(path: Path, fingerprint: dict[str, Any], n_levels: int,
                     accumulator: type[Accumulator] | None = None) -> _Progress | None:
    """The progress saved in ``path`` (None if there is no file); refuses other arguments or corrupted files."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        header = json.loads(str(arrays.pop("header")))
    except Exception as exc:  # zip/npz/json errors of many kinds: all mean "not a usable checkpoint"
        raise ValueError(f"checkpoint {path} is corrupted or not an mdm_sched profile checkpoint ({exc}); "
                         "delete it to start over or pass another checkpoint= path") from exc
    try:
        header = check_format(header, fmt=_CKPT_FORMAT, version=_CKPT_VERSION, what="profile checkpoint")
    except ValueError as exc:
        raise ValueError(f"checkpoint {path}: {exc}; pass another checkpoint= path") from exc
    old = header.get("fingerprint") or {}
    if not isinstance(old, dict):
        raise ValueError(f"checkpoint {path} is corrupted (its fingerprint is not a JSON object); delete it to start over")
    keys = sorted((set(old) | set(fingerprint)) - {k for k in _IDENTITY_KEYS if k not in old})  # older files lack them
    diff = [f"{k}: {old.get(k)!r} (checkpoint) != {fingerprint.get(k)!r} (now)" for k in keys if old.get(k) != fingerprint.get(k)]
    if diff:
        what = "another model (weights or dtype)" if any(k in _IDENTITY_KEYS for k in keys
                                                          if old.get(k) != fingerprint.get(k)) else "different arguments"
        raise ValueError(f"checkpoint {path} was made with {what} ({'; '.join(diff)}); rerun with the same model and "
                         "arguments to resume, or delete the file / pass another checkpoint= path to start over")
    try:  # a version-1 file also holds "planned": the token sums again, not needed
        return _Progress((accumulator or Accumulator).from_arrays(arrays, n_levels), int(header["next_batch"]),
                         int(header.get("forwards", 0)))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"checkpoint {path} is corrupted ({exc}); delete it to start over") from exc


# ------------------------------------------------------------------------------------------------
# The run: rounds of forwards over the (batch, level) grid
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Settings:
    """Validated ``estimate_profile`` arguments that shape the run."""

    batch_size: int
    prompt_length: int
    block_length: int | None
    seed: int
    checkpoint_every: int
    max_batches: int | None
    n_tokens: int | None


@dataclass(frozen=True)
class _Run:
    """Everything fixed during a run: the model, the permuted rows, the grid, the rule and the processes."""

    mlm: MaskedLM
    rows: Rows  # the examples in the run's permutation
    heldout: _Heldout
    grid: BatchGrid
    rule: StopRule
    settings: _Settings
    dist: DistContext

    def forward_round(self, start: int, active: np.ndarray, on_forward: Callable[[], None]) -> np.ndarray:
        """Values ``[batches, levels, batch_size, 3]`` of the round's active (batch, level) pairs, summed over
        the processes (each pair runs on one process, round-robin, so the sum is exact)."""
        s, lv = self.settings, self.heldout.levels
        vals = torch.zeros(*active.shape, s.batch_size, 3, dtype=torch.float64)
        for k, (bi, li) in enumerate(zip(*np.nonzero(active))):
            if k % self.dist.world != self.dist.rank:
                continue
            b = start + int(bi)
            rows = self.rows.slice(self.grid.start(b), self.grid.start(b) + self.grid.rows(b))
            gen = torch.Generator().manual_seed(_mask_seed(s.seed, b, int(lv[li])))
            vals[bi, li, :rows.count] = forward_rows(self.mlm, rows, int(lv[li]), n_eff=self.heldout.n_eff,
                                                     block_length=s.block_length, gen=gen)
            on_forward()
        return self.dist.all_reduce_sum(vals).numpy()

    def planned(self, progress: _Progress) -> int:
        """Forwards done plus those the stop rule commits to now (the progress bar's total)."""
        return progress.forwards + planned_forwards(self.rule, progress.acc, self.grid, progress.next_batch,
                                                    self.settings.max_batches, self.settings.checkpoint_every)


def _run_rounds(run: _Run, progress: _Progress, checkpoint: Path | None, show: bool) -> None:
    """Run rounds until the stop rule ends (or ``max_batches``), checkpointing after each."""
    bar = None
    if show and run.dist.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=run.planned(progress), initial=progress.forwards, unit="fwd", desc="profile",
                   dynamic_ncols=True)
    on_forward = (lambda: bar.update(run.dist.world)) if bar is not None else (lambda: None)
    s = run.settings
    try:
        for start, active in _rounds(run.rule, progress.acc, run.grid, progress.next_batch, s.max_batches,
                                     s.checkpoint_every):
            vals = run.forward_round(start, active, on_forward)
            _add_round(progress.acc, run.grid, start, active, vals)
            progress.forwards += int(active.sum())
            progress.next_batch = start + active.shape[0]
            if checkpoint is not None and run.dist.is_main:
                _save_checkpoint(checkpoint, _fingerprint(run), progress)
            if bar is not None:
                if not run.rule.plans_ahead:  # the total grows by each next round's forwards
                    bar.total = run.planned(progress)
                bar.n = progress.forwards
                bar.refresh()
    finally:
        if bar is not None:
            bar.close()


def _fingerprint(run: _Run) -> dict[str, Any]:
    """What a checkpoint must match to be resumed."""
    s, h = run.settings, run.heldout
    return {"model": run.mlm.name_or_path, "config_hash": run.mlm.config_hash, **run.mlm.identity(),
            "data_sha256": h.sha256,
            "n_tokens": h.n, "prompt_length": s.prompt_length, "block_length": s.block_length,
            "levels": h.levels.tolist(), "batch_size": s.batch_size, **run.rule.fingerprint(), "seed": s.seed,
            "checkpoint_every": s.checkpoint_every, "max_batches": s.max_batches}


# ------------------------------------------------------------------------------------------------
# estimate_profile
# ------------------------------------------------------------------------------------------------

def _library_version() -> str:
    from . import __version__

    return __version__


_PROMPT_HANDLING = {
    "none": "every position is generated and scored",
    "prompt": "the prompt (the first prompt_length tokens, or each example's prompt) is always visible and never "
              "scored; visible counts of responses of different lengths are taken at equal visible fractions",
    "infill": "each example's given positions are always visible and never scored; its masked region is generated; "
              "regions of different lengths are taken at equal visible fractions",
}


def run_metadata(mlm: MaskedLM, h: _Heldout, s: _Settings, *, order: str, forwards: int, processes: int,
                 mc: np.ndarray, data_description: str | None) -> dict[str, Any]:
    """The metadata every estimated profile carries (model, data, conditioning, order, lengths, run settings)."""
    config = getattr(mlm.model, "config", None)
    return {"model": mlm.name_or_path or type(mlm.model).__name__, "model_class": type(mlm.model).__name__,
            "family": mlm.family, "revision": getattr(config, "_commit_hash", None), "config_hash": mlm.config_hash,
            "weights": mlm.weights_fingerprint,
            "data": data_description or h.description, "data_sha256": h.sha256,
            "sequences": h.counts["kept"], "sequences_dropped": h.counts["dropped"],
            "sequences_cropped": h.counts["cropped"], "sequence_tokens": h.n, "prompt_length": s.prompt_length,
            "prompt_handling": _PROMPT_HANDLING[h.ex.kind], "conditioning": h.ex.conditioning(),
            "order": order, "source": "heldout",
            "block_length": s.block_length, "lengths": h.lengths(), "batch_size": s.batch_size,
            "seed": s.seed, "forwards": forwards, "processes": processes,
            "dtype": str(mlm.dtype).replace("torch.", ""),
            "mc_se": [float(v) if math.isfinite(v) else None for v in mc[:, 0].tolist()],
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "library_version": _library_version()}


def _metadata(run: _Run, progress: _Progress, mc: np.ndarray, data_description: str | None) -> dict[str, Any]:
    meta = run_metadata(run.mlm, run.heldout, run.settings, order="random", forwards=progress.forwards,
                        processes=run.dist.world, mc=mc, data_description=data_description)
    return dict(meta, stop=run.rule.metadata())


def _profile(run: _Run, progress: _Progress, data_description: str | None) -> InformationProfile:
    """The profile of a finished run (every level must have had a forward)."""
    acc, lv = progress.acc, run.heldout.levels
    rows = acc.rows
    if (rows == 0).any():
        raise ValueError(f"levels {lv[rows == 0].tolist()[:10]} got no forward pass (max_batches="
                         f"{run.settings.max_batches} too small); raise max_batches")
    run.rule.finish(acc, lv, run.settings.max_batches)
    mean, se, mc = acc.mean(), acc.cluster_se(), acc.mc_se()
    return InformationProfile(lv, mean[:, 0], se[:, 0], n_tokens=run.heldout.n_eff, entropy=mean[:, 1],
                              entropy_se=se[:, 1], accuracy=mean[:, 2], tokens=acc.tokens.astype(np.int64),
                              rows=rows.astype(np.int64), metadata=_metadata(run, progress, mc, data_description))


def _settings(rule: StopRule, *, batch_size: int, prompt_length: int, block_length: int | None, seed: int,
              checkpoint_every: int, max_batches: int | None, n_tokens: int | None) -> _Settings:
    return _Settings(batch_size=check_int(batch_size, "batch_size", minimum=1),
                     prompt_length=check_int(prompt_length, "prompt_length", minimum=0),
                     block_length=check_optional_int(block_length, "block_length", minimum=1),
                     seed=check_int(seed, "seed", minimum=0),
                     checkpoint_every=check_int(checkpoint_every, "checkpoint_every", minimum=1),
                     max_batches=check_optional_int(rule.default_max_batches if max_batches is None else max_batches,
                                                    "max_batches", minimum=1),
                     n_tokens=check_optional_int(n_tokens, "n_tokens", minimum=1))


def estimate_profile(model: ModelLike, data: DataLike, *, n_tokens: int | None = None,
                     levels: LevelsLike = None,
                     batch_size: int = 16, tokens_per_level: int | None = None, target_se: float | None = None,
                     prompt_length: int = 0, block_length: int | None = None, text_column: str | None = None,
                     prompt_column: str | None = None, response_column: str | None = None, chat: bool = False,
                     visible: Sequence[Sequence[bool]] | None = None, order: str = "random",
                     seed: int = 0, progress: bool = True, checkpoint: PathLike | None = None,
                     checkpoint_every: int = 8, max_batches: int | None = None,
                     accelerator: AcceleratorLike | None = None, mask_token_id: int | None = None,
                     data_description: str | None = None) -> InformationProfile:
    """Measure the masked-token cross-entropy profile of ``model`` on held-out ``data``.

    Args:
        model: a :class:`~mdm_sched.MaskedLM` or anything :func:`mdm_sched.wrap` accepts (HF masked LM,
            LLaDA/Dream-style model, an oracle, any module returning ``.logits`` with ``mask_token_id=``).
        data: a ``datasets.Dataset``/``IterableDataset`` (``input_ids`` column, or a text column
            tokenised with the model's tokenizer), an iterable of token-id sequences or of strings, a 2-D
            LongTensor, a source spec string for :func:`mdm_sched.data.load_source`
            (e.g. ``"antibody-germlines:human:H:test"``, a file path), or an
            :class:`~mdm_sched.conditioning.Examples` (per-example context: what is given, what is generated).
        n_tokens: generated length ``N`` to profile; ``None`` = most common length
            (:func:`mdm_sched.data.fixed_length` states the length policy). For prompt/response data: responses
            longer than this are cropped (default: none; responses keep their lengths).
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
        prompt_column, response_column: prompt/response pairs of any lengths from two columns (text or ids)
            of a dataset: the prompt is always visible, only the response is generated and scored.
        chat: render prompts with the tokenizer's chat template (one user message per ``prompt_column``
            entry; without columns, a ``messages`` column of conversations whose last, assistant message is
            the response).
        visible: per example, a boolean mask of the positions always given (infilling: the rest is generated).
        order: ``"random"`` (the sampler the theory is exact for), or ``"confidence"``, ``"margin"``,
            ``"entropy"`` for the ordering-aware policy profile (:mod:`mdm_sched.policy`: teacher forcing along
            the model's own order, one pass over the data by default, ``max_batches`` caps it).
        seed: seed of the data order and of every mask.
        progress: show a tqdm progress bar (process 0 only).
        checkpoint: ``.npz`` file of partial sums; an existing one made with the same arguments is
            resumed, one made with other arguments is refused.
        checkpoint_every: batches per round (stop decisions and checkpoint writes happen between rounds).
        max_batches: cap on data batches (default: none with ``tokens_per_level``; 1000 with ``target_se``).
        accelerator: an ``accelerate.Accelerator``/``PartialState`` whose processes share the work. Without
            one, an initialised ``torch.distributed`` group is used; ``WORLD_SIZE > 1`` with neither is a
            ValueError (see :mod:`mdm_sched.distributed`).
        mask_token_id: for bare modules without a known mask id.
        data_description: how to describe the data in the metadata (default: derived).

    Returns:
        An :class:`InformationProfile` (identical on every process). Its ``se`` clusters rows by
        sequence, so it includes the error of having finitely many held-out sequences. Its metadata says
        what was conditioned on (``"conditioning"``) and along which order (``"order"``).
    """
    from .models import wrap
    from .orders import ORDERS

    mlm = wrap(model, mask_token_id=mask_token_id)
    check_choice(order, "order", tuple(ORDERS))
    if order != "random" and (tokens_per_level is not None or target_se is not None):
        raise ValueError(f"order={order!r}: a policy profile walks whole examples (one forward per visible "
                         "count), so tokens_per_level=/target_se= do not apply; set the work with max_batches= "
                         "(default: one pass over the data)")
    rule = stop_rule(tokens_per_level, target_se)
    s = _settings(rule, batch_size=batch_size, prompt_length=prompt_length, block_length=block_length, seed=seed,
                  checkpoint_every=checkpoint_every, max_batches=max_batches, n_tokens=n_tokens)
    dist = DistContext.resolve(accelerator)
    cond = {"prompt_column": prompt_column, "response_column": response_column, "chat": bool(chat), "visible": visible}
    h = _prepare_heldout(mlm, data, n_tokens=s.n_tokens, prompt_length=s.prompt_length, block_length=s.block_length,
                         levels=levels, text_column=text_column, conditioning=cond)
    # One seeded permutation of the data; batch b takes its slice (b mod batches per pass). Any prefix
    # of batches is then a random subset, whatever order the data came in.
    perm = torch.randperm(len(h.ex), generator=torch.Generator().manual_seed(_perm_seed(s.seed)))
    rows = Rows(h.ex.ids[perm], h.ex.widths[perm], h.ex.target[perm])
    ckpt = check_output_path(checkpoint, "checkpoint", create_parents=True) if checkpoint is not None else None
    if order != "random":
        from .policy import estimate_policy

        return estimate_policy(mlm, rows, h, order, s, dist, ckpt, progress=progress, description=data_description)
    run = _Run(mlm, rows, h, _grid(h, rows, s), rule, s, dist)
    state = (_load_checkpoint(ckpt, _fingerprint(run), h.levels.size) if ckpt is not None else None) \
        or _Progress(Accumulator(h.levels.size))
    _run_rounds(run, state, ckpt, progress)
    return _profile(run, state, data_description)


def _grid(h: _Heldout, rows: Rows, s: _Settings) -> BatchGrid:
    """The batch grid; with targets of different lengths each row's scored count at each level is its own
    (with blocks: that of a full-length block, the count the stop rule plans with)."""
    row_scored = None
    if not h.ex.equal_targets:
        length = rows.n_targets.numpy()[:, None]
        if s.block_length is not None:
            length = np.minimum(length, s.block_length)
        row_scored = (length - (h.levels[None, :] * length) // h.n_eff).astype(np.float64)
    return BatchGrid(len(h.ex), s.batch_size, h.n_eff - h.levels, row_scored)
