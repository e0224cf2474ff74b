"""Infilling tasks with a right answer: held-out sequences, the positions given and the positions to infill.

An :class:`InfillTask` is a set of true token-id sequences (any lengths) with a boolean ``target`` mask per
sequence: True where the sampler must infill (the prompt holds the mask token there), False where the true
token is given. The truth at the targets is what recovery, exact match and the conditional NLL of
:mod:`mdm_sched.metrics` score against. Builders:

- :func:`imgt_region`: antibody V genes with the residues of an IMGT-numbered region infilled (e.g. CDR1 + FR2 +
  CDR2 = IMGT 27-65), the rest visible; from IMGT-gapped strings (:func:`mdm_sched.data.germlines` with
  ``gapped=True``);
- :func:`random_spans`: one random contiguous span per sequence, for any data (text included);
- :func:`from_masks`: any explicit masks.

:func:`build_task` turns a spec string (``"imgt:27-65"``, ``"span:0.3"``, ``"span:12"``; an optional
``":mutate=0.1"`` substitutes a fraction of the given residues first) into a task for a data source: the
form the evaluation harness and the command line use.
"""
from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .validation import check_float, check_int

__all__ = ["InfillTask", "TaskSpec", "from_masks", "imgt_region", "random_spans", "mutate_given", "parse_task",
           "build_task"]

Encode = Callable[[list[str]], list[list[int]]]


@dataclass(frozen=True)
class InfillTask:
    """True sequences ``ids [M, W]`` (rows shorter than ``W`` padded with 0 past ``widths``) and the positions to
    infill, ``target [M, W]``. ``name`` labels result rows; ``names`` identifies each example (e.g. gene names)."""

    name: str
    description: str
    ids: torch.Tensor
    widths: torch.Tensor
    target: torch.Tensor
    names: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.ids.ndim != 2 or self.target.shape != self.ids.shape or self.widths.shape != (self.ids.shape[0],):
            raise ValueError(f"InfillTask: ids {tuple(self.ids.shape)} and target {tuple(self.target.shape)} must be "
                             f"[M, W] and widths {tuple(self.widths.shape)} [M]")
        if self.ids.shape[0] == 0:
            raise ValueError("InfillTask: no examples; pass non-empty held-out data")
        if bool((self.target & ~self.attention).any()):
            raise ValueError("InfillTask: target marks positions past an example's width")
        empty = (self.target.sum(1) == 0).nonzero().squeeze(1)
        if empty.numel():
            raise ValueError(f"InfillTask: examples {empty[:5].tolist()} have nothing to infill; drop them")
        if self.names and len(self.names) != self.ids.shape[0]:
            raise ValueError(f"InfillTask: {len(self.names)} names for {self.ids.shape[0]} examples")

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def attention(self) -> torch.Tensor:
        """``[M, W]`` True on each example's real positions (``< widths``)."""
        return torch.arange(self.ids.shape[1]).unsqueeze(0) < self.widths.unsqueeze(1)

    @property
    def given(self) -> torch.Tensor:
        """``[M, W]`` positions whose true token is shown to the model."""
        return self.attention & ~self.target

    @property
    def n_targets(self) -> torch.Tensor:
        """``[M]`` positions to infill per example."""
        return self.target.sum(1)

    def prompts(self, mask_token_id: int) -> list[list[int]]:
        """One token-id list per example with ``mask_token_id`` at the targets: ``generate(prompts, gen_length=0)``."""
        x = torch.where(self.target, torch.full_like(self.ids, mask_token_id), self.ids)
        return [row[:w].tolist() for row, w in zip(x, self.widths.tolist())]

    def subset(self, index: Sequence[int] | torch.Tensor) -> InfillTask:
        """The examples at ``index`` (in that order), trimmed to their widest row."""
        idx = torch.as_tensor(index, dtype=torch.long)
        width = int(self.widths[idx].max()) if idx.numel() else 0
        names = tuple(self.names[i] for i in idx.tolist()) if self.names else ()
        return InfillTask(self.name, self.description, self.ids[idx, :width], self.widths[idx],
                          self.target[idx, :width], names)

    def summary(self) -> dict[str, Any]:
        """Counts for fingerprints and reports: examples, infilled and given positions (min, max, mean)."""
        n, ctx = self.n_targets.double(), self.given.sum(1).double()
        return {"name": self.name, "description": self.description, "examples": len(self),
                "infilled": [int(n.min()), int(n.max()), round(float(n.mean()), 3)],
                "given": [int(ctx.min()), int(ctx.max()), round(float(ctx.mean()), 3)]}


def from_masks(name: str, seqs: Sequence[Sequence[int]], targets: Sequence[Sequence[bool]], *,
               description: str = "", names: Sequence[str] = ()) -> InfillTask:
    """A task from token-id sequences and one boolean mask per sequence (True = infill)."""
    if len(seqs) != len(targets):
        raise ValueError(f"from_masks: {len(seqs)} sequences but {len(targets)} target masks")
    width = max((len(s) for s in seqs), default=0)
    ids = torch.zeros((len(seqs), width), dtype=torch.long)
    tgt = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, (s, t) in enumerate(zip(seqs, targets)):  # input preparation
        if len(t) != len(s):
            raise ValueError(f"from_masks: example {i} has {len(s)} tokens but a mask of {len(t)}")
        ids[i, :len(s)] = torch.as_tensor(list(s), dtype=torch.long)
        tgt[i, :len(s)] = torch.as_tensor(list(t), dtype=torch.bool)
    widths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    return InfillTask(name, description or name, ids, widths, tgt, tuple(names))


def imgt_region(gapped: Sequence[str], encode: Encode, start: int, stop: int, *, names: Sequence[str] = (),
                name: str | None = None) -> InfillTask:
    """Infill the residues numbered ``start..stop`` (IMGT, inclusive) of IMGT-gapped sequences, the rest given.

    Args:
        gapped: IMGT-gapped strings (``"-"`` = no residue at that position), e.g.
            ``data.germlines("human", "H", split="test", gapped=True)``.
        encode: ``list[str] -> token ids`` with one token per residue (``MaskedLM.encode``).
        start, stop: the region's first and last IMGT position, e.g. 27 and 65 for CDR1 + FR2 + CDR2.
    """
    from .data import IMGT_GAP, imgt_numbers

    a = check_int(start, "start", minimum=1)
    b = check_int(stop, "stop", minimum=a)
    seqs = [g.replace(IMGT_GAP, "") for g in gapped]
    ids = encode(seqs)
    bad = [i for i, (s, e) in enumerate(zip(seqs, ids)) if len(s) != len(e)]
    if bad:
        raise ValueError(f"imgt_region: the encoder does not give one token per residue (examples {bad[:5]}); "
                         "use a residue-level model")
    targets = [[a <= k <= b for k in imgt_numbers(g)] for g in gapped]
    keep = [i for i, t in enumerate(targets) if any(t)]
    if not keep:
        raise ValueError(f"imgt_region: no sequence has a residue at IMGT {a}-{b}")
    return from_masks(name or f"imgt{a}-{b}", [ids[i] for i in keep], [targets[i] for i in keep],
                      description=f"IMGT positions {a}-{b} infilled, the rest given",
                      names=[names[i] for i in keep] if names else ())


def random_spans(seqs: Sequence[Sequence[int]], span: int | float, *, seed: int = 0, min_given: int = 1,
                 names: Sequence[str] = (), name: str | None = None) -> InfillTask:
    """One contiguous span per sequence at a uniformly random start, the rest given.

    ``span``: an int (tokens) or a float in (0, 1) (that fraction of each sequence, rounded, at least 1).
    Sequences that would keep fewer than ``min_given`` given tokens are dropped.
    """
    frac = isinstance(span, float)
    if frac:
        check_float(span, "span", minimum=0.0, maximum=1.0, min_inclusive=False, max_inclusive=False)
    else:
        check_int(span, "span", minimum=1)
    check_int(min_given, "min_given", minimum=0)
    rng = random.Random(seed)
    kept, masks, kept_names = [], [], []
    for i, s in enumerate(seqs):
        k = max(1, round(span * len(s))) if frac else int(span)
        if len(s) - k < min_given:
            continue
        start = rng.randrange(len(s) - k + 1)
        kept.append(list(s))
        masks.append([start <= j < start + k for j in range(len(s))])
        if names:
            kept_names.append(names[i])
    if not kept:
        raise ValueError(f"random_spans: every sequence is too short for span={span} with {min_given} given tokens")
    label = f"span{span:g}" if frac else f"span{span}"
    what = f"{span:.0%} of each sequence" if frac else f"{span} tokens"
    return from_masks(name or label, kept, masks, description=f"one random contiguous span of {what} infilled",
                      names=kept_names)


def mutate_given(task: InfillTask, rate: float, alphabet: Sequence[int], *, seed: int = 0) -> InfillTask:
    """The task with a fraction ``rate`` of its *given* tokens replaced by another token of ``alphabet``.

    A model of somatic hypermutation in the context: the model sees a sequence that is not a germline it may
    have memorised, while the infilled truth stays unchanged.
    """
    check_float(rate, "rate", minimum=0.0, maximum=1.0)
    alpha = torch.as_tensor(list(alphabet), dtype=torch.long)
    if alpha.numel() < 2:
        raise ValueError("mutate_given: alphabet needs at least two tokens")
    g = torch.Generator().manual_seed(seed)
    hit = (torch.rand(task.ids.shape, generator=g) < rate) & task.given
    # a uniformly chosen *different* token: shift the current token's index by 1..|A|-1 within the alphabet
    lut = torch.full((int(max(int(task.ids.max()), int(alpha.max()))) + 1,), -1, dtype=torch.long)
    lut[alpha] = torch.arange(alpha.numel())
    idx = lut[task.ids]
    if bool((hit & (idx < 0)).any()):
        raise ValueError("mutate_given: a given token is not in the alphabet")
    shift = torch.randint(1, alpha.numel(), task.ids.shape, generator=g)
    new = alpha[(idx.clamp(min=0) + shift) % alpha.numel()]
    ids = torch.where(hit, new, task.ids)
    return InfillTask(f"{task.name}+mut{rate:g}", f"{task.description}; {rate:.0%} of the given tokens mutated",
                      ids, task.widths, task.target, task.names)


# --------------------------------------------------------------------------------------------------
# spec strings
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TaskSpec:
    """A parsed task spec: ``kind`` ``"imgt"`` (``start``, ``stop``) or ``"span"`` (``span``), and a mutation rate."""

    kind: str
    start: int = 0
    stop: int = 0
    span: int | float = 0
    mutate: float = 0.0


_SPEC_HELP = "expected 'imgt:START-STOP' (e.g. imgt:27-65) or 'span:LENGTH|FRACTION' (e.g. span:12, span:0.3), " \
             "optionally followed by ':mutate=RATE'"


def parse_task(spec: str) -> TaskSpec:
    """Parse ``"imgt:27-65"``, ``"span:12"``, ``"span:0.3"``, each optionally ``":mutate=0.1"``."""
    if not isinstance(spec, str):
        raise TypeError(f"task spec must be a string; {_SPEC_HELP}")
    kind, _, rest = spec.partition(":")
    arg, *opts = rest.split(":") if rest else [""]
    mutate = 0.0
    for opt in opts:
        key, _, val = opt.partition("=")
        if key != "mutate":
            raise ValueError(f"task spec {spec!r}: unknown option {opt!r}; {_SPEC_HELP}")
        try:
            mutate = check_float(float(val), "mutate", minimum=0.0, maximum=1.0)
        except ValueError as exc:
            raise ValueError(f"task spec {spec!r}: mutate must be a rate in [0, 1]") from exc
    try:
        if kind == "imgt":
            lo, hi = (int(v) for v in arg.split("-"))
            if not 1 <= lo <= hi:
                raise ValueError
            return TaskSpec("imgt", start=lo, stop=hi, mutate=mutate)
        if kind == "span":
            span: int | float = float(arg) if "." in arg else int(arg)
            if not (0 < span < 1 if isinstance(span, float) else span >= 1):
                raise ValueError
            return TaskSpec("span", span=span, mutate=mutate)
    except ValueError:
        pass
    raise ValueError(f"task spec {spec!r}: {_SPEC_HELP}")


def build_task(spec: str | TaskSpec, source: Any, encode: Encode, *, alphabet: Sequence[int] = (),
               seed: int = 0) -> InfillTask:
    """The task ``spec`` on a ``datasets.Dataset`` from :func:`mdm_sched.data.load_source`.

    ``"imgt:..."`` needs an ``imgt`` column (antibody germlines); ``"span:..."`` works on any ``text`` column.
    ``alphabet``: the tokens a mutation may write (needed with ``mutate=``).
    """
    from .data import token_sequences

    ts = parse_task(spec) if isinstance(spec, str) else spec
    names = [str(n) for n in source["name"]] if "name" in source.column_names else []
    if ts.kind == "imgt":
        if "imgt" not in source.column_names:
            raise ValueError("an 'imgt:START-STOP' task needs IMGT-gapped sequences (an 'imgt' column, as in "
                             "antibody-germlines data); use a 'span:...' task for other data")
        task = imgt_region(list(source["imgt"]), encode, ts.start, ts.stop, names=names)
    else:
        task = random_spans(token_sequences(source, encode), ts.span, seed=seed, names=names)
    if ts.mutate > 0:
        if not alphabet:
            raise ValueError("mutate= needs the alphabet of tokens to mutate into")
        task = mutate_given(task, ts.mutate, alphabet, seed=seed)
    return task
