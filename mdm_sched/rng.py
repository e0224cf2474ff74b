"""Where the sampling loop's random numbers come from: one generator for the batch, or one per row.

With a single ``torch.Generator`` (or ``None``) the whole batch shares one stream, so at temperature > 0 a
row's sample depends on the other rows. With a list of generators, one per row, every draw a row makes
comes from its own generator, in the order and amount it would make alone: the row's sample is then
bitwise independent of the batch (given a model whose logits for a row do not depend on the other rows).
Uniforms are float64, drawn on the generator's device and moved, so a CPU generator can drive a CUDA model.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["Randomness"]


class Randomness:
    """Uniform variates for position choices and token draws (see the module docstring)."""

    def __init__(self, generator: torch.Generator | Sequence[torch.Generator] | None, batch: int,
                 device: torch.device) -> None:
        self.device = device
        self.per_row: tuple[torch.Generator, ...] | None = None
        self.shared: torch.Generator | None = None
        if isinstance(generator, torch.Generator) or generator is None:
            self.shared = generator
        else:
            gens = tuple(generator)
            if len(gens) != batch:
                raise ValueError(f"generator is a list of {len(gens)} generators but the batch has {batch} rows: "
                                 "pass one generator per row (prompts x num_samples), or a single generator")
            self.per_row = gens

    def _rand(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        where = generator.device if generator is not None else self.device
        return torch.rand(n, generator=generator, dtype=torch.float64, device=where).to(self.device)

    def position_noise(self, attention: torch.Tensor) -> torch.Tensor:
        """``[B, L]`` iid uniforms; with per-row generators drawn over each row's own (unpadded) columns."""
        b, length = attention.shape
        if self.per_row is None:
            return self._rand(b * length, self.shared).view(b, length)
        noise = torch.zeros((b, length), dtype=torch.float64, device=self.device)
        for row, gen in enumerate(self.per_row):  # one stream per row: a loop over generators, not over tokens
            cols = attention[row]
            noise[row, cols] = self._rand(int(cols.sum()), gen)
        return noise

    def token_uniforms(self, rows: torch.Tensor) -> torch.Tensor:
        """``[P]`` uniforms for ``P`` token draws; ``rows[p]`` is the batch row of draw ``p`` (non-decreasing)."""
        if self.per_row is None:
            return self._rand(rows.numel(), self.shared)
        counts = torch.bincount(rows, minlength=len(self.per_row)).tolist()
        parts = [self._rand(n, gen) for n, gen in zip(counts, self.per_row) if n]
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64, device=self.device)
