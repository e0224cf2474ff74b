"""The instruct recipe end to end on a tiny chat model (plumbing only).

The text MDM recipe has its own file, tests/test_text_recipe.py.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

import mdm_sched as ms

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def test_instruct_recipe_runs_end_to_end_on_a_tiny_chat_model(tmp_path):
    """recipes/instruct_gpu.py with a tiny LLaDA-shaped model and a word-level chat template (plumbing only)."""
    import json

    from test_conditional import _chat_tokenizer
    from test_models import TinyLLaDA

    spec = importlib.util.spec_from_file_location("instruct_gpu", RECIPES / "instruct_gpu.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    tok = _chat_tokenizer()
    model = ms.wrap(TinyLLaDA(vocab_size=36, mask_token_id=5, seed=2), tokenizer=tok)
    g = np.random.default_rng(0)
    convs = [[{"role": "user", "content": " ".join(f"w{i}" for i in g.integers(1, 30, size=g.integers(1, 6)))},
              {"role": "assistant", "content": " ".join(f"w{i}" for i in g.integers(1, 30, size=g.integers(1, 5)))}]
             for _ in range(14)]
    res = recipe.run(model, convs, tmp_path, gen_length=6, block_length=3, steps=2, num_profile=12, num_prompts=2,
                     levels=3, tokens_per_level=60, batch_size=6, progress=False)
    prof = res["profiles"]["confidence"]
    assert prof.kind == "policy" and prof.conditioning == "prompt" and prof.n_tokens == 3 and prof.block_length == 3
    assert res["profiles"]["random"].metadata["sequences"] == 12
    assert set(res["schedules"]) == {"constant", "cosine", "optimal(random-order profile)", "optimal(confidence profile)"}
    best = res["schedules"]["optimal(confidence profile)"]["predicted_excess_nats"]
    assert all(best <= row["predicted_excess_nats"] + 1e-9 for row in res["schedules"].values())
    lines = [json.loads(x) for x in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert len(lines) == 8 and all(x["nfe"] == 4 for x in lines)  # 2 blocks x 2 calls per schedule
    assert (tmp_path / "profile_confidence.png").exists() and (tmp_path / "schedules.json").exists()
