"""generate(): exactness against oracles, equivalence with LLaDA's published algorithm, batch invariance,
blocks, infilling, EOS, real antibody models, and the errors bad input gets."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from scipy.stats import chisquare
from test_models import BERT_SPECIAL, TinyDream, TinyLLaDA, tiny_bert
from torch import nn

import mdm_sched as ms
from mdm_sched import schedules
from mdm_sched.oracle import MarkovChainOracle, TabularOracle


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def assert_law(samples_index: torch.Tensor, probs: torch.Tensor, *, min_expected: float = 5.0) -> float:
    """Chi-square goodness of fit of sample indices against ``probs``; cells with small expected counts pooled."""
    n = samples_index.numel()
    counts = torch.bincount(samples_index, minlength=probs.numel()).double()
    expected = probs.double() / probs.sum() * n
    assert counts[expected == 0].sum() == 0, "a sequence of probability zero was sampled"
    counts, expected = counts[expected > 0], expected[expected > 0]
    small = expected < min_expected
    obs, exp = counts[~small], expected[~small]
    if small.any():
        obs = torch.cat([obs, counts[small].sum().view(1)])
        exp = torch.cat([exp, expected[small].sum().view(1)])
    p = float(chisquare(obs.numpy(), exp.numpy()).pvalue)
    assert p > 1e-3, f"samples do not follow the law (chi-square p = {p:.2e})"
    return p


# --------------------------------------------------------------------------------------------------
# exactness: the random-order sampler has exactly the law the theory computes
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n_tokens, sizes, seed", [
    (4, (1, 1, 1, 1), 0),  # any-order autoregressive: reproduces the data law
    (4, (4,), 1),          # one call: product of marginals
    (4, (2, 2), 2),
    (4, (1, 3), 3),
    (5, (2, 3), 4),
    (5, (1, 2, 2), 5),
])
def test_random_order_sampler_law_is_exact(n_tokens, sizes, seed):
    oracle = TabularOracle.random(vocab_size=3, n_tokens=n_tokens, seed=seed)
    n = 20000 if n_tokens == 4 else 30000
    out = ms.generate(oracle, gen_length=n_tokens, schedule=schedules.Schedule(sizes), num_samples=n,
                      generator=_gen(seed))
    x = out.sequences
    assert out.nfe == len(sizes)
    assert (x != oracle.mask_token_id).all() and (x < 3).all()  # the finite mask logit is never sampled
    law = oracle.sampler_law(sizes)
    assert_law(oracle.index_of(x), law)
    if sizes == (1,) * n_tokens:
        assert torch.allclose(law, oracle.probs, atol=1e-12)
        assert_law(oracle.index_of(x), oracle.probs)


def test_sampler_law_of_a_miscalibrated_model_is_exact():
    """Learning error: conditionals that belong to no joint law; the sampler must still follow its exact law."""
    oracle = TabularOracle.random(vocab_size=3, n_tokens=4, seed=7)
    model = oracle.miscalibrated(temperature=1.7, noise=0.5, seed=3)
    out = ms.generate(model, gen_length=4, schedule=[1, 2, 1], num_samples=20000, generator=_gen(1))
    assert_law(oracle.index_of(out.sequences), oracle.sampler_law([1, 2, 1], model=model))


def test_markov_chain_oracle_quick_run():
    chain = MarkovChainOracle.random(vocab_size=3, n_tokens=5, seed=0)
    out = ms.generate(chain, gen_length=5, schedule=[2, 3], num_samples=10000, generator=_gen(2))
    table = chain.to_tabular()
    assert_law(table.index_of(out.sequences), table.sampler_law([2, 3]))


def test_infilling_a_prompt_conditions_exactly():
    """Prompt masks are sampled too: with one token per call the law is pi(x | visible prompt tokens)."""
    oracle = TabularOracle.random(vocab_size=3, n_tokens=4, seed=11)
    m = oracle.mask_token_id
    prompt = torch.tensor([[m, 1, m, m]])
    out = ms.generate(oracle, prompt, gen_length=0, schedule=3, num_samples=15000, generator=_gen(3))
    assert out.nfe == 3 and (out.sequences[:, 1] == 1).all()
    cond = oracle.probs * (oracle.all_sequences()[:, 1] == 1)
    assert_law(oracle.index_of(out.sequences), cond / cond.sum())


def test_token_logprobs_and_reveal_steps():
    oracle = TabularOracle.random(vocab_size=3, n_tokens=4, seed=5)
    out = ms.generate(oracle, gen_length=4, schedule=[4], num_samples=64, generator=_gen(0), return_history=True)
    # a single call draws every token from its marginal: its log-probability is the marginal's
    marg = oracle.conditionals(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.bool))[0]
    want = marg.log()[torch.arange(4), out.sequences].float()
    assert torch.allclose(out.token_logprobs, want, atol=1e-5)
    assert (out.reveal_step == 1).all()
    out = ms.generate(oracle, gen_length=4, schedule=[1, 2, 1], num_samples=32, generator=_gen(0),
                      return_history=True)
    assert [int((out.reveal_step == t).sum(1).unique()) for t in (1, 2, 3)] == [1, 2, 1]
    assert len(out.history) == 3
    rebuilt = torch.full_like(out.sequences, -1)
    for t, (pos, tok) in enumerate(out.history, start=1):
        rebuilt[pos[:, 0], pos[:, 1]] = tok
        assert (out.reveal_step[pos[:, 0], pos[:, 1]] == t).all()
    assert torch.equal(rebuilt, out.sequences)


def test_temperature_top_k_top_p_laws():
    """One position, V = 4: temperature, top-k and top-p give the textbook renormalised laws."""
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64)
    oracle = TabularOracle(probs, vocab_size=4, n_tokens=1)
    cases = [(2.0, None, None, probs.sqrt()), (1.0, 2, None, torch.tensor([0.5, 0.3, 0, 0])),
             (1.0, None, 0.7, torch.tensor([0.5, 0.3, 0, 0])), (1.0, None, 0.9, torch.tensor([0.5, 0.3, 0.15, 0]))]
    for temperature, top_k, top_p, want in cases:
        out = ms.generate(oracle, gen_length=1, schedule=1, num_samples=8000, temperature=temperature,
                          top_k=top_k, top_p=top_p, generator=_gen(9))
        assert_law(out.sequences[:, 0], want / want.sum())
        # token_logprobs stay the temperature-1 model's, whatever the sampling controls
        assert torch.allclose(out.token_logprobs[:, 0], probs.log()[out.sequences[:, 0]].float(), atol=1e-5)
    greedy = ms.generate(oracle, gen_length=1, schedule=1, num_samples=5, temperature=0)
    assert (greedy.sequences == 0).all()


def test_seeded_runs_reproduce():
    model = TinyLLaDA()
    a = ms.generate(model, [[1, 2, 3]], gen_length=12, schedule=4, num_samples=3, generator=_gen(4))
    b = ms.generate(model, [[1, 2, 3]], gen_length=12, schedule=4, num_samples=3, generator=_gen(4))
    c = ms.generate(model, [[1, 2, 3]], gen_length=12, schedule=4, num_samples=3, generator=_gen(5))
    assert torch.equal(a.sequences, b.sequences) and not torch.equal(a.sequences, c.sequences)
    assert (a.sequences[:, :3] == torch.tensor([1, 2, 3])).all()


# --------------------------------------------------------------------------------------------------
# equivalence with LLaDA's published low-confidence remasking
# --------------------------------------------------------------------------------------------------

def llada_reference(model: nn.Module, prompt: torch.Tensor, gen_length: int, block_length: int, steps: int,
                    mask_id: int, quota=None, cfg_scale: float = 0.0) -> torch.Tensor:
    """LLaDA (Nie et al. 2025), Algorithm 'low-confidence remasking', written from the paper's description:
    semi-autoregressive blocks; in each block the masked count is split evenly over the steps (remainder
    to the first steps); at each step the model predicts every masked position (argmax, temperature 0),
    confidence = softmax probability of that prediction, and the k most confident positions of the current
    block are committed. Positions right of the current block are never committed. Requires
    ``block_length`` to divide ``gen_length`` (as the published code asserts)."""
    b, p = prompt.shape
    x = torch.cat([prompt, torch.full((b, gen_length), mask_id, dtype=torch.long)], dim=1)
    for blk in range(gen_length // block_length):
        hi = p + (blk + 1) * block_length
        n_masked = (x[:, p + blk * block_length:hi] == mask_id).sum(1)
        base, rem = n_masked // steps, n_masked % steps
        num_transfer = base.unsqueeze(1) + (torch.arange(steps).unsqueeze(0) < rem.unsqueeze(1)).long()
        if quota is not None:  # the README's drop-in: a library schedule inside this loop
            num_transfer = quota(n_masked)
        for i in range(steps):
            mask_index = x == mask_id
            logits = model(x).logits.double()
            if cfg_scale > 0:  # unsupervised CFG: the prompt masked in a second pass
                un_x = x.clone()
                un_x[:, :p] = mask_id
                un = model(un_x).logits.double()
                logits = un + (cfg_scale + 1) * (logits - un)
            logits[..., mask_id] = float("-inf")  # a prediction is a real token
            prob = torch.softmax(logits, dim=-1)
            x0 = logits.argmax(-1)
            conf = prob.gather(-1, x0.unsqueeze(-1)).squeeze(-1)
            conf[:, hi:] = float("-inf")
            conf = torch.where(mask_index, conf, torch.full_like(conf, float("-inf")))
            for j in range(b):
                idx = torch.topk(conf[j], int(num_transfer[j, i])).indices
                x[j, idx] = x0[j, idx]
    return x


@pytest.mark.parametrize("gen_length, block_length, steps", [(24, 8, 3), (16, 16, 5), (12, 4, 4)])
def test_confidence_order_equals_llada_reference(gen_length, block_length, steps):
    model = TinyLLaDA(seed=3)
    prompt = torch.tensor([[5, 6, 7, 8, 9], [1, 2, 3, 4, 5], [10, 11, 12, 13, 14]])
    want = llada_reference(model, prompt, gen_length, block_length, steps, mask_id=39)
    out = ms.generate(model, prompt, gen_length=gen_length, schedule=steps, block_length=block_length,
                      order="confidence", temperature=0.0)
    assert torch.equal(out.sequences, want)
    assert out.nfe == steps * (gen_length // block_length)


@pytest.mark.parametrize("cfg_scale", [0.5, 2.0])
def test_classifier_free_guidance_equals_llada_reference(cfg_scale):
    model = TinyLLaDA(seed=6)
    prompt = torch.tensor([[5, 6, 7, 8], [1, 2, 3, 4]])
    want = llada_reference(model, prompt, 12, 4, 2, mask_id=39, cfg_scale=cfg_scale)
    out = ms.generate(model, prompt, gen_length=12, block_length=4, schedule=2, order="confidence", temperature=0,
                      cfg_scale=cfg_scale)
    assert torch.equal(out.sequences, want)
    plain = ms.generate(model, prompt, gen_length=12, block_length=4, schedule=2, order="confidence", temperature=0)
    assert not torch.equal(plain.sequences, want)  # guidance changes the output here


def test_optimal_schedule_inside_llada_loop_equals_generate():
    """The plug-in seam: Schedule.transfer_counts replaces LLaDA's quota in LLaDA's own loop, and that loop
    then produces exactly what ms.generate produces with the same schedule."""
    model = TinyLLaDA(seed=5)
    prompt = torch.tensor([[5, 6, 7], [1, 2, 3]])
    curve = 3.0 * torch.exp(-torch.arange(8, dtype=torch.float64) / 2.0)
    sched = schedules.optimal(curve, 3)
    assert sched.sizes != schedules.constant(8, 3).sizes
    want = llada_reference(model, prompt, 16, 8, 3, mask_id=39, quota=sched.transfer_counts)
    out = ms.generate(model, prompt, gen_length=16, block_length=8, schedule=sched, order="confidence", temperature=0)
    assert torch.equal(out.sequences, want) and out.nfe == 6


class TwoPerCall(ms.rules.RevealRule):
    """A test-only adaptive rule: reveal the two best-ranked positions whose confidence is above 0.01."""

    stats = frozenset({"confidence"})
    name = "two-per-call"

    def planned_calls(self, length):
        return None

    def counts(self, step):
        conf = step.ranked["confidence"]
        good = (conf[:, :2] > 0.01) & step.ranked.valid[:, :2]
        return ms.rules.cap_counts(good.sum(1), step, None)


class LeftToRight(ms.orders.Order):
    """A test-only order: leftmost masked position first, no model needed to choose."""

    name = "left-to-right"
    uses_model = False

    def scores(self, candidates, attention, draw, rng):
        cols = torch.arange(candidates.shape[1], dtype=torch.float32)
        return (-cols).expand(candidates.shape).masked_fill(~candidates, float("-inf"))


def test_rules_and_orders_plug_in_without_touching_the_loop():
    model = TinyLLaDA(seed=2)
    out = ms.generate(model, [[1, 2, 3]], gen_length=7, schedule=TwoPerCall(), order="confidence", temperature=0)
    assert out.nfe == 4 and out.block_schedules == []  # 2 + 2 + 2 + 1
    assert sorted((out.reveal_step[0, 3:]).tolist()) == [1, 1, 2, 2, 3, 3, 4]
    assert out.calls_per_row.tolist() == [4]
    ltr = ms.generate(model, gen_length=6, schedule=[1, 2, 3], order=LeftToRight(), generator=_gen(0))
    assert ltr.reveal_step[0].tolist() == [1, 2, 2, 3, 3, 3]


def test_generation_config_and_overrides():
    model = TinyLLaDA(seed=2)
    cfg = ms.MaskedGenerationConfig(gen_length=8, schedule=4, order="confidence", temperature=0)
    a = ms.generate(model, [[1, 2]], generation_config=cfg)
    b = ms.generate(model, [[1, 2]], gen_length=8, schedule=4, order="confidence", temperature=0)
    assert torch.equal(a.sequences, b.sequences) and a.config == b.config
    c = ms.generate(model, [[1, 2]], generation_config=cfg, schedule=2)
    assert c.nfe == 2 and cfg.schedule == 4  # overrides do not change the config object
    with pytest.raises(TypeError, match=r"unknown generation setting.*temprature"):
        ms.generate(model, generation_config=cfg, temprature=0.5)
    with pytest.raises(ValueError, match="gen_length is required"):
        ms.generate(model, schedule=2)


# --------------------------------------------------------------------------------------------------
# batch invariance: rows of different prompt lengths equal the same rows run alone
# --------------------------------------------------------------------------------------------------

def _batch_equals_alone(model, prompts, **kwargs):
    batch = ms.generate(model, prompts, **kwargs)
    width = batch.prompt_length
    for i, prompt in enumerate(prompts):
        alone = ms.generate(model, [prompt], **kwargs)
        assert torch.equal(batch.sequences[i, width - len(prompt):], alone.sequences[0]), f"row {i} differs"
        assert torch.equal(batch.generated[i], alone.generated[0])
    assert (batch.attention_mask.sum(1) == torch.tensor([len(p) + kwargs["gen_length"] for p in prompts])).all()
    return batch


@pytest.mark.parametrize("order", ["confidence", "margin", "entropy"])
def test_batch_invariance_llada_like(order):
    _batch_equals_alone(TinyLLaDA(seed=1).double(), [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10], [11]],
                        gen_length=10, schedule=3, block_length=4, order=order, temperature=0.0)


def test_batch_invariance_dream_like():
    _batch_equals_alone(TinyDream(seed=2).double(), [[1, 2, 3], [4, 5, 6, 7, 8, 9], [11, 12]],
                        gen_length=9, schedule=3, order="confidence", temperature=0.0)


@pytest.mark.parametrize("roberta", [False, True])
def test_batch_invariance_bert_framing(roberta):
    mlm = tiny_bert(roberta=roberta)
    out = _batch_equals_alone(mlm, [[5, 6, 7], [8, 9, 10, 11, 12, 13], [14]], gen_length=8, schedule=4,
                              order="confidence", temperature=0.0)
    assert not torch.isin(out.generated, torch.tensor(list(BERT_SPECIAL.values()))).any()


# --------------------------------------------------------------------------------------------------
# blocks, infilling, EOS, prompts
# --------------------------------------------------------------------------------------------------

def test_blocks_with_a_shorter_last_block():
    model = TinyLLaDA()
    out = ms.generate(model, [[1, 2]], gen_length=10, block_length=4, schedule=schedules.Schedule([3, 1]),
                      generator=_gen(0))
    assert [s.sizes for s in out.block_schedules] == [(3, 1), (3, 1), (1, 1)]  # rescale(2) for the last block
    assert out.nfe == 6
    steps = out.reveal_step[0, 2:]
    blocks = [steps[0:4], steps[4:8], steps[8:10]]
    assert all(blocks[i].max() < blocks[i + 1].min() for i in range(2))  # blocks fill left to right
    assert (out.generated != 39).all()
    # an int schedule is "that many calls per block"
    assert ms.generate(model, gen_length=10, block_length=4, schedule=2, generator=_gen(0)).nfe == 6


def test_schedule_by_name_and_list():
    model = TinyLLaDA()
    out = ms.generate(model, gen_length=12, schedule="cosine", steps=4, generator=_gen(0))
    assert out.block_schedules[0] == schedules.cosine(12, 4) and out.nfe == 4
    out = ms.generate(model, gen_length=6, schedule=[1, 2, 3], generator=_gen(0))
    assert out.block_schedules[0].sizes == (1, 2, 3)


def test_rows_reveal_different_counts_with_prompt_masks():
    """Prompt masks join the first block; the schedule's fractions apply to all masked positions of a row."""
    model = TinyLLaDA()
    out = ms.generate(model, [[1, 39, 39, 2], [3, 4, 5, 6]], gen_length=4, schedule=[2, 2], generator=_gen(0))
    assert out.nfe == 2
    per_call = [(out.reveal_step == t).sum(1).tolist() for t in (1, 2)]
    assert per_call == [[3, 2], [3, 2]]  # row 0: 6 masked -> floor(2*6/4)=3 then 3; row 0 of prompt kept
    assert (out.sequences != 39).all() and out.sequences[0, 0] == 1 and out.sequences[0, 3] == 2


def test_prompt_forms_agree():
    model = TinyLLaDA()
    kwargs = dict(gen_length=5, schedule=5, order="confidence", temperature=0.0)
    lists = ms.generate(model, [[1, 2, 3], [4]], **kwargs)
    right_padded = torch.tensor([[1, 2, 3], [4, 0, 0]])
    tensor = ms.generate(model, right_padded, attention_mask=torch.tensor([[1, 1, 1], [1, 0, 0]]), **kwargs)
    assert torch.equal(lists.sequences, tensor.sequences)
    single = ms.generate(model, [4], **kwargs)
    assert torch.equal(single.generated[0], lists.generated[1])
    repeated = ms.generate(model, [[1, 2, 3], [4]], num_samples=2, **kwargs)
    assert repeated.sequences.shape[0] == 4 and torch.equal(repeated.sequences[0], repeated.sequences[1])


class _EosModel(nn.Module):
    """Fixed logits: EOS (id 7) is by far most likely at content position 5; elsewhere token 1 or 2."""

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))
        self.config = SimpleNamespace(vocab_size=9, mask_token_id=8, eos_token_id=7)

    def forward(self, input_ids, attention_mask=None):
        b, l = input_ids.shape
        logits = torch.zeros(b, l, 9)
        logits[:, :, 1] = 2.0
        logits[:, :, 2] = torch.linspace(0, 1, l)
        logits[:, 5, 7] = 20.0
        return SimpleNamespace(logits=logits + self.anchor)


def test_stop_at_eos_fills_and_stops_calling():
    out = ms.generate(_EosModel(), gen_length=10, schedule=10, num_samples=2, order="confidence", temperature=0.0,
                      stop_at_eos=True)
    assert (out.sequences[:, 5:] == 7).all() and (out.sequences[:, :5] != 7).all()
    assert out.nfe == 6  # EOS first, then the five positions before it; nothing after is generated
    assert (out.token_logprobs[:, 6:] == 0).all()
    without = ms.generate(_EosModel(), gen_length=10, schedule=10, num_samples=2, order="confidence",
                          temperature=0.0)
    assert without.nfe == 10


def test_stop_at_eos_takes_a_list_of_ids():
    out = ms.generate(_EosModel(), gen_length=10, schedule=10, num_samples=2, order="confidence", temperature=0.0,
                      stop_at_eos=[3, 7])
    assert (out.sequences[:, 5] == 7).all() and (out.sequences[:, 6:] == 3).all() and out.nfe == 6  # first id fills
    with pytest.raises(ValueError, match="not a token id"):
        ms.generate(_EosModel(), gen_length=4, schedule=2, stop_at_eos=[7, 99])
    with pytest.raises(ValueError, match="stop_at_eos"):
        ms.generate(_EosModel(), gen_length=4, schedule=2, stop_at_eos=[])


class _CountingModel(nn.Module):
    """Position i predicts token i + 1, more confidently further left (confidence order fills left to right)."""

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))
        self.config = SimpleNamespace(vocab_size=14, mask_token_id=13, eos_token_id=12)

    def forward(self, input_ids, attention_mask=None):
        b, l = input_ids.shape
        logits = torch.zeros(b, l, 14)
        idx = torch.arange(l)
        logits[:, idx, (idx % 10) + 1] = 10.0 - 0.1 * idx
        return SimpleNamespace(logits=logits + self.anchor)


def _word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(12)} | {"</s>": 12, "[MASK]": 13}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", mask_token="[MASK]", unk_token="w0")


def test_stop_strings_finish_rows():
    model = ms.wrap(_CountingModel(), tokenizer=_word_tokenizer())
    out = ms.generate(model, gen_length=10, schedule=10, order="confidence", temperature=0, stop_strings=["w3 w4"])
    assert out.generated[0].tolist() == [1, 2, 3, 4] + [12] * 6 and out.nfe == 4
    assert out.texts[0] == "w1 w2 w3 w4"
    special = ms.generate(model, gen_length=10, schedule=10, order="confidence", temperature=0, stop_strings=["</s>"],
                          logits_processor=lambda ids, s, positions: s.index_put((positions == 2, torch.tensor(12)),
                                                                                 torch.tensor(99.0)))
    assert special.generated[0].tolist()[:3] == [1, 2, 12] and special.nfe == 3  # a special-token stop string
    none = ms.generate(model, gen_length=10, schedule=10, order="confidence", temperature=0, stop_strings=["w9 w1"])
    assert none.nfe == 10
    with pytest.raises(ValueError, match="stop_strings"):
        ms.generate(model, gen_length=4, schedule=2, stop_strings=[""])
    with pytest.raises(ValueError, match="tokenizer"):
        ms.generate(_CountingModel(), gen_length=4, schedule=2, stop_strings=["w1"])


def test_texts_decoded_with_a_tokenizer():
    if not ms.assets.available().get("sapiens-vh"):
        pytest.skip("sapiens not installed")
    mlm = ms.load_masked_lm("sapiens-vh")
    out = ms.generate(mlm, ["EVQLVESGG", "QVQ"], gen_length=6, schedule=3, order="confidence", temperature=0.0)
    assert out.texts[0].startswith("EVQLVESGG") and len(out.texts[0]) == 15
    assert out.texts[1].startswith("QVQ") and len(out.texts[1]) == 9


# --------------------------------------------------------------------------------------------------
# real antibody models
# --------------------------------------------------------------------------------------------------

def _check_antibodies(name: str, n: int, length: int, steps: int) -> None:
    if not ms.assets.available().get(name):
        pytest.skip(f"{name} not installed")
    mlm = ms.load_masked_lm(name)
    runs = [ms.generate(mlm, gen_length=length, schedule=steps, num_samples=n, generator=_gen(seed))
            for seed in (0, 0, 1)]
    texts = runs[0].texts
    assert len(texts) == n and all(len(t) == length for t in texts)
    assert all(set(t) <= set(ms.assets.AMINO_ACIDS) for t in texts)
    assert texts == runs[1].texts and texts != runs[2].texts
    assert runs[0].nfe == steps


def test_sapiens_generates_antibodies():
    _check_antibodies("sapiens-vh", n=4, length=110, steps=16)


@pytest.mark.slow
def test_antiberty_generates_antibodies():
    _check_antibodies("antiberty", n=2, length=110, steps=8)


# --------------------------------------------------------------------------------------------------
# bad input: each a clear error naming the fix
# --------------------------------------------------------------------------------------------------

def test_bad_input_errors():
    oracle = TabularOracle.random(vocab_size=3, n_tokens=4, seed=0)
    plain = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 10))
    with pytest.raises(ValueError, match="mask_token_id="):
        ms.generate(plain, gen_length=4, schedule=2)
    with pytest.raises(ValueError, match=r"sum to 3 but gen_length=4.*rescale"):
        ms.generate(oracle, gen_length=4, schedule=[1, 2])
    with pytest.raises(ValueError, match=r"sum to 4 but block_length=2"):
        ms.generate(TinyLLaDA(), gen_length=4, block_length=2, schedule=[2, 2])
    with pytest.raises(ValueError, match="calls per block > gen_length"):
        ms.generate(oracle, gen_length=4, schedule=5)
    with pytest.raises(ValueError, match="steps="):
        ms.generate(oracle, gen_length=4, schedule="cosine")
    with pytest.raises(ValueError, match="exceeds the model's 4 content positions"):
        ms.generate(oracle, [[0, 1]], gen_length=4, schedule=2)
    with pytest.raises(ValueError, match="temperature"):
        ms.generate(oracle, gen_length=4, schedule=2, temperature=-0.5)
    for top_p in (0.0, 1.5):
        with pytest.raises(ValueError, match="top_p"):
            ms.generate(oracle, gen_length=4, schedule=2, top_p=top_p)
    with pytest.raises(ValueError, match="order='left2right' is unknown"):
        ms.generate(oracle, gen_length=4, schedule=2, order="left2right")
    with pytest.raises(ValueError, match="top_k"):
        ms.generate(oracle, gen_length=4, schedule=2, top_k=0)
    with pytest.raises(TypeError, match="tokenizer"):
        ms.generate(oracle, ["text"], gen_length=4, schedule=2)
    with pytest.raises(ValueError, match="stop_at_eos"):
        ms.generate(oracle, gen_length=4, schedule=2, stop_at_eos=True)
    with pytest.raises(ValueError, match="nothing to generate"):
        ms.generate(TinyLLaDA(), [[1, 2]], gen_length=0, schedule=1)
    with pytest.raises(TypeError, match="schedule must be"):
        ms.generate(oracle, gen_length=4, schedule=2.5)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_logits_stop_generation(bad):
    class Broken(TinyLLaDA):
        def forward(self, input_ids, attention_mask=None):
            out = super().forward(input_ids, attention_mask=attention_mask)
            return SimpleNamespace(logits=out.logits.masked_fill(input_ids.unsqueeze(-1) == 39, bad))

    with pytest.raises(ValueError, match="NaN or \\+inf"):
        ms.generate(Broken(), gen_length=4, schedule=2, generator=_gen(0))


def test_progress_bar_and_bare_module_drop_in(capsys):
    """A bare nn.Module returning .logits plus mask_token_id= is all generate() needs."""
    class Bare(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(12, 12)

        def forward(self, input_ids, attention_mask=None):
            return SimpleNamespace(logits=self.emb(input_ids))

    out = ms.generate(Bare(), gen_length=6, schedule=3, num_samples=2, mask_token_id=11, progress=True,
                      generator=_gen(0))
    assert out.sequences.shape == (2, 6) and (out.sequences != 11).all() and out.nfe == 3
    assert out.texts is None


def test_chunked_sampling_is_the_same_sampler(monkeypatch):
    """Large [P, V] logits are sampled in row chunks; chunking must change neither greedy output nor the law."""
    import mdm_sched.draw as draw

    model = TinyLLaDA(seed=4)
    kwargs = dict(gen_length=12, schedule=3, order="margin", temperature=0.0)
    whole = ms.generate(model, [[1, 2], [3, 4]], **kwargs)
    oracle = TabularOracle.random(vocab_size=3, n_tokens=4, seed=8)
    monkeypatch.setattr(draw, "SAMPLE_CHUNK_ELEMENTS", 100)  # 2 rows of 40 logits per chunk
    assert torch.equal(ms.generate(model, [[1, 2], [3, 4]], **kwargs).sequences, whole.sequences)
    out = ms.generate(oracle, gen_length=4, schedule=[2, 2], num_samples=10000, generator=_gen(6))
    assert_law(oracle.index_of(out.sequences), oracle.sampler_law([2, 2]))


@pytest.mark.parametrize("temperature", [1e-40, 1e-300, 1e39, 1e300])
def test_extreme_temperatures_sample_valid_tokens(temperature):
    """Tiny temperatures act greedily, huge ones uniformly over the allowed ids; never the mask or a NaN draw."""
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64)
    oracle = TabularOracle(probs, vocab_size=4, n_tokens=1)
    out = ms.generate(oracle, gen_length=1, schedule=1, num_samples=4000, temperature=temperature, top_p=0.99,
                      generator=_gen(1))
    assert (out.sequences < 4).all()
    if temperature < 1:
        assert (out.sequences == 0).all()
    else:
        assert_law(out.sequences[:, 0], torch.full((4,), 0.25, dtype=torch.float64))
    for order in ("confidence", "margin", "entropy"):
        model = TinyLLaDA(seed=1)
        out = ms.generate(model, gen_length=6, schedule=3, num_samples=3, order=order, temperature=temperature,
                          top_k=5, generator=_gen(2))
        assert (out.generated != 39).all() and (out.generated < 40).all()
