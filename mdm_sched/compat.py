"""Every difference between the supported ``transformers`` releases (4.38 to 5.x), in one place.

LLaDA's remote code pins transformers 4.38.2 and Dream's 4.46.2; the library is also tested on the
newest 5.x release. Library code never compares versions itself: it calls the helpers here, and a
new difference becomes one more helper (with the releases it was seen in).

Differences handled:

- ``from_pretrained``'s dtype keyword: ``torch_dtype=`` before 4.56, ``dtype=`` from 4.56 on (4.x
  passes an unknown ``dtype=`` on to the model's ``__init__``, which raises a ``TypeError``; 5.x still
  takes ``torch_dtype=`` but warns that it is deprecated). Use :func:`dtype_kwargs`.
- ``apply_chat_template``'s ``return_dict`` defaults to ``False`` in 4.x and ``True`` in 5.x; the
  library always passes it explicitly (:mod:`mdm_sched.text`), so the default never matters.
- A tokenizer without a chat template: before 4.43 ``apply_chat_template`` silently falls back to a
  class-wide default template (ChatML or the model class's own), from 4.43 on it raises. The library
  uses only the tokenizer's own template (:func:`own_chat_template`) and says so when there is none.
"""
from __future__ import annotations

import functools
import re
from typing import Any

import torch

__all__ = ["MIN_TRANSFORMERS", "transformers_version", "at_least", "dtype_kwargs", "DTYPE_KEYWORD_SINCE",
           "own_chat_template"]

#: The oldest release the library is tested with (LLaDA's pin).
MIN_TRANSFORMERS = (4, 38, 2)
#: The first release whose ``from_pretrained`` takes ``dtype=`` (older ones want ``torch_dtype=``).
DTYPE_KEYWORD_SINCE = (4, 56, 0)


def _parse(version: str) -> tuple[int, int, int]:
    """``"4.46.3"`` -> ``(4, 46, 3)``; pre-release and local suffixes (``"5.0.0.dev0"``, ``"4.57.0rc1"``) are dropped."""
    parts = [int(p) for p in re.findall(r"\d+", version.split("+")[0])[:3]]
    if not parts:
        raise ValueError(f"cannot read a transformers version from {version!r}")
    while len(parts) < 3:
        parts.append(0)
    return (parts[0], parts[1], parts[2])


@functools.lru_cache(maxsize=1)
def transformers_version() -> tuple[int, int, int]:
    """The installed ``transformers`` release as ``(major, minor, patch)``."""
    import transformers

    return _parse(transformers.__version__)


def at_least(version: tuple[int, ...]) -> bool:
    """Is the installed ``transformers`` at least ``version`` (e.g. ``(4, 56)``)?"""
    return transformers_version() >= tuple(version)


def dtype_kwargs(dtype: torch.dtype | str | None) -> dict[str, Any]:
    """The ``from_pretrained`` keyword for ``dtype`` under the installed release (``{}`` for ``None``)."""
    if dtype is None:
        return {}
    return {"dtype" if at_least(DTYPE_KEYWORD_SINCE) else "torch_dtype": dtype}


def own_chat_template(tokenizer: Any) -> str | dict | None:
    """The chat template the tokenizer itself carries (``None`` when it has none).

    Never the class-wide default that releases before 4.43 fall back to: a model's chat format is the
    one it was trained with, not a guess.
    """
    template = getattr(tokenizer, "chat_template", None)
    return template or None
