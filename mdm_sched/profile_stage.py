"""The harness's profile stages: every kind of profile a decoder may name, measured on the profile split and cached.

The unconditional random-order profile is :meth:`mdm_sched.harness._Run.profile`. The others are measured here,
always on the run's *profile* split (never on the evaluation examples), for the order and conditioning the
schedule built on them is used with (so :func:`mdm_sched.generate` has no mismatch to warn about):

- :func:`region_profile`: infilling, the same positions as the evaluation task masked (the task built on the
  profile split), the rest visible; random order (:func:`mdm_sched.estimate_profile` on
  :class:`~mdm_sched.conditioning.Examples`);
- :func:`policy_profile`: the ordering-aware profile of a ranked order (:mod:`mdm_sched.policy`), on the infilling
  frames or unconditionally on the fixed-length profile split;
- :func:`self_profile`: data-free, on the model's own samples of its N-call sampler for the order (random: an
  ordinary profile; ranked: a policy profile), with the frames' context kept when infilling.

Policy and self profiles walk whole examples (one forward per generated position and example), so they use at
most ``EvalConfig.profile_walks`` examples, all generating the same number of positions: when infilling, the
examples with the most common number of infilled positions (ties: the larger count); the schedule built on the
profile is then evaluated at the task's length (the rank table is interpolated, :func:`mdm_sched.policy.block_costs`).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import torch

from .conditioning import Examples

if TYPE_CHECKING:
    from .models import MaskedLM
    from .profile import InformationProfile
    from .results import EvalConfig
    from .tasks import InfillTask

__all__ = ["task_examples", "equal_length", "region_profile", "policy_profile", "self_profile", "unconditional_examples"]

Payload = dict[str, Any]


class StageHost(Protocol):
    """What a harness stage (profiles here, infilling in :mod:`mdm_sched.infill_eval`) needs from the run: the
    model, the settings, a cache and a cost counter."""

    model: MaskedLM
    cfg: EvalConfig
    forward_rows: int

    def stage(self, name: str, file: str, fingerprint: Mapping[str, object], compute: Callable[[], Payload], *,
              eval_subset: bool = True) -> Payload:
        ...


def task_examples(task: InfillTask) -> Examples:
    """An infilling task as :class:`~mdm_sched.conditioning.Examples`: the targets generated, the rest visible."""
    return Examples(task.ids, task.widths, task.target, "infill", task.description,
                    {"kept": len(task), "dropped": 0, "cropped": 0})


def equal_length(ex: Examples, limit: int, seed: int) -> Examples:
    """At most ``limit`` examples (a seeded subset) among those generating the most common number of positions."""
    counts = torch.bincount(ex.n_targets)
    mode = int((counts == counts.max()).nonzero().max())  # ties: the larger count
    idx = (ex.n_targets == mode).nonzero().squeeze(1)
    if idx.numel() > limit:
        g = torch.Generator().manual_seed(seed)
        idx = idx[torch.randperm(idx.numel(), generator=g)[:limit]].sort().values
    keep = torch.zeros(len(ex), dtype=torch.bool)
    keep[idx] = True
    return ex.select(keep)


def unconditional_examples(rows: torch.Tensor, limit: int) -> Examples:
    """The first ``limit`` fixed-length sequences ``rows [M, N]`` as unconditional examples (all generated)."""
    x = rows[:limit]
    return Examples(x, torch.full((x.shape[0],), x.shape[1], dtype=torch.long), torch.ones_like(x, dtype=torch.bool),
                    "none", "profile split", {"kept": int(x.shape[0]), "dropped": 0, "cropped": 0})


def _fingerprint(ex: Examples) -> dict[str, object]:
    return {"examples": len(ex), "sha": ex.sha256, "kind": ex.kind}


def _cached(host: StageHost, name: str, fp: Mapping[str, object], compute: Callable[[], InformationProfile]
            ) -> InformationProfile:
    from .profile import InformationProfile

    def payload() -> Payload:
        prof = compute()
        rows = int(prof.metadata.get("forwards") or 0) * host.cfg.batch_size  # an upper bound: the last batch is short
        host.forward_rows += rows
        return {"profile": prof.to_dict()}

    hit = host.stage(f"{name} profile", f"profiles/{name}.json", {"what": f"profile {name}", **fp}, payload,
                     eval_subset=False)
    return InformationProfile.from_dict(hit["profile"])


def region_profile(host: StageHost, ex: Examples) -> InformationProfile:
    """The random-order profile conditioned on the task's context, measured on ``ex`` (the profile split's task)."""
    import mdm_sched as ms

    cfg = host.cfg
    fp = {**_fingerprint(ex), "levels": cfg.profile_levels, "tokens_per_level": cfg.profile_tokens_per_level}
    return _cached(host, "region", fp, lambda: ms.estimate_profile(
        host.model, ex, levels=cfg.profile_levels, tokens_per_level=cfg.profile_tokens_per_level,
        batch_size=cfg.batch_size, seed=cfg.seed, progress=False, data_description=f"{cfg.data}:{cfg.profile_split}, "
        f"{ex.description}"))


def policy_profile(host: StageHost, ex: Examples, order: str, *, label: str) -> InformationProfile:
    """The ``order`` policy profile on ``ex`` (equal numbers of generated positions), one walk per example."""
    import mdm_sched as ms

    cfg = host.cfg
    fp = {**_fingerprint(ex), "order": order, "levels": cfg.profile_levels}
    return _cached(host, f"{label}-policy-{order}", fp, lambda: ms.estimate_profile(
        host.model, ex, order=order, levels=cfg.profile_levels, batch_size=cfg.batch_size, seed=cfg.seed,
        progress=False, data_description=f"{cfg.data}:{cfg.profile_split}, {ex.description}"))


def self_profile(host: StageHost, ex: Examples, order: str, *, label: str) -> InformationProfile:
    """The self profile of ``order``: one sample of the model's N-call sampler per example of ``ex`` (its context
    kept, its generated positions resampled), then the profile of ``order`` on the samples."""
    import mdm_sched as ms

    cfg = host.cfg
    per_level = {"tokens_per_level": cfg.profile_tokens_per_level} if order == "random" else {}
    fp = {**_fingerprint(ex), "order": order, "levels": cfg.profile_levels, **per_level}

    def compute() -> InformationProfile:
        prof = ms.estimate_self_profile(host.model, examples=ex, num_samples=len(ex), order=order,
                                        levels=cfg.profile_levels, batch_size=cfg.batch_size, seed=cfg.seed,
                                        progress=False, **per_level)
        host.forward_rows += len(ex) * int(ex.n_targets.max())  # the samples: one call per generated position
        return prof

    return _cached(host, f"{label}-self-{order}", fp, compute)
