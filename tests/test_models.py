"""The MaskedLM adapter: family detection, framing, shifts, padding, suppression, positions-only logits.

The tiny random models defined here (LLaDA-like, Dream-like, BERT/RoBERTa) are reused by test_generate.py.
"""
from __future__ import annotations

import inspect
import json
import math
import warnings
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import mdm_sched as ms
from mdm_sched.models import LLADA_MASK_TOKEN_ID, detect_family, load_masked_lm, wrap

# --------------------------------------------------------------------------------------------------
# tiny random models with the published interfaces
# --------------------------------------------------------------------------------------------------

class _Block(nn.Module):
    """Pre-LN transformer block; its attention is ``scaled_dot_product_attention`` with the caller's mask as is."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.n1, self.n2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.o = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.ff = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, h: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        b, l, d = h.shape
        q, k, v = self.qkv(self.n1(h)).view(b, l, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        h = h + self.o(att.transpose(1, 2).reshape(b, l, d))
        return h + self.ff(self.n2(h))


class _Tiny(nn.Module):
    def __init__(self, vocab_size: int, d: int, heads: int, layers: int, max_len: int, seed: int) -> None:
        super().__init__()
        self.max_len = max_len
        self.emb = nn.Embedding(vocab_size, d)
        self.blocks = nn.ModuleList(_Block(d, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab_size)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():  # deterministic random weights, large enough for peaked predictions
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * (1.0 if p.ndim == 1 else 1.0 / math.sqrt(p.shape[-1])))
            self.lm_head.weight.mul_(3.0)

    def _logits(self, h: torch.Tensor, attn_mask: torch.Tensor | None) -> SimpleNamespace:
        for blk in self.blocks:
            h = blk(h, attn_mask)
        return SimpleNamespace(logits=self.lm_head(self.norm(h)))

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head


class TinyLLaDA(_Tiny):
    """Takes what LLaDA's ``LLaDAModelLM.forward`` takes (no ``position_ids``): a ``[B, L]`` padding mask,
    turned into an additive key bias the way LLaDA's code does it (``view(B, -1)[:, None, None, :]``, so any
    other mask shape fails as it would there); a relative position bias (translation invariant, like RoPE),
    so left padding under an attention mask changes nothing."""

    def __init__(self, vocab_size: int = 40, mask_token_id: int = 39, d: int = 32, heads: int = 2, layers: int = 2,
                 max_len: int = 64, seed: int = 0, eos_token_id: int | None = None) -> None:
        super().__init__(vocab_size, d, heads, layers, max_len, seed)
        self.rel = nn.Parameter(torch.randn(heads, 2 * max_len - 1, generator=torch.Generator().manual_seed(seed + 1)))
        self.config = SimpleNamespace(model_type="llada", architectures=["LLaDAModelLM"], vocab_size=vocab_size,
                                      mask_token_id=mask_token_id, max_sequence_length=max_len,
                                      eos_token_id=eos_token_id)

    def forward(self, input_ids: torch.Tensor, inputs_embeds: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, attention_bias: torch.Tensor | None = None,
                past_key_values: object = None, labels: object = None, use_cache: bool | None = None,
                output_attentions: bool | None = None, output_hidden_states: bool | None = None,
                return_dict: bool | None = None) -> SimpleNamespace:
        b, l = input_ids.shape
        pos = torch.arange(l, device=input_ids.device)
        h = self.emb(input_ids)
        bias = self.rel[:, (pos[None, :] - pos[:, None]) + self.max_len - 1].unsqueeze(0).to(h.dtype)
        if attention_mask is not None and 0.0 in attention_mask:
            keys = attention_mask.to(dtype=torch.float).view(b, -1)[:, None, None, :]
            bias = bias + ((1.0 - keys) * torch.finfo(torch.float).min).to(h.dtype)
        return self._logits(h, bias)


class TinyDream(_Tiny):
    """Takes what Dream's ``DreamModel.forward`` takes: ``attention_mask`` is ``None``, ``"full"`` or the boolean
    ``[B, 1, L, L]`` mask that Dream's ``diffusion_generate`` builds, handed to ``scaled_dot_product_attention``
    unchanged (so a ``[B, L]`` integer mask fails exactly as it does there); ``position_ids`` are Dream's
    ``tok_idx`` (absolute position embeddings here, so wrong ids show). The logits at position i predict token i + 1."""

    def __init__(self, vocab_size: int = 40, mask_token_id: int = 39, d: int = 32, heads: int = 2, layers: int = 2,
                 max_len: int = 64, seed: int = 0) -> None:
        super().__init__(vocab_size, d, heads, layers, max_len, seed)
        self.pos = nn.Embedding(max_len, d)
        with torch.no_grad():
            self.pos.weight.copy_(torch.randn(max_len, d, generator=torch.Generator().manual_seed(seed + 2)))
        self.config = SimpleNamespace(model_type="Dream", architectures=["DreamModel"], vocab_size=vocab_size,
                                      mask_token_id=mask_token_id, max_position_embeddings=max_len)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | str | None = None,
                position_ids: torch.Tensor | None = None, past_key_values: object = None,
                inputs_embeds: torch.Tensor | None = None, labels: object = None, use_cache: bool | None = None,
                output_attentions: bool | None = None, output_hidden_states: bool | None = None,
                return_dict: bool | None = None, cache_position: torch.Tensor | None = None,
                num_logits_to_keep: int = 0, **loss_kwargs: object) -> SimpleNamespace:
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        h = self.emb(input_ids) + self.pos(position_ids)
        return self._logits(h, attention_mask if isinstance(attention_mask, torch.Tensor) else None)


BERT_SPECIAL = {"pad": 0, "cls": 1, "sep": 2, "mask": 3}


def tiny_bert(vocab_size: int = 30, seed: int = 0, dtype: torch.dtype = torch.float64, roberta: bool = False,
              hidden: int = 32, max_positions: int = 64):
    """A tiny random BertForMaskedLM (or RobertaForMaskedLM) wrapped with CLS/SEP framing, as a MaskedLM."""
    from transformers import BertConfig, BertForMaskedLM, RobertaConfig, RobertaForMaskedLM

    torch.manual_seed(seed)
    cls_, cfg_cls = (RobertaForMaskedLM, RobertaConfig) if roberta else (BertForMaskedLM, BertConfig)
    config = cfg_cls(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=2 * hidden, max_position_embeddings=max_positions, pad_token_id=0,
                     hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, attn_implementation="eager")
    model = cls_(config).to(dtype).eval()
    with torch.no_grad():  # random init is near-uniform: sharpen the head so orders are well defined
        model.get_output_embeddings().weight.mul_(20.0)
    return wrap(model, mask_token_id=BERT_SPECIAL["mask"], framing=(BERT_SPECIAL["cls"], BERT_SPECIAL["sep"]),
                suppress_tokens=[BERT_SPECIAL["pad"], BERT_SPECIAL["cls"], BERT_SPECIAL["sep"]])


def _finite_close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> None:
    assert a.shape == b.shape
    assert torch.equal(torch.isinf(a), torch.isinf(b))
    fin = torch.isfinite(a)
    assert torch.allclose(a[fin], b[fin], atol=tol, rtol=tol)


# --------------------------------------------------------------------------------------------------
# detection and construction
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("config, family", [
    (SimpleNamespace(model_type="llada", architectures=["LLaDAModelLM"]), "llada"),
    (SimpleNamespace(model_type="custom", auto_map={"AutoModel": "modeling_llada.LLaDAModelLM"}), "llada"),
    (SimpleNamespace(model_type="Dream", architectures=["DreamModel"]), "dream"),
    (SimpleNamespace(model_type="bert", architectures=["BertForMaskedLM"]), "bert"),
    (SimpleNamespace(model_type="modernbert"), "bert"),
    (SimpleNamespace(model_type="whatever", architectures=["FooForMaskedLM"]), "bert"),
    (SimpleNamespace(model_type="gpt2", architectures=["GPT2LMHeadModel"]), None),
    (None, None),
])
def test_detect_family(config, family):
    assert detect_family(config) == family


def test_wrap_detects_and_override_wins():
    llada = TinyLLaDA()
    assert wrap(llada).family == "llada"
    assert wrap(TinyDream()).family == "dream"
    assert wrap(llada, family="module").family == "module"
    bert = tiny_bert()
    assert bert.family == "bert"
    assert wrap(bert) is bert  # idempotent
    with pytest.raises(ValueError, match="mask_token_id"):
        wrap(bert, mask_token_id=7)
    with pytest.raises(ValueError, match="family"):
        wrap(llada, family="gpt")


def test_mask_id_sources():
    model = TinyLLaDA()
    model.config.mask_token_id = None
    with pytest.raises(ValueError, match="mask_token_id=126336 is outside the vocabulary"):
        wrap(model)  # the family default does not fit this 40-token model: refused at once
    model.config.vocab_size = LLADA_MASK_TOKEN_ID + 1
    assert wrap(model).mask_token_id == LLADA_MASK_TOKEN_ID  # LLaDA's published id as the family default
    model.config.vocab_size = 40
    assert wrap(model, mask_token_id=5).mask_token_id == 5   # explicit wins
    plain = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 10))
    with pytest.raises(ValueError, match="mask_token_id="):
        wrap(plain)


def test_config_hash_is_stable_and_discriminates():
    a, b = wrap(TinyLLaDA(seed=0)), wrap(TinyLLaDA(seed=1))
    assert a.config_hash == b.config_hash  # same architecture and config
    assert a.config_hash != wrap(TinyLLaDA(vocab_size=41, mask_token_id=40)).config_hash


# --------------------------------------------------------------------------------------------------
# the logits contract
# --------------------------------------------------------------------------------------------------

def test_bert_framing_added_and_stripped():
    mlm = tiny_bert()
    ids = torch.tensor([[5, 6, 3, 7], [8, 3, 9, 10]])
    framed = torch.cat([torch.full((2, 1), 1), ids, torch.full((2, 1), 2)], dim=1)
    want = mlm.model(framed).logits[:, 1:-1].float()
    want[..., mlm.suppressed_ids] = float("-inf")
    got = mlm.logits(ids)
    assert got.shape == (2, 4, 30) and got.dtype == torch.float32
    _finite_close(got, want)
    assert torch.isinf(got[..., [0, 1, 2, 3]]).all()  # pad, CLS, SEP, mask never sampled


@pytest.mark.parametrize("roberta", [False, True])
def test_padding_invariance_bert_family(roberta):
    """A left-padded row gets the logits it gets alone (absolute positions, RoBERTa's padding_idx offsets)."""
    mlm = tiny_bert(roberta=roberta)
    rows = [[5, 3, 7, 8, 3], [9, 3], [4, 5, 6]]
    width = max(map(len, rows))
    ids = torch.zeros((3, width), dtype=torch.long)
    attn = torch.zeros((3, width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r)
        attn[i, width - len(r):] = 1
    batched = mlm.logits(ids, attn)
    for i, r in enumerate(rows):
        _finite_close(batched[i, width - len(r):], mlm.logits(torch.tensor([r]))[0])


def test_positions_only_logits_match_full_and_skip_the_head_elsewhere():
    mlm = tiny_bert(vocab_size=30)
    ids = torch.tensor([[5, 3, 7, 3, 3], [3, 9, 3, 4, 5]])
    pos = ids == 3
    full = mlm.logits(ids)
    first = mlm.logits(ids, positions=pos)  # first call: verifies the head shortcut against full logits
    assert mlm.head.verified
    seen = []
    hook = mlm.model.cls.register_forward_hook(lambda m, inp, out: seen.append(tuple(out.shape)))
    try:
        second = mlm.logits(ids, positions=pos)
    finally:
        hook.remove()
    _finite_close(first, full[pos])
    _finite_close(second, full[pos])
    # inside the forward the head returned nothing ([B, L+2, 0]); it then ran on the 5 requested rows only
    assert seen == [(2, 7, 0), (int(pos.sum()), 30)]


def test_positions_only_falls_back_when_the_model_post_processes_logits():
    class Scaled(TinyLLaDA):
        def forward(self, input_ids, attention_mask=None):
            out = super().forward(input_ids, attention_mask=attention_mask)
            return SimpleNamespace(logits=out.logits * 0.5)  # invisible to the adapter: must be detected

    mlm = wrap(Scaled())
    ids = torch.tensor([[1, 39, 2, 39]])
    pos = ids == 39
    with pytest.warns(UserWarning, match="full logits"):
        got = mlm.logits(ids, positions=pos)
    _finite_close(got, mlm.logits(ids)[pos])
    _finite_close(mlm.logits(ids, positions=pos), mlm.logits(ids)[pos])


def test_dream_logits_are_shifted():
    model = TinyDream()
    mlm = wrap(model)
    ids = torch.tensor([[5, 39, 7, 39, 39]])
    raw = model(ids).logits.float()
    got = mlm.logits(ids)
    want = torch.cat([raw[:, :1], raw[:, :-1]], dim=1)  # position j reads the logits of j-1 (row start: itself)
    want[..., 39] = float("-inf")
    _finite_close(got, want)


def test_tiny_models_take_only_what_the_published_code_takes():
    """The test models fail on the inputs the real LLaDA/Dream code fails on, so the adapter tests bite."""
    ids = torch.tensor([[0, 5, 39]])
    padding = torch.tensor([[0, 1, 1]])
    with pytest.raises(RuntimeError, match="attn_mask dtype"):  # Dream hands its mask to SDPA unchanged
        TinyDream()(ids, attention_mask=padding)
    pairwise = (padding.bool()[:, None, :, None] & padding.bool()[:, None, None, :])
    assert TinyDream()(ids, attention_mask=pairwise, position_ids=torch.tensor([[1, 0, 1]])).logits.shape == (1, 3, 40)
    with pytest.raises(RuntimeError):  # LLaDA views its mask as [B, L]: a pairwise one does not fit
        TinyLLaDA()(ids, attention_mask=pairwise.long())
    assert "position_ids" not in inspect.signature(TinyLLaDA.forward).parameters


def test_dream_batch_gets_the_pairwise_mask_and_tok_idx():
    """What Dream's diffusion_generate passes for left-padded rows: a [B, 1, L, L] boolean mask and tok_idx."""
    model = TinyDream().double()
    seen = []
    model.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs), with_kwargs=True)
    ids = torch.tensor([[5, 39, 7, 39], [0, 0, 6, 39]])
    attn = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])
    wrap(model, positions_only=False).logits(ids, attn)
    mask, pos = seen[-1]["attention_mask"], seen[-1]["position_ids"]
    real = attn.bool()
    assert mask.dtype == torch.bool and mask.shape == (2, 1, 4, 4)
    assert torch.equal(mask, real[:, None, :, None] & real[:, None, None, :])
    assert pos[0].tolist() == [0, 1, 2, 3] and pos[1, 2:].tolist() == [0, 1]  # 0 on each row's first real token


def test_dream_left_padding_uses_position_ids():
    mlm = wrap(TinyDream().double())
    rows = [[5, 39, 7, 39], [6, 39]]
    ids = torch.tensor([[5, 39, 7, 39], [0, 0, 6, 39]])
    attn = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])
    batched = mlm.logits(ids, attn)
    _finite_close(batched[1, 2:], mlm.logits(torch.tensor([rows[1]]))[0])
    _finite_close(batched[0], mlm.logits(torch.tensor([rows[0]]))[0])


def test_suppression_and_allowed_tokens():
    from mdm_sched.oracle import TabularOracle

    oracle = TabularOracle.random(vocab_size=3, n_tokens=4, seed=0)
    mlm = wrap(oracle)
    assert mlm.family == "module" and mlm.mask_token_id == 3
    logits = mlm.logits(torch.full((1, 4), 3))
    assert torch.isinf(logits[..., 3]).all() and torch.isfinite(logits[..., :3]).all()
    assert mlm.suppressed_ids.tolist() == [3]
    restricted = wrap(oracle, allowed_tokens=[0, 2])
    assert restricted.allowed_ids.tolist() == [0, 2]
    assert torch.isinf(restricted.logits(torch.full((1, 4), 3))[..., 1]).all()
    extra = wrap(oracle, suppress_tokens=[1])
    assert extra.suppressed_ids.tolist() == [1, 3]
    with pytest.raises(ValueError, match="every token"):
        wrap(oracle, allowed_tokens=[3]).logits(torch.full((1, 4), 3))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_logits_raise(bad):
    class Broken(nn.Module):
        def forward(self, input_ids, attention_mask=None):
            logits = torch.zeros(*input_ids.shape, 6)
            logits[0, 0, 2] = bad
            return SimpleNamespace(logits=logits)

    with pytest.raises(ValueError, match=r"NaN or \+inf.*float32"):
        wrap(Broken(), mask_token_id=5).logits(torch.tensor([[5, 5]]))


def test_training_mode_is_restored_and_dropout_off():
    mlm = tiny_bert()
    mlm.model.train()
    ids = torch.tensor([[5, 3, 7]])
    a, b = mlm.logits(ids), mlm.logits(ids)
    assert torch.equal(a, b)  # dropout (p=0.1) would make these differ
    assert mlm.model.training


def test_module_without_attention_mask_cannot_batch_padded_rows():
    class NoMask(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(8, 8)

        def forward(self, input_ids):
            return self.emb(input_ids)  # a bare tensor is accepted as the logits

    mlm = wrap(NoMask(), mask_token_id=7)
    assert mlm.logits(torch.tensor([[1, 7]])).shape == (1, 2, 8)
    with pytest.raises(ValueError, match="attention_mask"):
        mlm.logits(torch.tensor([[0, 7]]), torch.tensor([[0, 1]]))


# --------------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------------

def test_remote_code_needs_opt_in(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "llada", "architectures": ["LLaDAModelLM"],
        "auto_map": {"AutoConfig": "configuration_llada.LLaDAConfig", "AutoModel": "modeling_llada.LLaDAModelLM"}}))
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        load_masked_lm(tmp_path)


def test_load_hf_bert_dir_roundtrip(tmp_path):
    mlm = tiny_bert(dtype=torch.float32)
    mlm.model.config.architectures = ["BertForMaskedLM"]
    mlm.model.save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no tokenizer in the directory: expected warnings
        loaded = load_masked_lm(tmp_path, mask_token_id=3, framing=(1, 2))
    assert loaded.family == "bert" and loaded.max_length == 62  # 64 positions minus CLS and SEP
    ids = torch.tensor([[5, 3, 7]])
    _finite_close(loaded.logits(ids), mlm.logits(ids))


def _need(name: str) -> None:
    if not ms.assets.available().get(name):
        pytest.skip(f"{name} weights not installed")


def test_sapiens_adapter():
    _need("sapiens-vh")
    mlm = load_masked_lm("sapiens-vh")
    assert mlm.family == "bert" and mlm.residue_separator == ""
    vocab = mlm.tokenizer.convert_ids_to_tokens(mlm.allowed_ids.tolist())
    assert sorted(vocab) == sorted(ms.assets.AMINO_ACIDS)
    ids = mlm.encode(["EVQLVESGG", "EV<mask>L"])
    assert len(ids[0]) == 9 and ids[1][2] == mlm.mask_token_id
    assert mlm.decode(ids[:1]) == ["EVQLVESGG"]
    masked = torch.tensor([ids[0]])
    masked[0, 3] = mlm.mask_token_id
    pos = masked == mlm.mask_token_id
    logits = mlm.logits(masked, positions=pos)
    assert logits.shape == (1, mlm.vocab_size)
    assert mlm.tokenizer.convert_ids_to_tokens(int(logits.argmax())) == "L"  # EVQ[L]VESGG: the germline residue


@pytest.mark.slow
def test_antiberty_adapter():
    _need("antiberty")
    mlm = load_masked_lm("antiberty")
    assert mlm.family == "bert" and mlm.residue_separator == " "
    ids = mlm.encode(["EVQLVESGG"])
    assert len(ids[0]) == 9 and mlm.tokenizer.unk_token_id not in ids[0]
    assert mlm.decode(ids) == ["EVQLVESGG"]
    assert sorted(mlm.tokenizer.convert_ids_to_tokens(mlm.allowed_ids.tolist())) == sorted(ms.assets.AMINO_ACIDS)


# --------------------------------------------------------------------------------------------------
# adapters cached per module
# --------------------------------------------------------------------------------------------------

def test_wrap_returns_the_cached_adapter_for_the_same_arguments():
    model = TinyLLaDA()
    a = wrap(model)
    assert wrap(model) is a and ms.wrap(model, mask_token_id=None) is a
    assert wrap(model, suppress_tokens=[1, 2]) is wrap(model, suppress_tokens=[1, 2])  # list arguments key too
    assert wrap(model, suppress_tokens=[1, 2]) is not a
    assert wrap(model, mask_token_id=5) is not a and wrap(model, mask_token_id=5).mask_token_id == 5
    assert wrap(model, family="module") is not a
    assert wrap(TinyLLaDA()) is not a  # another module, another adapter
    assert wrap(model, suppress_tokens=iter([1])) is not wrap(model, suppress_tokens=iter([1]))  # one-shot: not cached


def test_repeated_generate_hashes_and_verifies_once(monkeypatch):
    import mdm_sched.heads as heads_mod
    import mdm_sched.models as models_mod

    counts = {"hash": 0, "verify": 0}
    real_hash, real_match = models_mod.config_hash, heads_mod._head_matches

    def count(name, fn):
        def wrapped(*args):
            counts[name] += 1
            return fn(*args)
        return wrapped

    monkeypatch.setattr(models_mod, "config_hash", count("hash", real_hash))
    monkeypatch.setattr(heads_mod, "_head_matches", count("verify", real_match))
    model = TinyLLaDA()
    widths: list[int] = []  # sequence width of every forward
    model.register_forward_pre_hook(lambda m, args: widths.append(args[0].shape[1]))
    outs, per_call = [], []
    for _ in range(2):
        widths.clear()
        outs.append(ms.generate(model, gen_length=24, schedule=4, order="confidence",
                                generator=torch.Generator().manual_seed(0)))
        per_call.append(list(widths))
    assert counts == {"hash": 1, "verify": 1}
    # the first call adds one 16-token head probe to the 4 forwards; the second makes only the 4
    assert per_call[0] == [16, 24, 24, 24, 24] and per_call[1] == [24, 24, 24, 24]
    assert torch.equal(outs[0].sequences, outs[1].sequences)


def test_cached_adapter_does_not_keep_the_module_alive():
    import copy
    import gc
    import io
    import weakref

    model = TinyLLaDA()
    mlm = wrap(model)
    clone = copy.deepcopy(model)
    assert wrap(clone) is not mlm and wrap(clone).model is clone  # copies start without adapters
    shallow = copy.copy(model)
    assert wrap(shallow).model is shallow and wrap(model) is mlm
    torch.save(model, io.BytesIO())  # adapters are not pickled with the module
    ref = weakref.ref(model)
    del model, mlm, shallow
    gc.collect()
    assert ref() is None
