"""Bad input a careless user gives, API and command line: each ends in one clear error naming the argument or flag,
before any work; plus the numerical edges, identities and saves that must never go silently wrong.

The table :data:`API_CASES` / :data:`CLI_CASES` is the contract (error type, and a pattern the message must
contain: the argument's or flag's name). ``eval/probe_reliability.py`` tallies the same ground as a report.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

import mdm_sched as ms
from mdm_sched import cli
from mdm_sched.profile import InformationProfile
from mdm_sched.schedules import Schedule

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------------
# tiny models and files
# --------------------------------------------------------------------------------------------------

class Toy(nn.Module):
    """vocab 40, mask 39; ``bend`` breaks what forward returns."""

    def __init__(self, bend: str = "", seed: int = 0, vocab: int = 40) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.emb, self.head = nn.Embedding(vocab, 8), nn.Linear(8, vocab)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
        self.bend = bend
        self.config = SimpleNamespace(vocab_size=vocab, mask_token_id=vocab - 1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> SimpleNamespace:
        logits = self.head(self.emb(input_ids))
        if self.bend == "short":
            logits = logits[:, :-1]
        elif self.bend == "narrow":
            logits = logits[..., :30]
        elif self.bend == "batch":
            logits = torch.cat([logits, logits])
        elif self.bend == "half":
            logits = logits.half()
        return SimpleNamespace(logits=logits)


LETTERS = "ACDEFGHIKLMNPQRSTVWY"
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT with a letters tokenizer saved as an HF folder (ids 0..4 are the special tokens)."""
    from transformers import BertConfig, BertForMaskedLM, BertTokenizer

    d = tmp_path_factory.mktemp("bert")
    (d / "vocab.txt").write_text("\n".join(SPECIAL + list(LETTERS)) + "\n")
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(SPECIAL) + len(LETTERS), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=64, pad_token_id=0)
    BertForMaskedLM(cfg).eval().save_pretrained(d)
    BertTokenizer(str(d / "vocab.txt"), do_lower_case=False).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def bert(bert_dir: Path) -> ms.MaskedLM:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ms.load_masked_lm(str(bert_dir))


def _profile_file(tmp: Path, name: str = "prof.json", **changes: object) -> Path:
    data = InformationProfile([0, 4, 8], [2.0, 1.5, 1.0], [0.1, 0.1, 0.1], n_tokens=10, metadata={"m": 1}).to_dict()
    for k, v in changes.items():
        data.pop(k) if v is None else data.__setitem__(k, v)
    path = tmp / name
    path.write_text(json.dumps(data))
    return path


def _schedule_file(tmp: Path, **changes: object) -> Path:
    data = Schedule([4, 3, 3]).to_dict()
    for k, v in changes.items():
        data.pop(k) if v is None else data.__setitem__(k, v)
    path = tmp / "sched.json"
    path.write_text(json.dumps(data))
    return path


def _gen(model: object, **kw: object) -> ms.GenerationOutput:
    kw.setdefault("gen_length", 6)
    kw.setdefault("schedule", 3)
    kw.setdefault("generator", torch.Generator().manual_seed(0))
    return ms.generate(model, **kw)


def _corrupt(path: Path) -> Path:
    path.write_bytes(b"PAR1 not a parquet file")
    return path


def _unwritable(tmp: Path) -> Path:
    """A folder this process cannot create files in (root ignores modes: /sys refuses even root)."""
    if os.geteuid() == 0:
        return Path("/sys")
    d = tmp / "ro"
    d.mkdir()
    d.chmod(0o500)
    return d


# --------------------------------------------------------------------------------------------------
# the API table: (id, call(tmp, bert), error type, pattern the message must contain)
# --------------------------------------------------------------------------------------------------

def _estimate(model: nn.Module, data: torch.Tensor, **kw: object) -> InformationProfile:
    return ms.estimate_profile(model, data, levels=2, progress=False, **kw)


API_CASES = [
    ("prompt id beyond vocab", lambda t, b: _gen(Toy(), prompts=[[1, 2, 45]]), ValueError, r"prompts.*45.*\[0, 40\)"),
    ("negative prompt id", lambda t, b: _gen(Toy(), prompts=[[1, -3]]), ValueError, r"prompts.*-3"),
    ("tensor prompt beyond vocab", lambda t, b: _gen(Toy(), prompts=torch.tensor([[400]])), ValueError, "prompts"),
    ("float tensor prompt", lambda t, b: _gen(Toy(), prompts=torch.tensor([[1.0, 2.0]])), TypeError, "prompts"),
    ("string prompt without tokenizer", lambda t, b: _gen(Toy(), prompts=["abc"]), TypeError, "tokenizer"),
    ("CLS inside a bert prompt", lambda t, b: _gen(b, prompts=[[2, 8, 9]]), ValueError, r"prompts\[0\].*\[CLS\]"),
    ("PAD inside a bert prompt", lambda t, b: _gen(b, prompts=[[8, 0, 9]]), ValueError, r"prompts\[0\].*\[PAD\]"),
    ("SEP inside a bert prompt", lambda t, b: _gen(b, prompts=[[8, 3]]), ValueError, r"prompts\[0\].*\[SEP\]"),
    ("stop_at_eos beyond vocab", lambda t, b: _gen(Toy(), stop_at_eos=1000), ValueError, "stop_at_eos=1000"),
    ("stop_at_eos negative", lambda t, b: _gen(Toy(), stop_at_eos=-2), ValueError, "stop_at_eos"),
    ("stop_at_eos list entry beyond vocab", lambda t, b: _gen(Toy(), stop_at_eos=[3, 77]), ValueError, "stop_at_eos"),
    ("stop_at_eos a string", lambda t, b: _gen(Toy(), stop_at_eos="eos"), ValueError, "stop_at_eos"),
    ("generator=123", lambda t, b: _gen(Toy(), generator=123), TypeError, "generator"),
    ("generator list too short", lambda t, b: _gen(Toy(), num_samples=3, generator=[torch.Generator()] * 2),
     ValueError, "generator"),
    ("mask id beyond vocab", lambda t, b: _gen(Toy(seed=1), mask_token_id=1000), ValueError, "mask_token_id=1000"),
    ("float mask id", lambda t, b: _gen(Toy(seed=2), mask_token_id=39.0), ValueError, r"mask_token_id must be an integer"),
    ("mask id contradicting the tokenizer", lambda t, b: ms.wrap(b.model, tokenizer=b.tokenizer, mask_token_id=7),
     ValueError, r"mask_token_id=7 contradicts.*force_mask_token_id"),
    ("bert module without a tokenizer", lambda t, b: ms.wrap(__import__("transformers").BertForMaskedLM(
        __import__("transformers").BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                              intermediate_size=8)), mask_token_id=4), ValueError, "tokenizer="),
    ("suppress_tokens beyond vocab", lambda t, b: ms.wrap(Toy(), suppress_tokens=[50]), ValueError,
     r"suppress_tokens holds id 50"),
    ("allowed_tokens negative", lambda t, b: ms.wrap(Toy(), allowed_tokens=[1, -1]), ValueError, r"allowed_tokens holds id -1"),
    ("logits one position short", lambda t, b: _gen(Toy("short")), ValueError, r"Toy returned logits of shape"),
    ("logits narrower than vocab", lambda t, b: _gen(Toy("narrow")), ValueError, r"Toy.*30 token ids.*vocab_size=40"),
    ("logits of another batch", lambda t, b: _gen(Toy("batch")), ValueError, r"Toy returned logits of shape \(2,"),
    ("estimate: logits narrower than vocab", lambda t, b: _estimate(Toy("narrow"), torch.randint(0, 20, (4, 6))),
     ValueError, r"Toy.*30 token ids"),
    ("estimate: data id beyond vocab", lambda t, b: _estimate(Toy(), torch.tensor([[1, 2, 99, 3]] * 4)),
     ValueError, r"99.*vocabulary"),
    ("logits(): input id beyond vocab", lambda t, b: ms.wrap(Toy()).logits(torch.tensor([[1, 50]])), ValueError,
     r"input_ids.*50"),
    ("unknown generation setting", lambda t, b: _gen(Toy(), temprature=0.5), TypeError, "temprature"),
    ("temperature negative", lambda t, b: _gen(Toy(), temperature=-1.0), ValueError, "temperature"),
    ("temperature inf", lambda t, b: _gen(Toy(), temperature=float("inf")), ValueError, "temperature"),
    ("top_p 0", lambda t, b: _gen(Toy(), top_p=0.0), ValueError, "top_p"),
    ("top_k 0", lambda t, b: _gen(Toy(), top_k=0), ValueError, "top_k"),
    ("steps 0", lambda t, b: _gen(Toy(), schedule="cosine", steps=0), ValueError, "steps"),
    ("gen_length float", lambda t, b: _gen(Toy(), gen_length=6.0), ValueError, "gen_length"),
    ("missing schedule file", lambda t, b: _gen(Toy(), schedule=str(t / "nope.json")), FileNotFoundError,
     r"schedule.*nope\.json.*does not exist"),
    ("profile negative CE", lambda t, b: InformationProfile.load(_profile_file(t, ce=[2.0, -1.0, 0.5])), ValueError,
     r"prof\.json.*ce must be >= 0"),
    ("profile CE null", lambda t, b: InformationProfile.load(_profile_file(t, ce=[2.0, None, 0.5])), ValueError,
     r"prof\.json.*NaN"),
    ("profile version '1'", lambda t, b: InformationProfile.load(_profile_file(t, version="1")), ValueError,
     r"prof\.json.*version"),
    ("profile without levels", lambda t, b: InformationProfile.load(_profile_file(t, levels=None)), ValueError,
     r"prof\.json.*'levels'"),
    ("profile metadata a list", lambda t, b: InformationProfile.load(_profile_file(t, metadata=[1])), ValueError,
     r"prof\.json.*metadata must be a dict"),
    ("profile levels beyond N", lambda t, b: InformationProfile.load(_profile_file(t, levels=[0, 4, 12])), ValueError,
     r"prof\.json.*levels"),
    ("profile negative tokens", lambda t, b: InformationProfile.load(_profile_file(t, tokens=[-1, 5, 5])), ValueError,
     r"prof\.json.*tokens"),
    ("profile folder, negative CE", lambda t, b: InformationProfile.from_pretrained(
        str(_profile_file(t, ce=[-2.0, -1.0, -3.0]))), ValueError, r"prof\.json.*ce must be >= 0"),
    ("schedule without sizes", lambda t, b: Schedule.load(_schedule_file(t, sizes=None)), ValueError,
     r"sched\.json.*'sizes'"),
    ("schedule zero size", lambda t, b: Schedule.load(_schedule_file(t, sizes=[4, 0, 6])), ValueError,
     r"sched\.json.*sizes\[1\]"),
    ("schedule fractional size", lambda t, b: Schedule.load(_schedule_file(t, sizes=[4, 2.5, 3.5])), ValueError,
     r"sched\.json.*sizes\[1\]"),
    ("schedule sizes a string", lambda t, b: Schedule.load(_schedule_file(t, sizes="abc")), ValueError, r"sched\.json.*sizes"),
    ("schedule metadata a list", lambda t, b: Schedule.load(_schedule_file(t, metadata=[1])), ValueError,
     r"sched\.json.*metadata"),
    ("load_masked_lm missing folder", lambda t, b: ms.load_masked_lm(str(t / "no_model")), FileNotFoundError,
     r"no_model does not exist"),
    ("load_masked_lm cuda without CUDA", lambda t, b: ms.load_masked_lm("x/y", device="cuda") if not
     torch.cuda.is_available() else (_ for _ in ()).throw(ValueError("device skipped")), ValueError, "device"),
    ("estimate: unwritable checkpoint", lambda t, b: _estimate(Toy(), torch.randint(0, 20, (4, 6)),
                                                               checkpoint=_unwritable(t) / "ck.npz"),
     PermissionError, r"checkpoint.*not writable"),
    ("estimate: checkpoint is a folder", lambda t, b: _estimate(Toy(), torch.randint(0, 20, (4, 6)), checkpoint=t),
     ValueError, r"checkpoint.*is a folder"),
    ("estimate: float mask id", lambda t, b: _estimate(Toy(), torch.randint(0, 20, (4, 6)), mask_token_id=3.5),
     ValueError, "mask_token_id"),
]


@pytest.mark.parametrize("name, call, error, pattern", API_CASES, ids=[c[0] for c in API_CASES])
def test_api_bad_input_gives_a_clear_error(name, call, error, pattern, tmp_path, bert):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(error, match=pattern):
            call(tmp_path, bert)


# --------------------------------------------------------------------------------------------------
# the command-line table: main([...]) in-process, exit 2 and one line naming the flag, before any model loads
# --------------------------------------------------------------------------------------------------

def _cli_cases(bert_dir: Path, tmp: Path) -> list[tuple[str, list[str], str, bool]]:
    """(id, argv, pattern, before_work): ``before_work`` cases must fail before any model is loaded."""
    m, ro = str(bert_dir), str(_unwritable(tmp))
    prof, data = str(_profile_file(tmp)), tmp / "data.txt"
    data.write_text("A C D E F\nG H I K L\nM N P Q R\n")
    g = ["generate", "--model", m, "--gen-length", "4"]
    p = ["profile", "--model", m, "--data", str(data), "--out", str(tmp / "p.json"), "--no-progress"]
    s = ["schedule", "--profile", prof, "--steps", "4"]
    return [
        ("generate missing model", ["generate", "--model", str(tmp / "nomodel"), "--gen-length", "4"],
         r"--model .*nomodel does not exist", True),
        ("generate missing schedule", g + ["--schedule", str(tmp / "s.json")], r"--schedule .*s\.json does not exist", True),
        ("generate missing profile", g + ["--schedule", "optimal", "--profile", str(tmp / "p.json")],
         r"--profile .*does not exist", True),
        ("generate missing config", ["generate", "--model", m, "--config", str(tmp / "cfg")], r"--config .*does not exist",
         True),
        ("generate gen-length 0", ["generate", "--model", m, "--gen-length", "0"], r"--gen-length 0", True),
        ("generate no gen-length", ["generate", "--model", m], r"--gen-length is required", True),
        ("generate steps 0", g + ["--steps", "0"], r"--steps must be >= 1", True),
        ("generate num-samples 0", g + ["--num-samples", "0"], r"--num-samples must be >= 1", True),
        ("generate top-p 0", g + ["--top-p", "0"], r"--top-p must be > 0", True),
        ("generate top-k 0", g + ["--top-k", "0"], r"--top-k must be >= 1", True),
        ("generate temperature -1", g + ["--temperature", "-1"], r"--temperature must be >= 0", True),
        ("generate block-length 0", g + ["--block-length", "0"], r"--block-length must be >= 1", True),
        ("generate seed -1", g + ["--seed", "-1"], r"argument --seed: must be >= 0", True),
        ("generate unwritable out", g + ["--out", ro + "/s.jsonl"], r"--out .*not writable", True),
        ("generate out in a missing folder", g + ["--out", str(tmp / "no/dir/s.jsonl")], r"--out .*does not exist", True),
        ("generate out is a folder", g + ["--out", str(tmp)], r"--out .*is a folder", True),
        ("generate optimal without profile", g + ["--schedule", "optimal"], r"--schedule optimal needs --profile", True),
        ("generate system without chat", g + ["--system", "hi"], r"--system is only used with --chat", True),
        ("generate unencodable prompt", g + ["--prompt", "AC!!XZ"], r"--prompt 'AC!!XZ'.*--allow-unk", False),
        ("generate stop-at-eos beyond vocab", g + ["--stop-at-eos", "999"], r"--stop-at-eos=999", False),
        ("generate special id in prompt", g + ["--prompt", "A C [SEP] D"], r"--prompt\[0\].*\[SEP\]", False),
        ("profile missing data", ["profile", "--model", m, "--data", str(tmp / "x.txt"), "--out", str(tmp / "p.json")],
         r"--data .*x\.txt does not exist", True),
        ("profile corrupted data file", p[:4] + [str(_corrupt(tmp / "d.parquet"))] + p[5:],
         r"--data=.*d\.parquet.* cannot be read", False),
        ("profile missing model", ["profile", "--model", str(tmp / "nomodel"), "--data", str(data), "--out",
                                   str(tmp / "p.json")], r"--model .*does not exist", True),
        ("profile unwritable out", p[:-3] + ["--out", ro + "/p.json"], r"--out .*not writable", True),
        ("profile unwritable checkpoint", p + ["--checkpoint", ro + "/ck.npz"], r"--checkpoint .*not writable", True),
        ("profile checkpoint in a missing folder", p + ["--checkpoint", str(tmp / "no/dir/ck.npz")],
         r"--checkpoint .*does not exist", True),
        ("profile unwritable plot", p + ["--plot", ro + "/p.png"], r"--plot .*not writable", True),
        ("profile batch-size 0", p + ["--batch-size", "0"], r"argument --batch-size: must be >= 1", True),
        ("profile levels 0", p + ["--levels", "0"], r"argument --levels: must be >= 1", True),
        ("profile n-tokens 0", p + ["--n-tokens", "0"], r"argument --n-tokens: must be >= 1", True),
        ("profile target-se 0", p + ["--target-se", "0"], r"argument --target-se: must be a finite number > 0", True),
        ("profile gain-steps text", p + ["--gain-steps", "a,b"], r"--gain-steps", True),
        ("profile region text", p + ["--region", "x"], r"--region", False),
        ("eval threads 0", ["eval", "--threads", "0", "--out", str(tmp / "ev")], r"argument --threads: must be >= 1", True),
        ("eval num-samples 0", ["eval", "--num-samples", "0", "--out", str(tmp / "ev")], r"--num-samples must be >= 1",
         True),
        ("eval unwritable out", ["eval", "--out", ro + "/ev"], r"--out .*not writable", True),
        ("schedule missing profile", ["schedule", "--profile", str(tmp / "none.json"), "--steps", "4"],
         r"--profile .*none\.json.*does not exist", True),
        ("schedule n-tokens 0", s + ["--n-tokens", "0"], r"argument --n-tokens: must be >= 1", True),
        ("schedule steps 0", ["schedule", "--profile", prof, "--steps", "0"], r"argument --steps: must be >= 1", True),
        ("schedule steps beyond n-tokens", s[:-1] + ["40"], r"steps", True),
        ("schedule profile version '1'",
         ["schedule", "--profile", str(_profile_file(tmp, "bad_prof.json", version="1")), "--steps", "4"],
         r"--profile .*prof\.json.*version", True),
        ("schedule unwritable out", s + ["--out", ro + "/s.json"], r"--out .*not writable", True),
        ("schedule out in a missing folder", s + ["--out", str(tmp / "no/dir/s.json")], r"--out .*does not exist", True),
    ]


def _run_main(argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, before_work: bool
              ) -> tuple[int, str]:
    import mdm_sched.models as models

    if before_work:
        def refuse(*a: object, **k: object) -> None:
            raise AssertionError("the model was loaded before the input was checked")

        monkeypatch.setattr(models, "load_masked_lm", refuse)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            rc = cli.main(argv)
        except SystemExit as exc:  # argparse's own errors
            rc = exc.code
    return rc, capsys.readouterr().err


_N_CLI = 44


@pytest.mark.parametrize("index", range(_N_CLI))
def test_cli_bad_input_gives_one_line_naming_the_flag(index, bert_dir, tmp_path, monkeypatch, capsys):
    cases = _cli_cases(bert_dir, tmp_path)
    assert len(cases) == _N_CLI
    name, argv, pattern, before_work = cases[index]
    rc, err = _run_main(argv, monkeypatch, capsys, before_work)
    assert rc == 2, (name, err)
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"mdm-sched {argv[0]}: error:"), (name, err)
    assert "Traceback" not in err
    import re

    assert re.search(pattern, last), (name, last)


def test_the_tables_hold_at_least_fifty_bad_inputs(bert_dir, tmp_path):
    assert len(API_CASES) + len(_cli_cases(bert_dir, tmp_path)) >= 50


def test_cli_num_samples_with_prompt_gives_that_many_samples(bert_dir, capsys):
    rc = cli.main(["generate", "--model", str(bert_dir), "--gen-length", "3", "--num-samples", "3", "--prompt", "A C D"])
    assert rc == 0
    assert len([ln for ln in capsys.readouterr().out.splitlines() if ln.strip()]) == 3


def test_cli_allow_unk_accepts_the_prompt(bert_dir, capsys):
    with pytest.warns(UserWarning, match="cannot encode"):
        rc = cli.main(["generate", "--model", str(bert_dir), "--gen-length", "3", "--prompt", "A C ! D", "--allow-unk"])
    assert rc == 0


def test_cli_help_calls_the_checkpoint_an_npz(capsys):
    with pytest.raises(SystemExit):
        cli.main(["profile", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    entry = text[text.rfind("--checkpoint FILE.npz"):][:200]
    assert ".npz" in entry and "JSON" not in entry


@pytest.mark.slow
@pytest.mark.parametrize("argv, pattern", [
    (["generate", "--model", "/no/such/model", "--gen-length", "4"], "--model /no/such/model does not exist"),
    (["schedule", "--profile", "/no/such/p.json", "--steps", "4"], "--profile /no/such/p.json"),
])
def test_cli_subprocess_prints_one_line_and_exits_2(argv, pattern):
    res = subprocess.run([sys.executable, "-m", "mdm_sched.cli", *argv], capture_output=True, text=True, timeout=120,
                         cwd=str(ROOT), env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and pattern in lines[0] and lines[0].startswith(f"mdm-sched {argv[0]}: error:")


# --------------------------------------------------------------------------------------------------
# numerical edges: a valid token or a clear error, never the mask or a special token
# --------------------------------------------------------------------------------------------------

def _samplable(mlm: ms.MaskedLM, out: ms.GenerationOutput) -> None:
    g = out.generated
    assert bool(((g >= 0) & (g < mlm.vocab_size)).all())
    assert not bool(mlm.never_sampled("cpu")[g].any()), g


@pytest.mark.parametrize("settings", [
    dict(temperature=1e-40), dict(temperature=1e39), dict(temperature=1e-40, order="confidence"),
    dict(temperature=1e39, order="entropy"), dict(top_k=1, top_p=1e-9), dict(top_k=10_000, top_p=0.5),
    dict(temperature=1e-30, top_p=0.999999), dict(temperature=5.0, top_k=2, order="margin"),
])
@pytest.mark.parametrize("bend", ["", "half"])
def test_extreme_sampling_settings_give_samplable_tokens(settings, bend):
    model = Toy(bend)
    _samplable(ms.wrap(model), _gen(model, gen_length=8, schedule=4, num_samples=2, **settings))


def test_bert_never_samples_special_tokens_even_without_a_tokenizer(bert_dir):
    from transformers import BertForMaskedLM

    model = BertForMaskedLM.from_pretrained(str(bert_dir)).eval()
    with torch.no_grad():  # make the special tokens the most likely: any leak would show
        model.cls.predictions.decoder.bias[:len(SPECIAL)] += 50.0
    out = _gen(ms.wrap(model, mask_token_id=4), gen_length=8, schedule=4, num_samples=4)  # tokenizer found beside it
    assert not set(out.generated.flatten().tolist()) & set(range(len(SPECIAL)))


def test_string_prompt_with_unknown_characters_warns(bert):
    with pytest.warns(UserWarning, match="cannot encode"):
        _gen(bert, prompts=["A C ! D"], gen_length=2, schedule=2)


def test_numpy_integers_are_accepted_wherever_ints_are():
    model = Toy()
    out = _gen(model, gen_length=np.int64(6), schedule="constant", steps=np.int32(3), prompts=[[np.int64(1), 2]],
               stop_at_eos=np.int64(5), mask_token_id=np.int64(39), num_samples=np.int64(2))
    assert out.generated.shape == (2, 6)
    assert list(ms.schedules.constant(np.int64(8), np.int64(4)).sizes) == [2, 2, 2, 2]


# --------------------------------------------------------------------------------------------------
# identity of profiles and checkpoints: weights and dtype
# --------------------------------------------------------------------------------------------------

def _data() -> torch.Tensor:
    return torch.randint(0, 30, (8, 6), generator=torch.Generator().manual_seed(0))


def _profile(model: nn.Module, **kw: object) -> InformationProfile:
    return ms.estimate_profile(model, _data(), levels=3, batch_size=4, tokens_per_level=8, progress=False, **kw)


def _nudge(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        next(iter(model.parameters())).add_(0.01)
    return model


@pytest.mark.parametrize("change, pattern", [(_nudge, "another model.*weights"),
                                             (lambda m: m.to(torch.bfloat16), "another model.*dtype")])
def test_resume_with_other_weights_or_dtype_is_refused(change, pattern, tmp_path):
    ck = tmp_path / "ck.npz"
    _profile(Toy(seed=4), checkpoint=ck, checkpoint_every=1, max_batches=1)
    with pytest.raises(ValueError, match=pattern):
        _profile(change(Toy(seed=4)), checkpoint=ck, checkpoint_every=1, max_batches=1)
    assert _profile(Toy(seed=4), checkpoint=ck, checkpoint_every=1, max_batches=1) is not None  # same model resumes


def test_checkpoint_written_before_weights_were_recorded_still_resumes(tmp_path):
    ck = tmp_path / "ck.npz"
    first = _profile(Toy(seed=4), checkpoint=ck, checkpoint_every=1, max_batches=1)
    with np.load(ck, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    header = json.loads(str(arrays.pop("header")))
    for key in ("weights", "dtype"):
        header["fingerprint"].pop(key)
    np.savez(ck, header=np.array(json.dumps(header)), **arrays)
    again = _profile(Toy(seed=4), checkpoint=ck, checkpoint_every=1, max_batches=1)
    assert np.array_equal(first.ce, again.ce)


def test_profile_check_notices_other_weights_and_dtype():
    prof = _profile(Toy(seed=4))
    prof.check(Toy(seed=4), strict=True)  # the same model passes
    with pytest.raises(ValueError, match="other weights"):
        prof.check(_nudge(Toy(seed=4)), strict=True)
    with pytest.raises(ValueError, match="bfloat16"):
        prof.check(Toy(seed=4).to(torch.bfloat16), strict=True)
    old = InformationProfile.from_dict({**prof.to_dict(), "metadata": {k: v for k, v in prof.metadata.items()
                                                                      if k not in ("weights", "dtype")}})
    old.check(_nudge(Toy(seed=4)), strict=True)  # profiles from before the fingerprint load and pass


# --------------------------------------------------------------------------------------------------
# k-mer spectra counted sparsely
# --------------------------------------------------------------------------------------------------

def _dense_js(a: torch.Tensor, b: torch.Tensor, k: int, d: int) -> float:
    from mdm_sched.metrics import _js_bits

    def counts(x: torch.Tensor) -> torch.Tensor:
        c = torch.zeros(d ** k, dtype=torch.float64)
        for row in x.tolist():
            for i in range(len(row) - k + 1):
                code = 0
                for t in row[i:i + k]:
                    code = code * d + t
                c[code] += 1
        return c

    return float(_js_bits(counts(a), counts(b)))


@pytest.mark.parametrize("k", [1, 2, 3])
def test_kmer_js_equals_the_dense_count(k):
    g = torch.Generator().manual_seed(k)
    a, b = torch.randint(0, 5, (12, 9), generator=g), torch.randint(0, 5, (15, 9), generator=g)
    js, se = ms.metrics.kmer_js(a, b, k, vocab=range(5), n_boot=30, generator=g)
    assert js == pytest.approx(_dense_js(a, b, k, 5), abs=1e-12)
    assert se > 0


def test_kmer_js_with_a_vocabulary_of_thousands():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randint(0, 5000, (32, 30), generator=g), torch.randint(0, 5000, (32, 30), generator=g)
    js, se = ms.metrics.kmer_js(a, b, 3, n_boot=10, generator=g)  # dense would be [32, 5000^3]
    assert 0.9 < js <= 1.0 + 1e-9 and se >= 0
    same, _ = ms.metrics.kmer_js(a, a, 3, n_boot=0)
    assert same == pytest.approx(0.0, abs=1e-12)


# --------------------------------------------------------------------------------------------------
# saves: temporary files of killed writes are cleaned by the next write
# --------------------------------------------------------------------------------------------------

def test_stale_temporary_of_a_dead_process_is_removed_by_the_next_write(tmp_path):
    from mdm_sched._io import atomic_write_text

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".x.json.{dead.pid}.abcd.tmp"
    stale.write_text("half")
    other = tmp_path / f".y.json.{dead.pid}.abcd.tmp"  # another file's: not ours to touch
    other.write_text("half")
    atomic_write_text(tmp_path / "x.json", "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["x.json", other.name])


@pytest.mark.slow
def test_sigkill_during_a_save_leaves_nothing_after_the_next_write(tmp_path):
    from mdm_sched._io import atomic_write_bytes

    target = tmp_path / "big.json"
    code = f"""
        import os, time
        import mdm_sched._io as io_
        def slow(a, b):
            print("READY", flush=True); time.sleep(60)
        io_.os.replace = slow
        io_.atomic_write_bytes({str(target)!r}, b"x" * 1000)
        """
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE, text=True,
                            cwd=str(ROOT), env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.stdout is not None and "READY" in proc.stdout.readline()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert any(p.name.endswith(".tmp") for p in tmp_path.iterdir())  # the kill left its temporary file
    time.sleep(0.1)
    atomic_write_bytes(target, b"y")
    assert [p.name for p in tmp_path.iterdir()] == ["big.json"]
