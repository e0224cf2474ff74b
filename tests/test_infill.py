"""Infilling tasks (mdm_sched.tasks) and their metrics (recovery, exact match, conditional NLL) against exact oracles."""
from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
import torch

import mdm_sched as ms
from mdm_sched import data, metrics, schedules, tasks
from mdm_sched.oracle import TabularOracle

needs_anarci = pytest.mark.skipif(
    __import__("importlib").util.find_spec("anarci") is None, reason="needs the anarci package (germlines)")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------- tasks

def test_from_masks_prompts_and_subset():
    task = tasks.from_masks("t", [[1, 2, 3], [4, 5]], [[False, True, True], [True, False]], names=["a", "b"])
    assert task.prompts(9) == [[1, 9, 9], [9, 5]]
    assert task.n_targets.tolist() == [2, 1] and task.given.sum(1).tolist() == [1, 1]
    sub = task.subset([1])
    assert sub.ids.tolist() == [[4, 5]] and sub.names == ("b",) and sub.prompts(0) == [[0, 5]]
    assert task.summary()["infilled"] == [1, 2, 1.5]
    with pytest.raises(ValueError, match="nothing to infill"):
        tasks.from_masks("t", [[1, 2]], [[False, False]])
    with pytest.raises(ValueError, match="mask of 1"):
        tasks.from_masks("t", [[1, 2]], [[True]])


def test_random_spans_are_contiguous_and_seeded():
    seqs = [list(range(10 + i)) for i in range(20)]
    task = tasks.random_spans(seqs, 4, seed=3)
    for row, w in zip(task.target, task.widths.tolist()):
        idx = row.nonzero().squeeze(1).tolist()
        assert len(idx) == 4 and idx == list(range(idx[0], idx[0] + 4)) and idx[-1] < w
    assert torch.equal(task.target, tasks.random_spans(seqs, 4, seed=3).target)
    assert not torch.equal(task.target, tasks.random_spans(seqs, 4, seed=4).target)
    frac = tasks.random_spans(seqs, 0.5)
    assert frac.n_targets.tolist() == [round(0.5 * len(s)) for s in seqs]
    assert len(tasks.random_spans([[1, 2], [1, 2, 3, 4]], 3)) == 1  # too short to keep a given token: dropped
    with pytest.raises(ValueError, match="too short"):
        tasks.random_spans([[1, 2]], 2)


def test_parse_task_specs():
    assert tasks.parse_task("imgt:27-65") == tasks.TaskSpec("imgt", start=27, stop=65)
    assert tasks.parse_task("span:0.3") == tasks.TaskSpec("span", span=0.3)
    assert tasks.parse_task("span:12:mutate=0.1") == tasks.TaskSpec("span", span=12, mutate=0.1)
    for bad in ("imgt:65-27", "imgt:x", "span:0", "span:1.5", "cdr:1", "imgt:1-2:mutate=2", "imgt:1-2:foo=1"):
        with pytest.raises(ValueError, match="task spec"):
            tasks.parse_task(bad)


def test_mutate_given_changes_only_given_tokens():
    seqs = [[i % 5 for i in range(40)] for _ in range(30)]
    task = tasks.random_spans(seqs, 10)
    mut = tasks.mutate_given(task, 0.3, range(5), seed=1)
    changed = mut.ids != task.ids
    assert not bool((changed & task.target).any())  # the truth to infill is untouched
    rate = changed.sum() / task.given.sum()
    assert 0.25 < float(rate) < 0.35 and bool((mut.ids < 5).all())
    assert torch.equal(tasks.mutate_given(task, 0.0, range(5)).ids, task.ids)


@needs_anarci
def test_imgt_region_infills_exactly_the_numbered_residues():
    recs = data.germline_records("human", "H", split="test", gapped=True)
    aa = {a: i for i, a in enumerate(data.AMINO_ACIDS)}
    encode = lambda strs: [[aa[c] for c in s] for s in strs]
    task = tasks.imgt_region([g for _, g in recs], encode, 27, 65, names=[n for n, _ in recs])
    assert len(task) == len(recs) and task.name == "imgt27-65" and task.names[0] == recs[0][0]
    for (_, g), row, tgt in zip(recs, task.ids, task.target):
        numbers = data.imgt_numbers(g)
        assert [n for n, t in zip(numbers, tgt.tolist()) if t] == [n for n in numbers if 27 <= n <= 65]
        assert "".join(data.AMINO_ACIDS[i] for i in row[:len(numbers)].tolist()) == g.replace("-", "")
    assert int(task.n_targets.min()) >= 30 and int(task.n_targets.max()) <= 39  # CDR1 + FR2 + CDR2


# ---------------------------------------------------------------------------------------------- generate keeps the given tokens

@pytest.mark.parametrize("schedule,order,temperature", [(2, "random", 1.0), (3, "confidence", 0.0),
                                                        (ms.schedules.threshold(0.6), "confidence", 0.0),
                                                        (ms.schedules.entropy_bound(0.5), "random", 1.0)])
def test_infilling_keeps_every_given_token(schedule, order, temperature):
    oracle = TabularOracle.random(vocab_size=3, n_tokens=6, seed=2)
    truth = oracle.sample(40, generator=_gen(0))
    task = tasks.random_spans(truth.tolist(), 3, seed=1)
    out = ms.generate(oracle, task.prompts(oracle.mask_token_id), gen_length=0, schedule=schedule, order=order,
                      temperature=temperature, generator=_gen(1))
    x = out.sequences
    assert torch.equal(x[task.given], task.ids[task.given])  # every given token where it was
    assert bool((x[task.target] < 3).all())  # every target filled with a data token
    assert bool((out.reveal_step[task.given] == 0).all()) and bool((out.reveal_step[task.target] > 0).all())


# ---------------------------------------------------------------------------------------------- exact values on an oracle

def _oracle_task(n_examples: int = 6, seed: int = 0):
    """A 5-token tabular law and examples whose positions 1..3 are infilled, positions 0 and 4 given."""
    oracle = TabularOracle.random(vocab_size=3, n_tokens=5, concentration=0.3, seed=seed)
    truth = oracle.sample(n_examples, generator=_gen(seed))
    target = torch.zeros_like(truth, dtype=torch.bool)
    target[:, 1:4] = True
    return oracle, truth, target


def _exact_logq(oracle, x, target, sizes, perm) -> float:
    """log q_sigma(x_target | x_given) by the definition: block by block along ``perm`` (target positions in order)."""
    visible = ~target.clone()
    total, start = 0.0, 0
    for k in sizes:
        probs = oracle.conditionals(x.unsqueeze(0), visible.unsqueeze(0))[0]
        block = perm[start:start + k]
        total += sum(math.log(float(probs[j, x[j]])) for j in block)
        visible[list(block)] = True
        start += k
    return total


def test_conditional_nll_equals_its_exact_value():
    oracle, truth, target = _oracle_task()
    n = 3
    scheds = {"one": schedules.Schedule([3]), "chain": schedules.Schedule([1, 1, 1]), "mid": schedules.Schedule([1, 2])}
    res = metrics.conditional_likelihood(oracle, truth, target, scheds, n_orders=3, generator=_gen(0))
    assert res.n_tokens == 3 and res.tokens_per_row.tolist() == [3] * len(truth)
    for i, x in enumerate(truth):
        perms = list(itertools.permutations([1, 2, 3]))
        # one call: the product of the marginals given the context, whatever the order
        assert torch.allclose(res.logq["one"][i], torch.full((3,), _exact_logq(oracle, x, target[i], [3], perms[0]),
                                                             dtype=torch.float64), atol=1e-5)
        # one token per call: the chain rule of an exact law gives log pi(x_target | x_given) for every order
        joint = oracle.probs[oracle.index_of(oracle.all_sequences())]
        same_ctx = (oracle.all_sequences()[:, [0, 4]] == x[[0, 4]]).all(1)
        exact = math.log(float(oracle.probs[oracle.index_of(x.unsqueeze(0))]) / float(joint[same_ctx].sum()))
        assert torch.allclose(res.logq["chain"][i], torch.full((3,), exact, dtype=torch.float64), atol=1e-5)
        # two calls: each order's value is one of the exact per-permutation values
        exact_mid = [_exact_logq(oracle, x, target[i], [1, 2], p) for p in perms]
        for v in res.logq["mid"][i].tolist():  # the model's logits are float32: agreement to ~1e-6
            assert min(abs(v - e) for e in exact_mid) < 1e-5
    summary = metrics.summarize_heldout(res, baseline="one")
    assert summary["chain"]["bound"] < summary["one"]["bound"]  # correlated tokens: chain rule beats marginals
    assert summary["one"]["bound"] == pytest.approx(float(-res.logq["one"].mean() / n))


def test_conditional_nll_averages_orders_without_bias():
    oracle, truth, target = _oracle_task(n_examples=2, seed=4)
    res = metrics.conditional_likelihood(oracle, truth, target, [schedules.Schedule([1, 2])], n_orders=3000,
                                         generator=_gen(1))
    lq = res.logq["schedule@T=2"]
    for i, x in enumerate(truth):
        exact = [_exact_logq(oracle, x, target[i], [1, 2], p) for p in itertools.permutations([1, 2, 3])]
        mean = sum(exact) / len(exact)
        se = float(lq[i].std()) / math.sqrt(lq.shape[1])
        assert abs(float(lq[i].mean()) - mean) < 4 * se + 1e-9


def test_conditional_nll_rescales_schedules_for_shorter_rows():
    oracle, truth, target = _oracle_task(n_examples=4, seed=1)
    target[:2, 3] = False  # two rows infill 2 positions, two rows 3
    res = metrics.conditional_likelihood(oracle, truth, target, {"c": schedules.Schedule([1, 1, 1])}, n_orders=2,
                                         generator=_gen(0))
    assert res.tokens_per_row.tolist() == [2, 2, 3, 3]
    # floor(K_t * 2 / 3) = 0, 0, 1, 2: a row with 2 targets is revealed one at a time as well: the exact chain rule
    for i in range(2):
        x = truth[i]
        seqs = oracle.all_sequences()
        ctx = ~target[i]
        same = (seqs[:, ctx] == x[ctx]).all(1)
        exact = math.log(float(oracle.probs[oracle.index_of(x.unsqueeze(0))]) / float(oracle.probs[same].sum()))
        assert torch.allclose(res.logq["c"][i], torch.full((2,), exact, dtype=torch.float64), atol=1e-5)


def test_recovery_and_exact_match_equal_their_exact_values():
    oracle, truth, target = _oracle_task(n_examples=5, seed=3)
    m = oracle.mask_token_id
    prompts = torch.where(target, torch.full_like(truth, m), truth)
    marg = oracle.conditionals(truth, ~target)  # p(x_j | given) at every position  [B, 5, V]
    p_true = marg.gather(-1, truth.unsqueeze(-1)).squeeze(-1)
    # greedy, one call: every target is the argmax of its marginal; the exact recovery follows by hand
    out = ms.generate(oracle, prompts, gen_length=0, schedule=1, order="confidence", temperature=0.0)
    rec, em = metrics.infill_accuracy(out.sequences, truth, target)
    want = (marg.argmax(-1) == truth) & target
    assert torch.equal(rec, want.sum(1).double() / 3) and torch.equal(em, (want.sum(1) == 3).double())
    # sampled, one call: E recovery = mean_j p(x_j | given), P(exact) = prod_j p(x_j | given)
    reps = 6000
    out = ms.generate(oracle, prompts, gen_length=0, schedule=1, num_samples=reps, generator=_gen(5))
    rec, em = metrics.infill_accuracy(out.sequences, truth.repeat_interleave(reps, 0), target.repeat_interleave(reps, 0))
    rec, em = rec.view(-1, reps), em.view(-1, reps)
    for i in range(len(truth)):
        exp_rec = float(p_true[i, 1:4].mean())
        exp_em = float(p_true[i, 1:4].prod())
        assert abs(float(rec[i].mean()) - exp_rec) < 4 * float(rec[i].std()) / math.sqrt(reps) + 1e-3
        assert abs(float(em[i].mean()) - exp_em) < 4 * math.sqrt(exp_em * (1 - exp_em) / reps) + 1e-3
    # sampled, one token per call: P(exact) = pi(x_target | given), the joint conditional
    out = ms.generate(oracle, prompts, gen_length=0, schedule=3, num_samples=reps, generator=_gen(6))
    _, em = metrics.infill_accuracy(out.sequences, truth.repeat_interleave(reps, 0), target.repeat_interleave(reps, 0))
    res = metrics.conditional_likelihood(oracle, truth, target, [schedules.Schedule([1, 1, 1])])
    for i in range(len(truth)):
        exp_em = math.exp(float(res.logq["schedule@T=3"][i, 0]))
        got = float(em.view(-1, reps)[i].mean())
        assert abs(got - exp_em) < 4 * math.sqrt(exp_em * (1 - exp_em) / reps) + 1e-3


def test_infill_accuracy_checks_its_input():
    with pytest.raises(ValueError, match="one shape"):
        metrics.infill_accuracy(torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="no target"):
        metrics.infill_accuracy(torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="no target position"):
        metrics.conditional_likelihood(TabularOracle.random(3, 2), torch.zeros(1, 2, dtype=torch.long),
                                       torch.zeros(1, 2, dtype=torch.bool), [schedules.Schedule([1])])


def test_build_task_on_any_text_data(tmp_path):
    path = tmp_path / "verses.txt"
    path.write_text("in the beginning was the word\nand the word was with god\n\nlet there be light\n")
    source = data.load_source(str(path))
    vocab: dict[str, int] = {}
    encode = lambda texts: [[vocab.setdefault(w, len(vocab)) for w in t.split()] for t in texts]
    task = tasks.build_task("span:2", source, encode, seed=1)
    assert len(task) == 3 and task.n_targets.tolist() == [2, 2, 2] and task.name == "span2"
    assert task.ids[0, :6].tolist() == encode(["in the beginning was the word"])[0]
    mutated = tasks.build_task("span:2:mutate=0.5", source, encode, alphabet=range(len(vocab)), seed=1)
    assert torch.equal(mutated.ids[mutated.target], task.ids[task.target]) and mutated.name == "span2+mut0.5"
    with pytest.raises(ValueError, match="IMGT-gapped"):
        tasks.build_task("imgt:27-65", source, encode)
    with pytest.raises(ValueError, match="alphabet"):
        tasks.build_task("span:2:mutate=0.5", source, encode)


def test_calls_per_example_and_alignment():
    from mdm_sched.infill_eval import _aligned, _calls_per_row

    reveal = torch.tensor([[0, 1, 1, 3, 0], [2, 0, 0, 2, 5]])
    target = torch.tensor([[False, True, True, True, False], [True, False, False, True, False]])
    assert _calls_per_row(reveal, target).tolist() == [2, 1]  # calls that revealed one of the example's targets
    # left-padded generate() rows back to the task's right-padded layout
    seqs = torch.tensor([[9, 9, 1, 2, 3], [4, 5, 6, 7, 8]])
    ids, steps = _aligned(seqs, reveal, torch.tensor([3, 5]))
    assert ids.tolist() == [[1, 2, 3, 3, 3], [4, 5, 6, 7, 8]] and steps[0, :3].tolist() == [1, 3, 0]


# ---------------------------------------------------------------------------------------------- profile decoders

class _Host:
    """The part of a harness run the infilling stage and the profile stages use, on an exact oracle."""

    def __init__(self, model, cache, **cfg):
        from mdm_sched.results import EvalConfig

        self.model, self.cache, self.forward_rows, self.names = model, cache, 0, []
        self.cfg = EvalConfig(profile_levels=5, profile_tokens_per_level=200, batch_size=64, profile_walks=40, **cfg)

    def stage(self, name, file, fingerprint, compute, *, eval_subset=True):
        from mdm_sched.harness import cached_stage

        self.names.append(name)
        return cached_stage(self.cache / file, fingerprint, compute)


def test_profile_decoders_use_the_profile_of_their_order_and_warn_about_nothing(tmp_path):
    from mdm_sched import decoders, profile_stage
    from mdm_sched.infill_eval import ProfileSources, _context, _ordered_nll_of

    oracle = TabularOracle.random(vocab_size=3, n_tokens=6, concentration=0.3, seed=5)
    host = _Host(oracle, tmp_path, infill_decoders=("constant", "optimal_region", "optimal_policy", "optimal_self"))
    train = tasks.random_spans(oracle.sample(60, generator=_gen(0)).tolist(), 4, seed=0)
    evaluated = tasks.random_spans(oracle.sample(12, generator=_gen(1)).tolist(), 4, seed=1)
    src = ProfileSources(host, np.linspace(1.0, 0.5, 6))
    src._train = profile_stage.task_examples(train)  # the harness builds it on the profile split (load_task)
    ctx = {o: _context(src, 4, o) for o in ("random", "confidence")}
    assert set(ctx["random"].curves) == {"region", "self"} and not ctx["random"].profiles  # no policy decoder there
    policy, own = ctx["confidence"].profiles["policy"], ctx["confidence"].profiles["self"]
    assert policy.kind == own.kind == "policy" and policy.order == own.order == "confidence"
    assert policy.conditioning == own.conditioning == "infill" and own.source == "self"
    assert not decoders.get_decoder("optimal_policy").runs_under("random")
    rule = decoders.get_decoder("optimal_policy").rule(ctx["confidence"], 2)
    assert rule.sizes == schedules.optimal_blocks(policy.block_costs(4), 2).sizes  # the table DP on its block costs
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every schedule's profile matches the order and conditioning it runs with
        for order, temperature in (("random", 1.0), ("confidence", 0.0)):
            for name in host.cfg.infill_decoders:
                if decoders.get_decoder(name).runs_under(order):
                    ms.generate(oracle, evaluated.prompts(oracle.mask_token_id), gen_length=0, order=order,
                                schedule=decoders.get_decoder(name).rule(ctx[order], 2), temperature=temperature,
                                generator=_gen(2))
    # cached: asking again measures nothing
    before = host.forward_rows
    _context(src, 4, "confidence")
    assert host.forward_rows == before
    # the ordered conditional NLL with one token per call is the exact conditional NLL of the truth (any order)
    nll = _ordered_nll_of(host, evaluated, schedules.constant(4, 4), "confidence")
    seqs = oracle.all_sequences()
    for i, x in enumerate(evaluated.ids):
        ctx_pos = evaluated.given[i]
        same = (seqs[:, ctx_pos] == x[ctx_pos]).all(1)
        exact = -math.log(float(oracle.probs[oracle.index_of(x.unsqueeze(0))]) / float(oracle.probs[same].sum())) / 4
        assert nll[i] == pytest.approx(exact, abs=1e-5)
    one = _ordered_nll_of(host, evaluated, schedules.constant(4, 1), "confidence")
    assert sum(one) > sum(nll)  # the marginals lose what the chain rule knows
