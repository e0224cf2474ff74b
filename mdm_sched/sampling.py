"""The one sampling loop: :func:`generate` for every masked LM family (through :class:`~mdm_sched.models.MaskedLM`).

Each model call is one :func:`_step`: the **reveal rule** (:mod:`mdm_sched.rules`) says how many positions
each row reveals, the **order** (:mod:`mdm_sched.orders`) says which, the **draw** (:mod:`mdm_sched.draw`)
turns logits into tokens, and the **canvas** (:mod:`mdm_sched.canvas`) records them. The loop itself
knows no rule, order or model family by name.

* A fixed schedule with ``order="random"`` chooses positions before the call, so logits are computed only
  there: the random-order factorized sampler the theory is exact for (docs/theory.md §1).
* Model-ranked orders (``"confidence"``, ``"margin"``, ``"entropy"``) and adaptive rules draw a token at every
  candidate position of the block, rank, and keep the top ``k`` per row.
* A call in which no row has anything to reveal is skipped (no model call), so finished rows cost nothing
  and a batch whose rows are all finished stops.
* All randomness comes from ``generator`` (:mod:`mdm_sched.rng`: one generator, or one per row for
  batch-invariant sampling).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from . import schedules as _schedules
from ._types import ModelLike, PromptLike
from .canvas import Block, Canvas, chat_prompts, plan_blocks, prompt_tensors
from .config import MaskedGenerationConfig
from .draw import Draw, draw_tokens
from .forward import Forward, make_forward
from .hooks import Hooks, StepState, Streamer
from .models import MaskedLM, wrap
from .orders import ORDERS as _ORDERS
from .orders import Order, get_order
from .profile import warn_schedule_mismatch
from .rng import Randomness
from .rules import FixedSchedule, RankedStats, RevealRule, Step
from .schedules import Schedule
from .stopping import Stopping
from .text import Conversation
from .validation import check_generator

__all__ = ["generate", "GenerationOutput", "ORDERS"]

ORDERS = tuple(_ORDERS)


@dataclass
class GenerationOutput:
    """What :func:`generate` returns.

    Attributes:
        sequences: ``[B, P + gen_length]`` left-padded prompt followed by the generated tokens.
        generated: ``[B, gen_length]`` the generated span only.
        attention_mask: ``[B, P + gen_length]`` 1 on real tokens, 0 on left padding.
        nfe: number of model calls made.
        calls_per_row: ``[B]`` calls in which each row still had positions to reveal (what the row would
            cost alone; rows finish at different calls under adaptive rules or EOS).
        reveal_step: ``[B, P + gen_length]`` 1-based call at which each position was revealed (0 = given).
        token_logprobs: ``[B, P + gen_length]`` float32 log-probability of each committed token under the
            model's temperature-1 distribution at the call that committed it (0 for given tokens and EOS fill).
        texts: decoded ``sequences`` (padding and special tokens dropped) when a tokenizer is known.
        history: with ``return_history``, one ``(positions [n, 2] (row, col), tokens [n])`` pair per call.
        prompt_length: ``P``, the padded prompt width.
        block_schedules: the schedule used in each block (fixed schedules only).
        config: the validated settings the samples were generated with (:meth:`record` makes all this JSON).
    """

    sequences: torch.Tensor
    generated: torch.Tensor
    attention_mask: torch.Tensor
    nfe: int
    calls_per_row: torch.Tensor
    reveal_step: torch.Tensor
    token_logprobs: torch.Tensor
    texts: list[str] | None = None
    history: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    prompt_length: int = 0
    block_schedules: list[Schedule] = field(default_factory=list)
    config: MaskedGenerationConfig | None = None

    def record(self) -> dict[str, Any]:
        """JSON-ready record of how the samples were made: the settings (:meth:`MaskedGenerationConfig.to_dict`),
        each block's schedule sizes (fixed schedules), model calls and calls per row. Store it next to samples."""
        return {"config": None if self.config is None else self.config.to_dict(),
                "block_schedules": [{"name": s.name, "sizes": list(s.sizes)} for s in self.block_schedules],
                "nfe": self.nfe, "calls_per_row": self.calls_per_row.tolist(), "prompt_length": self.prompt_length}


@dataclass
class _Loop:
    """Everything one generation run shares between its calls."""

    mlm: MaskedLM
    cfg: MaskedGenerationConfig
    canvas: Canvas
    rule: RevealRule
    order: Order
    rng: Randomness
    stopping: Stopping
    forward: Forward
    hooks: Hooks
    nfe: int = 0
    stopped: bool = False
    history: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    bar: Any = None

    @property
    def wanted(self) -> frozenset[str]:
        """Draw statistics the order and the rule read (confidence comes with every draw)."""
        return (self.order.stats | self.rule.stats) - {"confidence"}


def generate(model: ModelLike, prompts: PromptLike | None = None, *,
             generation_config: MaskedGenerationConfig | None = None,
             generator: torch.Generator | list[torch.Generator] | None = None,
             attention_mask: torch.Tensor | None = None, mask_token_id: int | None = None, tokenizer: Any = None,
             progress: bool = False, logits_processor: Callable[..., torch.Tensor] | None = None,
             callback_on_step_end: Callable[[int, StepState], Any] | None = None, streamer: Streamer | None = None,
             messages: Conversation | Sequence[Conversation] | None = None, apply_chat_template: bool = False,
             **settings: Any) -> GenerationOutput:
    """Generate (or infill) with a masked LM: the schedule sets how many positions each call reveals, the order which.

    Args:
        model: a :class:`~mdm_sched.models.MaskedLM`, an HF masked LM / LLaDA / Dream model, or any
            ``nn.Module`` whose ``forward(input_ids, attention_mask=None)`` returns ``.logits`` (then pass
            ``mask_token_id``).
        prompts: ``None`` (unconditional), strings (needs a tokenizer), token-id lists of any lengths, or a
            LongTensor ``[B, P]`` with ``attention_mask``. Mask tokens inside prompts are infilled. Every
            attended id must lie in ``[0, vocab_size)``. **Special ids inside prompts are refused** (ValueError
            naming the row and position): framing tokens (CLS/SEP/BOS the adapter adds itself), the pad id (when it
            is not also EOS: pad a tensor with ``attention_mask=0`` instead) and, for families that never sample
            special tokens (BERT-style), every special token but the mask and ``[UNK]`` (text the tokenizer could
            not encode becomes ``[UNK]`` with a warning). EOS and chat-template tokens of diffusion LMs (LLaDA,
            Dream) are content and allowed, and so are the special tokens a chat template puts in (``messages=``,
            ``apply_chat_template=True``).
        generation_config: a :class:`~mdm_sched.config.MaskedGenerationConfig`; ``settings`` override its fields.
        generator: the only source of randomness: one ``torch.Generator`` (any device) or one per row.
        attention_mask: marks real prompt tokens when ``prompts`` is a padded tensor.
        mask_token_id, tokenizer: used when ``model`` is not yet wrapped (a ``mask_token_id`` contradicting the
            tokenizer's is an error; wrap with ``force_mask_token_id=True`` to insist).
        progress: show a progress bar over model calls.
        logits_processor, callback_on_step_end, streamer: hooks into every call (:mod:`mdm_sched.hooks`).
        messages: instead of ``prompts``, chat conversations (one, or one per row:
            ``[[{"role": "user", "content": "..."}], ...]``) sent through the tokenizer's chat template with
            the assistant's generation prompt and the special tokens the model family expects (LLaDA: BOS).
        apply_chat_template: treat each string prompt as one user message of a conversation (as ``messages``).
        **settings: any :class:`~mdm_sched.config.MaskedGenerationConfig` field: ``gen_length``, ``schedule``
            (a Schedule, sizes, an int = calls *per block*, a builder name with ``steps``, or a reveal rule),
            ``steps``, ``profile``, ``num_samples``, ``order``, ``temperature``, ``top_k``, ``top_p``,
            ``block_length``, ``stop_at_eos``, ``stop_strings``, ``cfg_scale``, ``cache``, ``return_history``.

    Returns:
        :class:`GenerationOutput`.
    """
    mlm = wrap(model, tokenizer=tokenizer, mask_token_id=mask_token_id)
    base = generation_config if generation_config is not None else MaskedGenerationConfig()
    if not isinstance(base, MaskedGenerationConfig):
        raise TypeError(f"generation_config must be a MaskedGenerationConfig, got {type(base).__name__}")
    cfg = base.replace(**settings).validated()
    check_generator(generator)
    mlm.vocab_size  # noqa: B018 - resolves (and checks) the vocabulary and the special ids before any work
    prompts = chat_prompts(mlm, prompts, messages, apply_chat_template)
    hooks = Hooks(logits_processor=logits_processor, callback_on_step_end=callback_on_step_end, streamer=streamer)
    with torch.inference_mode():
        return _generate(mlm, prompts, cfg, generator, attention_mask, progress, hooks)


def _stopping(mlm: MaskedLM, cfg: MaskedGenerationConfig) -> Stopping:
    """EOS ids (checked against the vocabulary and the never-sampled ids) and stop strings."""
    stop = cfg.stop_at_eos
    if stop is True and mlm.eos_token_id is None:
        raise ValueError("stop_at_eos=True but the model has no known EOS id: pass stop_at_eos=<eos token id>")
    ids = [] if stop is False else [mlm.eos_token_id] if stop is True else [stop] if isinstance(stop, int) else list(stop)
    never = mlm.never_sampled("cpu")
    for eos in ids:
        if eos >= mlm.vocab_size:
            raise ValueError(f"stop_at_eos={eos} is not a token id of this model (vocabulary size {mlm.vocab_size})")
        if bool(never[eos]):
            raise ValueError(f"stop_at_eos: EOS id {eos} is never sampled by this model (it is a framing or suppressed "
                             "token); pass a samplable id or stop_at_eos=False")
    strings = cfg.stop_strings or ()
    fill = ids[0] if ids else mlm.eos_token_id if mlm.eos_token_id is not None else mlm.pad_token_id
    if strings:
        if mlm.tokenizer is None:
            raise ValueError("stop_strings need a tokenizer to decode the samples: wrap(model, tokenizer=...)")
        if fill is None:
            raise ValueError("stop_strings need an id to fill finished rows with: pass stop_at_eos=<eos id>")
    decode = (lambda rows: mlm.decode(rows, skip_special_tokens=False)) if strings else None  # "</s>" can stop too
    return Stopping(ids, fill, strings, decode=decode)


def _canvas(mlm: MaskedLM, prompts: PromptLike | None, cfg: MaskedGenerationConfig,
            attention_mask: torch.Tensor | None) -> Canvas:
    """Left-padded prompts (repeated ``num_samples`` times) followed by ``gen_length`` masks."""
    pad = mlm.pad_token_id if mlm.pad_token_id is not None else 0
    if prompts is None:
        if attention_mask is not None:
            raise ValueError("attention_mask= was given without prompts")
        b = cfg.num_samples or 1
        p_ids, p_attn = torch.zeros((b, 0), dtype=torch.long), torch.zeros((b, 0), dtype=torch.bool)
    else:
        p_ids, p_attn = prompt_tensors(mlm, prompts, attention_mask, pad)
        if cfg.num_samples is not None and cfg.num_samples > 1:
            p_ids = p_ids.repeat_interleave(cfg.num_samples, dim=0)
            p_attn = p_attn.repeat_interleave(cfg.num_samples, dim=0)
    if mlm.max_length is not None and p_ids.shape[0]:
        longest = int(p_attn.sum(1).max()) + cfg.gen_length
        if longest > mlm.max_length:
            raise ValueError(f"prompt + gen_length = {longest} tokens exceeds the model's {mlm.max_length} content "
                             "positions: reduce gen_length or shorten the prompt")
    device = mlm.device
    return Canvas.build(p_ids.to(device), p_attn.to(device), cfg.gen_length, mlm.mask_token_id, pad)


def _rule(cfg: MaskedGenerationConfig, blocks: list[Block]) -> RevealRule:
    if cfg.gen_length == 0:
        nominal, argname = blocks[0].length, "the largest number of prompt masks"
    else:
        nominal = cfg.block_length if cfg.block_length is not None else cfg.gen_length
        argname = "block_length" if cfg.block_length is not None else "gen_length"
    return _schedules.as_rule(cfg.schedule, nominal, steps=cfg.steps, profile=cfg.profile, argname=argname)


def _generate(mlm: MaskedLM, prompts: PromptLike | None, cfg: MaskedGenerationConfig,
              generator: torch.Generator | list[torch.Generator] | None,
              attention_mask: torch.Tensor | None, progress: bool, hooks: Hooks) -> GenerationOutput:
    canvas = _canvas(mlm, prompts, cfg, attention_mask)
    blocks = plan_blocks(canvas, cfg.gen_length, cfg.block_length)
    rule = _rule(cfg, blocks)
    if isinstance(rule, FixedSchedule):  # a schedule built from a profile of another order/conditioning: say so
        conditioning = "none" if prompts is None else "infill" if cfg.gen_length == 0 else "prompt"
        warn_schedule_mismatch(rule.schedule, order=get_order(cfg.order).name, conditioning=conditioning, stacklevel=4)
    hooks.check(canvas.x.shape[0])
    loop = _Loop(mlm=mlm, cfg=cfg, canvas=canvas, rule=rule, order=get_order(cfg.order),
                 rng=Randomness(generator, canvas.x.shape[0], canvas.x.device), stopping=_stopping(mlm, cfg),
                 forward=make_forward(mlm, cfg.cfg_scale, cfg.cache), hooks=hooks, history=[] if cfg.return_history else None)
    planned = [rule.planned_calls(b.length) for b in blocks]
    if progress:
        from tqdm.auto import tqdm

        loop.bar = tqdm(total=None if None in planned else sum(planned), desc="generate", unit="call")
    calls_per_row = torch.zeros(canvas.x.shape[0], dtype=torch.long, device=canvas.x.device)
    hooks.start(canvas)
    try:
        for index, (block, limit) in enumerate(zip(blocks, planned)):
            calls_per_row += _fill_block(loop, block, index, limit)
            if loop.stopped:
                break
    finally:
        if loop.bar is not None:
            loop.bar.close()
        hooks.finish()
    x = canvas.x
    texts = mlm.decode(x.masked_fill(~canvas.attention, mlm.pad_token_id or 0)) if mlm.tokenizer is not None else None
    scheds = [rule.for_length(b.length) for b in blocks] if isinstance(rule, FixedSchedule) else []
    return GenerationOutput(sequences=x, generated=canvas.generated, attention_mask=canvas.attention.long(),
                            nfe=loop.nfe, calls_per_row=calls_per_row, reveal_step=canvas.reveal_step,
                            token_logprobs=canvas.token_logprobs, texts=texts, history=loop.history,
                            prompt_length=canvas.prompt_length, block_schedules=scheds, config=cfg)


def _fill_block(loop: _Loop, block: Block, index: int, limit: int | None) -> torch.Tensor:
    """Run the calls of one block; returns ``[B]`` calls in which each row had something to reveal."""
    n_masked = (loop.canvas.masked & block.columns).sum(1)
    row_calls = torch.zeros_like(n_masked)
    loop.forward.begin_block(loop.canvas, block)
    call = 0
    while (limit is None or call < limit) and not loop.stopped:
        remaining = (loop.canvas.masked & block.columns).sum(1)
        if not bool(remaining.any()):
            break
        step = Step(call=call, length=block.length, n_masked=n_masked, remaining=remaining)
        if _step(loop, block, step):
            row_calls += (remaining > 0).long()
            loop.stopped = loop.hooks.after_call(loop.canvas, loop.nfe, index, loop.mlm.mask_token_id)
        call += 1
        if loop.bar is not None:
            loop.bar.update(1)
    return row_calls


def _step(loop: _Loop, block: Block, step: Step) -> bool:
    """One model call (or none, when the rule reveals nothing this call); returns whether a call was made."""
    canvas, rule, order = loop.canvas, loop.rule, loop.order
    cand = canvas.masked & block.columns
    k = None if rule.adaptive else rule.counts(step)
    if k is not None and int(k.max()) == 0:
        return False  # nothing to reveal in any row (finished rows, or a schedule step of 0 for short rows)
    if order.uses_model or rule.adaptive:
        draw = _draw_at(loop, cand, block, step.call)
        scores = order.scores(cand, canvas.attention, draw, loop.rng)
        if k is None:
            k = _adaptive_counts(rule, step, scores, cand, draw)
        select = _top_k_per_row(scores, k)
        keep = select[cand]  # row-major order of cand matches that of select
        tokens, logp = draw.tokens[keep], draw.logp[keep]
    else:
        select = _top_k_per_row(order.scores(cand, canvas.attention, None, loop.rng), k)
        draw = _draw_at(loop, select, block, step.call)
        tokens, logp = draw.tokens, draw.logp
    loop.nfe += 1
    canvas.commit(select, tokens, logp, loop.nfe)
    if loop.history is not None:
        loop.history.append((select.nonzero().cpu(), tokens.cpu()))
    loop.stopping.apply(canvas, loop.nfe)
    return True


def _draw_at(loop: _Loop, positions: torch.Tensor, block: Block, call: int) -> Draw:
    """One model call: logits at ``positions`` (row-major), then a token drawn at each."""
    canvas, params = loop.canvas, loop.cfg.sampling
    logits = loop.forward.logits(canvas, positions, block, call)
    if loop.hooks.logits_processor is not None:
        never = loop.mlm.never_sampled(logits.device)
        logits = loop.hooks.process(logits, canvas, positions, never)
    rows = positions.nonzero()[:, 0]
    uniforms = loop.rng.token_uniforms(rows) if params.temperature > 0 else rows.new_zeros(0, dtype=torch.float64)
    return draw_tokens(logits, params, uniforms, loop.wanted)


def _top_k_per_row(scores: torch.Tensor, k_row: torch.Tensor) -> torch.Tensor:
    """Boolean ``[B, L]`` selecting the ``k_row[b]`` highest scores of each row (rows differ in k)."""
    kmax = int(k_row.max())
    idx = scores.topk(kmax, dim=1).indices
    keep = torch.arange(kmax, device=scores.device).unsqueeze(0) < k_row.unsqueeze(1)
    return torch.zeros_like(scores, dtype=torch.bool).scatter_(1, idx, keep)


def _adaptive_counts(rule: RevealRule, step: Step, scores: torch.Tensor, cand: torch.Tensor, draw: Draw) -> torch.Tensor:
    """Ask an adaptive rule, handing it the candidates' statistics ranked by the order's scores."""
    count = cand.sum(1)
    width = max(int(count.max()), 1)
    idx = scores.argsort(dim=1, descending=True, stable=True)[:, :width]
    valid = torch.arange(width, device=scores.device).unsqueeze(0) < count.unsqueeze(1)
    values = {}
    for name in rule.stats:
        full = torch.full(cand.shape, float("nan"), dtype=torch.float32, device=cand.device)
        full[cand] = draw.statistic(name).float()
        values[name] = full.gather(1, idx).masked_fill(~valid, float("nan"))
    k = rule.counts(replace(step, ranked=RankedStats(valid=valid, count=count, values=values)))
    return torch.minimum(k, step.remaining)
