"""recipes/train_text_mdm.py: training machinery, checkpoints, resume, and the library's API on the saved model.

Tiny sizes and a few steps: these check plumbing (checkpoints that load with ``weights_only=True``, a killed
run that resumes exactly, a model that loads back and runs through profile, schedule and generate), never
quality; the recipe's docstring records the measured quality of a full run.
"""
from __future__ import annotations

import importlib.util
import itertools
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import mdm_sched as ms

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "train_text_mdm.py"
TINY = dict(seq_len=16, vocab_size=300, hidden=32, layers=1, batch_size=8, max_verses=600, progress=False)


def _recipe():
    spec = importlib.util.spec_from_file_location("train_text_mdm", RECIPE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def recipe():
    return _recipe()


@pytest.fixture(scope="module")
def trained(recipe, tmp_path_factory):
    """One tiny uninterrupted run: 6 steps, checkpoints and evaluations every 3."""
    out = tmp_path_factory.mktemp("kjv") / "run"
    model_dir = recipe.train(out, steps=6, save_every=3, eval_every=3, **TINY)
    return out, model_dir


def test_checkpoint_loads_weights_only_and_holds_the_curve(trained):
    out, model_dir = trained
    state = torch.load(out / "train_state.pt", map_location="cpu", weights_only=True)
    assert set(state) == {"model", "opt", "log"} and state["log"]["step"] == 6
    curve = state["log"]["curve"]
    assert [c["step"] for c in curve] == [3, 6]
    for point in curve:
        assert math.isfinite(point["ce"]) and 0.0 <= point["accuracy"] <= 1.0 and point["n_masked"] > 0
    assert json.loads((out / "train_log.json").read_text())["curve"] == curve
    assert math.isfinite(state["log"]["unigram_ce"]) and state["log"]["unigram_ce"] > 0
    assert (model_dir / "config.json").exists() and not (out / "model.tmp").exists()


def test_killed_run_resumes_from_its_checkpoint_exactly(recipe, trained, tmp_path, monkeypatch):
    """Killed right after the step-3 checkpoint, the rerun continues from step 3 and ends where the uninterrupted
    run ended (same weights, same curve): batches, masks and dropout are seeded per step."""
    ref_out, _ = trained
    out = tmp_path / "run"
    out.mkdir()
    shutil.copytree(ref_out / "tokenizer", out / "tokenizer")  # same token ids as the reference run
    real_save = recipe.save_state

    def save_then_die(path, model, opt, log):
        real_save(path, model, opt, log)
        raise KeyboardInterrupt("killed after the first checkpoint")

    monkeypatch.setattr(recipe, "save_state", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        recipe.train(out, steps=6, save_every=3, eval_every=3, **TINY)
    monkeypatch.setattr(recipe, "save_state", real_save)
    assert torch.load(out / "train_state.pt", weights_only=True)["log"]["step"] == 3
    recipe.train(out, steps=6, save_every=3, eval_every=3, **TINY)
    got = torch.load(out / "train_state.pt", weights_only=True)
    ref = torch.load(ref_out / "train_state.pt", weights_only=True)
    assert got["log"]["step"] == 6
    for name, tensor in ref["model"].items():
        torch.testing.assert_close(got["model"][name], tensor, rtol=0, atol=1e-6, msg=name)
    strip = lambda curve: [{k: v for k, v in c.items() if k != "seconds"} for c in curve]
    assert strip(got["log"]["curve"]) == strip(ref["log"]["curve"])


def test_saved_model_loads_profiles_schedules_and_generates(recipe, trained):
    _, model_dir = trained
    model = ms.load_masked_lm(str(model_dir))
    assert model.family == "bert" and model.tokenizer is not None
    held = recipe.heldout_windows(model_dir, 16, max_verses=600)
    assert len(held) > 20 and all(len(w) == 16 for w in held)
    profile = ms.estimate_profile(model, held, n_tokens=16, levels=4, tokens_per_level=128, progress=False)
    curve = profile.curve(16)
    assert curve.shape == (16,) and np.all(np.isfinite(curve)) and np.all(np.diff(curve) <= 1e-12)
    sched = ms.schedules.optimal(profile, 4, n_tokens=16)
    gen = ms.generate(model, num_samples=2, gen_length=16, schedule=sched, generator=torch.Generator().manual_seed(0))
    assert gen.nfe == 4 and gen.generated.shape == (2, 16) and len(gen.texts) == 2
    assert not (gen.generated == model.mask_token_id).any()


def test_lr_schedule_warms_up_then_decays_to_zero(recipe):
    lrs = [recipe.lr_at(s, 100, 1e-3) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3) and max(lrs) == pytest.approx(1e-3)
    assert all(a >= b for a, b in itertools.pairwise(lrs[9:])) and lrs[-1] == pytest.approx(1e-3 / 90)


def test_unknown_arch_is_refused(recipe):
    with pytest.raises(ValueError, match="arch="):
        recipe.build_model(50, 0, 8, 32, 1, 0, arch="gpt")


@pytest.mark.slow
def test_command_line_runs_the_whole_chain(recipe, tmp_path):
    """The documented command at full model size for a few steps: train, export, profile, schedules, samples."""
    out = tmp_path / "kjv"
    assert recipe.main(["--out", str(out), "--steps", "4", "--eval-every", "2", "--budgets", "4", "--skip-eval",
                        "--threads", "1"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [c["step"] for c in summary["curve"]] == [2, 4]
    assert summary["budgets"]["4"]["bound_optimal"] <= summary["budgets"]["4"]["bound_constant"] + 1e-9
    assert len(summary["samples"]) == 4 and (out / "profile.json").exists()
