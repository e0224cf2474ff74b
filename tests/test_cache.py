"""KV caches (``generate(cache="prefix" | "dual")``): exact on models whose columns never attend to later ones,
equal to a plain reference of Fast-dLLM's cached loops on bidirectional ones, cheaper calls, clear refusals."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from test_models import TinyLLaDA, tiny_bert
from torch import nn

import mdm_sched as ms
from mdm_sched import schedules

MASK = 39


class KVLM(nn.Module):
    """A tiny transformer with Fast-dLLM's cache interface: ``forward(input_ids, attention_mask=None,
    past_key_values=None, use_cache=False, replace_position=None)`` returning ``.logits`` and, with ``use_cache``,
    ``.past_key_values`` (per layer ``(key, value)``, ``[B, heads, S, d_head]``).

    Absolute position embeddings (the run columns' positions follow the cached ones, or are ``replace_position``'s
    columns), so cached keys carry their positions as RoPE keys do. ``causal=True``: no column attends to a later
    one (then a cache is exact). ``shifted=True``: Dream-style, the logits at ``i`` predict token ``i + 1``.
    """

    def __init__(self, seed: int = 0, causal: bool = False, shifted: bool = False, vocab_size: int = 40, d: int = 32,
                 heads: int = 2, layers: int = 2, max_len: int = 128) -> None:
        super().__init__()
        self.heads, self.causal = heads, causal
        self.emb, self.pos = nn.Embedding(vocab_size, d), nn.Embedding(max_len, d)
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(2 * layers + 1))
        self.qkv = nn.ModuleList(nn.Linear(d, 3 * d) for _ in range(layers))
        self.out = nn.ModuleList(nn.Linear(d, d) for _ in range(layers))
        self.ff = nn.ModuleList(nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d)) for _ in range(layers))
        self.lm_head = nn.Linear(d, vocab_size)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * (1.0 if p.ndim == 1 else 1.0 / math.sqrt(p.shape[-1])))
            self.lm_head.weight.mul_(3.0)
        self.double().eval()
        self.config = SimpleNamespace(model_type="Dream" if shifted else "llada", vocab_size=vocab_size,
                                      mask_token_id=MASK, max_sequence_length=max_len)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    @property
    def device(self) -> torch.device:  # Fast-dLLM's functions read model.device
        return self.lm_head.weight.device

    def forward(self, input_ids, attention_mask=None, past_key_values=None, use_cache=False, replace_position=None):
        b, q = input_ids.shape
        past, replace, dev = past_key_values, None, input_ids.device
        if past is None:
            qpos, n_keys = torch.arange(q, device=dev), q
        elif replace_position is None:
            qpos, n_keys = past[0][0].shape[-2] + torch.arange(q, device=dev), past[0][0].shape[-2] + q
        else:
            replace = replace_position.nonzero(as_tuple=True)[1]
            qpos, n_keys = replace, past[0][0].shape[-2]
        h = self.emb(input_ids) + self.pos(qpos)
        bias = torch.zeros(b, 1, q, n_keys, dtype=h.dtype, device=dev)
        if attention_mask is not None and attention_mask.ndim == 4:  # Dream's boolean [B, 1, q, keys] pairwise mask
            bias = bias + (~attention_mask.bool()).to(h.dtype) * -1e9
        elif attention_mask is not None:
            bias = bias + (1.0 - attention_mask[:, None, None, :].to(h.dtype)) * -1e9
        if self.causal:
            bias = bias.masked_fill(torch.arange(n_keys, device=dev)[None, :] > qpos[:, None], float("-inf"))
        presents = []
        for i, (qkv, out, ff) in enumerate(zip(self.qkv, self.out, self.ff)):
            qkv_heads = qkv(self.norms[2 * i](h)).view(b, q, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
            qs, ks, vs = qkv_heads[0], qkv_heads[1], qkv_heads[2]
            if past is not None:
                pk, pv = past[i]
                if replace is None:
                    ks, vs = torch.cat([pk, ks], dim=-2), torch.cat([pv, vs], dim=-2)
                else:  # Fast-dLLM's dual cache: the run columns' entries replace the cached ones, in place
                    pk[:, :, replace], pv[:, :, replace] = ks, vs
                    ks, vs = pk, pv
            presents.append((ks, vs))
            att = torch.softmax(qs @ ks.transpose(-1, -2) / math.sqrt(qs.shape[-1]) + bias, dim=-1)
            h = h + out((att @ vs).transpose(1, 2).reshape(b, q, -1))
            h = h + ff(self.norms[2 * i + 1](h))
        return SimpleNamespace(logits=self.lm_head(self.norms[-1](h)), past_key_values=presents if use_cache else None)


def _widths(model: nn.Module) -> tuple[list[int], object]:
    """Record the number of columns each call runs."""
    widths: list[int] = []
    return widths, model.register_forward_pre_hook(lambda m, args, kwargs: widths.append(args[0].shape[1]),
                                                   with_kwargs=True)


PROMPTS = [[5, 6, 7, 8, 9], [1, 2], [9, 10, 11, 12]]  # different lengths: left padding under an attention mask


# --------------------------------------------------------------------------------------------------
# exact where it can be: no column attends to a later one
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["prefix", "dual"])
@pytest.mark.parametrize("schedule, order, temperature, shifted", [
    (4, "confidence", 0.0, False),
    (4, "random", 1.0, True),  # fixed schedule, random order: logits (and the head) only at the revealed positions
    (schedules.threshold(0.5), "confidence", 1.0, True),
    (schedules.entropy_bound(1.0), "margin", 0.0, False),
])
def test_cache_is_exact_when_no_column_sees_later_ones(mode, shifted, schedule, order, temperature):
    model = KVLM(seed=1, causal=True, shifted=shifted)
    kw = dict(gen_length=24, block_length=8, schedule=schedule, order=order, temperature=temperature, num_samples=2)
    plain = ms.generate(model, PROMPTS, generator=torch.Generator().manual_seed(5), **kw)
    widths, handle = _widths(model)
    cached = ms.generate(model, PROMPTS, generator=torch.Generator().manual_seed(5), cache=mode, **kw)
    handle.remove()
    assert torch.equal(cached.sequences, plain.sequences)
    assert cached.nfe == plain.nfe and torch.equal(cached.calls_per_row, plain.calls_per_row)
    assert torch.allclose(cached.token_logprobs, plain.token_logprobs, atol=1e-5)
    full = plain.sequences.shape[1]
    assert widths.count(full) == 3  # one full call per block
    if mode == "dual":  # later calls run the block (one more column for shifted logits)
        assert set(widths) - {full} <= {8 + shifted}
    else:  # later calls run the block and what follows it
        assert set(widths) - {full} <= {full - start + shifted for start in (5, 13, 21)} and min(widths) < full


def test_cache_infills_prompt_masks_and_refills_outside_its_window():
    """Prompt masks widen the first block's window; a column re-masked behind the window refills the cache."""
    model = KVLM(seed=2, causal=True)
    prompts = [[5, MASK, 7, 8], [1, 2, MASK, 4]]

    def remask(call, state):
        if call == 4:  # block 2 has started: mask a column of block 1 again
            state.sequences[:, 6] = MASK

    for mode in ("prefix", "dual"):
        kw = dict(gen_length=12, block_length=4, schedule=2, order="confidence", temperature=0.0)
        plain = ms.generate(model, prompts, **kw, callback_on_step_end=remask)
        cached = ms.generate(model, prompts, cache=mode, **kw, callback_on_step_end=remask)
        assert torch.equal(cached.sequences, plain.sequences) and cached.nfe == plain.nfe
        infill = ms.generate(model, prompts, gen_length=0, schedule=1, order="confidence", temperature=0.0, cache=mode)
        assert (infill.sequences != MASK).all()


# --------------------------------------------------------------------------------------------------
# the approximation on bidirectional models: Fast-dLLM's cached loops
# --------------------------------------------------------------------------------------------------

def _commit(x: torch.Tensor, logits: torch.Tensor, cols: torch.Tensor, quota: torch.Tensor) -> None:
    """LLaDA's low-confidence remasking at ``cols`` (greedy): the ``quota[j]`` most confident masked columns."""
    logits = logits.double().clone()
    logits[..., MASK] = float("-inf")
    x0 = logits.argmax(-1)
    conf = torch.softmax(logits, -1).gather(-1, x0.unsqueeze(-1)).squeeze(-1)
    for j in range(x.shape[0]):
        masked = x[j, cols] == MASK
        c = torch.where(masked, conf[j], torch.full_like(conf[j], float("-inf")))
        for i in torch.topk(c, int(quota[j])).indices:
            x[j, cols[i]] = x0[j, i]


@torch.no_grad()
def fastdllm_reference(model: nn.Module, prompt: torch.Tensor, gen_length: int, block_length: int, steps: int,
                       mode: str) -> tuple[torch.Tensor, int]:
    """Fast-dLLM's cached loops, written from the paper's description: per block, one full call with
    ``use_cache=True`` reveals the block's first quota; then until the block is filled each call runs the block and
    what follows it on the keys/values before the block (``prefix``), or the block alone on every other column's
    keys/values (``dual``, ``replace_position``). LLaDA's quotas (remainder to the first steps), greedy."""
    b, p = prompt.shape
    x = torch.cat([prompt, torch.full((b, gen_length), MASK, dtype=torch.long)], 1)
    calls = 0
    for s in range(p, p + gen_length, block_length):
        e = s + block_length
        n = (x[:, s:e] == MASK).sum(1)
        quota = n.unsqueeze(1) // steps + (torch.arange(steps).unsqueeze(0) < (n % steps).unsqueeze(1)).long()
        out = model(x, use_cache=True)
        _commit(x, out.logits[:, s:e], torch.arange(s, e), quota[:, 0])
        past, calls, i = out.past_key_values, calls + 1, 1
        if mode == "prefix":
            past = [(k[:, :, :s], v[:, :, :s]) for k, v in past]
        while (x[:, s:e] == MASK).any():
            if mode == "prefix":
                logits = model(x[:, s:], past_key_values=past, use_cache=True).logits[:, :block_length]
            else:
                where = torch.zeros(1, x.shape[1], dtype=torch.bool)
                where[:, s:e] = True
                logits = model(x[:, s:e], past_key_values=past, use_cache=True, replace_position=where).logits
            _commit(x, logits, torch.arange(s, e), quota[:, i])
            calls, i = calls + 1, i + 1
    return x, calls


@pytest.mark.parametrize("mode", ["prefix", "dual"])
@pytest.mark.parametrize("gen_length, block_length, steps", [(24, 8, 4), (16, 16, 5), (12, 4, 2)])
def test_bidirectional_cache_equals_fastdllm_reference(mode, gen_length, block_length, steps):
    model = KVLM(seed=3)
    prompt = torch.tensor([[5, 6, 7, 8, 9], [1, 2, 3, 4, 5]])
    want, calls = fastdllm_reference(model, prompt, gen_length, block_length, steps, mode)
    out = ms.generate(model, prompt, gen_length=gen_length, block_length=block_length, schedule=steps,
                      order="confidence", temperature=0.0, cache=mode)
    assert torch.equal(out.sequences, want) and out.nfe == calls


def test_cache_is_an_approximation_on_bidirectional_models():
    """Stale keys/values change some predictions on a bidirectional model (and not on a causal one, above)."""
    model = KVLM(seed=4)
    kw = dict(gen_length=32, block_length=8, schedule=8, order="confidence", temperature=0.0)
    prompt = torch.tensor([[5, 6, 7, 8, 9], [1, 2, 3, 4, 5], [9, 8, 7, 6, 5]])
    plain = ms.generate(model, prompt, **kw)
    prefix, dual = (ms.generate(model, prompt, cache=mode, **kw) for mode in ("prefix", "dual"))
    assert not torch.equal(dual.sequences, plain.sequences)
    assert (prefix.sequences != MASK).all() and prefix.nfe == dual.nfe == plain.nfe


# --------------------------------------------------------------------------------------------------
# what is refused
# --------------------------------------------------------------------------------------------------

class NoCacheArgs(KVLM):
    def forward(self, input_ids, attention_mask=None):
        return super().forward(input_ids, attention_mask)


class NoReplace(KVLM):
    def forward(self, input_ids, attention_mask=None, past_key_values=None, use_cache=False):
        return super().forward(input_ids, attention_mask, past_key_values, use_cache)


class NoPast(KVLM):
    def forward(self, input_ids, attention_mask=None, past_key_values=None, use_cache=False, replace_position=None):
        out = super().forward(input_ids, attention_mask, past_key_values, use_cache, replace_position)
        return SimpleNamespace(logits=out.logits)


def test_cache_refusals_are_clear():
    kw = dict(gen_length=8, block_length=4, schedule=2)
    with pytest.raises(ValueError, match=r"NoCacheArgs\.forward has no past_key_values, use_cache"):
        ms.generate(NoCacheArgs(), cache="prefix", **kw)
    with pytest.raises(ValueError, match="TinyLLaDA returned no past_key_values"):  # LLaDA's signature, no cache
        ms.generate(TinyLLaDA(), cache="prefix", **kw)
    with pytest.raises(ValueError, match=r"NoReplace\.forward has no replace_position"):
        ms.generate(NoReplace(), cache="dual", **kw)
    ms.generate(NoReplace(), cache="prefix", **kw)  # the prefix cache needs no replace_position
    with pytest.raises(ValueError, match="NoPast returned no past_key_values"):
        ms.generate(NoPast(), cache="prefix", **kw)
    with pytest.raises(ValueError, match="framing"):
        ms.generate(tiny_bert(), cache="prefix", **kw)
    with pytest.raises(ValueError, match="classifier-free guidance"):
        ms.generate(KVLM(), cache="dual", cfg_scale=1.0, **kw)
    with pytest.raises(ValueError, match="cache='suffix' is unknown"):
        ms.generate(KVLM(), cache="suffix", **kw)
