"""Orders: which masked positions a call reveals, given how many (the reveal rule decides that).

An order turns the candidates of a call into scores ``[B, L]`` (higher reveals first, ``-inf`` outside the
candidates); the loop reveals each row's top ``k``. ``"random"`` is the random-order sampler the theory is
exact for: it needs no prediction to choose, so with a fixed schedule the model's logits are computed only at
the chosen positions. The others rank by the model's prediction at every candidate (LLaDA's low-confidence
remasking, Dream's margin and entropy orders).

To add an order: subclass :class:`RankedOrder` (set ``name`` and ``stats``; implement ``key``), or :class:`Order`
for anything else (implement ``scores``), and add an instance to :data:`ORDERS`.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch

from .draw import Draw
from .rng import Randomness

__all__ = ["Order", "RankedOrder", "RandomOrder", "ConfidenceOrder", "MarginOrder", "EntropyOrder", "ORDERS", "get_order"]


class Order(ABC):
    """Ranks the candidate positions of a call (see the module docstring)."""

    name: ClassVar[str]
    #: True: the ranking needs the model's prediction at every candidate (logits there, before choosing)
    uses_model: ClassVar[bool] = True
    #: draw statistics the score needs besides the drawn token's log-probability ("entropy", "margin")
    stats: ClassVar[frozenset[str]] = frozenset()

    @abstractmethod
    def scores(self, candidates: torch.Tensor, attention: torch.Tensor, draw: Draw | None,
               rng: Randomness) -> torch.Tensor:
        """Float ``[B, L]`` scores, ``-inf`` outside ``candidates``.

        ``draw`` holds the drawn tokens at ``candidates.nonzero()`` (row-major) when ``uses_model`` is true
        (or when the reveal rule needed predictions anyway); ``None`` otherwise.
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _spread(candidates: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``values`` at ``candidates.nonzero()`` laid out as ``[B, L]`` float32, ``-inf`` elsewhere."""
    out = torch.full(candidates.shape, float("-inf"), dtype=torch.float32, device=candidates.device)
    out[candidates] = values.float()
    return out


class RandomOrder(Order):
    """Uniformly random positions among the candidates, independent of the model."""

    name = "random"
    uses_model = False

    def scores(self, candidates: torch.Tensor, attention: torch.Tensor, draw: Draw | None,
               rng: Randomness) -> torch.Tensor:
        return rng.position_noise(attention).float().masked_fill(~candidates, float("-inf"))


class RankedOrder(Order):
    """Ranks the candidates by a statistic of the model's prediction there (higher ``key`` reveals first)."""

    def scores(self, candidates: torch.Tensor, attention: torch.Tensor, draw: Draw | None,
               rng: Randomness) -> torch.Tensor:
        assert draw is not None, f"order={self.name!r} needs the draw at every candidate"
        return _spread(candidates, self.key(draw))

    @abstractmethod
    def key(self, draw: Draw) -> torch.Tensor:
        """``[P]`` values at the candidates; higher is revealed first."""


class ConfidenceOrder(RankedOrder):
    """Most probable drawn token first (LLaDA's low-confidence remasking)."""

    name = "confidence"

    def key(self, draw: Draw) -> torch.Tensor:
        return draw.logp  # monotone in the probability of the drawn token, without exp's underflow ties


class MarginOrder(RankedOrder):
    """Largest gap between the two most probable tokens first (Dream's ``margin``)."""

    name = "margin"
    stats = frozenset({"margin"})

    def key(self, draw: Draw) -> torch.Tensor:
        return draw.statistic("margin")


class EntropyOrder(RankedOrder):
    """Lowest predictive entropy first (Dream's ``entropy``)."""

    name = "entropy"
    stats = frozenset({"entropy"})

    def key(self, draw: Draw) -> torch.Tensor:
        return -draw.statistic("entropy")


#: The built-in orders by name.
ORDERS: dict[str, Order] = {o.name: o for o in (RandomOrder(), ConfidenceOrder(), MarginOrder(), EntropyOrder())}


def get_order(order: str | Order) -> Order:
    """An :class:`Order` from its name (or the order itself)."""
    if isinstance(order, Order):
        return order
    if order not in ORDERS:
        raise ValueError(f"order={order!r} is unknown; choose one of {', '.join(ORDERS)}")
    return ORDERS[order]
