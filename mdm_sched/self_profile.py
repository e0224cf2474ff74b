"""Self profiles (data-free): a model's profile measured on its own samples from the slow N-call sampler.

With no held-out data, sample ``x ~ q_N`` from the model's own one-token-per-call sampler (for the order the
schedule will be used with) and estimate the profile on those samples. THEORY.md section 3 with ``pi = q_N``:

- random order: ``sum_t k_t CE_self(K_{t-1}) - H(q_N) = E_order KL(q_N || q_{T,order})``, so the cost ``J(k)``
  of the self profile is ``E_order KL(q_N || q_{T,order}) - c`` with ``c = E_order KL(q_N || q_{N,order}) >= 0``
  (zero when the model's conditionals are those of one joint law) independent of ``k``, and
  ``KL(q_N || q_T) <= J(k) + c`` (convexity). The optimal schedule on the self profile makes the fast sampler
  as close as it can to the model's **own slow sampler** -- not to the data: it cannot correct the model's
  learning error, and it needs no data.
- ordered samplers (:mod:`mdm_sched.policy`): along the deterministic ordered sampler's own path,
  ``L(1, ..., 1) = H(q_N)`` exactly and ``J(k) = KL(q_N || q_T)`` up to the policy table's state approximation.

Conditional versions keep each example's context (a prompt, the frame around an infilled region) and resample
only the generated positions. :func:`estimate_self_profile` is the one call; :func:`self_samples` gives the
samples. Sampling is exact at temperature 1 (the library's float64 inverse-CDF draw), seeded per batch, and
shared round-robin across processes like the estimator (K processes give the 1-process samples).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .conditioning import Examples
from .distributed import AcceleratorLike, DistContext
from .masking import Rows
from .policy import sample_walks
from .validation import check_choice, check_int, check_optional_int

if TYPE_CHECKING:
    from ._types import ModelLike, PromptLike
    from .models import MaskedLM
    from .profile import InformationProfile

__all__ = ["self_samples", "estimate_self_profile"]


def _sample_seed(seed: int, batch: int) -> int:
    return int(np.random.SeedSequence([seed, batch, 0x5E1F, 2]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def _contexts(mlm: MaskedLM, n_tokens: int | None, prompts: PromptLike | None, examples: Examples | None) -> Examples:
    """What each sample keeps: the given examples, prompts followed by ``n_tokens`` positions, or ``n_tokens`` alone."""
    if examples is not None:
        if prompts is not None:
            raise ValueError("pass prompts= or examples= (the contexts to sample under), not both")
        return examples
    n = check_int(n_tokens, "n_tokens", minimum=1) if n_tokens is not None else None
    if n is None:
        raise ValueError("n_tokens= is required: the number of positions to generate per sample")
    filler = int(mlm.allowed_ids[0])  # placeholder at generated positions: never read
    if prompts is None:
        return Examples.from_rows([[filler] * n], [[True] * n], kind="none", description="self")
    rows = mlm.encode([prompts] if isinstance(prompts, str) else list(prompts)) \
        if isinstance(prompts, str) or (len(prompts) and isinstance(prompts[0], str)) else list(prompts)
    return Examples.from_pairs(rows, [[filler] * n for _ in rows], description="self (prompts)")


def self_samples(model: ModelLike, *, n_tokens: int | None = None, num_samples: int = 256, order: str = "random",
                 prompts: PromptLike | None = None, examples: Examples | None = None, batch_size: int = 16,
                 seed: int = 0, progress: bool = True, accelerator: AcceleratorLike | None = None) -> Examples:
    """``num_samples`` samples of the model's N-call sampler for ``order`` (one position per call, temperature 1),
    as :class:`Examples` with the same context as the inputs (sample ``i`` uses context ``i mod M``)."""
    from .models import wrap
    from .policy import POLICY_ORDERS

    mlm = wrap(model)
    check_choice(order, "order", ("random", *POLICY_ORDERS))
    m = check_int(num_samples, "num_samples", minimum=1)
    bs = check_int(batch_size, "batch_size", minimum=1)
    ctx = _contexts(mlm, n_tokens, prompts, examples)
    pick = torch.arange(m) % len(ctx)
    ids, widths, target = ctx.ids[pick].clone(), ctx.widths[pick], ctx.target[pick]
    dist = DistContext.resolve(accelerator)
    out = torch.zeros(ids.shape, dtype=torch.float64)
    starts = range(0, m, bs)
    bar = None
    if progress and dist.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(starts), unit="batch", desc=f"self samples ({order})", dynamic_ncols=True)
    try:
        for k, start in enumerate(starts):
            if k % dist.world == dist.rank:
                rows = Rows(ids[start:start + bs], widths[start:start + bs], target[start:start + bs])
                gen = torch.Generator().manual_seed(_sample_seed(seed, k))
                out[start:start + bs] = sample_walks(mlm, rows, order, gen=gen).double()
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    samples = dist.all_reduce_sum(out).round().long()
    desc = f"self: {m} samples of the model's {order}-order N-call sampler (temperature 1)"
    return Examples(samples, widths, target, ctx.kind, desc, {"kept": m, "dropped": 0, "cropped": 0})


def estimate_self_profile(model: ModelLike, *, n_tokens: int | None = None, num_samples: int = 256,
                          order: str = "random", prompts: PromptLike | None = None, examples: Examples | None = None,
                          batch_size: int = 16, seed: int = 0, progress: bool = True,
                          accelerator: AcceleratorLike | None = None, **estimate_kwargs: Any) -> InformationProfile:
    """The self profile (data-free): :func:`mdm_sched.estimate_profile` on :func:`self_samples`.

    Args:
        model: anything :func:`mdm_sched.wrap` accepts.
        n_tokens: positions each sample generates (unconditional, or after each of ``prompts``).
        num_samples: samples drawn (each costs ``n_tokens`` model calls per batch of ``batch_size``).
        order: the order the schedule will be used with: ``"random"`` (ordinary profile) or
            ``"confidence"``/``"margin"``/``"entropy"`` (policy profile on the ordered sampler's own samples).
        prompts, examples: conditional self profiles: prompts (strings or token ids) that stay visible, or
            :class:`~mdm_sched.conditioning.Examples` whose context is kept and whose generated positions are
            resampled (e.g. an infilling frame).
        batch_size, seed, progress, accelerator: as in :func:`mdm_sched.estimate_profile` (also used for sampling).
        **estimate_kwargs: passed to :func:`mdm_sched.estimate_profile` (``levels``, ``tokens_per_level``,
            ``block_length``, ``max_batches``, ``checkpoint``, ...).

    Returns:
        The profile, with ``metadata["source"] == "self"`` and the sampler in ``metadata["self_sampler"]``.
    """
    from .estimate import estimate_profile

    check_optional_int(n_tokens, "n_tokens", minimum=1)
    samples = self_samples(model, n_tokens=n_tokens, num_samples=num_samples, order=order, prompts=prompts,
                           examples=examples, batch_size=batch_size, seed=seed, progress=progress,
                           accelerator=accelerator)
    prof = estimate_profile(model, samples, order=order, batch_size=batch_size, seed=seed, progress=progress,
                            accelerator=accelerator, data_description=samples.description, **estimate_kwargs)
    sampler = {"order": order, "calls": "one position per call", "temperature": 1.0, "num_samples": num_samples,
               "seed": seed, "ranking": "uniformly random positions" if order == "random" else
               prof.metadata.get("ranking")}
    return prof.with_metadata(source="self", self_sampler=sampler)
