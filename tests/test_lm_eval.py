"""The lm-evaluation-harness model ``mdm_sched`` (mdm_sched/lm_eval.py), run by lm-eval's own runner.

Offline: a tiny random BERT with a word tokenizer saved to a temporary directory, and task YAMLs over local JSONL
files (generate_until, multiple_choice, loglikelihood_rolling); Sapiens on an antibody germline task.
"""
from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

lm_eval = pytest.importorskip(
    "lm_eval", reason="lm-evaluation-harness is not installed in this environment; install the 'lm-eval' extra "
                      "(pip install -e '.[lm-eval]') to run these tests")

import mdm_sched as ms  # noqa: E402
import mdm_sched.lm_eval as mle  # noqa: E402
from mdm_sched.likelihood import continuation_logprob  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "plus", "is", "Q:", "A:", "."]
CHAT = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }} {% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}")
GEN_DOCS = [{"question": "one plus two is", "answer": "three"}, {"question": "two plus two is", "answer": "four"},
            {"question": "four plus five is", "answer": "nine"}, {"question": "six plus one is", "answer": "seven"}]
MC_DOCS = [{"question": "one plus one is", "choices": ["two", "three", "seven eight"], "label": 0},
           {"question": "three plus three is", "choices": ["nine", "six", "zero one two"], "label": 1},
           {"question": "zero plus one is", "choices": ["one", "five five five", "two"], "label": 0}]
ROLL_DOCS = [{"text": "one plus one is two ."}, {"text": "three plus four is seven . six plus one is seven ."}]
UNTIL = ["four", "."]
MODEL_ARGS = "gen_length=8,steps=4,mc_num=16,mc_batch_size=8,exact_max_calls=3"


def _save_tiny(out: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertForMaskedLM, PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[CLS]": 1, "[SEP]": 2, "[MASK]": 3, "[UNK]": 4} | {w: i + 5 for i, w in enumerate(WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
                                        mask_token="[MASK]", unk_token="[UNK]")
    tokenizer.chat_template = CHAT
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, pad_token_id=0)
    model = BertForMaskedLM(config).eval()
    with torch.no_grad():  # sharpen the random head so that orders and greedy choices are well defined
        model.get_output_embeddings().weight.mul_(10.0)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _task(name: str, data: Path, body: str) -> str:
    return (f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
            + body)


def _write_tasks(root: Path) -> Path:
    tasks = root / "tasks"
    tasks.mkdir()
    for name, docs in (("gen", GEN_DOCS), ("mc", MC_DOCS), ("roll", ROLL_DOCS)):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (tasks / "tiny_gen.yaml").write_text(_task("tiny_gen", root / "gen.jsonl", f"""output_type: generate_until
doc_to_text: "Q: {{{{question}}}} A:"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: {json.dumps(UNTIL)}
  max_gen_toks: 6
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""))
    (tasks / "tiny_mc.yaml").write_text(_task("tiny_mc", root / "mc.jsonl", """output_type: multiple_choice
doc_to_text: "Q: {{question}} A:"
doc_to_choice: "{{choices}}"
doc_to_target: "{{label}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""))
    (tasks / "tiny_roll.yaml").write_text(_task("tiny_roll", root / "roll.jsonl", """output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{text}}"
metric_list:
  - metric: word_perplexity
  - metric: bits_per_byte
"""))
    return tasks


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("lmeval")
    _save_tiny(root / "tiny")
    return root, root / "tiny", _write_tasks(root)


def _evaluate(model, model_args, tasks_dir, tasks, **kwargs):
    from lm_eval.tasks import TaskManager

    return lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=tasks, device="cpu", log_samples=True,
                                   task_manager=TaskManager(include_path=str(tasks_dir)), **kwargs)


@pytest.fixture(scope="module")
def run(setup):
    """One in-process run of all three tiny tasks through lm-eval's simple_evaluate (a model object, to inspect it)."""
    root, tiny, tasks = setup
    args = lm_eval.utils.simple_parse_args_string(MODEL_ARGS)
    lm = mle.MDMSchedLM(pretrained=str(tiny), device="cpu", calls_log=str(root / "calls.jsonl"), **args)
    results = _evaluate(lm, None, tasks, ["tiny_gen", "tiny_mc", "tiny_roll"])
    return lm, results


# --------------------------------------------------------------------------------------------------
# registration
# --------------------------------------------------------------------------------------------------

def test_registered_under_its_name_next_to_lm_evals_own_models():
    from lm_eval.api.registry import get_model

    assert get_model("mdm_sched") is mle.MDMSchedLM
    assert get_model("dummy").__name__ == "DummyLM"  # registering first did not hide lm-eval's own models


def test_entry_point_resolves_to_the_model():
    """The ``lm_eval.models`` entry point (for lm-eval releases that discover plugins) names this class."""
    import importlib.metadata as md

    from lm_eval.api.registry import Registry

    found = [ep for ep in md.entry_points(group="lm_eval.models") if ep.name == "mdm_sched"]
    if not found:
        pytest.skip("the installed mdm_sched metadata predates the entry point: pip install -e . again")
    registry = Registry("model")
    registry.register("mdm_sched", target=found[0])  # what plugin discovery does with an entry point
    assert registry.get("mdm_sched") is mle.MDMSchedLM


# --------------------------------------------------------------------------------------------------
# end to end with a tiny model
# --------------------------------------------------------------------------------------------------

def _direct_generation(mlm: ms.MaskedLM, context: str, stop: bool) -> ms.GenerationOutput:
    ids = mlm.encode([context])[0]
    return ms.generate(mlm, [ids], gen_length=6, schedule="constant", steps=4, order="confidence", temperature=0.0,
                       stop_strings=UNTIL if stop else None)


def test_generate_until_is_generate_cut_at_until(run):
    lm, results = run
    samples = results["samples"]["tiny_gen"]
    records = {r["doc_id"]: r for r in lm.call_records["generate_until"]}
    assert len(samples) == len(GEN_DOCS) == len(records)
    for s in samples:
        context, gen_kwargs = s["arguments"][0]
        assert gen_kwargs["max_gen_toks"] == 6 and gen_kwargs["until"] == UNTIL
        full = _direct_generation(lm.mlm, context, stop=False)  # max_gen_toks=6 caps gen_length=8
        text = lm.mlm.decode(full.generated)[0]
        cut = min([text.find(u) for u in UNTIL if u in text], default=len(text))
        assert s["resps"][0][0] == text[:cut]
        assert not any(u in s["resps"][0][0] for u in UNTIL)
        stopped = _direct_generation(lm.mlm, context, stop=True)  # the loop stops calling once a stop string is out
        assert records[s["doc_id"]]["calls"] == int(stopped.calls_per_row[0]) <= 4


def test_multiple_choice_scores_are_the_likelihoods(run):
    lm, results = run
    samples = results["samples"]["tiny_mc"]
    records = {(r["doc_id"], r["idx"]): r for r in lm.call_records["loglikelihood"]}
    correct = []
    for s in samples:
        doc = MC_DOCS[s["doc_id"]]
        scores = []
        for idx, choice in enumerate(doc["choices"]):
            context = "Q: " + doc["question"] + " A:"
            ctx, target = lm._encode_pair(context, " " + choice)
            want = continuation_logprob(lm.mlm, ctx, target, mc_num=16, batch_size=8, exact_max_calls=3,
                                        generator=mle._seed_for(lm.seed, "ll", context, " " + choice, 0))
            got = s["resps"][idx][0][0]
            assert got == pytest.approx(want.logprob, abs=1e-6)
            rec = records[(s["doc_id"], idx)]
            assert rec["exact"] == (len(target) <= 2) == want.exact  # 2^L - 1 <= exact_max_calls=3
            assert rec["ll_calls"] == (2 ** len(target) - 1 if want.exact else 16)
            assert rec["calls"] == rec["ll_calls"] + len(target)  # + LLaDA's greedy check, one call per token
            scores.append(got)
        correct.append(float(max(range(len(scores)), key=scores.__getitem__) == doc["label"]))
    assert results["results"]["tiny_mc"]["acc,none"] == pytest.approx(sum(correct) / len(correct))
    assert any(not r["exact"] for r in records.values()) and any(r["exact"] for r in records.values())


def test_rolling_likelihood_sums_the_windows(run):
    lm, results = run
    for s in results["samples"]["tiny_roll"]:
        text = ROLL_DOCS[s["doc_id"]]["text"]
        ids = lm._encode(text, context=False)
        assert lm._windows(ids) == [([], ids)]  # short enough for one window; the BERT framing starts it
        want = continuation_logprob(lm.mlm, [], ids, mc_num=16, batch_size=8, exact_max_calls=3,
                                    generator=mle._seed_for(lm.seed, "rolling", text, 0, 0))
        assert s["resps"][0][0] == pytest.approx(want.logprob, abs=1e-6)
    assert math.isfinite(results["results"]["tiny_roll"]["bits_per_byte,none"])


def test_calls_are_logged_per_sample_and_summarised(run, setup):
    lm, results = run
    root = setup[0]
    logged = [json.loads(line) for line in (root / "calls.jsonl").read_text().splitlines()]
    kinds = {k: [r for r in logged if r["request_type"] == k] for k in ("generate_until", "loglikelihood",
                                                                        "loglikelihood_rolling")}
    assert len(kinds["generate_until"]) == len(GEN_DOCS)
    assert len(kinds["loglikelihood"]) == sum(len(d["choices"]) for d in MC_DOCS)
    assert len(kinds["loglikelihood_rolling"]) == len(ROLL_DOCS)
    summary = results["config"]["mdm_sched"]["calls"]
    for kind, records in kinds.items():
        assert summary[kind]["requests"] == len(records)
        assert summary[kind]["mean_calls"] == pytest.approx(sum(r["calls"] for r in records) / len(records))
    assert {(r["task"], r["doc_id"]) for r in kinds["generate_until"]} == {("tiny_gen", i) for i in range(len(GEN_DOCS))}
    assert kinds == lm.call_records  # the file holds what the model kept


def _result_values(results: dict) -> dict:
    return {task: {k: v for k, v in res.items() if isinstance(v, float)} for task, res in results["results"].items()}


@pytest.mark.slow
def test_cli_runs_the_same_evaluation(setup, run, tmp_path):
    """``python -m mdm_sched.lm_eval`` = lm-eval's CLI with the model registered, model_args as a string."""
    _, tiny, tasks = setup
    cmd = [sys.executable, "-m", "mdm_sched.lm_eval", "--model", "mdm_sched", "--model_args",
           f"pretrained={tiny},{MODEL_ARGS},calls_log={tmp_path / 'calls.jsonl'}", "--tasks", "tiny_gen,tiny_mc,tiny_roll",
           "--include_path", str(tasks), "--device", "cpu", "--output_path", str(tmp_path / "out")]
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONPATH=str(ROOT))
    res = subprocess.run(cmd, env=env, timeout=300, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    (found,) = (tmp_path / "out").rglob("results_*.json")
    cli = json.loads(found.read_text())
    want = _result_values(run[1])
    for task, values in _result_values(cli).items():
        assert values == pytest.approx(want[task], rel=1e-6, abs=1e-9)
    assert cli["config"]["mdm_sched"]["calls"] == run[1]["config"]["mdm_sched"]["calls"]


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_accelerate_launch_shards_requests_and_gathers(setup, run, tmp_path):
    """Two processes under ``accelerate launch``: each gets half of the requests; process 0 gathers the metrics and
    every call record; the numbers equal the one-process run's (requests are seeded by their own text)."""
    _, tiny, tasks = setup
    calls = tmp_path / "calls.jsonl"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines",
           "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
           "-m", "mdm_sched.lm_eval", "--model", "mdm_sched", "--model_args",
           f"pretrained={tiny},{MODEL_ARGS},calls_log={calls}", "--tasks", "tiny_gen,tiny_mc,tiny_roll",
           "--include_path", str(tasks), "--device", "cpu", "--output_path", str(tmp_path / "out"), "--log_samples"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    res = subprocess.run(cmd, env=env, timeout=300, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    (found,) = (tmp_path / "out").rglob("results_*.json")
    two = json.loads(found.read_text())
    want = _result_values(run[1])
    for task, values in _result_values(two).items():
        assert values == pytest.approx(want[task], rel=1e-5, abs=1e-6)
    lm = run[0]
    logged = [json.loads(line) for line in calls.read_text().splitlines()]
    one = {k: sorted((r["task"], r["doc_id"], r["idx"], r["calls"]) for r in v) for k, v in lm.call_records.items()}
    got = {k: sorted((r["task"], r["doc_id"], r["idx"], r["calls"]) for r in logged if r["request_type"] == k)
           for k in one}
    # every request exactly once: lm-eval's padding copies are not counted, and two processes that each ran
    # everything as "rank 0" would have logged every record twice
    assert got == one
    assert two["config"]["mdm_sched"]["calls"] == run[1]["config"]["mdm_sched"]["calls"]


# --------------------------------------------------------------------------------------------------
# settings and requests
# --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_lm(setup):
    return ms.load_masked_lm(str(setup[1]))


def _request(context: str, **gen_kwargs):
    from lm_eval.api.instance import Instance

    return Instance(request_type="generate_until", doc={}, arguments=(context, gen_kwargs), idx=0,
                    metadata=("t", 0, 1))


def test_max_gen_toks_caps_the_canvas_and_request_kwargs_override(tiny_lm):
    lm = mle.MDMSchedLM(pretrained=tiny_lm, gen_length=8, steps=8, temperature=0.5)
    assert lm.generate_until([_request("Q: one plus one is A:", until=["zz"], max_gen_toks=3)])[0].count(" ") <= 2
    (rec,) = lm.call_records["generate_until"]
    assert rec["calls"] == 3  # steps capped by the 3-token canvas: one token per call
    settings, cut = lm._request_settings({"until": "x", "do_sample": False, "top_k": 2})
    assert settings["temperature"] == 0.0 and settings["top_k"] == 2 and cut == ["x"]
    assert settings["gen_length"] == 8 and settings["steps"] == 8


def test_adaptive_rules_and_profiles_from_model_args(tiny_lm, tmp_path):
    from mdm_sched.rules import ConfidenceThreshold, EntropyBound

    lm = mle.MDMSchedLM(pretrained=tiny_lm, gen_length=6, schedule="threshold", threshold=0.9, max_calls=4, cfg=0.5)
    assert isinstance(lm.settings["schedule"], ConfidenceThreshold) and lm.settings["cfg_scale"] == 0.5
    lm.generate_until([_request("Q: two A:", until=["zz"])])
    assert 1 <= lm.call_records["generate_until"][0]["calls"] <= 4
    assert isinstance(mle.generation_settings({"schedule": "entropy_bound", "gamma": 0.1})["schedule"], EntropyBound)
    text_form = mle.MDMSchedLM(pretrained=tiny_lm, gen_length=6, schedule="threshold:0.8")  # the library's text form
    text_form.generate_until([_request("Q: two A:", until=["zz"])])
    assert 1 <= text_form.call_records["generate_until"][0]["calls"] <= 6
    n = 6
    profile = ms.InformationProfile(list(range(n)), [2.0 - 0.3 * i for i in range(n)], [0.01] * n, n_tokens=n)
    profile.save(tmp_path / "p.json")
    opt = mle.MDMSchedLM(pretrained=tiny_lm, gen_length=6, schedule="optimal", steps=3, profile=str(tmp_path / "p.json"))
    assert isinstance(opt.settings["profile"], ms.InformationProfile)
    opt.generate_until([_request("Q: two A:", until=["zz"])])
    assert opt.call_records["generate_until"][0]["calls"] == 3


def test_bad_model_args_fail_at_construction(tiny_lm):
    with pytest.raises(ValueError, match="unknown model_args colour"):
        mle.MDMSchedLM(pretrained=tiny_lm, gen_length=4, colour="red")
    with pytest.raises(ValueError, match="needs threshold="):
        mle.MDMSchedLM(pretrained=tiny_lm, gen_length=4, schedule="threshold")
    with pytest.raises(ValueError, match="only apply to schedule=threshold"):
        mle.MDMSchedLM(pretrained=tiny_lm, gen_length=4, gamma=0.1)
    with pytest.raises(ValueError, match="needs a CE curve or an InformationProfile"):
        mle.MDMSchedLM(pretrained=tiny_lm, gen_length=4, schedule="optimal", steps=2)
    with pytest.raises(ValueError, match="'auto' is not supported"):
        mle.MDMSchedLM(pretrained=tiny_lm, batch_size="auto")
    with pytest.raises(ValueError, match="pretrained="):
        mle.MDMSchedLM()


def test_chat_template_and_batches_of_prompts(setup, tiny_lm):
    lm = mle.MDMSchedLM(pretrained=tiny_lm, gen_length=4, batch_size=3)
    text = lm.apply_chat_template([{"role": "user", "content": "one plus one is"}])
    assert text == "user: one plus one is assistant:"
    prompts = ["Q: one A:", "Q: two plus two is A:", "Q: three plus three plus three is A:", "Q: four A:"]
    batched = lm.generate_until([_request(p, until=["zz"]) for p in prompts])
    alone = [mle.MDMSchedLM(pretrained=tiny_lm, gen_length=4).generate_until([_request(p, until=["zz"])])[0]
             for p in prompts]
    assert batched == alone  # batching (left padding) changes nothing
    results = _evaluate("mdm_sched", f"pretrained={setup[1]},gen_length=4", setup[2], ["tiny_gen"],
                        apply_chat_template=True)
    assert results["samples"]["tiny_gen"][0]["arguments"][0][0].startswith("user: Q:")


def _word_tokenizer(n_words: int):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<s>": 0} | {f"w{i}": i for i in range(1, n_words + 1)} | {"</s>": n_words + 1, "[MASK]": n_words + 2}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w1"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", mask_token="[MASK]",
                                   unk_token="w1", pad_token="</s>")


@pytest.mark.parametrize("shape", ["llada", "dream"])
def test_llada_and_dream_shaped_models(shape):
    from lm_eval.api.instance import Instance
    from test_models import TinyDream, TinyLLaDA

    model = TinyLLaDA(seed=3, eos_token_id=38) if shape == "llada" else TinyDream(seed=4)
    mlm = ms.wrap(model, tokenizer=_word_tokenizer(37), mask_token_id=39)
    lm = mle.MDMSchedLM(pretrained=mlm, gen_length=6, steps=3, add_bos=True, mc_num=8, exact_max_calls=7)
    pairs = [("w1 w2 w3", " w4 w5"), ("w7", " w6 w7 w8 w9"), ("", " w3")]  # exact, Monte Carlo, no context
    reqs = [Instance("loglikelihood", {}, pair, i, ("t", 0, 1)) for i, pair in enumerate(pairs)]
    out = lm.loglikelihood(reqs)
    for (context, continuation), (logprob, greedy) in zip(pairs, out):
        ctx = [0, *mlm.encode([context])[0]] if context else [0]
        target = mlm.encode([continuation])[0]
        want = continuation_logprob(mlm, ctx, target, mc_num=8, batch_size=32, exact_max_calls=7,
                                    generator=mle._seed_for(lm.seed, "ll", context, continuation, 0))
        assert logprob == pytest.approx(want.logprob, abs=1e-6) and isinstance(greedy, bool)
    assert [r["exact"] for r in lm.call_records["loglikelihood"]] == [True, False, True]
    text = lm.generate_until([_request("w1 w2", until=["w9"])])[0]
    assert "w9" not in text and "<s>" not in text and len(text.split()) <= 6


# --------------------------------------------------------------------------------------------------
# a real model on a real task
# --------------------------------------------------------------------------------------------------

AMINO = "ACDEFGHIKLMNPQRSTVWY"


def _germline_task(root: Path, n_docs: int, span: int, mutations: int) -> Path:
    """Choose the true germline span (after the sequence so far) among three copies with ``mutations`` substitutions."""
    rng = random.Random(0)
    docs = []
    for seq in rng.sample(ms.data.germlines("human", "H", split="test"), n_docs):
        start = rng.randrange(20, len(seq) - span)
        true = seq[start:start + span]
        choices = {true}
        while len(choices) < 4:
            wrong = list(true)
            for p in rng.sample(range(span), mutations):
                wrong[p] = rng.choice([a for a in AMINO if a != true[p]])
            choices.add("".join(wrong))
        ordered = sorted(choices)
        docs.append({"context": seq[:start], "choices": ordered, "label": ordered.index(true)})
    (root / "germ.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    tasks = root / "germ_tasks"
    tasks.mkdir()
    (tasks / "germline_span.yaml").write_text(_task("germline_span", root / "germ.jsonl", """output_type: multiple_choice
doc_to_text: "{{context}}"
doc_to_choice: "{{choices}}"
doc_to_target: "{{label}}"
target_delimiter: ""
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""))
    return tasks


def test_sapiens_picks_the_germline_span(tmp_path):
    """Sapiens through lm-eval: which of four 3-residue spans (three with one substitution) continues a human VH
    germline (chance 0.25)?"""
    if not ms.assets.available().get("sapiens-vh"):
        pytest.skip("sapiens is not installed (scripts/setup.sh installs it)")
    tasks = _germline_task(tmp_path, n_docs=24, span=3, mutations=1)
    results = _evaluate("mdm_sched", "pretrained=sapiens-vh,is_check_greedy=False", tasks, ["germline_span"])
    acc = results["results"]["germline_span"]["acc,none"]
    calls = results["config"]["mdm_sched"]["calls"]["loglikelihood"]
    print(f"Sapiens germline span accuracy {acc:.3f} (chance 0.25), {calls['mean_calls']:.1f} calls per choice")
    assert acc >= 0.6
    assert calls["mean_calls"] == 7  # 3 residues: all 2^3 - 1 subsets, exact


# --------------------------------------------------------------------------------------------------
# the recipe's table and plot
# --------------------------------------------------------------------------------------------------

def test_recipe_plots_accuracy_against_calls(run, tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("lm_eval_calls", ROOT / "recipes" / "lm_eval_calls.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    results = {k: v for k, v in run[1].items() if k != "samples"}
    for name, schedule in (("a", "constant"), ("b", "threshold")):
        out = tmp_path / name
        out.mkdir()
        results["config"] = dict(results["config"], model_args={"schedule": schedule, "threshold": 0.9} if name == "b"
                                 else {"schedule": schedule})
        (out / "results_x.json").write_text(json.dumps(results, default=str))
    rows = recipe.collect([tmp_path / "a", tmp_path / "b"], "tiny_mc", "acc,none")
    assert [r["series"] for r in rows] == ["constant", "threshold threshold=0.9"]
    want = run[1]["config"]["mdm_sched"]["calls"]["loglikelihood"]["mean_calls"]  # multiple_choice -> loglikelihood
    assert all(r["mean_calls"] == pytest.approx(want) and r["value"] == run[1]["results"]["tiny_mc"]["acc,none"]
               for r in rows)
    assert recipe.main([str(tmp_path), "--task", "tiny_gen", "--metric", "exact_match,none",
                        "--out", str(tmp_path / "plot.png")]) == 0
    assert (tmp_path / "plot.png").stat().st_size > 1000
    assert recipe.main([str(tmp_path), "--task", "no_such_task"]) == 1
