"""mdm_sched's schedules and reveal rules inside diffusers: :class:`ScheduledBlockRefinementScheduler`.

diffusers (>= 0.42) runs LLaDA2-style models with ``LLaDA2Pipeline``, whose ``BlockRefinementScheduler`` commits
an even share of each block per step (or every token above a confidence threshold). This scheduler keeps that
scheduler's contract (``set_timesteps``, ``step``, the same output) and takes the per-step quota from a
:class:`~mdm_sched.schedules.Schedule`, a builder (``"optimal"`` with a profile, ``"cosine"`` ...) or an adaptive
reveal rule (``"threshold:0.9"``, ``entropy_bound``), so the pipeline runs the library's schedules::

    from diffusers import LLaDA2Pipeline
    from mdm_sched.diffusers_scheduler import ScheduledBlockRefinementScheduler

    sched = ms.schedules.optimal(profile, steps=8, n_tokens=32)          # calls per block, for blocks of 32
    pipe = LLaDA2Pipeline(model=model, tokenizer=tokenizer,
                          scheduler=ScheduledBlockRefinementScheduler(schedule=sched, block_length=32))
    out = pipe(prompt=..., gen_length=256, block_length=32, editing_threshold=None)

Per block, a row with ``n`` masked positions has revealed ``floor(K_t n / N)`` of them after step ``t``
(``Schedule.transfer_counts``: the schedule's exact sizes when ``n`` is the block length), choosing the most
confident positions, where confidence is the drawn token's probability under the temperature-1 model distribution
(as ``order="confidence"`` in :func:`mdm_sched.generate`). The pipeline's ``threshold`` argument is not used: use
the ``"threshold:TAU"`` rule instead. A fixed schedule sets the number of steps per block (the pipeline's
``num_inference_steps`` is used only as ``steps`` for a schedule given by name or when ``schedule`` is None).
Editing (``editing_threshold > 0``) works as in diffusers, after a block's masks are filled. Needs
``pip install "mdm_sched[diffusers]"``.
"""
from __future__ import annotations

from typing import Any

import torch

try:
    from diffusers import BlockRefinementScheduler
    from diffusers.schedulers.scheduling_block_refinement import BlockRefinementSchedulerOutput
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("mdm_sched.diffusers_scheduler needs diffusers >= 0.42 (LLaDA2Pipeline, BlockRefinementScheduler): "
                      'pip install "mdm_sched[diffusers]"') from exc

from . import schedules as _schedules
from ._types import ScheduleLike
from .profile import InformationProfile
from .rules import FixedSchedule, RankedStats, RevealRule, Step

__all__ = ["ScheduledBlockRefinementScheduler"]


def _profile_to_config(profile: InformationProfile | str | None) -> Any:
    if isinstance(profile, InformationProfile):
        return profile.to_dict()
    return None if profile is None else str(profile)


def _profile_from_config(profile: Any) -> InformationProfile | str | None:
    return InformationProfile.from_dict(profile) if isinstance(profile, dict) else profile


class ScheduledBlockRefinementScheduler(BlockRefinementScheduler):
    """A ``BlockRefinementScheduler`` whose per-step commits follow an mdm_sched schedule or reveal rule.

    Args:
        schedule: what :func:`mdm_sched.generate` accepts as ``schedule=``, for blocks of ``block_length``: a
            Schedule (sizes sum to ``block_length``), sizes, an int (calls per block), a builder name (its ``steps``
            is the pipeline's ``num_inference_steps``), a reveal rule or its text form; ``None``: constant with the
            pipeline's ``num_inference_steps`` (diffusers' own quota).
        profile: the information profile (or a file, folder or Hub id) for ``"optimal"`` / ``"sqrt"``.
        block_length, num_inference_steps, threshold, editing_threshold, minimal_topk: as in
            ``BlockRefinementScheduler`` (``threshold`` is kept for compatibility and not used).

    The config (``save_pretrained`` / ``from_pretrained`` of diffusers) stores the schedule in its JSON form
    (:func:`mdm_sched.schedules.spec_to_json`) and the profile as a path or embedded.
    """

    def __init__(self, schedule: ScheduleLike | dict[str, Any] | None = None,
                 profile: InformationProfile | str | dict[str, Any] | None = None, block_length: int = 32,
                 num_inference_steps: int = 32, threshold: float = 0.95, editing_threshold: float | None = None,
                 minimal_topk: int = 1) -> None:
        super().__init__(block_length=block_length, num_inference_steps=num_inference_steps, threshold=threshold,
                         editing_threshold=editing_threshold, minimal_topk=minimal_topk)
        spec = None if schedule is None else _schedules.spec_from_json(schedule) if isinstance(schedule, dict) else schedule
        self._spec = spec
        self._profile = _profile_from_config(profile)
        self.register_to_config(schedule=None if spec is None else _schedules.spec_to_json(spec),
                                profile=_profile_to_config(self._profile))
        self._rule: RevealRule | None = None
        self._n_masked: torch.Tensor | None = None
        self._masks_left = True
        if spec is not None:  # fail at construction on a schedule that does not fit the block
            self._resolve(block_length, min(num_inference_steps, block_length))

    def _resolve(self, block_length: int, steps: int) -> RevealRule:
        spec = self._spec if self._spec is not None else steps
        return _schedules.as_rule(spec, block_length, steps=steps, profile=self._profile, argname="block_length")

    @property
    def rule(self) -> RevealRule | None:
        """The reveal rule of the current ``set_timesteps`` (None before it)."""
        return self._rule

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None,
                      block_length: int | None = None) -> None:
        """Resolve the schedule for blocks of ``block_length``; the number of steps per block is the schedule's."""
        if num_inference_steps <= 0:
            raise ValueError(f"num_inference_steps must be > 0, got {num_inference_steps}")
        block_length = self.config.block_length if block_length is None else block_length
        if block_length <= 0:
            raise ValueError(f"block_length must be > 0, got {block_length}")
        self._rule = self._resolve(block_length, num_inference_steps)
        planned = self._rule.planned_calls(block_length)
        cap = getattr(self._rule, "max_calls", None)
        self.num_inference_steps = planned if planned is not None else min(cap or block_length, block_length)
        self.timesteps = torch.arange(self.num_inference_steps - 1, -1, -1, device=device, dtype=torch.long)
        nominal = self._rule.for_length(block_length) if isinstance(self._rule, FixedSchedule) else None
        self._transfer_schedule = None if nominal is None else nominal.as_tensor(device or "cpu")
        self._block_length = block_length
        self._n_masked = None

    def step(self, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.LongTensor, *,
             mask_token_id: int | None = None, temperature: float = 0.0, top_p: float | None = None,
             top_k: int | None = None, sampling_method: str = "auto", threshold: float | None = None,
             editing_threshold: float | None = None, minimal_topk: int | None = None,
             prompt_mask: torch.BoolTensor | None = None, generator: torch.Generator | None = None,
             return_dict: bool = True) -> BlockRefinementSchedulerOutput | tuple:
        """One refinement step of the current block: draw, then commit the rule's count of most confident masks."""
        if mask_token_id is None:
            raise ValueError("ScheduledBlockRefinementScheduler needs mask_token_id: mdm_sched schedules reveal masked "
                             "positions (the uniform-corruption mode of BlockRefinementScheduler is not supported)")
        if self._rule is None:
            raise ValueError("call set_timesteps(num_inference_steps, block_length=...) before step()")
        use_multinomial = sampling_method == "multinomial" or (sampling_method == "auto" and temperature != 0.0)
        tokens, probs = self._sample_from_logits(model_output, temperature=temperature, top_k=top_k, top_p=top_p,
                                                 generator=generator, use_multinomial=use_multinomial)
        call = int(timestep.item()) if isinstance(timestep, torch.Tensor) else int(timestep)
        active = sample == mask_token_id
        if call == 0 or self._n_masked is None or self._n_masked.shape[0] != sample.shape[0]:
            self._n_masked = active.sum(1)  # masks of each row when the block starts: the schedule's n
        logp = torch.log_softmax(model_output.float(), dim=-1)
        confidence = logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1).exp()  # temperature-1 probability
        transfer = self._commit(call, active, confidence, logp)
        self._masks_left = bool((active & ~transfer).any())
        edit = self._edits(sample, tokens, probs, active, prompt_mask,
                           self.config.editing_threshold if editing_threshold is None else editing_threshold)
        prev = torch.where(transfer | edit, tokens, sample)
        if not return_dict:
            return prev, transfer, edit, tokens, probs, model_output
        return BlockRefinementSchedulerOutput(prev_sample=prev, transfer_index=transfer, editing_transfer_index=edit,
                                              sampled_tokens=tokens, sampled_probs=probs, pred_logits=model_output)

    def check_block_should_continue(self, step_idx: int, masks_remaining: bool, editing_enabled: bool,
                                    editing_transfer_index: torch.BoolTensor, post_steps: int, max_post_steps: int,
                                    finished: torch.BoolTensor) -> bool:
        """diffusers' rule, and stop as soon as the last step filled the block's masks when there is no editing
        (diffusers would make one more model call to find the block full: with an adaptive rule, one per block)."""
        if masks_remaining and not editing_enabled and not self._masks_left:
            return False
        return super().check_block_should_continue(step_idx, masks_remaining, editing_enabled, editing_transfer_index,
                                                   post_steps, max_post_steps, finished)

    def _commit(self, call: int, active: torch.Tensor, confidence: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
        """``[B, L]`` positions to commit: each row's ``k`` most confident masked positions, ``k`` from the rule."""
        assert self._rule is not None and self._n_masked is not None
        remaining = active.sum(1)
        score = confidence.masked_fill(~active, float("-inf"))
        order = score.argsort(dim=1, descending=True, stable=True)
        ranked = None
        if self._rule.adaptive:
            width = max(int(remaining.max()), 1)
            idx = order[:, :width]
            valid = torch.arange(width, device=active.device).unsqueeze(0) < remaining.unsqueeze(1)
            stats = {"confidence": confidence}
            if "entropy" in self._rule.stats:
                stats["entropy"] = -(logp.exp() * logp.nan_to_num(neginf=0.0)).sum(-1)
            values = {name: v.float().gather(1, idx).masked_fill(~valid, float("nan"))
                      for name, v in stats.items() if name in self._rule.stats}
            ranked = RankedStats(valid=valid, count=remaining, values=values)
        step = Step(call=call, length=self._block_length, n_masked=self._n_masked, remaining=remaining, ranked=ranked)
        k = torch.minimum(self._rule.counts(step), remaining)
        rank = order.argsort(dim=1)  # rank of each position in the confidence order
        return active & (rank < k.unsqueeze(1))

    @staticmethod
    def _edits(sample: torch.Tensor, tokens: torch.Tensor, probs: torch.Tensor, active: torch.Tensor,
               prompt_mask: torch.Tensor | None, editing_threshold: float | None) -> torch.Tensor:
        """diffusers' editing: replace a committed, non-prompt token when the model is confident of another."""
        if editing_threshold is None or editing_threshold <= 0.0:
            return torch.zeros_like(active)
        editable = ~active
        if prompt_mask is not None:
            editable = editable & ~prompt_mask.to(active.device).unsqueeze(0)
        return editable & (tokens != sample) & (probs.float() > float(editing_threshold))
