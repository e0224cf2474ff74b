"""lm-evaluation-harness model ``mdm_sched``: any masked LM / masked diffusion LM through :func:`mdm_sched.generate`.

Install with ``pip install 'mdm_sched[lm-eval]'``, then::

    python -m mdm_sched.lm_eval --model mdm_sched --tasks gsm8k \\
        --model_args pretrained=GSAI-ML/LLaDA-8B-Instruct,trust_remote_code=True,dtype=bfloat16,gen_length=256,\\
block_length=32,schedule=optimal,steps=8,profile=p.json,calls_log=calls.jsonl

``python -m mdm_sched.lm_eval`` (or ``mdm-sched-lm-eval``) registers the model and runs lm-eval's own CLI with
the same arguments. Plain ``lm_eval --model mdm_sched`` works where lm-eval discovers installed plugins through
the ``lm_eval.models`` entry point this package declares (lm-eval 0.4.13 does not: it only knows the models in its
own source); in Python, ``import mdm_sched.lm_eval`` registers it for ``lm_eval.simple_evaluate(model="mdm_sched")``.

model_args (``key=value``; lm-eval adds ``batch_size`` and ``device``):

* loading: ``pretrained`` (path, hub id or built-in name, or a model object in Python), ``dtype``, ``device``,
  ``trust_remote_code``, ``family``, ``mask_token_id``, ``add_bos`` (prepend the tokenizer's BOS to contexts;
  default: for families without CLS/SEP framing whose tokenizer adds one), ``max_length``.
* generation: every :class:`~mdm_sched.config.MaskedGenerationConfig` field (``gen_length``, ``block_length``,
  ``schedule``, ``steps`` = calls **per block** (LLaDA's ``steps`` is the total: ``steps * gen_length /
  block_length``), ``profile``, ``order`` (default ``confidence``), ``temperature`` (default 0), ``top_k``,
  ``top_p``, ``stop_at_eos``, ``cfg_scale`` (alias ``cfg``) ...). ``schedule=threshold,threshold=0.9``,
  ``schedule=entropy_bound,gamma=...`` and ``schedule=factor,factor=...`` (each with optional ``max_calls``), or
  the library's one-word text forms (``schedule=threshold:0.9``), pick an adaptive rule. A request's ``until``
  become ``stop_strings`` and cut the text; ``max_gen_toks`` caps ``gen_length``; its ``temperature`` /
  ``do_sample`` / ``top_p`` / ``top_k`` override the model_args' ones.
* likelihood (:mod:`mdm_sched.likelihood`): ``mc_num`` (LLaDA's Monte Carlo samples, default 128),
  ``mc_batch_size`` (rows per forward, default 32), ``exact_max_calls`` (enumerate all orders when
  ``2^L - 1 <=`` this; default ``mc_num``), ``is_check_greedy`` (default True).
* ``seed`` (default 1234): every request's randomness is seeded from it and the request's own text, so results do
  not depend on batching or on the number of processes.
* ``calls_log``: a JSON-lines file (appended to by process 0) with one record per request: task, doc_id, choice index,
  model calls and more. The mean calls per request type also land in the results' ``config["mdm_sched"]``.

Under ``accelerate launch`` each process loads the model on its own device and lm-eval hands it its share of the
requests (``rank``/``world_size``); results and call records are gathered on process 0.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import zlib
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

try:
    from lm_eval.api.model import LM
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("mdm_sched.lm_eval needs lm-evaluation-harness: pip install 'mdm_sched[lm-eval]'") from exc

from .config import MaskedGenerationConfig
from .likelihood import continuation_logprob, greedy_matches
from .models import MaskedLM, load_masked_lm, wrap
from .rules import confidence_factor, entropy_bound, threshold
from .sampling import generate
from .schedules import as_rule
from .validation import check_int, check_optional_int

__all__ = ["MDMSchedLM", "register", "main", "MODEL_NAME"]

log = logging.getLogger("lm_eval.mdm_sched")  # under lm-eval's logger, so its CLI shows our lines

MODEL_NAME = "mdm_sched"
#: adaptive rules by ``schedule=`` name: (builder, the model_arg holding its parameter)
_RULES = {"threshold": (threshold, "threshold"), "entropy_bound": (entropy_bound, "gamma"),
          "factor": (confidence_factor, "factor")}
_GEN_FIELDS = tuple(f.name for f in dataclasses.fields(MaskedGenerationConfig))
_DEFAULT_GEN_TOKENS = 256  # lm-eval's HF model default when neither gen_length nor max_gen_toks is given


def _seed_for(seed: int, *parts: object) -> torch.Generator:
    """A CPU generator seeded from ``seed`` and the request's own content (independent of batching and ranks)."""
    text = json.dumps([seed, *[str(p) for p in parts]], ensure_ascii=False)
    return torch.Generator().manual_seed(zlib.crc32(text.encode("utf-8")) ^ (seed << 32))


def _rule_or_schedule(settings: dict[str, Any]) -> Any:
    """``schedule=threshold|entropy_bound|factor`` (with its parameter and ``max_calls``) as a reveal rule."""
    name = settings.get("schedule")
    params = {key: settings.pop(key) for key in ("threshold", "gamma", "factor", "max_calls") if key in settings}
    if not isinstance(name, str) or name not in _RULES:
        if params:
            raise ValueError(f"model_args {', '.join(sorted(params))} only apply to schedule=threshold, entropy_bound "
                             "or factor")
        return name
    builder, key = _RULES[name]
    if key not in params:
        raise ValueError(f"schedule={name} needs {key}=<value> in model_args")
    return builder(params.pop(key), max_calls=params.pop("max_calls", None))


def generation_settings(model_args: dict[str, Any]) -> dict[str, Any]:
    """The generation part of model_args as :func:`mdm_sched.generate` settings (LLaDA-style defaults)."""
    settings: dict[str, Any] = {"order": "confidence", "temperature": 0.0, "schedule": "constant"}
    settings.update(model_args)
    if "cfg" in settings:
        settings["cfg_scale"] = settings.pop("cfg")
    settings["schedule"] = _rule_or_schedule(settings)
    if isinstance(settings.get("profile"), (str, os.PathLike)):  # a file, a folder or a Hub id: load it once
        from .profile import InformationProfile

        settings["profile"] = InformationProfile.from_pretrained(settings["profile"])
    unknown = sorted(set(settings) - set(_GEN_FIELDS))
    if unknown:
        raise ValueError(f"unknown model_args {', '.join(unknown)} for model {MODEL_NAME!r}; generation settings are "
                         f"{', '.join(_GEN_FIELDS)} (plus threshold/gamma/factor/max_calls for adaptive schedules)")
    return settings


def _load(pretrained: Any, device: str | None, load_args: dict[str, Any]) -> MaskedLM:
    if isinstance(pretrained, (str, os.PathLike)):
        return load_masked_lm(pretrained, device=device, **load_args)
    if isinstance(pretrained, (MaskedLM, torch.nn.Module)):
        mlm = wrap(pretrained, **{k: v for k, v in load_args.items() if k in ("family", "mask_token_id")})
        return mlm.to(device) if device is not None else mlm
    raise TypeError(f"pretrained must be a path, hub id, built-in model name or a model object, got {type(pretrained).__name__}")


class MDMSchedLM(LM):
    """The lm-eval model (module docstring): generation by :func:`mdm_sched.generate`, likelihoods by
    :mod:`mdm_sched.likelihood`, call counts per request."""

    def __init__(self, pretrained: Any = None, *, batch_size: int | str | None = 1, max_batch_size: int | None = None,
                 device: str | None = None, dtype: str | None = None, trust_remote_code: bool = False,
                 family: str | None = None, mask_token_id: int | None = None, add_bos: bool | None = None,
                 max_length: int | None = None, mc_num: int = 128, mc_batch_size: int = 32,
                 exact_max_calls: int | None = None, is_check_greedy: bool = True, seed: int = 1234,
                 calls_log: str | None = None, **generation: Any) -> None:
        super().__init__()
        if pretrained is None:
            raise ValueError(f"model {MODEL_NAME!r} needs pretrained=<path, hub id or built-in name> in model_args")
        self.batch_size = self._check_batch_size(batch_size)
        self.mc_num = check_int(mc_num, "mc_num", minimum=1)
        self.mc_batch_size = check_int(mc_batch_size, "mc_batch_size", minimum=1)
        self.exact_max_calls = check_optional_int(exact_max_calls, "exact_max_calls", minimum=0)
        self.is_check_greedy = bool(is_check_greedy)
        self.seed = check_int(seed, "seed", minimum=0)
        self.calls_log = Path(calls_log) if calls_log else None
        self.settings = generation_settings(generation)
        self.accelerator = self._distributed(cpu=device == "cpu" or not torch.cuda.is_available())
        if self.accelerator is not None:
            device = str(self.accelerator.device)
        elif device is None and not isinstance(pretrained, (MaskedLM, torch.nn.Module)):
            device = "cuda" if torch.cuda.is_available() else "cpu"
        load_args = {k: v for k, v in dict(dtype=dtype, trust_remote_code=bool(trust_remote_code), family=family,
                                           mask_token_id=mask_token_id).items() if v is not None}
        self.mlm = _load(pretrained, device, load_args)
        self._device = self.mlm.device
        self.tokenizer = self.mlm.tokenizer
        self.max_length = check_optional_int(max_length, "max_length", minimum=1) or self.mlm.max_length
        self.add_bos = self._default_add_bos() if add_bos is None else bool(add_bos)
        if self.add_bos and getattr(self.tokenizer, "bos_token_id", None) is None:
            raise ValueError("add_bos=True but the model's tokenizer has no BOS token; drop add_bos")
        self._calls: dict[str, list[dict[str, Any]]] = {}
        self._check_generation()

    # -- set-up ------------------------------------------------------------------------------------
    @staticmethod
    def _check_batch_size(batch_size: int | str | None) -> int:
        if batch_size is None:
            return 1
        if isinstance(batch_size, str) and batch_size.isdigit():
            batch_size = int(batch_size)
        if isinstance(batch_size, str):
            raise ValueError(f"batch_size={batch_size!r}: model {MODEL_NAME!r} needs an integer batch size (prompts per "
                             "generate call); 'auto' is not supported")
        return check_int(batch_size, "batch_size", minimum=1)

    def _distributed(self, cpu: bool) -> Any:
        """An ``accelerate.Accelerator`` under a multi-process launch, else ``None`` (``cpu``: gloo, no GPUs)."""
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return None
        from accelerate import Accelerator

        accelerator = Accelerator(cpu=cpu)
        self._rank, self._world_size = accelerator.process_index, accelerator.num_processes
        return accelerator if accelerator.num_processes > 1 else None

    def _default_add_bos(self) -> bool:
        tok = self.tokenizer
        bos = getattr(tok, "bos_token_id", None)
        if tok is None or bos is None or self.mlm.family_spec.framing:
            return False
        try:
            return bool(tok("a")["input_ids"][:1] == [bos])
        except Exception:  # a tokenizer that cannot encode plain text: no BOS policy to copy
            return False

    def _sized(self, length: int) -> dict[str, Any]:
        """The settings for ``length`` generated tokens: ``steps`` defaults to one token per call (LLaDA's
        default ``steps = gen_length``) and is capped by a shorter unblocked length (``max_gen_toks``)."""
        settings = dict(self.settings, gen_length=length)
        span = min(settings.get("block_length") or length, length)
        steps = settings.get("steps")
        if steps is None or (steps > span and settings.get("block_length") is None):
            settings["steps"] = span
        return settings

    def _check_generation(self) -> None:
        """Resolve the schedule once (a missing profile or a bad rule fails here, not at the first request)."""
        settings = self._sized(self.settings.get("gen_length") or _DEFAULT_GEN_TOKENS)
        cfg = MaskedGenerationConfig().replace(**settings).validated()
        span = min(cfg.block_length or cfg.gen_length, cfg.gen_length)
        rule = as_rule(cfg.schedule, span, steps=cfg.steps, profile=cfg.profile)
        blocks = -(-cfg.gen_length // span)
        planned = rule.planned_calls(span)
        total = "adaptive" if planned is None else f"{planned} per block x {blocks} blocks = {planned * blocks}"
        log.info("mdm_sched: %s, gen_length=%d, block_length=%s, order=%s; model calls per sample: %s",
                 rule, cfg.gen_length, cfg.block_length, cfg.order, total)

    # -- lm-eval's distributed conventions -----------------------------------------------------------
    @property
    def rank(self) -> int:
        return self._rank

    @property
    def world_size(self) -> int:
        return self._world_size

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor if self.accelerator is None else self.accelerator.gather(tensor)

    def gather_object(self, obj: Any, dst: int = 0) -> list[Any] | None:
        if self.world_size <= 1:
            return [obj]
        result = [None] * self.world_size if self.rank == dst else None
        torch.distributed.gather_object(obj=obj, object_gather_list=result, dst=dst)
        return result

    def barrier(self) -> None:
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()

    # -- text --------------------------------------------------------------------------------------
    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name_or_path", "none")).replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return getattr(self.tokenizer, "chat_template", None)

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise ValueError(f"{self.mlm.name_or_path}: the tokenizer has no chat template; drop --apply_chat_template")
        return self.tokenizer.apply_chat_template(chat_history, tokenize=False, add_generation_prompt=add_generation_prompt,
                                                  continue_final_message=not add_generation_prompt)

    def _encode(self, text: str, *, context: bool) -> list[int]:
        """Content ids; contexts get the BOS the tokenizer would add (unless the text already starts with it)."""
        ids = self.mlm.encode([text])[0] if text else []
        bos_text = getattr(self.tokenizer, "bos_token", None)
        if context and self.add_bos and not (bos_text and text.startswith(bos_text)):
            ids = [int(self.tokenizer.bos_token_id), *ids]
        return ids

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """lm-eval's convention: trailing spaces of the context belong to the continuation; split the joint encoding."""
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
        whole = self._encode(context + continuation, context=True)
        ctx = self._encode(context, context=True)
        if whole[:len(ctx)] != ctx:  # the joint encoding merged tokens across the boundary
            return ctx, self._encode(continuation, context=False)
        return ctx, whole[len(ctx):]

    def _fit(self, context: list[int], target: list[int]) -> list[int]:
        """Drop context tokens from the left so that context + target fit the model."""
        if self.max_length is None or len(context) + len(target) <= self.max_length:
            return context
        if len(target) > self.max_length:
            raise ValueError(f"a continuation of {len(target)} tokens exceeds the model's {self.max_length} positions")
        return context[len(context) + len(target) - self.max_length:]

    # -- likelihoods -------------------------------------------------------------------------------
    def _score(self, context: list[int], target: list[int], key: Sequence[object]) -> dict[str, Any]:
        """Log-likelihood of ``target`` after ``context`` with its call counts (and LLaDA's greedy check)."""
        if not target:
            return {"logprob": 0.0, "stderr": 0.0, "exact": True, "n_tokens": 0, "ll_calls": 0, "greedy": True,
                    "greedy_calls": 0}
        context = self._fit(context, target)
        est = continuation_logprob(self.mlm, context, target, mc_num=self.mc_num, batch_size=self.mc_batch_size,
                                   exact_max_calls=self.exact_max_calls, cfg_scale=self.settings.get("cfg_scale", 0.0),
                                   generator=_seed_for(self.seed, *key))
        greedy, greedy_calls = False, 0
        if self.is_check_greedy:
            greedy, greedy_calls = greedy_matches(self.mlm, context, target, cfg_scale=self.settings.get("cfg_scale", 0.0))
        return {"logprob": est.logprob, "stderr": est.stderr, "exact": est.exact, "n_tokens": est.n_tokens,
                "ll_calls": est.calls, "greedy": greedy, "greedy_calls": greedy_calls}

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        out, records = [], []
        for req, repeat, padded in self._walk(requests, "loglikelihood", disable_tqdm):
            context, continuation = req.args[0], req.args[1]
            ctx, target = self._encode_pair(context, continuation)
            scored = self._score(ctx, target, ("ll", context, continuation, repeat))
            result = (scored["logprob"], bool(scored["greedy"]))
            out.append(result)
            self.cache_hook.add_partial("loglikelihood", (context, continuation), result)
            if not padded:
                records.append(self._record(req, repeat, calls=scored["ll_calls"] + scored["greedy_calls"], **scored))
        self._collect("loglikelihood", records)
        return out

    def _windows(self, ids: list[int]) -> list[tuple[list[int], list[int]]]:
        """(context, target) pieces covering ``ids`` once each: the first after the BOS prefix, the rest (half a
        window each) after the preceding half window."""
        prefix = [int(self.tokenizer.bos_token_id)] if self.add_bos else []
        width = self.max_length
        if width is None or len(prefix) + len(ids) <= width:
            return [(prefix, ids)]
        first = width - len(prefix)
        pieces, step = [(prefix, ids[:first])], max(width // 2, 1)
        for start in range(first, len(ids), step):
            pieces.append((ids[max(0, start - (width - step)):start], ids[start:start + step]))
        return pieces

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        out, records = [], []
        for req, repeat, padded in self._walk(requests, "loglikelihood_rolling", disable_tqdm):
            text = req.args[0]
            pieces = [self._score(ctx, tgt, ("rolling", text, i, repeat))
                      for i, (ctx, tgt) in enumerate(self._windows(self._encode(text, context=False)))]
            total = float(sum(p["logprob"] for p in pieces))
            out.append(total)
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
            if not padded:
                records.append(self._record(req, repeat, calls=sum(p["ll_calls"] for p in pieces), logprob=total,
                                            windows=len(pieces), exact=all(p["exact"] for p in pieces),
                                            n_tokens=sum(p["n_tokens"] for p in pieces)))
        self._collect("loglikelihood_rolling", records)
        return out

    # -- generation --------------------------------------------------------------------------------
    def _request_settings(self, gen_kwargs: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """Generation settings for one request, and the strings its text is cut at."""
        kwargs = dict(gen_kwargs)
        until = kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else [str(u) for u in until if u]
        length = self.settings.get("gen_length") or _DEFAULT_GEN_TOKENS
        if kwargs.get("max_gen_toks") is not None:
            length = min(length, check_int(kwargs.pop("max_gen_toks"), "max_gen_toks", minimum=1))
        settings = self._sized(length)
        if kwargs.pop("do_sample", None) is False:
            kwargs["temperature"] = 0.0
        for key in ("temperature", "top_p", "top_k"):
            if kwargs.get(key) is not None:
                settings[key] = kwargs.pop(key)
        if kwargs:
            log.warning("mdm_sched: ignoring generation kwargs %s (not generation settings of a masked LM)", sorted(kwargs))
        eos = getattr(self.tokenizer, "eos_token", None)
        cut = [*until, eos] if eos and eos not in until else until
        if until and self.tokenizer is not None and (self.mlm.eos_token_id is not None or self.mlm.pad_token_id is not None):
            settings["stop_strings"] = until
        return settings, cut

    def _text(self, ids: list[int], cut: list[str]) -> str:
        """Decoded generation up to the first of ``cut``, special tokens removed (LLaDA's post-processing)."""
        if self.mlm.residue_separator is not None or self.tokenizer is None:
            text = self.mlm.decode([ids])[0]
        else:
            text = self.tokenizer.decode(ids, skip_special_tokens=False)
        ends = [text.find(s) for s in cut if s and s in text]
        text = text[:min(ends)] if ends else text
        for special in sorted(getattr(self.tokenizer, "all_special_tokens", None) or [], key=len, reverse=True):
            text = text.replace(special, "")
        return text

    def _generate_batch(self, batch: list[tuple[Any, int]], settings: dict[str, Any],
                        cut: list[str]) -> list[tuple[str, int]]:
        prompts = [self._fit(self._encode(req.args[0], context=True), [0] * settings["gen_length"]) for req, _ in batch]
        gens = [_seed_for(self.seed, "gen", req.args[0], sorted(req.args[1].items(), key=str), rep) for req, rep in batch]
        out = generate(self.mlm, prompts, generator=gens, **settings)
        calls = out.calls_per_row.tolist()
        return [(self._text(row, cut), int(calls[i])) for i, row in enumerate(out.generated.tolist())]

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        items = list(self._walk(requests, "generate_until", disable_tqdm=True))
        groups: dict[str, list[int]] = {}
        for i, (req, _, _) in enumerate(items):
            groups.setdefault(json.dumps(req.args[1], sort_keys=True, default=str), []).append(i)
        results: list[tuple[str, int] | None] = [None] * len(items)
        bar = self._bar(len(items), "generate_until", disable_tqdm)
        for indices in groups.values():
            settings, cut = self._request_settings(items[indices[0]][0].args[1])
            indices = sorted(indices, key=lambda i: -len(items[i][0].args[0]))
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start:start + self.batch_size]
                done = self._generate_batch([(items[i][0], items[i][1]) for i in chunk], settings, cut)
                for i, res in zip(chunk, done):
                    results[i] = res
                    self.cache_hook.add_partial("generate_until", items[i][0].args, res[0])
                bar.update(len(chunk))
        bar.close()
        records = [self._record(req, rep, calls=res[1], text_chars=len(res[0]))
                   for (req, rep, padded), res in zip(items, results) if not padded and res is not None]
        self._collect("generate_until", records)
        return [res[0] for res in results if res is not None]

    # -- bookkeeping -------------------------------------------------------------------------------
    def _bar(self, total: int, desc: str, disable: bool) -> Any:
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=f"mdm_sched {desc}", disable=disable or self.rank != 0)

    def _walk(self, requests: list[Any], desc: str, disable_tqdm: bool) -> Any:
        """(request, repeat index, is lm-eval's padding copy) for each request, with a progress bar."""
        seen: Counter[int] = Counter()
        bar = self._bar(len(requests), desc, disable_tqdm)
        for req in requests:
            seen[id(req)] += 1
            repeat = seen[id(req)] - 1
            yield req, repeat, repeat >= (getattr(req, "repeats", None) or 1)
            bar.update(1)
        bar.close()

    @staticmethod
    def _record(req: Any, repeat: int, **fields: Any) -> dict[str, Any]:
        return {"task": getattr(req, "task_name", None), "doc_id": getattr(req, "doc_id", None),
                "idx": getattr(req, "idx", None), "repeat": repeat, **fields}

    def _collect(self, request_type: str, records: list[dict[str, Any]]) -> None:
        """Gather the call records on process 0, keep them, and append them to ``calls_log``."""
        gathered = self.gather_object(records)
        if self.rank != 0 or gathered is None:
            return
        merged = sorted((r for part in gathered for r in part), key=lambda r: (str(r["task"]), r["doc_id"] or 0,
                                                                                r["idx"] or 0, r["repeat"]))
        for r in merged:
            r["request_type"] = request_type
        self._calls.setdefault(request_type, []).extend(merged)
        if self.calls_log is not None and merged:
            self.calls_log.parent.mkdir(parents=True, exist_ok=True)
            with open(self.calls_log, "a", encoding="utf-8") as fh:
                fh.writelines(json.dumps(r, default=str) + "\n" for r in merged)

    @property
    def call_records(self) -> dict[str, list[dict[str, Any]]]:
        """Per request type, one record per request (process 0 holds all processes' records)."""
        return self._calls

    def calls_summary(self) -> dict[str, dict[str, float]]:
        """Per request type: requests, total model calls and mean calls per request."""
        summary = {}
        for kind, records in self._calls.items():
            total = sum(int(r["calls"]) for r in records)
            summary[kind] = {"requests": len(records), "calls": total, "mean_calls": total / max(len(records), 1)}
        return summary

    def get_model_info(self) -> dict[str, Any]:
        """What lm-eval stores in the results' ``config``: the settings and the call counts."""
        shown = {k: (repr(v) if not isinstance(v, (int, float, str, bool, type(None))) else v)
                 for k, v in self.settings.items()}
        return {"mdm_sched": {"model": self.mlm.name_or_path, "family": self.mlm.family, "generation": shown,
                              "mc_num": self.mc_num, "exact_max_calls": self.exact_max_calls,
                              "is_check_greedy": self.is_check_greedy, "seed": self.seed,
                              "calls": self.calls_summary()}}


def register() -> None:
    """Register :class:`MDMSchedLM` as ``mdm_sched`` in lm-eval's model registry (no-op when already there)."""
    import lm_eval.models  # noqa: F401  - lm-eval's own models first: it only imports them into an empty registry
    from lm_eval.api.registry import model_registry

    if MODEL_NAME not in model_registry:
        model_registry.register(MODEL_NAME)(MDMSchedLM)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m mdm_sched.lm_eval ARGS``: lm-eval's CLI with the ``mdm_sched`` model registered."""
    from lm_eval.__main__ import cli_evaluate

    register()
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    from mdm_sched.lm_eval import main as _main  # the importable module's class, not a copy defined in __main__

    _main()
else:
    register()
