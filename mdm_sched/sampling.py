"""The one sampling loop: :func:`generate` for every masked LM family (through :class:`~mdm_sched.models.MaskedLM`).

At each model call the *schedule* decides how many positions a row reveals and the *order* decides
which. ``order="random"`` is the random-order factorized sampler the theory is exact for (positions
uniformly at random among the masked ones, independent of the model, tokens drawn independently from
the model's conditionals); ``"confidence"``, ``"margin"`` and ``"entropy"`` rank the masked positions
by the model's prediction (LLaDA's low-confidence remasking, Dream's margin/entropy orders).

Rules (documented once, here):

* **Blocks.** The generated span is cut into blocks of ``block_length`` (the last one may be shorter);
  blocks are filled left to right, the schedule applied within each block. A ``Schedule`` must reveal
  exactly ``block_length`` tokens (``gen_length`` without blocks); a shorter last block uses
  ``schedule.rescale(len)``. An int ``T`` means ``constant(block_length, T)`` per block.
* **Infilling.** Mask tokens inside a prompt are filled together with the first block. The schedule's
  cumulative reveal fractions ``K_t / N`` are applied to *every* masked position of the block of that
  row: after call ``t`` a row with ``n`` masked positions in the block has revealed
  ``floor(K_t * n / N)`` of them. A row without prompt masks therefore reveals exactly ``k_t`` tokens
  per call; a row with ``m`` prompt masks reveals its ``N + m`` positions in the same ``T`` calls.
  With ``gen_length=0`` (pure infilling) ``N`` is the largest number of masks in a row.
* **EOS.** With ``stop_at_eos``, once a row commits EOS in the generated span every masked position
  after it becomes EOS; positions before it are still generated. A call in which no row has anything
  to reveal is skipped, so a batch whose rows are all finished makes no more model calls.
* **Sampling.** Logits in float32 with the never-sampled tokens at ``-inf``; temperature, then top-k,
  then top-p; an exact float64 draw (inverse CDF: one uniform per row) only on the rows being sampled
  (the revealed positions for ``order="random"``, the block's masked positions for the other orders,
  which need a sampled token to score); temperature 0 is greedy. All randomness
  comes from ``generator`` (drawn on its device and moved), so a CPU generator drives a CUDA model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from . import schedules as _schedules
from .models import MaskedLM, wrap
from .schedules import Schedule

__all__ = ["generate", "GenerationOutput", "ORDERS"]

ORDERS = ("random", "confidence", "margin", "entropy")


@dataclass
class GenerationOutput:
    """What :func:`generate` returns.

    Attributes:
        sequences: ``[B, P + gen_length]`` left-padded prompt followed by the generated tokens.
        generated: ``[B, gen_length]`` the generated span only.
        attention_mask: ``[B, P + gen_length]`` 1 on real tokens, 0 on left padding.
        nfe: number of model calls made.
        reveal_step: ``[B, P + gen_length]`` 1-based call at which each position was revealed (0 = given).
        token_logprobs: ``[B, P + gen_length]`` float32 log-probability of each committed token under the
            model's temperature-1 distribution at the call that committed it (0 for given tokens and EOS fill).
        texts: decoded ``sequences`` (padding and special tokens dropped) when a tokenizer is known.
        history: with ``return_history``, one ``(positions [n, 2] (row, col), tokens [n])`` pair per call.
        prompt_length: ``P``, the padded prompt width.
        block_schedules: the schedule used in each block.
    """

    sequences: torch.Tensor
    generated: torch.Tensor
    attention_mask: torch.Tensor
    nfe: int
    reveal_step: torch.Tensor
    token_logprobs: torch.Tensor
    texts: list[str] | None = None
    history: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    prompt_length: int = 0
    block_schedules: list[Schedule] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------
# argument handling
# --------------------------------------------------------------------------------------------------

def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _prompt_tensors(mlm: MaskedLM, prompts: Any, attention_mask: torch.Tensor | None,
                    pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompt ids ``[B, P]`` and their boolean attention mask."""
    if isinstance(prompts, torch.Tensor):
        ids = prompts.unsqueeze(0) if prompts.ndim == 1 else prompts
        if ids.ndim != 2 or ids.is_floating_point() or ids.is_complex():
            raise TypeError("prompts as a tensor must be integer token ids of shape [batch, length] (or [length])")
        ids = ids.long()
        if attention_mask is None:
            attn = torch.ones_like(ids, dtype=torch.bool)
        else:
            attn = attention_mask.unsqueeze(0) if attention_mask.ndim == 1 else attention_mask
            attn = attn.to(ids.device).bool()
            if attn.shape != ids.shape:
                raise ValueError(f"attention_mask shape {tuple(attn.shape)} must equal prompts shape {tuple(ids.shape)}")
        # Left-align whatever the padding side: a stable sort puts padding first and keeps token order.
        order = torch.argsort(attn.to(torch.int8), dim=1, stable=True)
        return ids.gather(1, order), attn.gather(1, order)
    if attention_mask is not None:
        raise ValueError("attention_mask= only applies to prompts given as a tensor; drop it for lists or strings")
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, (list, tuple)) or len(prompts) == 0:
        raise TypeError("prompts must be None, a string, a list of strings, a list of token ids, a list of "
                        "token-id lists, or a LongTensor [batch, length]")
    if all(isinstance(p, str) for p in prompts):
        rows = mlm.encode(list(prompts))
    elif all(_is_int(p) for p in prompts):
        rows = [list(prompts)]
    elif all(isinstance(p, (list, tuple, torch.Tensor)) for p in prompts):
        rows = [p.tolist() if isinstance(p, torch.Tensor) else list(p) for p in prompts]
        if not all(_is_int(t) for r in rows for t in r):
            raise TypeError("prompts given as lists must hold integer token ids")
    else:
        raise TypeError("prompts must not mix strings and token ids")
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, r in enumerate(rows):  # input preparation, not the sampling loop
        if r:
            ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
            attn[i, width - len(r):] = True
    return ids, attn


def _resolve_schedule(schedule: Any, nominal: int, length: int, *, steps: int | None, profile: Any,
                      argname: str) -> Schedule:
    """The schedule for a block of ``length`` tokens, given the nominal block size ``nominal``."""
    if isinstance(schedule, (list, tuple)) and all(_is_int(k) for k in schedule):
        schedule = Schedule(schedule)
    if isinstance(schedule, Schedule):
        if schedule.n_tokens != nominal:
            raise ValueError(f"schedule sizes sum to {schedule.n_tokens} but {argname}={nominal}: build it for "
                             f"{nominal} tokens (e.g. ms.schedules.constant({nominal}, steps)) or use "
                             f"schedule.rescale({nominal})")
        base = schedule
    elif _is_int(schedule):
        if schedule < 1:
            raise ValueError(f"schedule={schedule}: the number of model calls must be >= 1")
        if schedule > nominal:
            raise ValueError(f"schedule={schedule} steps > {argname}={nominal} tokens: each call reveals at least "
                             f"one token, so use at most {nominal} steps")
        base = _schedules.constant(nominal, schedule)
    elif isinstance(schedule, str):
        if steps is None:
            raise ValueError(f"schedule={schedule!r} needs steps=<number of model calls per block>")
        if not _is_int(steps) or steps < 1 or steps > nominal:
            raise ValueError(f"steps={steps} must be an int in 1..{argname}={nominal}")
        base = _schedules.build(schedule, nominal, steps, profile)
    else:
        raise TypeError("schedule must be a Schedule, a list of per-call sizes, an int (steps, constant schedule) "
                        f"or a builder name ({', '.join(_schedules.BUILDERS)}); got {type(schedule).__name__}")
    return base if length == base.n_tokens else base.rescale(length)


def _check_options(gen_length: Any, order: Any, temperature: Any, top_k: Any, top_p: Any, block_length: Any,
                   num_samples: Any) -> float:
    if not _is_int(gen_length) or gen_length < 0:
        raise ValueError(f"gen_length must be a non-negative int, got {gen_length!r}")
    if order not in ORDERS:
        raise ValueError(f"order={order!r} is unknown; choose one of {', '.join(ORDERS)}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not math.isfinite(temperature) \
            or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
    if top_k is not None and (not _is_int(top_k) or top_k < 1):
        raise ValueError(f"top_k must be None or an int >= 1, got {top_k!r}")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float))
                              or not (0.0 < top_p <= 1.0)):
        raise ValueError(f"top_p must be None or a number in (0, 1], got {top_p!r}")
    if block_length is not None and (not _is_int(block_length) or block_length < 1):
        raise ValueError(f"block_length must be None or an int >= 1, got {block_length!r}")
    if num_samples is not None and (not _is_int(num_samples) or num_samples < 1):
        raise ValueError(f"num_samples must be None or an int >= 1, got {num_samples!r}")
    return float(temperature)


# --------------------------------------------------------------------------------------------------
# vectorised pieces of one call
# --------------------------------------------------------------------------------------------------

def _noise(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Float64 uniforms from ``generator`` (drawn on its own device, then moved)."""
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, dtype=torch.float64, device=gen_device).to(device)


def _top_k_per_row(scores: torch.Tensor, k_row: torch.Tensor) -> torch.Tensor:
    """Boolean ``[B, L]`` selecting the ``k_row[b]`` highest scores of each row (rows differ in k)."""
    kmax = int(k_row.max())
    idx = scores.topk(kmax, dim=1).indices
    keep = torch.arange(kmax, device=scores.device).unsqueeze(0) < k_row.unsqueeze(1)
    return torch.zeros_like(scores, dtype=torch.bool).scatter_(1, idx, keep)


#: Rows of ``[P, V]`` logits processed at once when sampling: bounds the float64 temporaries
#: (8 bytes x this many elements each) for large vocabularies and many candidate positions.
SAMPLE_CHUNK_ELEMENTS = 1 << 22


def _sample_chunk(logits: torch.Tensor, order: str, temperature: float, top_k: int | None, top_p: float | None,
                  generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Tokens, their temperature-1 log-probabilities and the order score for a chunk of rows ``[p, V]``."""
    peak = logits.amax(dim=-1, keepdim=True)
    if bool((peak == float("-inf")).any()):
        raise ValueError("every token is suppressed at some position (all logits -inf): loosen allowed_tokens / "
                         "suppress_tokens")
    plain = temperature == 1.0 and top_k is None and (top_p is None or top_p >= 1.0)
    lse = None
    if temperature == 0.0:
        tokens = logits.argmax(dim=-1)
    else:
        z, z_peak = logits, peak
        if not plain:
            z = logits / temperature
            if top_k is not None and top_k < z.shape[-1]:
                kth = z.topk(top_k, dim=-1).values[:, -1:]
                z = z.masked_fill(z < kth, float("-inf"))
            if top_p is not None and top_p < 1.0:
                sorted_z, perm = z.sort(dim=-1, descending=True)
                probs = torch.softmax(sorted_z, dim=-1)
                # drop a token once the mass strictly before it already reaches top_p (the top token stays)
                drop_sorted = (probs.cumsum(dim=-1) - probs) >= top_p
                z = z.masked_fill(torch.zeros_like(drop_sorted).scatter_(-1, perm, drop_sorted), float("-inf"))
            z_peak = z.amax(dim=-1, keepdim=True)
        # Exact categorical draw in float64 by inversion: one uniform per row instead of V Gumbel variates
        # (the same law as Gumbel-max with a fraction of the random numbers). In place: one float64 buffer.
        cdf = z.double().sub_(z_peak).exp_().cumsum_(dim=-1)
        total = cdf[:, -1:]
        u = _noise((z.shape[0], 1), generator, z.device).mul_(total)
        tokens = torch.searchsorted(cdf, u, right=True).squeeze(1).clamp_(max=z.shape[-1] - 1)
        if plain:  # the normaliser comes for free: log sum exp = peak + log(cdf[-1])
            lse = (peak.double() + total.log()).float()
        del cdf
    if lse is None:
        lse = torch.logsumexp(logits, dim=-1, keepdim=True)
    token_logp = (logits.gather(-1, tokens.unsqueeze(-1)) - lse).squeeze(-1)
    if order == "margin":
        top = (logits.topk(min(2, logits.shape[-1]), dim=-1).values - lse).exp()
        score = top[:, 0] - top[:, 1] if top.shape[1] > 1 else top[:, 0]
    elif order == "entropy":
        logp = logits - lse
        score = torch.where(logp > float("-inf"), logp.exp() * logp, torch.zeros_like(logp)).sum(-1)  # -H
    elif order == "confidence":
        score = token_logp  # monotone in the probability of the sampled token
    else:
        score = None
    return tokens, token_logp, score


def _sample_tokens(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
                   generator: torch.Generator | None, order: str = "random",
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Draw one token per row of ``logits [P, V]`` (suppressed ids at ``-inf``), in chunks of rows.

    Returns ``(tokens [P], log p(token) under the temperature-1 model [P], order score [P] or None)``;
    a higher score reveals first.
    """
    rows = max(1, SAMPLE_CHUNK_ELEMENTS // max(1, logits.shape[-1]))
    parts = [_sample_chunk(logits[i:i + rows], order, temperature, top_k, top_p, generator)
             for i in range(0, logits.shape[0], rows)]
    if len(parts) == 1:
        return parts[0]
    score = None if parts[0][2] is None else torch.cat([p[2] for p in parts])
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), score


# --------------------------------------------------------------------------------------------------
# generate
# --------------------------------------------------------------------------------------------------

def generate(model: Any, prompts: Any = None, *, gen_length: int, schedule: Any, num_samples: int | None = None,
             order: str = "random", temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
             block_length: int | None = None, stop_at_eos: bool | int = False,
             generator: torch.Generator | None = None, return_history: bool = False,
             mask_token_id: int | None = None, attention_mask: torch.Tensor | None = None, progress: bool = False,
             steps: int | None = None, profile: Any = None, tokenizer: Any = None) -> GenerationOutput:
    """Generate (or infill) with a masked LM: ``schedule`` sets how many positions each call reveals, ``order`` which.

    Args:
        model: a :class:`~mdm_sched.models.MaskedLM`, an HF masked LM / LLaDA / Dream model, or any
            ``nn.Module`` whose ``forward(input_ids, attention_mask=None)`` returns ``.logits`` (then pass
            ``mask_token_id``).
        prompts: ``None`` (unconditional), strings (needs a tokenizer), token-id lists of any lengths, or a
            LongTensor ``[B, P]`` with ``attention_mask``. Mask tokens inside prompts are infilled (module docs).
        gen_length: number of positions to generate after each prompt.
        schedule: a :class:`~mdm_sched.schedules.Schedule` (sizes sum to ``block_length`` or ``gen_length``),
            a list of sizes, an int (calls per block, constant schedule) or a builder name with ``steps=``.
        num_samples: rows to generate without prompts (default 1), or samples per prompt.
        order: ``"random"`` | ``"confidence"`` | ``"margin"`` | ``"entropy"``.
        temperature, top_k, top_p: sampling controls; temperature 0 is greedy.
        block_length: semi-autoregressive block size (the last block may be shorter).
        stop_at_eos: ``True`` (model's EOS id) or an EOS id: fill everything after a committed EOS.
        generator: the only source of randomness (any device).
        return_history: keep ``(positions, tokens)`` of every call.
        steps, profile: for a schedule given by name (``profile`` for "optimal"/"sqrt").
        tokenizer: used when ``model`` is not yet wrapped.

    Returns:
        :class:`GenerationOutput`.
    """
    mlm = wrap(model, tokenizer=tokenizer, mask_token_id=mask_token_id)
    temperature = _check_options(gen_length, order, temperature, top_k, top_p, block_length, num_samples)
    with torch.inference_mode():
        return _generate(mlm, prompts, gen_length=gen_length, schedule=schedule, num_samples=num_samples,
                         order=order, temperature=temperature, top_k=top_k, top_p=top_p, block_length=block_length,
                         stop_at_eos=stop_at_eos, generator=generator, return_history=return_history,
                         attention_mask=attention_mask, progress=progress, steps=steps, profile=profile)


def _eos_id(mlm: MaskedLM, stop_at_eos: bool | int) -> int | None:
    if stop_at_eos is False or stop_at_eos is None:
        return None
    eos = mlm.eos_token_id if stop_at_eos is True else stop_at_eos
    if not _is_int(eos):
        raise ValueError("stop_at_eos=True but the model has no known EOS id: pass stop_at_eos=<eos token id>")
    if bool(mlm._suppression(mlm.vocab_size, torch.device("cpu"))[eos]):
        raise ValueError(f"stop_at_eos: EOS id {eos} is never sampled by this model (it is a framing or suppressed "
                         "token); pass a samplable id or stop_at_eos=False")
    return int(eos)


def _generate(mlm: MaskedLM, prompts: Any, *, gen_length: int, schedule: Any, num_samples: int | None, order: str,
              temperature: float, top_k: int | None, top_p: float | None, block_length: int | None,
              stop_at_eos: bool | int, generator: torch.Generator | None, return_history: bool,
              attention_mask: torch.Tensor | None, progress: bool, steps: int | None, profile: Any) -> GenerationOutput:
    device = mlm.device
    mask_id = mlm.mask_token_id
    pad = mlm.pad_token_id if mlm.pad_token_id is not None else 0
    eos = _eos_id(mlm, stop_at_eos)

    # ---- canvas: left-padded prompt, then gen_length masks --------------------------------------
    if prompts is None:
        if attention_mask is not None:
            raise ValueError("attention_mask= was given without prompts")
        b = num_samples or 1
        p_ids = torch.zeros((b, 0), dtype=torch.long)
        p_attn = torch.zeros((b, 0), dtype=torch.bool)
    else:
        p_ids, p_attn = _prompt_tensors(mlm, prompts, attention_mask, pad)
        if num_samples is not None and num_samples > 1:
            p_ids = p_ids.repeat_interleave(num_samples, dim=0)
            p_attn = p_attn.repeat_interleave(num_samples, dim=0)
    p_ids, p_attn = p_ids.to(device), p_attn.to(device)
    b, p_len = p_ids.shape
    length = p_len + gen_length
    if mlm.max_length is not None:
        longest = int(p_attn.sum(1).max()) + gen_length if b else gen_length
        if longest > mlm.max_length:
            raise ValueError(f"prompt + gen_length = {longest} tokens exceeds the model's {mlm.max_length} content "
                             "positions: reduce gen_length or shorten the prompt")
    x = torch.cat([torch.where(p_attn, p_ids, torch.full_like(p_ids, pad)),
                   torch.full((b, gen_length), mask_id, dtype=torch.long, device=device)], dim=1)
    attn = torch.cat([p_attn, torch.ones((b, gen_length), dtype=torch.bool, device=device)], dim=1)
    masked = (x == mask_id) & attn

    # ---- blocks and their schedules -------------------------------------------------------------
    if gen_length == 0:
        n_infill = int(masked.sum(1).max()) if b else 0
        if n_infill == 0:
            raise ValueError("gen_length=0 and the prompts hold no mask tokens: nothing to generate")
        spans = [(p_len, p_len)]
        sched_list = [_resolve_schedule(schedule, n_infill, n_infill, steps=steps, profile=profile,
                                        argname="the largest number of prompt masks")]
    else:
        nominal = block_length if block_length is not None else gen_length
        argname = "block_length" if block_length is not None else "gen_length"
        spans = [(s, min(s + nominal, length)) for s in range(p_len, length, nominal)]
        sched_list = [_resolve_schedule(schedule, nominal, e - s, steps=steps, profile=profile, argname=argname)
                      for s, e in spans]

    reveal_step = torch.zeros((b, length), dtype=torch.long, device=device)
    token_logprobs = torch.zeros((b, length), dtype=torch.float32, device=device)
    history: list[tuple[torch.Tensor, torch.Tensor]] | None = [] if return_history else None
    cols = torch.arange(length, device=device)
    gen_cols = cols >= p_len
    nfe = 0
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=sum(s.steps for s in sched_list), desc="generate", unit="call")

    for block, ((start, end), sched) in enumerate(zip(spans, sched_list)):
        in_block = (cols >= start) & (cols < end)
        if block == 0:
            in_block |= cols < p_len  # prompt masks are infilled with the first block
        n_block = (masked & in_block).sum(1)  # [B] masked positions of each row in this block
        cum = torch.tensor(sched.cumulative, dtype=torch.long, device=device)
        for t in range(sched.steps):
            if bar is not None:
                bar.update(1)
            cand = masked & in_block
            remaining = cand.sum(1)
            target = (cum[t + 1] * n_block) // sched.n_tokens  # floor(K_t n / N): exact k_t when n == N
            k_row = torch.minimum((target - (n_block - remaining)).clamp(min=0), remaining)
            if int(k_row.max()) == 0:
                continue  # nothing to reveal in any row (finished rows): no model call
            nfe += 1
            if order == "random":
                # uniform random subset of size k_row among the masked: top-k of iid uniforms
                scores = _noise((b, length), generator, device).masked_fill(~cand, -1.0)
                select = _top_k_per_row(scores, k_row)
                logits = mlm.logits(x, attn, positions=select)
                tokens, tok_lp, _ = _sample_tokens(logits, temperature, top_k, top_p, generator)
                del logits
            else:
                logits = mlm.logits(x, attn, positions=cand)
                tokens, tok_lp, score = _sample_tokens(logits, temperature, top_k, top_p, generator, order)
                del logits  # free [P, V] before the next call builds its own
                scores = torch.full((b, length), float("-inf"), dtype=torch.float32, device=device)
                scores[cand] = score.float()
                select = _top_k_per_row(scores, k_row)
                keep = select[cand]  # row-major order of cand matches that of select
                tokens, tok_lp = tokens[keep], tok_lp[keep]
            x[select] = tokens
            token_logprobs[select] = tok_lp
            reveal_step[select] = nfe
            masked &= ~select
            if history is not None:
                history.append((select.nonzero().cpu(), tokens.cpu()))
            if eos is not None:
                is_eos = (x == eos) & gen_cols & ~masked & attn
                fill = masked & (is_eos.long().cumsum(1) > 0)
                if bool(fill.any()):
                    x[fill] = eos
                    reveal_step[fill] = nfe
                    masked &= ~fill
    if bar is not None:
        bar.close()

    texts = mlm.decode(x.masked_fill(~attn, pad)) if mlm.tokenizer is not None else None
    return GenerationOutput(sequences=x, generated=x[:, p_len:], attention_mask=attn.long(), nfe=nfe,
                            reveal_step=reveal_step, token_logprobs=token_logprobs, texts=texts, history=history,
                            prompt_length=p_len, block_schedules=sched_list)
