"""Conditional profiles: prompt/response pairs of any lengths, chat data, infilling masks, visible fractions."""
from __future__ import annotations

import itertools
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import mdm_sched as ms
from mdm_sched import schedules
from mdm_sched.conditioning import Examples, from_chat, from_columns
from mdm_sched.estimate import estimate_profile
from mdm_sched.masking import Rows, level_masks
from mdm_sched.oracle import MarkovChainOracle, TabularOracle


@pytest.fixture(scope="module")
def chain():
    return MarkovChainOracle.random(4, 12, stickiness=0.8, seed=3)


def _reference_masks(r, n, level, *, n_eff, prompt_length, block_length, gen):
    """The fixed-length estimator's masks before conditional profiles existed (kept verbatim as the reference)."""
    ranks = torch.rand(r, n_eff, generator=gen).argsort(1).argsort(1)
    scored_local = ranks >= level
    if block_length is None:
        scored = masked = scored_local
    else:
        blk = torch.randint(n // block_length, (r,), generator=gen)
        cols = blk.unsqueeze(1) * block_length + torch.arange(block_length)
        scored = torch.zeros(r, n, dtype=torch.bool).scatter_(1, cols, scored_local)
        later = torch.arange(n).unsqueeze(0) >= ((blk + 1) * block_length).unsqueeze(1)
        masked = scored | later
    if prompt_length:
        pad = torch.zeros(r, prompt_length, dtype=torch.bool)
        scored, masked = torch.cat([pad, scored], 1), torch.cat([pad, masked], 1)
    return scored, masked


@pytest.mark.parametrize("prompt_length, block_length", [(0, None), (3, None), (0, 4), (2, 4)])
def test_equal_lengths_draw_exactly_the_fixed_length_masks(prompt_length, block_length):
    n, r = 12, 7
    target = torch.zeros(r, prompt_length + n, dtype=torch.bool)
    target[:, prompt_length:] = True
    rows = Rows(torch.zeros_like(target, dtype=torch.long), torch.full((r,), prompt_length + n), target)
    n_eff = block_length or n
    for level, seed in itertools.product(range(n_eff), (0, 5)):
        want = _reference_masks(r, n, level, n_eff=n_eff, prompt_length=prompt_length, block_length=block_length,
                                gen=torch.Generator().manual_seed(seed))
        got = level_masks(rows, level, n_eff=n_eff, block_length=block_length, gen=torch.Generator().manual_seed(seed))
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_equal_length_pairs_give_the_prompt_length_profile(chain):
    import datasets

    data = chain.sample(120, torch.Generator().manual_seed(0))
    kw = dict(levels=4, batch_size=32, tokens_per_level=400, progress=False)
    old = estimate_profile(chain, data, prompt_length=4, **kw)
    seqs = data.tolist()
    pairs = estimate_profile(chain, Examples.from_pairs([s[:4] for s in seqs], [s[4:] for s in seqs]), **kw)
    ds = datasets.Dataset.from_dict({"p": [s[:4] for s in seqs], "r": [s[4:] for s in seqs]})
    cols = estimate_profile(chain, ds, prompt_column="p", response_column="r", **kw)
    masks = estimate_profile(chain, seqs, visible=[[j < 4 for j in range(12)]] * len(seqs), **kw)
    assert pairs == old and cols == old and masks == old  # every measured array, bit for bit
    assert pairs.conditioning == "prompt" and masks.conditioning == "infill" and old.conditioning == "prompt"
    assert cols.metadata["conditioning"]["target_lengths"] == [8, 8] and cols.lengths == [8]


def test_visible_count_follows_the_schedule_fraction():
    """A row with n_e masks, under a schedule for N, has floor(K n_e / N) visible after K nominal reveals: the
    mapping generate() uses (Schedule.transfer_counts) is the one the estimator measures at."""
    sched = ms.Schedule([3, 1, 4, 2])
    for n_e in (3, 7, 10, 13):
        visible = torch.cumsum(sched.transfer_counts(n_e), 0)[:-1].tolist()
        assert visible == [k * n_e // sched.n_tokens for k in sched.cumulative[1:-1]]
    target = torch.tensor([[False, True, True, True, True, False], [True, True, False, False, False, False]])
    rows = Rows(torch.zeros(2, 6, dtype=torch.long), torch.tensor([6, 6]), target)
    for level in range(4):
        scored, masked = level_masks(rows, level, n_eff=4, block_length=None, gen=torch.Generator().manual_seed(1))
        assert scored.sum(1).tolist() == [4 - level, 2 - level * 2 // 4] and torch.equal(scored, masked)
        assert not (scored & ~target).any()


def _direct_conditional_ce(chain, seqs, prompt_lens, n_nom, level, draws, gen):
    """Independent check: per row, average CE of its response at floor(level * n_e / n_nom) visible (uniform)."""
    per_row = []
    for x, p in zip(seqs, prompt_lens):
        n_e = len(x) - p
        v = level * n_e // n_nom
        xs = torch.tensor([x] * draws)
        pick = torch.rand(draws, n_e, generator=gen).argsort(1) < v
        visible = torch.cat([torch.ones(draws, p, dtype=torch.bool), pick], 1)
        probs = chain.conditionals(xs, visible)
        ce = -probs.gather(-1, xs.unsqueeze(-1)).squeeze(-1).log()
        per_row.append(float((ce * ~visible).sum() / (~visible).sum()))
    return float(np.mean(per_row))


def test_responses_of_different_lengths_map_onto_visible_fractions(chain):
    data = chain.sample(240, torch.Generator().manual_seed(2)).tolist()
    prompt_lens = [2 + 2 * (i % 3) for i in range(len(data))]  # prompts 2, 4, 6: responses 10, 8, 6 tokens
    ex = Examples.from_pairs([s[:p] for s, p in zip(data, prompt_lens)], [s[p:] for s, p in zip(data, prompt_lens)])
    prof = estimate_profile(chain, ex, levels=[0, 3, 7, 9], batch_size=40, tokens_per_level=4000, progress=False)
    assert prof.n_tokens == 10 and prof.lengths == [6, 10]
    assert prof.metadata["conditioning"]["target_lengths"] == [6, 10]
    g = torch.Generator().manual_seed(9)
    for k, level in enumerate(prof.levels.tolist()):
        direct = _direct_conditional_ce(chain, data, prompt_lens, 10, level, 40, g)
        assert abs(prof.ce[k] - direct) < 4.5 * prof.se[k] + 0.01, (level, prof.ce[k], direct, prof.se[k])
    # the profile is the curve over visible fractions: a schedule for any length uses it
    assert schedules.optimal(prof, 4).n_tokens == 10 and schedules.optimal(prof, 4, n_tokens=12).n_tokens == 12


def test_infilling_profile_equals_the_exact_conditional_profile():
    tab = TabularOracle.random(3, 5, concentration=0.3, seed=2)
    region = [1, 2, 3]  # positions 0 and 4 always visible
    xs = tab.all_sequences()
    exact = np.zeros(len(region))
    for i in range(len(region)):
        vals = []
        for shown in itertools.combinations(region, i):
            visible = torch.zeros(xs.shape, dtype=torch.bool)
            visible[:, [0, 4, *shown]] = True
            lp = tab.conditionals(xs, visible).gather(-1, xs.unsqueeze(-1)).squeeze(-1).log()
            masked = [j for j in region if j not in shown]
            vals.append(float((tab.probs * -lp[:, masked].mean(1)).sum()))
        exact[i] = np.mean(vals)
    data = tab.sample(3000, torch.Generator().manual_seed(0)).tolist()
    prof = estimate_profile(tab, Examples.from_region(data, 1, 4), batch_size=300, tokens_per_level=3000,
                            progress=False)
    assert prof.conditioning == "infill" and prof.n_tokens == 3
    assert np.all(np.abs(prof.ce - exact) < 4.5 * prof.se), (prof.ce, exact, prof.se)
    assert exact[0] < tab.entropy_profile()[2]  # the frame informs: infilling is easier than generating from scratch
    # the same examples as infilling prompts for generate(): the frame is kept, the region filled
    ex = Examples.from_region(data[:4], 1, 4)
    out = ms.generate(tab, prompts=ex.masked_rows(tab.mask_token_id), gen_length=0, schedule=2,
                      generator=torch.Generator().manual_seed(0))
    assert torch.equal(out.sequences[:, [0, 4]], ex.ids[:, [0, 4]]) and not (out.sequences == tab.mask_token_id).any()


def test_conditional_resume_is_exact(chain, tmp_path, monkeypatch):
    data = chain.sample(90, torch.Generator().manual_seed(4)).tolist()
    ex = Examples.from_pairs([s[:1 + i % 4] for i, s in enumerate(data)], [s[1 + i % 4:] for i, s in enumerate(data)])
    kw = dict(levels=4, batch_size=16, tokens_per_level=500, progress=False, checkpoint_every=2)
    full = estimate_profile(chain, ex, **kw)
    original, calls = MarkovChainOracle.forward, {"n": 0}

    def flaky(self, *a, **k):
        calls["n"] += 1
        if calls["n"] > 9:
            raise KeyboardInterrupt("simulated crash")
        return original(self, *a, **k)

    monkeypatch.setattr(MarkovChainOracle, "forward", flaky)
    with pytest.raises(KeyboardInterrupt):
        estimate_profile(chain, ex, checkpoint=tmp_path / "c.npz", **kw)
    monkeypatch.setattr(MarkovChainOracle, "forward", original)
    assert estimate_profile(chain, ex, checkpoint=tmp_path / "c.npz", **kw) == full
    other = Examples.from_pairs([s[:2] for s in data], [s[2:] for s in data])  # other conditioning, same tokens
    with pytest.raises(ValueError, match="data_sha256"):
        estimate_profile(chain, other, checkpoint=tmp_path / "c.npz", **kw)


# -- text data: columns and chat ----------------------------------------------------------------------

def _chat_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<bos>", "<user>", "<assistant>", "<eot>", "</s>", "[MASK]"] + [f"w{i}" for i in range(30)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    out = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="</s>", mask_token="[MASK]",
                                  unk_token="w0", additional_special_tokens=["<user>", "<assistant>", "<eot>"])
    out.chat_template = ("<bos>{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} <eot> {% endfor %}"
                         "{% if add_generation_prompt %}<assistant> {% endif %}")
    return out


def test_chat_and_column_data_render_and_score_only_responses():
    from test_models import TinyLLaDA

    tok = _chat_tokenizer()
    model = ms.wrap(TinyLLaDA(vocab_size=36, mask_token_id=5, seed=1), tokenizer=tok)
    convs = [[{"role": "user", "content": "w1 w2 w3"}, {"role": "assistant", "content": "w4 w5"}],
             [{"role": "user", "content": "w6"}, {"role": "assistant", "content": "w7"},
              {"role": "user", "content": "w8 w9"}, {"role": "assistant", "content": "w10 w11 w12"}]]
    ex = from_chat({"messages": convs}, tok, encode=model.encode, n_tokens=4, pad_id=tok.eos_token_id)
    assert ex.kind == "prompt" and ex.n_targets.tolist() == [4, 4]
    first = ex.ids[0, :int(ex.widths[0])].tolist()
    assert tok.convert_ids_to_tokens(first) == ["<bos>", "<user>", "w1", "w2", "w3", "<eot>", "<assistant>",
                                                "w4", "w5", "<eot>", "</s>"]  # the reply as the template writes it
    assert tok.convert_ids_to_tokens(ex.ids[1, int(ex.widths[1]) - 4:int(ex.widths[1])].tolist()) == [
        "w10", "w11", "w12", "<eot>"]
    assert ex.target[0, :int(ex.widths[0])].tolist() == [False] * 7 + [True] * 4
    cols = from_columns({"q": ["w1 w2", "w3"], "a": ["w4", "w5 w6 w7"]}, "q", "a", encode=model.encode,
                        chat_tokenizer=tok)
    assert cols.n_targets.tolist() == [2, 4] and tok.decode(cols.ids[1, :int(cols.widths[1])]).startswith("<bos>")
    prof = estimate_profile(model, {"messages": convs * 8}, chat=True, n_tokens=4, levels=2, tokens_per_level=40,
                            batch_size=4, progress=False)  # special tokens in prompts are fine: never scored
    assert prof.conditioning == "prompt" and prof.n_tokens == 4 and prof.lengths == [3, 4]  # unpadded responses
    with pytest.raises(ValueError, match="assistant"):
        from_chat({"messages": [convs[0][:1] + [{"role": "user", "content": "w1"}]]}, tok, encode=model.encode)
    with pytest.raises(ValueError, match="chat template"):
        from_columns({"q": ["w1"], "a": ["w2"]}, "q", "a", encode=model.encode, chat_tokenizer=TinyTok())


class TinyTok:
    chat_template = None

    def apply_chat_template(self, *a, **k):  # pragma: no cover - never reached
        raise AssertionError


def test_bad_conditional_input(chain):
    seqs = chain.sample(10, torch.Generator().manual_seed(0)).tolist()
    with pytest.raises(ValueError, match="empty"):
        Examples.from_pairs([s for s in seqs], [[] for _ in seqs])
    with pytest.raises(ValueError, match="nothing to generate"):
        Examples.from_masks(seqs, [[True] * 12] * 10)
    with pytest.raises(ValueError, match="both prompt_column"):
        estimate_profile(chain, {"p": seqs}, prompt_column="p", progress=False)
    with pytest.raises(ValueError, match="drop prompt_length"):
        estimate_profile(chain, seqs, visible=[[True] * 12] * 10, prompt_length=2, progress=False)
    with pytest.raises(ValueError, match="same number of positions"):
        estimate_profile(chain, Examples.from_pairs([s[:2] for s in seqs[:5]] + [s[:3] for s in seqs[5:]],
                                                    [s[2:] for s in seqs[:5]] + [s[3:] for s in seqs[5:]]),
                         order="confidence", progress=False)
    with pytest.raises(ValueError, match="never samples"):  # a generated mask token, not a visible one
        estimate_profile(chain, Examples.from_pairs([s[:2] for s in seqs], [s[2:-1] + [4] for s in seqs]),
                         progress=False)
    with pytest.warns(UserWarning, match="2 of 10 sequences dropped"):
        Examples.from_region(seqs[:8] + [s[:5] for s in seqs[8:]], 2, 5)


# -- using a profile: check() and generate() ------------------------------------------------------------

def test_mismatched_order_or_conditioning_is_flagged(chain):
    data = chain.sample(64, torch.Generator().manual_seed(1))
    prompted = estimate_profile(chain, data, prompt_length=4, levels=3, tokens_per_level=200, progress=False)
    with pytest.warns(UserWarning, match=r"conditioning='prompt' but the generation's is 'none'"):
        prompted.check(conditioning="none")
    with pytest.raises(ValueError, match="order='random' but the generation uses order='confidence'"):
        prompted.check(order="confidence", strict=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prompted.check(chain, order="random", conditioning="prompt")
    sched = schedules.optimal(prompted, 3)
    assert sched.metadata["profile_conditioning"] == "prompt" and sched.metadata["profile_order"] == "random"
    with pytest.warns(UserWarning, match="measured with conditioning='prompt'") as rec:
        ms.generate(_Pad(chain), gen_length=8, schedule=sched, num_samples=2, generator=torch.Generator().manual_seed(0))
    assert len(rec) == 1  # once per call, not per block or step
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the call it was made for: silent
        ms.generate(_Pad(chain), prompts=[[0, 1, 2, 3]], gen_length=8, schedule=sched,
                    generator=torch.Generator().manual_seed(0))
    with pytest.warns(UserWarning, match="order='confidence'"):
        ms.generate(_Pad(chain), prompts=[[0, 1, 2, 3]], gen_length=8, schedule="optimal", steps=3, profile=prompted,
                    order="confidence", generator=torch.Generator().manual_seed(0))


class _Pad(torch.nn.Module):
    """The 12-token chain behind a canvas of any width <= 12 (right-padded with visible filler)."""

    def __init__(self, chain):
        super().__init__()
        self.chain = chain
        self.config = chain.config

    def forward(self, input_ids, attention_mask=None):
        b, w = input_ids.shape
        full = torch.cat([input_ids, torch.zeros(b, 12 - w, dtype=torch.long)], 1) if w < 12 else input_ids
        return SimpleNamespace(logits=self.chain(full).logits[:, :w])


def test_region_conditional_antiberty_profile_is_easier_than_unconditional():
    """A real model: the frame around an IMGT-like region (content positions 26..64) informs the infill."""
    if not ms.assets.available().get("antiberty"):
        pytest.skip("antiberty not installed")
    mlm = ms.load_masked_lm("antiberty")
    seqs = mlm.encode(ms.data.germlines("human", "H", split="test"))[:48]
    region = estimate_profile(mlm, Examples.from_region(seqs, 26, 65), levels=[0, 20], batch_size=48,
                              tokens_per_level=400, progress=False)
    plain = estimate_profile(mlm, seqs, n_tokens=90, levels=[0], batch_size=48, tokens_per_level=400, progress=False)
    assert region.n_tokens == 39 and region.conditioning == "infill" and region.rows.tolist() == [48, 48]
    assert region.ce[0] < plain.ce[0] - 0.5  # nothing of the region visible, but the frame is
    assert region.ce[1] < region.ce[0]


def test_cli_profile_conditioning_order_and_self(tmp_path, capsys):
    import argparse
    import json

    from mdm_sched.cli import add_profile_arguments, profile_command

    if not ms.assets.available().get("sapiens-vh"):
        pytest.skip("sapiens not installed")
    parser = argparse.ArgumentParser()
    add_profile_arguments(parser)
    base = ["--model", "sapiens-vh", "--levels", "3", "--batch-size", "8", "--no-progress", "--gain-steps", "2"]
    out = tmp_path / "region.json"
    args = parser.parse_args(base + ["--data", "antibody-germlines:human:H:test", "--region", "40:46", "--order",
                                     "confidence", "--max-batches", "1", "--out", str(out)])
    assert profile_command(args) == 0
    prof = ms.InformationProfile.load(out)
    assert prof.kind == "policy" and prof.conditioning == "infill" and prof.n_tokens == 6 and prof.rows[0] == 8
    assert "predicted gain" in capsys.readouterr().out
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"p": "EVQLVESGGGLVQPGGSLRLSCAAS", "r": r}) + "\n"
                             for r in ("GFTFSSYAMS", "GFTFSDYY", "GYTFTSYGIS") * 4))
    args = parser.parse_args(base + ["--data", str(pairs), "--prompt-column", "p", "--response-column", "r",
                                     "--tokens-per-level", "40", "--out", str(tmp_path / "pairs.json")])
    assert profile_command(args) == 0
    prof = ms.InformationProfile.load(tmp_path / "pairs.json")
    assert prof.conditioning == "prompt" and prof.lengths == [8, 10] and prof.metadata["sequences"] == 12
    args = parser.parse_args(base + ["--data", "antibody-germlines:human:H:test", "--n-tokens", "12",
                                     "--self-samples", "8", "--tokens-per-level", "24", "--out", str(tmp_path / "s.json")])
    assert profile_command(args) == 0
    prof = ms.InformationProfile.load(tmp_path / "s.json")
    assert prof.source == "self" and prof.n_tokens == 12 and prof.metadata["self_sampler"]["num_samples"] == 8
    with pytest.raises(ValueError, match="START:STOP"):
        profile_command(parser.parse_args(base + ["--data", "x", "--region", "5", "--out", str(out)]))
