"""Log-likelihood of a continuation under a masked LM: LLaDA's Monte Carlo estimate, and its exact value.

A masked LM defines no single joint distribution, so "the" likelihood of a continuation ``y_1..y_L`` after a
context ``c`` is defined through orders: for an order ``sigma`` of the ``L`` positions, the any-order
autoregressive log-likelihood is ``sum_t log p(y_sigma(t) | c, y_sigma(<t))``, the other positions masked.
**Exact** here means its average over all ``L!`` orders. At the step of a uniformly random order where ``l``
positions are still masked, the masked set ``S`` is a uniform ``l``-subset and the position revealed next is
uniform in ``S``, so

    exact = sum over non-empty S of  1 / (|S| C(L, |S|))  sum_{j in S} log p(y_j | c, y outside S),

which one model call per subset gives: ``2^L - 1`` calls (:func:`exact_logprob`).

LLaDA's estimate (``get_log_likelihood.py``; Appendix B.5 of the LLaDA paper) draws ``l`` uniform in ``1..L``,
masks a uniform ``l``-subset of the continuation (the context is never masked) and scores
``(L / l) sum_{j in S} log p(y_j | ...)``; its expectation is exactly the sum above, so the estimate is unbiased
for the order average. As in LLaDA, the ``l`` of the rows of one batch are stratified (``l_i = k + i L / b``
modulo ``L`` from one uniform ``k``); here with ``floor`` instead of round-half-even so that every row's ``l``
is exactly uniform. Classifier-free guidance (LLaDA's ``cfg``) masks the whole context in a second pass and
scores ``un + (scale + 1)(cond - un)``.

Log-probabilities are those of the model's sampling distribution (:meth:`MaskedLM.logits`: never-sampled ids
excluded), so a continuation containing a never-sampled id has log-likelihood ``-inf``. A "call" is one
sequence through the model (a guided call counts once, as in :func:`mdm_sched.generate`).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ._types import ModelLike
from .models import MaskedLM, wrap
from .validation import check_float, check_int, check_optional_int

__all__ = ["LikelihoodEstimate", "continuation_logprob", "exact_logprob", "mc_logprob", "greedy_matches",
           "subset_masks", "stratified_counts"]


@dataclass(frozen=True)
class LikelihoodEstimate:
    """A continuation's log-likelihood (nats) and what it cost.

    Attributes:
        logprob: the exact order average, or its Monte Carlo estimate.
        stderr: standard error of the estimate (0 when exact); rows are treated as independent, which the
            stratification of ``l`` only makes conservative on average.
        exact: whether all orders were enumerated.
        calls: sequences run through the model.
        n_tokens: continuation length ``L``.
    """

    logprob: float
    stderr: float
    exact: bool
    calls: int
    n_tokens: int


def _ids(tokens: Sequence[int] | torch.Tensor, name: str) -> torch.Tensor:
    ids = torch.as_tensor(tokens, dtype=torch.long).flatten().cpu() if len(tokens) else torch.zeros(0, dtype=torch.long)
    if ids.numel() and int(ids.min()) < 0:
        raise ValueError(f"{name} must hold non-negative token ids")
    return ids


def subset_masks(length: int) -> torch.Tensor:
    """Boolean ``[2^L - 1, L]``: every non-empty subset of ``L`` positions, one per row (bit ``j`` of ``row + 1``)."""
    length = check_int(length, "length", minimum=1, maximum=30)
    codes = torch.arange(1, 2 ** length, dtype=torch.long)
    return (codes.unsqueeze(1) >> torch.arange(length)).bitwise_and(1).bool()


def stratified_counts(length: int, rows: int, generator: torch.Generator) -> torch.Tensor:
    """``[rows]`` numbers of masked positions in ``1..L``, each exactly uniform, spread evenly from one draw."""
    k = int(torch.randint(0, length, (1,), generator=generator))
    offsets = (torch.arange(rows, dtype=torch.long) * length) // rows
    return (k + offsets) % length + 1


def _random_subsets(counts: torch.Tensor, length: int, generator: torch.Generator) -> torch.Tensor:
    """Boolean ``[R, L]`` with a uniformly random subset of ``counts[r]`` positions in row ``r``."""
    ranks = torch.rand(counts.shape[0], length, generator=generator).argsort(dim=1).argsort(dim=1)
    return ranks < counts.unsqueeze(1)


def _scored(mlm: MaskedLM, context: torch.Tensor, target: torch.Tensor, masks: torch.Tensor,
            cfg_scale: float) -> torch.Tensor:
    """Float64 ``[R, L]``: ``log p(target_j | context, unmasked target)`` where ``masks`` is set, else 0."""
    rows, n_ctx = masks.shape[0], context.numel()
    device = mlm.device
    seq = torch.cat([context, target]).to(device).unsqueeze(0).expand(rows, -1)
    where = torch.cat([torch.zeros(rows, n_ctx, dtype=torch.bool), masks], dim=1).to(device)
    ids = seq.masked_fill(where, mlm.mask_token_id)
    if cfg_scale > 0:
        uncond = ids.clone()
        uncond[:, :n_ctx] = mlm.mask_token_id
        both = mlm.logits(torch.cat([ids, uncond]), positions=torch.cat([where, where]))
        cond, un = both.chunk(2, dim=0)
        logits = (un + (cfg_scale + 1.0) * (cond - un)).masked_fill(torch.isinf(cond), float("-inf"))
    else:
        logits = mlm.logits(ids, positions=where)
    logp = torch.log_softmax(logits.double(), dim=-1).gather(1, seq[where].unsqueeze(1)).squeeze(1)
    out = torch.zeros(rows, target.numel(), dtype=torch.float64, device=device)
    out[masks.to(device)] = logp
    return out.cpu()


def _scored_batched(mlm: MaskedLM, context: torch.Tensor, target: torch.Tensor, masks: torch.Tensor,
                    cfg_scale: float, batch_size: int) -> torch.Tensor:
    return torch.cat([_scored(mlm, context, target, masks[i:i + batch_size], cfg_scale)
                      for i in range(0, masks.shape[0], batch_size)])


def exact_logprob(model: ModelLike, context: Sequence[int] | torch.Tensor, target: Sequence[int] | torch.Tensor, *,
                  batch_size: int = 32, cfg_scale: float = 0.0) -> LikelihoodEstimate:
    """The order-averaged any-order AR log-likelihood of ``target`` after ``context``, by all ``2^L - 1`` subsets.

    Args:
        model: a :class:`~mdm_sched.MaskedLM` or anything :func:`mdm_sched.wrap` accepts.
        context, target: token ids (content ids, no framing); ``target`` non-empty, at most 30 tokens.
        batch_size: sequences per forward pass.
        cfg_scale: LLaDA's unsupervised classifier-free guidance (0 = off).
    """
    mlm = wrap(model)
    ctx, tgt = _ids(context, "context"), _ids(target, "target")
    length = check_int(tgt.numel(), "len(target)", minimum=1, maximum=30)
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    cfg_scale = check_float(cfg_scale, "cfg_scale", minimum=0.0)
    masks = subset_masks(length)
    sizes = masks.sum(1)
    weights = torch.tensor([1.0 / (s * math.comb(length, s)) for s in sizes.tolist()], dtype=torch.float64)
    with torch.inference_mode():
        per_subset = _scored_batched(mlm, ctx, tgt, masks, cfg_scale, batch_size).sum(1)
    return LikelihoodEstimate(float((weights * per_subset).sum()), 0.0, True, masks.shape[0], length)


def mc_logprob(model: ModelLike, context: Sequence[int] | torch.Tensor, target: Sequence[int] | torch.Tensor, *,
               mc_num: int = 128, batch_size: int = 32, cfg_scale: float = 0.0,
               generator: torch.Generator | None = None) -> LikelihoodEstimate:
    """LLaDA's Monte Carlo estimate of the order-averaged log-likelihood (module docstring) from ``mc_num`` rows.

    Rows come in batches of ``batch_size`` (the last may be smaller), each batch stratified over ``l``.
    ``generator`` (CPU) is the only randomness.
    """
    mlm = wrap(model)
    ctx, tgt = _ids(context, "context"), _ids(target, "target")
    length = check_int(tgt.numel(), "len(target)", minimum=1)
    mc_num = check_int(mc_num, "mc_num", minimum=1)
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    cfg_scale = check_float(cfg_scale, "cfg_scale", minimum=0.0)
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    values = []
    with torch.inference_mode():
        for start in range(0, mc_num, batch_size):
            counts = stratified_counts(length, min(batch_size, mc_num - start), gen)
            masks = _random_subsets(counts, length, gen)
            scored = _scored(mlm, ctx, tgt, masks, cfg_scale).sum(1)
            values.append(scored * length / counts.double())
    rows = torch.cat(values)
    se = float(rows.std(unbiased=True) / math.sqrt(rows.numel())) if rows.numel() > 1 else float("inf")
    return LikelihoodEstimate(float(rows.mean()), se, False, rows.numel(), length)


def continuation_logprob(model: ModelLike, context: Sequence[int] | torch.Tensor,
                         target: Sequence[int] | torch.Tensor, *, mc_num: int = 128, batch_size: int = 32,
                         exact_max_calls: int | None = None, cfg_scale: float = 0.0,
                         generator: torch.Generator | None = None) -> LikelihoodEstimate:
    """Exact when ``2^L - 1 <= exact_max_calls`` (default ``mc_num``: enumeration costs no more calls than
    Monte Carlo would), else :func:`mc_logprob`. ``exact_max_calls=0`` always estimates."""
    exact_max_calls = check_optional_int(exact_max_calls, "exact_max_calls", minimum=0)
    budget = check_int(mc_num, "mc_num", minimum=1) if exact_max_calls is None else exact_max_calls
    length = len(target)
    if 1 <= length <= 30 and 2 ** length - 1 <= budget:
        return exact_logprob(model, context, target, batch_size=batch_size, cfg_scale=cfg_scale)
    return mc_logprob(model, context, target, mc_num=mc_num, batch_size=batch_size, cfg_scale=cfg_scale,
                      generator=generator)


def greedy_matches(model: ModelLike, context: Sequence[int] | torch.Tensor, target: Sequence[int] | torch.Tensor, *,
                   cfg_scale: float = 0.0) -> tuple[bool, int]:
    """Whether greedy decoding reproduces ``target``, and the calls it took (``L``).

    LLaDA's ``suffix_greedy_prediction``: the continuation starts fully masked and each call reveals the single
    most confident position with its argmax token (``generate`` with one token per call, confidence order,
    temperature 0).
    """
    from .sampling import generate

    mlm = wrap(model)
    ctx, tgt = _ids(context, "context"), _ids(target, "target")
    length = check_int(tgt.numel(), "len(target)", minimum=1)
    prompts = [ctx.tolist()] if ctx.numel() else None
    out = generate(mlm, prompts, gen_length=length, schedule=length, order="confidence", temperature=0.0,
                   cfg_scale=cfg_scale, generator=torch.Generator().manual_seed(0))
    return bool(torch.equal(out.generated[0].cpu(), tgt)), int(out.nfe)
