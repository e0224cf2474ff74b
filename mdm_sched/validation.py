"""Validators shared by every public entry point: one clear error that names the argument and the fix.

Each function returns the normalised value (a Python ``int``/``float``, a tuple ...) or raises
``ValueError``/``TypeError`` with a message of the form ``"<name> must be ..., got <value>"``. Library
code validates at its boundary with these and trusts the values afterwards.
"""
from __future__ import annotations

import math
import numbers
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch

__all__ = ["check_int", "check_float", "check_choice", "check_optional_int", "check_generator", "is_int",
           "check_token_ids", "check_device", "check_input_path", "check_output_path"]

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


def check_token_ids(ids: torch.Tensor, name: str, vocab_size: int, *, where: torch.Tensor | None = None) -> None:
    """Raise a ValueError naming ``name``, the offending id and its position when an id of the integer tensor
    ``ids`` (only where ``where`` is True, if given) lies outside ``[0, vocab_size)``."""
    if ids.numel() == 0:
        return
    bad = (ids < 0) | (ids >= vocab_size)
    if where is not None:
        bad &= where
    if not bool(bad.any()):
        return
    first = bad.nonzero()[0].tolist()
    value = int(ids[tuple(first)])
    at = f" at row {first[0]}, position {first[1]}" if len(first) == 2 else f" at position {first[0]}"
    raise ValueError(f"{name} hold token id {value}{at}, outside the model's vocabulary [0, {vocab_size}): "
                     "tokenise with the model's own tokenizer")


def check_device(device: Any, name: str = "device") -> torch.device | None:
    """``None`` or a ``torch.device`` this torch build can use (a CUDA device needs a CUDA build and a GPU)."""
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"{name}={device!r} is not a device: use e.g. 'cpu', 'cuda' or 'cuda:1'") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name}={device!r} but this torch build sees no CUDA GPU (torch.cuda.is_available() is "
                             "False): use cpu, or install a CUDA build of torch on a machine with a GPU")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{name}={device!r} but only {torch.cuda.device_count()} CUDA device(s) are visible")
    if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError(f"{name}={device!r} but MPS is not available here: use cpu")
    return dev


def check_input_path(path: Any, name: str, *, what: str = "file") -> Path:
    """An existing file or folder ``path``; else a FileNotFoundError ``"<name> <path> does not exist"``."""
    p = Path(os.fspath(path)).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{name} {path} does not exist (expected a {what})")
    return p


def check_output_path(path: Any, name: str, *, folder_ok: bool = False, create_parents: bool = False) -> Path:
    """A path that can be written: its folder exists (or, with ``create_parents``, the nearest existing ancestor
    is writable) and is writable, and the path is not a folder (unless ``folder_ok``: then a folder, existing or
    to be created in an existing parent, is the output). Checked before any work, so nothing is lost later."""
    p = Path(os.fspath(path)).expanduser()
    if p.is_dir():
        if not folder_ok:
            raise ValueError(f"{name} {path} is a folder: give a file name")
        target = p
    else:
        target = p.parent if str(p.parent) else Path(".")
        if not target.is_dir():
            if not create_parents:
                raise FileNotFoundError(f"{name} {path}: the folder {target} does not exist; create it first")
            while not target.is_dir():
                target = target.parent
    if not os.access(target, os.W_OK | os.X_OK) or not _can_create_in(target):
        raise PermissionError(f"{name} {path}: the folder {target} is not writable; choose another path")
    if p.exists() and not p.is_dir() and not os.access(p, os.W_OK):
        raise PermissionError(f"{name} {path} exists and is not writable; choose another path")
    return p


def _can_create_in(folder: Path) -> bool:
    """Whether a file can really be created in ``folder`` (``os.access`` says yes to root on read-only mounts)."""
    import tempfile

    try:
        fd, tmp = tempfile.mkstemp(prefix=".mdm_sched_write_check.", dir=folder)
    except OSError:
        return False
    os.close(fd)
    os.unlink(tmp)
    return True
