"""Validators shared by every public entry point: one clear error that names the argument and the fix.

Each function returns the normalised value (a Python ``int``/``float``, a tuple ...) or raises
``ValueError``/``TypeError`` with a message of the form ``"<name> must be ..., got <value>"``. Library
code validates at its boundary with these and trusts the values afterwards.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

import torch

__all__ = ["check_int", "check_float", "check_choice", "check_optional_int", "check_generator", "is_int"]

T = TypeVar("T")


def is_int(value: Any) -> bool:
    """True for Python/numpy integers and integer 0-d tensors, False for bools and everything else."""
    if isinstance(value, bool):
        return False
    if isinstance(value, numbers.Integral):
        return True
    return isinstance(value, torch.Tensor) and value.numel() == 1 and value.ndim == 0 and \
        not value.is_floating_point() and not value.is_complex() and value.dtype != torch.bool


def check_int(value: Any, name: str, *, minimum: int | None = None, maximum: int | None = None,
              hint: str = "") -> int:
    """``value`` as an int, refusing floats, bools and anything non-integral (``hint`` ends the message)."""
    if not is_int(value):
        raise ValueError(f"{name} must be an integer{hint}, got {value!r} ({type(value).__name__})")
    value = int(value.item()) if isinstance(value, torch.Tensor) else int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}{hint}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}{hint}, got {value}")
    return value


def check_optional_int(value: Any, name: str, *, minimum: int | None = None, maximum: int | None = None,
                       hint: str = "") -> int | None:
    """``None`` or :func:`check_int`."""
    return None if value is None else check_int(value, name, minimum=minimum, maximum=maximum, hint=hint)


def check_float(value: Any, name: str, *, minimum: float | None = None, maximum: float | None = None,
                min_inclusive: bool = True, max_inclusive: bool = True, hint: str = "") -> float:
    """``value`` as a finite float within the given bounds."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        if isinstance(value, torch.Tensor) and value.numel() == 1 and value.is_floating_point():
            value = float(value.item())
        else:
            raise ValueError(f"{name} must be a number{hint}, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite{hint}, got {value!r}")
    if minimum is not None and (value < minimum or (not min_inclusive and value == minimum)):
        raise ValueError(f"{name} must be {'>=' if min_inclusive else '>'} {minimum:g}{hint}, got {value!r}")
    if maximum is not None and (value > maximum or (not max_inclusive and value == maximum)):
        raise ValueError(f"{name} must be {'<=' if max_inclusive else '<'} {maximum:g}{hint}, got {value!r}")
    return value


def check_choice(value: Any, name: str, choices: Iterable[T]) -> T:
    """``value`` if it is one of ``choices``."""
    options = tuple(choices)
    try:
        known = value in options
    except TypeError:  # unhashable or incomparable values are simply not among the options
        known = False
    if not known:
        raise ValueError(f"{name}={value!r} is unknown; choose one of {', '.join(map(str, options))}")
    return value  # type: ignore[return-value]


def check_generator(generator: Any, name: str = "generator") -> torch.Generator | Sequence[torch.Generator] | None:
    """``None``, a ``torch.Generator`` or a list of them (one per row)."""
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, (list, tuple)) and generator and all(isinstance(g, torch.Generator) for g in generator):
        return tuple(generator)
    raise TypeError(f"{name} must be None, a torch.Generator or a list of torch.Generator (one per row), got "
                    f"{type(generator).__name__}; build one with torch.Generator().manual_seed(seed)")
