"""mdm_sched: provably optimal unmasking schedules and one generate() loop for masked LMs.

    import mdm_sched as ms
    model = ms.load_masked_lm("sapiens-vh")
    profile = ms.estimate_profile(model, heldout, n_tokens=120)
    sched = ms.schedules.optimal(profile, steps=16, n_tokens=120)
    out = ms.generate(model, gen_length=120, schedule=sched, num_samples=8)
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

from . import schedules
from .schedules import Schedule

# Heavier parts are imported on first use so `import mdm_sched` stays fast and a missing optional
# piece never breaks the schedule mathematics.
_LAZY = {
    "oracle": ("mdm_sched.oracle", None),
    "wrap": ("mdm_sched.models", "wrap"),
    "load_masked_lm": ("mdm_sched.models", "load_masked_lm"),
    "MaskedLM": ("mdm_sched.models", "MaskedLM"),
    "generate": ("mdm_sched.sampling", "generate"),
    "MaskedGenerationConfig": ("mdm_sched.config", "MaskedGenerationConfig"),
    "rules": ("mdm_sched.rules", None),
    "orders": ("mdm_sched.orders", None),
    "GenerationOutput": ("mdm_sched.sampling", "GenerationOutput"),
    "InformationProfile": ("mdm_sched.profile", "InformationProfile"),
    "estimate_profile": ("mdm_sched.estimate", "estimate_profile"),
    "estimate_self_profile": ("mdm_sched.self_profile", "estimate_self_profile"),
    "Examples": ("mdm_sched.conditioning", "Examples"),
    "conditioning": ("mdm_sched.conditioning", None),
    "policy": ("mdm_sched.policy", None),
    "data": ("mdm_sched.data", None),
    "assets": ("mdm_sched.assets", None),
}


def __getattr__(name: str):
    if name in _LAZY:
        module, attr = _LAZY[name]
        mod = importlib.import_module(module)
        return mod if attr is None else getattr(mod, attr)
    raise AttributeError(f"module 'mdm_sched' has no attribute {name!r}")


__all__ = ["Schedule", "schedules", "__version__", *_LAZY]
