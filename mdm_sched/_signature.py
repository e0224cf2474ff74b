"""What a callable accepts, read from its signature (model forwards, user hooks), for optional arguments."""
from __future__ import annotations

import inspect
from collections.abc import Callable

__all__ = ["accepts", "parameter_names"]


def parameter_names(fn: Callable[..., object]) -> frozenset[str]:
    """Names of ``fn``'s parameters (empty when its signature cannot be read)."""
    try:
        return frozenset(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return frozenset()


def accepts(fn: Callable[..., object], name: str) -> bool:
    """True when ``fn`` takes a keyword ``name`` (by name or through ``**kwargs``); False when unreadable."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
