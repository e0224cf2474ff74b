"""What one profile forward hides and scores: rows with per-example context, blocks, and visible fractions.

A batch of examples (:class:`Rows`: ids, widths, generated positions) is turned into the canvas of one
forward pass at a *level* ``i`` of the nominal grid ``0..n_eff-1``:

- **Visible fraction.** A row with ``n_e`` generated positions (in the scored span: its block, or all of
  them) gets ``floor(i * n_e / n_eff)`` of them visible, chosen uniformly. This is how
  :meth:`mdm_sched.Schedule.transfer_counts` applies one schedule to rows with different numbers of masks
  (after ``t`` calls a row has revealed ``floor(K_t n_e / N)``), so averaging the rows' cross-entropies at
  equal ``i`` estimates the curve of the visible fraction ``u = i / n_eff`` that the schedule walks
  (THEORY.md section 7). When every row has ``n_e = n_eff`` the visible count is exactly ``i`` and the
  random draws are those of the fixed-length estimator, so such data give the old profile bit for bit.
- **Blocks** (semi-autoregressive generation): a row's generated positions, in order, are cut into blocks
  of ``block_length`` (the last may be shorter); one uniformly chosen block is scored, earlier blocks are
  visible, later blocks masked and not scored.
- **Context** (prompt, the visible part of an infilling example) is always visible and never scored.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .models import MaskedLM

__all__ = ["Rows", "choose_blocks", "level_masks", "forward_rows"]


@dataclass(frozen=True)
class Rows:
    """A batch of examples: ids ``[r, W]``, widths ``[r]``, generated positions ``target [r, W]``."""

    ids: torch.Tensor
    widths: torch.Tensor
    target: torch.Tensor

    def slice(self, start: int, stop: int) -> Rows:
        """Rows ``start..stop-1``, trimmed to the widest of them."""
        w = int(self.widths[start:stop].max())
        return Rows(self.ids[start:stop, :w], self.widths[start:stop], self.target[start:stop, :w])

    @property
    def count(self) -> int:
        return int(self.ids.shape[0])

    @property
    def width(self) -> int:
        return int(self.ids.shape[1])

    @cached_property
    def n_targets(self) -> torch.Tensor:
        """Generated positions per row ``[r]``."""
        return self.target.sum(1)

    @cached_property
    def target_columns(self) -> torch.Tensor:
        """Column of each row's ``j``-th generated position ``[r, max n_targets]`` (``W`` past the row's count)."""
        order = torch.argsort((~self.target).to(torch.int8), dim=1, stable=True)  # targets first, in column order
        n_max = int(self.n_targets.max())
        cols = order[:, :n_max]
        return cols.masked_fill(torch.arange(n_max).unsqueeze(0) >= self.n_targets.unsqueeze(1), self.width)

    def attention(self) -> torch.Tensor | None:
        """Attention mask when some row is shorter than ``W`` (padding on the right), else None."""
        if bool((self.widths == self.width).all()):
            return None
        return torch.arange(self.width).unsqueeze(0) < self.widths.unsqueeze(1)

    def canvas(self, masked: torch.Tensor, mask_id: int, pad_id: int) -> torch.Tensor:
        """The model's input: the mask id where ``masked``, the pad id past each row's width."""
        x = self.ids.masked_fill(masked, mask_id)
        att = self.attention()
        return x if att is None else x.masked_fill(~att, pad_id)

    def spread(self, values: torch.Tensor, first: torch.Tensor | None = None) -> torch.Tensor:
        """Booleans over target indices ``first + j`` (``values [r, S]``) laid out on the columns ``[r, W]``."""
        r, span = values.shape
        idx = torch.arange(span).expand(r, span) + (0 if first is None else first.unsqueeze(1))
        n_max = self.target_columns.shape[1]
        cols = self.target_columns.gather(1, idx.clamp(max=n_max - 1)).masked_fill(idx >= n_max, self.width)
        out = torch.zeros(r, self.width + 1, dtype=torch.bool)
        return out.scatter_(1, cols, values & (cols < self.width))[:, :self.width]


def choose_blocks(n_targets: torch.Tensor, block_length: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A uniformly chosen block per row: ``(first target index, block length)``, both ``[r]``.

    Rows with equally many blocks draw with one ``randint`` (the fixed-length estimator's draw).
    """
    blocks = (n_targets + block_length - 1) // block_length
    r = n_targets.shape[0]
    if bool((blocks == blocks[0]).all()):
        blk = torch.randint(int(blocks[0]), (r,), generator=gen)
    else:
        blk = (torch.rand(r, generator=gen, dtype=torch.float64) * blocks).floor().long().clamp(max=blocks - 1)
    first = blk * block_length
    return first, torch.minimum(n_targets - first, torch.full_like(first, block_length))


def level_masks(rows: Rows, level: int, *, n_eff: int, block_length: int | None,
                gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scored, masked)`` ``[r, W]`` for one forward at nominal level ``level`` (see the module docstring)."""
    n_t = rows.n_targets
    span = n_eff if block_length is not None else int(n_t.max())
    u = torch.rand(rows.count, span, generator=gen)  # the visible ones: the smallest of iid uniforms
    if block_length is None:
        first, length = torch.zeros_like(n_t), n_t
    else:
        first, length = choose_blocks(n_t, block_length, gen)
    local = torch.arange(span).unsqueeze(0)
    inside = local < length.unsqueeze(1)
    if not bool(inside.all()):
        u = u.masked_fill(~inside, 2.0)  # positions past a short row's block rank last and are never chosen
    ranks = u.argsort(1).argsort(1)
    visible = (level * length) // n_eff
    scored = rows.spread((ranks >= visible.unsqueeze(1)) & inside, first)
    if block_length is None:
        return scored, scored
    tidx = torch.arange(rows.target_columns.shape[1]).unsqueeze(0)
    later = rows.spread((tidx >= (first + length).unsqueeze(1)) & (tidx < n_t.unsqueeze(1)))
    return scored, scored | later


def forward_rows(mlm: MaskedLM, rows: Rows, level: int, *, n_eff: int, block_length: int | None,
                 gen: torch.Generator) -> torch.Tensor:
    """Per-row mean CE, predictive entropy and top-1 accuracy ``[r, 3]`` (float64) over the row's scored
    positions, for one forward at nominal level ``level``."""
    scored, masked = level_masks(rows, level, n_eff=n_eff, block_length=block_length, gen=gen)
    pad = mlm.pad_token_id if mlm.pad_token_id is not None else 0
    logits = mlm.logits(rows.canvas(masked, mlm.mask_token_id, pad), rows.attention(), positions=scored)
    logp = torch.log_softmax(logits.float(), dim=-1)
    true = rows.ids[scored].to(logp.device)
    ce = -logp.gather(1, true.unsqueeze(1)).squeeze(1)
    if not bool(torch.isfinite(ce).all()):
        raise ValueError("a data token got probability 0 under the model (infinite cross-entropy): the data contain "
                         "tokens the adapter suppresses; strip special tokens from the data")
    ent = torch.special.entr(logp.exp()).sum(-1)
    acc = (logits.argmax(-1) == true)
    per_token = torch.stack([ce.double(), ent.double(), acc.double()], dim=1).cpu()
    m = scored.sum(1)
    if bool((m == m[0]).all()):  # every row scores the same number: row means are a reshape away
        return per_token.view(rows.count, int(m[0]), 3).mean(1)
    row = scored.nonzero()[:, 0]
    sums = torch.zeros(rows.count, 3, dtype=torch.float64).index_add_(0, row, per_token)
    return sums / m.unsqueeze(1).double()
