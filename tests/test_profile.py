"""Profile estimation: exact oracles, a real model, resume, data parallelism, bad input."""
from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch

import mdm_sched as ms
from mdm_sched import schedules
from mdm_sched.cli import add_profile_arguments, add_schedule_arguments, profile_command, schedule_command
from mdm_sched.oracle import MarkovChainOracle, TabularOracle
from mdm_sched.profile import InformationProfile, default_levels, estimate_profile, isotonic_nonincreasing

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tab():
    return TabularOracle.random(3, 5, concentration=0.3, seed=1)


@pytest.fixture(scope="module")
def chain():
    return MarkovChainOracle.random(4, 16, stickiness=0.5, seed=3)


@pytest.fixture(scope="module")
def chain_profile(chain):
    data = chain.sample(300, torch.Generator().manual_seed(0))
    return estimate_profile(chain, data, levels=6, batch_size=32, tokens_per_level=1500, progress=False)


# -- isotonic fit ---------------------------------------------------------------------------------

def _brute_isotonic(y, w):
    """Best non-increasing step fit by enumerating every partition into blocks (small n)."""
    n = len(y)
    best, best_z = np.inf, None
    for cuts in itertools.product([0, 1], repeat=n - 1):
        z, start = np.empty(n), 0
        for j in range(n):
            if j == n - 1 or cuts[j]:
                z[start:j + 1] = np.average(y[start:j + 1], weights=w[start:j + 1])
                start = j + 1
        if np.all(np.diff(z) <= 1e-12):
            cost = float(np.sum(w * (z - y) ** 2))
            if cost < best - 1e-12:
                best, best_z = cost, z
    return best_z


def test_isotonic_matches_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(20):
        y = rng.normal(size=7).cumsum()[::-1] + rng.normal(size=7)
        w = rng.uniform(0.1, 5.0, size=7)
        z = isotonic_nonincreasing(y, w)
        assert np.all(np.diff(z) <= 1e-12)
        np.testing.assert_allclose(z, _brute_isotonic(y, w), atol=1e-10)
    y = np.array([3.0, 2.0, 1.0])
    np.testing.assert_array_equal(isotonic_nonincreasing(y), y)  # already monotone: unchanged
    with pytest.raises(ValueError, match="weights"):
        isotonic_nonincreasing(y, [1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="NaN"):
        isotonic_nonincreasing([1.0, np.nan])


def test_default_levels_dense_at_both_ends():
    lv = default_levels(1000)
    assert lv[0] == 0 and lv[-1] == 999 and 40 <= lv.size <= 48
    gaps = np.diff(lv)
    assert gaps[0] < gaps[len(gaps) // 2] and gaps[-1] < gaps[len(gaps) // 2]
    np.testing.assert_array_equal(default_levels(10), np.arange(10))


# -- exact oracles --------------------------------------------------------------------------------

def test_tabular_oracle_profile_matches_exact_entropy_profile(tab):
    data = tab.sample(3000, torch.Generator().manual_seed(0))  # fresh rows: no sequence reused
    prof = estimate_profile(tab, data, batch_size=250, tokens_per_level=3000, progress=False)
    g = tab.entropy_profile()
    np.testing.assert_array_equal(prof.levels, np.arange(5))
    z = (prof.ce - g) / prof.se
    assert np.all(np.abs(z) < 4.5), z
    # a perfect model: its predictive entropy estimates g too, and the fitted curve stays close
    assert np.all(np.abs(prof.entropy - g) < 4.5 * prof.entropy_se + 1e-5)  # float32 logits
    assert np.all(np.abs(prof.curve() - g) < 5 * prof.se)
    assert prof.tokens.min() >= 3000 and np.all(np.diff(prof.curve()) <= 0)


def test_miscalibrated_model_profile_is_its_cross_entropy(tab):
    bad = tab.miscalibrated(temperature=2.0)
    data = tab.sample(2000, torch.Generator().manual_seed(1))
    prof = estimate_profile(bad, data, batch_size=250, tokens_per_level=2000, progress=False)
    ce = tab.ce_profile(bad)
    assert np.all(np.abs(prof.ce - ce) < 4.5 * prof.se)
    assert np.all(ce > tab.entropy_profile())  # learning error shows up as CE above g


def test_markov_chain_profile_within_error(chain, chain_profile):
    prof = chain_profile
    _lv, g, g_se = chain.entropy_profile(levels=prof.levels, n_samples=1500, generator=torch.Generator().manual_seed(5))
    z = (prof.ce - g) / np.sqrt(prof.se ** 2 + g_se ** 2)
    assert np.all(np.abs(z) < 4.5), z
    assert prof.n_tokens == 16 and prof.metadata["sequences"] == 300


def test_reused_sequences_widen_the_standard_error(tab):
    few = tab.sample(60, torch.Generator().manual_seed(2))  # 2400 tokens from 60 sequences: reused
    prof = estimate_profile(tab, few, levels=[0, 4], batch_size=60, tokens_per_level=2400, progress=False)
    mc = np.asarray(prof.metadata["mc_se"], dtype=float)
    assert prof.se[0] > 2 * mc[0]  # level 0 is the same for every pass: only the data varies


# -- the profile object ---------------------------------------------------------------------------

def test_curve_schedule_gain_and_length_warning(chain_profile):
    prof = chain_profile
    c = prof.curve(16)
    assert c.shape == (16,) and np.all(np.diff(c) <= 0) and np.all(np.isfinite(c))
    assert prof.curve(20).shape == (20,)
    sched = schedules.optimal(prof, 4, n_tokens=16)
    assert sched.n_tokens == 16 and sched.steps == 4
    assert "profile of" in sched.metadata["profile"] and prof.description in sched.metadata["profile"]
    assert prof.predicted_gain(4) >= 1.0
    assert prof.bound(sched) <= prof.bound(schedules.constant(16, 4)) + 1e-12
    with pytest.warns(UserWarning, match="far outside"):
        prof.curve(100)
    assert prof.curve(kind="entropy").shape == (16,)


def test_save_load_plot_and_bad_files(chain_profile, tmp_path):
    path = tmp_path / "p.json"
    chain_profile.save(path)
    back = InformationProfile.load(path)
    assert back == chain_profile and back.metadata == chain_profile.metadata
    np.testing.assert_array_equal(back.curve(), chain_profile.curve())
    png = tmp_path / "p.png"
    chain_profile.plot(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    path.write_text(path.read_text()[:200])
    with pytest.raises(ValueError, match="not valid JSON"):
        InformationProfile.load(path)
    path.write_text(json.dumps({"format": "mdm_sched.schedule", "sizes": [1]}))
    with pytest.raises(ValueError, match="not an mdm_sched information profile"):
        InformationProfile.load(path)
    d = chain_profile.to_dict()
    d["ce"] = d["ce"][:-1]
    path.write_text(json.dumps(d))
    with pytest.raises(ValueError, match="corrupted profile"):
        InformationProfile.load(path)


def test_profile_of_another_model_or_length_is_flagged(chain, chain_profile):
    other = MarkovChainOracle.random(5, 16, seed=9)
    with pytest.raises(ValueError, match="config hash"):
        chain_profile.check(other, strict=True)
    with pytest.warns(UserWarning, match="n_tokens=200"):
        chain_profile.check(n_tokens=200)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        chain_profile.check(chain, n_tokens=16)  # the right model and length: silent


# -- resume and data parallelism ------------------------------------------------------------------

def test_interrupt_and_resume_gives_identical_profile(chain, tmp_path, monkeypatch):
    data = chain.sample(120, torch.Generator().manual_seed(4))
    kw = dict(levels=5, batch_size=16, tokens_per_level=700, progress=False, checkpoint_every=2)
    full = estimate_profile(chain, data, **kw)
    ckpt = tmp_path / "ck.npz"
    calls = {"n": 0}
    original = MarkovChainOracle.forward

    def flaky(self, *a, **k):
        calls["n"] += 1
        if calls["n"] > 13:
            raise KeyboardInterrupt("simulated crash")
        return original(self, *a, **k)

    monkeypatch.setattr(MarkovChainOracle, "forward", flaky)
    with pytest.raises(KeyboardInterrupt):
        estimate_profile(chain, data, checkpoint=ckpt, **kw)
    assert ckpt.exists()
    monkeypatch.setattr(MarkovChainOracle, "forward", original)
    counted = {"n": 0}

    def counting(self, *a, **k):
        counted["n"] += 1
        return original(self, *a, **k)

    monkeypatch.setattr(MarkovChainOracle, "forward", counting)
    resumed = estimate_profile(chain, data, checkpoint=ckpt, **kw)
    assert resumed == full
    assert 0 < counted["n"] < full.metadata["forwards"]
    assert resumed.metadata["forwards"] == full.metadata["forwards"]
    again = estimate_profile(chain, data, checkpoint=ckpt, **kw)  # finished checkpoint: no more work
    assert again == full
    with pytest.raises(ValueError, match=r"different arguments.*batch_size"):
        estimate_profile(chain, data, checkpoint=ckpt, **dict(kw, batch_size=8))
    ckpt.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="corrupted"):
        estimate_profile(chain, data, checkpoint=ckpt, **kw)


def _dist_run(accelerator=None):
    o = MarkovChainOracle.random(4, 16, seed=3)
    data = o.sample(200, torch.Generator().manual_seed(1))
    return estimate_profile(o, data, levels=5, batch_size=16, tokens_per_level=400, progress=False,
                            checkpoint_every=2, accelerator=accelerator)


# The launched script owns its process group: it creates it (the library never does), and every process
# waits for the others and destroys it before exiting (exiting with a live gloo group can abort).
_DIST_SCRIPT = """
import sys, torch
sys.path.insert(0, {here!r})
from test_profile import _dist_run
torch.set_num_threads(1)
if sys.argv[2] == "accelerate":
    from accelerate import Accelerator
    acc = Accelerator(cpu=True)  # gloo process group across the launched CPU processes
    assert acc.num_processes == 2, acc.num_processes
    p = _dist_run(acc)
    if acc.is_main_process:
        p.save(sys.argv[1])
    acc.wait_for_everyone()
    acc.end_training()  # destroys the process group
else:
    import torch.distributed as dist
    dist.init_process_group("gloo")  # from torchrun's environment
    p = _dist_run()
    if dist.get_rank() == 0:
        p.save(sys.argv[1])
    dist.barrier()
    dist.destroy_process_group()
"""


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_two_processes_equal_one(tmp_path, launcher):
    script = tmp_path / "run.py"
    script.write_text(_DIST_SCRIPT.format(here=str(Path(__file__).parent)))
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    two = tmp_path / "two.json"
    if launcher == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port())]
    else:
        # accelerate's CPU multi-process path: its torchrun-based launcher plus Accelerator(cpu=True)
        # (`--cpu --num_processes 2` would need MPI in accelerate 1.x)
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(_free_port())]
    res = subprocess.run(cmd + [str(script), str(two), launcher], env=env, timeout=180, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = _dist_run(), InformationProfile.load(two)
    assert b.metadata["processes"] == 2 and a.metadata["processes"] == 1
    assert a == b  # every (batch, level) entry is computed by one process: the reduction is exact


# -- stop rules: the plan that sizes the progress bar is the run ------------------------------------

class _Bar:
    """Records what estimate_profile tells its progress bar (stands in for tqdm)."""

    made: ClassVar[list[_Bar]] = []

    def __init__(self, total=None, initial=0, **_):
        self.total, self.n, self.totals = total, initial, [total]
        _Bar.made.append(self)

    def update(self, k):
        self.n += k

    def refresh(self):
        self.totals.append(self.total)

    def close(self):
        pass


def _counting_forward(monkeypatch):
    calls = {"n": 0}
    original = MarkovChainOracle.forward

    def counting(self, *a, **k):
        calls["n"] += 1
        return original(self, *a, **k)

    monkeypatch.setattr(MarkovChainOracle, "forward", counting)
    return calls


@pytest.mark.filterwarnings("ignore:estimate_profile.*did not reach target_se")
@pytest.mark.parametrize("stop", [dict(tokens_per_level=700), dict(tokens_per_level=5000, max_batches=11),
                                  dict(target_se=0.03), dict(target_se=0.001, max_batches=9)])
def test_planned_forwards_equal_the_forwards_run(chain, monkeypatch, stop):
    import tqdm.auto

    monkeypatch.setattr(tqdm.auto, "tqdm", _Bar)
    _Bar.made.clear()
    calls = _counting_forward(monkeypatch)
    data = chain.sample(150, torch.Generator().manual_seed(1))
    prof = estimate_profile(chain, data, levels=5, batch_size=16, checkpoint_every=3, progress=True, **stop)
    (bar,) = _Bar.made
    forwards = prof.metadata["forwards"]
    assert calls["n"] == forwards and bar.n == forwards and bar.totals[-1] == forwards
    if "tokens_per_level" in stop:  # counts only: every round is planned before the first forward
        assert set(bar.totals) == {forwards}
    else:  # the measured spread decides: each total adds the next round, never more than will run
        assert bar.totals == sorted(bar.totals) and bar.totals[0] == 5 * 3 < forwards


def test_planned_forwards_after_resume(chain, tmp_path, monkeypatch):
    import tqdm.auto

    from mdm_sched.estimate import BatchGrid, TokensPerLevel, planned_forwards

    data = chain.sample(150, torch.Generator().manual_seed(1))
    kw = dict(levels=5, batch_size=16, tokens_per_level=700, checkpoint_every=2)
    full = estimate_profile(chain, data, progress=False, **kw)
    original = MarkovChainOracle.forward
    calls = {"n": 0}

    def flaky(self, *a, **k):
        calls["n"] += 1
        if calls["n"] > 17:
            raise KeyboardInterrupt("simulated crash")
        return original(self, *a, **k)

    monkeypatch.setattr(MarkovChainOracle, "forward", flaky)
    with pytest.raises(KeyboardInterrupt):
        estimate_profile(chain, data, checkpoint=tmp_path / "ck.npz", progress=False, **kw)
    monkeypatch.setattr(MarkovChainOracle, "forward", original)
    monkeypatch.setattr(tqdm.auto, "tqdm", _Bar)
    _Bar.made.clear()
    calls = _counting_forward(monkeypatch)
    resumed = estimate_profile(chain, data, checkpoint=tmp_path / "ck.npz", progress=True, **kw)
    (bar,) = _Bar.made
    assert resumed == full and bar.totals == [full.metadata["forwards"]] * len(bar.totals)
    assert 0 < bar.totals[0] - calls["n"] < full.metadata["forwards"]  # started from the checkpoint's count
    # the rule on its own: tokens sums alone decide, batch by batch within a round
    from mdm_sched.estimate import Accumulator

    grid = BatchGrid(n_rows=150, batch_size=16, scored_per_row=np.array([16, 8, 1]))
    active = TokensPerLevel(100).active(Accumulator(3), grid, range(0, 20))
    np.testing.assert_array_equal(active.sum(0), [1, 1, 7])  # ceil(100 / (16 * scored))
    assert planned_forwards(TokensPerLevel(100), Accumulator(3), grid, 0, None, 4) == 9
    assert planned_forwards(TokensPerLevel(100), Accumulator(3), grid, 0, 3, 4) == 3 + 1 + 1  # capped at 3 batches


# -- processes: no hidden process group -----------------------------------------------------------

def test_stray_world_size_is_an_error_at_once(chain, monkeypatch):
    from types import SimpleNamespace

    from mdm_sched.distributed import DistContext, launched_state

    data = chain.sample(20, torch.Generator().manual_seed(0))
    calls = _counting_forward(monkeypatch)
    monkeypatch.setenv("WORLD_SIZE", "2")
    for var in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ValueError, match=r"WORLD_SIZE=2 .*accelerator=accelerate\.PartialState\(\).*unset WORLD_SIZE"):
        estimate_profile(chain, data, levels=2, tokens_per_level=50, progress=False)
    assert calls["n"] == 0  # refused before any work, and without waiting for peers
    with pytest.raises(ValueError, match=r"cpu=True"):  # an accelerator that did not see the launch
        DistContext.resolve(SimpleNamespace(num_processes=1, process_index=0))
    with pytest.raises(ValueError, match=r"not started by torchrun.*MASTER_ADDR"):  # the CLI's entry
        launched_state(cpu=True)
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="not an integer"):
        DistContext.resolve()
    monkeypatch.delenv("WORLD_SIZE")
    with pytest.raises(TypeError, match=r"Accelerator or accelerate\.PartialState"):
        DistContext.resolve(object())
    assert DistContext.resolve() == DistContext(world=1, rank=0) and launched_state(cpu=True) is None
    one = estimate_profile(chain, data, levels=2, tokens_per_level=50, progress=False,
                           accelerator=SimpleNamespace(num_processes=1, process_index=0))
    assert one == estimate_profile(chain, data, levels=2, tokens_per_level=50, progress=False)


# -- options --------------------------------------------------------------------------------------

def test_block_length_and_prompt_length():
    chain = MarkovChainOracle.random(4, 16, stickiness=0.9, seed=3)  # slow mixing: visible blocks inform
    data = chain.sample(200, torch.Generator().manual_seed(6))
    plain = estimate_profile(chain, data, levels=[0, 7], batch_size=50, tokens_per_level=800, progress=False)
    block = estimate_profile(chain, data, levels=[0, 7], batch_size=50, tokens_per_level=800, block_length=8,
                             progress=False)
    assert block.n_tokens == 8 and block.metadata["block_length"] == 8 and block.metadata["sequence_tokens"] == 16
    assert block.ce[0] < plain.ce[0] - 0.02  # half the rows see the whole first block
    prompted = estimate_profile(chain, data, levels=[0], batch_size=50, tokens_per_level=800, prompt_length=4,
                                progress=False)
    assert prompted.n_tokens == 12 and prompted.ce[0] < plain.ce[0]  # the prompt is always visible
    with pytest.raises(ValueError, match="block_length=5 does not divide"):
        estimate_profile(chain, data, block_length=5, progress=False)


def test_target_se_stops_levels():
    o = MarkovChainOracle.random(3, 8, seed=2)
    data = o.sample(2000, torch.Generator().manual_seed(0))
    prof = estimate_profile(o, data, levels=[0, 7], batch_size=32, target_se=0.02, progress=False)
    mc = np.asarray(prof.metadata["mc_se"], dtype=float)
    assert np.all(mc <= 0.02) and prof.rows[1] > prof.rows[0]  # the single-token level needs more rows


# -- bad input ------------------------------------------------------------------------------------

def test_length_policy_and_bad_input(chain):
    seqs = [list(r) for r in chain.sample(30, torch.Generator().manual_seed(0)).tolist()]
    mixed = seqs[:20] + [s[:10] for s in seqs[20:]]
    with pytest.warns(UserWarning, match="10 of 30 sequences dropped"):
        p = estimate_profile(chain, mixed, levels=2, tokens_per_level=50, progress=False)
    assert p.metadata["sequences"] == 20 and p.n_tokens == 16
    with pytest.raises(ValueError, match="no sequence has at least"):
        estimate_profile(chain, [s[:10] for s in seqs], n_tokens=16, progress=False)
    with pytest.raises(ValueError, match="no examples"):
        estimate_profile(chain, [], progress=False)
    with pytest.raises(ValueError, match="no tokenizer"):
        estimate_profile(chain, ["ABC", "DEF"], progress=False)
    with pytest.raises(ValueError, match="never samples"):
        estimate_profile(chain, [s[:15] + [chain.mask_token_id] for s in seqs], progress=False)
    with pytest.raises(ValueError, match="either tokens_per_level= or target_se="):
        estimate_profile(chain, seqs, tokens_per_level=10, target_se=0.1, progress=False)
    with pytest.raises(ValueError, match="levels must lie in"):
        estimate_profile(chain, seqs, levels=[0, 16], progress=False)
    import datasets

    kw = dict(levels=[0, 8], tokens_per_level=100, progress=False)
    from_ids = estimate_profile(chain, datasets.Dataset.from_dict({"input_ids": seqs}), **kw)
    assert from_ids == estimate_profile(chain, torch.tensor(seqs), **kw)  # same tokens, same profile
    ds = datasets.Dataset.from_dict({"seq": ["A"] * 3, "other": ["B"] * 3})
    with pytest.raises(ValueError, match="text_column"):
        estimate_profile(chain, ds, text_column="missing", progress=False)


# -- a real model ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sapiens():
    return ms.load_masked_lm("sapiens-vh")


def test_sapiens_profile_agrees_with_direct_masked_accuracy(sapiens):
    seqs = ms.data.germlines("human", "H", split="test")
    n = 96
    prof = estimate_profile(sapiens, seqs, n_tokens=n, levels=[0, 48, round(0.85 * n)], batch_size=53,
                            tokens_per_level=3000, progress=False)
    fit = prof.curve()
    assert np.all(np.isfinite(fit)) and np.all(np.diff(fit) <= 0) and fit[0] > fit[-1] + 0.5
    # direct: mask 15% of the positions of every sequence, other masks than the profile's
    x = torch.tensor([s[:n] for s in sapiens.encode(seqs) if len(s) >= n])
    g = torch.Generator().manual_seed(123)
    ce_rows, acc_rows = [], []
    for _ in range(4):
        masked = torch.rand(x.shape, generator=g).argsort(1).argsort(1) < n - round(0.85 * n)
        logits = sapiens.logits(x.masked_fill(masked, sapiens.mask_token_id), positions=masked)
        logp = torch.log_softmax(logits, -1)
        true = x[masked]
        ce_rows.append((-logp.gather(1, true[:, None]).squeeze(1)).view(len(x), -1).mean(1))
        acc_rows.append((logits.argmax(-1) == true).double().view(len(x), -1).mean(1))
    ce_direct = torch.cat(ce_rows).double()
    k = list(prof.levels).index(round(0.85 * n))
    se_direct = float(ce_direct.std() / np.sqrt(len(ce_direct)))
    assert abs(prof.ce[k] - float(ce_direct.mean())) < 4 * np.hypot(prof.metadata["mc_se"][k], se_direct)
    assert abs(fit[round(0.85 * n)] - float(ce_direct.mean())) < 4 * np.hypot(prof.se[k], se_direct) + 0.02
    acc_direct = float(torch.cat(acc_rows).mean())
    assert abs(prof.accuracy[k] - acc_direct) < 0.03
    assert 0.6 < acc_direct < 0.99


def test_cli_profile_and_schedule(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_profile_arguments(parser)
    out, png = tmp_path / "vh.json", tmp_path / "vh.png"
    args = parser.parse_args(["--model", "sapiens-vh", "--data", "antibody-germlines:human:H:test", "--n-tokens", "96",
                              "--levels", "3", "--batch-size", "53", "--tokens-per-level", "150", "--no-progress",
                              "--out", str(out), "--plot", str(png), "--gain-steps", "8"])
    assert profile_command(args) == 0
    text = capsys.readouterr().out
    assert "predicted gain" in text and out.exists() and png.exists()
    prof = InformationProfile.load(out)
    assert prof.metadata["data"] == "antibody-germlines:human:H:test" and prof.metadata["model"] == "sapiens-vh"
    sp = argparse.ArgumentParser()
    add_schedule_arguments(sp)
    sched_out = tmp_path / "s.json"
    assert schedule_command(sp.parse_args(["--profile", str(out), "--steps", "8", "--out", str(sched_out)])) == 0
    text = capsys.readouterr().out
    assert "optimal sizes" in text and "cosine" in text and "over constant" in text
    sched = schedules.Schedule.load(sched_out)
    assert sched.n_tokens == 96 and sched.steps == 8


def test_flat_profile_warns_that_gains_mean_nothing():
    levels = np.array([0, 8, 16, 24, 31])
    flat = InformationProfile(levels, np.array([5.0, 5.01, 4.99, 5.0, 4.99]), np.full(5, 0.02), n_tokens=32)
    with pytest.warns(UserWarning, match="barely uses context"):
        flat.predicted_gain(4)
    steep = InformationProfile(levels, np.array([5.0, 3.0, 2.0, 1.5, 1.4]), np.full(5, 0.02), n_tokens=32)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert steep.predicted_gain(5) > 1.05
