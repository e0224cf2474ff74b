"""Probe mdm_sched with bad and edge inputs, as a careless user would, and tally what happens.

Each probe is one input (API or CLI) with what a good library does with it: refuse it with an error whose
message names the argument or flag (``error`` probes), or handle it correctly (``valid`` probes: a valid edge
input such as ``temperature=1e-40``). Every outcome falls in one class:

* ``clear``: the expected error type (ValueError / TypeError / FileNotFoundError; for the CLI exit code 2 with
  one ``mdm-sched <cmd>: error:`` line) whose message names the argument (or the valid input handled right);
* ``obscure``: an error, but another type (IndexError, KeyError, AttributeError, RuntimeError ...) or a message
  that does not name what to change, or an error that comes only after the work;
* ``silent``: no error where one was due, or a wrong result;
* ``crash``: a traceback out of the CLI, a hang (timeout) or a dead process.

Run from a checkout's root (the package under test is the one on ``PYTHONPATH``)::

    PYTHONPATH=$PWD HF_HUB_OFFLINE=1 python eval/probe_reliability.py [--verbose] [--only SUBSTRING]

It prints one line per probe and the tally per group (the issue's bullets and extra probes).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import torch
from torch import nn

torch.set_num_threads(2)
CLEAR_TYPES = (ValueError, TypeError, FileNotFoundError)
import mdm_sched as _ms  # noqa: E402

ROOT = Path(_ms.__file__).resolve().parents[1]  # the checkout under test (subprocesses run there)


# --------------------------------------------------------------------------------------------------
# tiny models and files
# --------------------------------------------------------------------------------------------------

class Tiny(nn.Module):
    """vocab 40, mask 39; ``shape`` bends what forward returns (short, narrow, wide batch, half precision)."""

    def __init__(self, vocab: int = 40, bend: str = "", dtype: torch.dtype = torch.float32, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.emb = nn.Embedding(vocab, 16)
        self.head = nn.Linear(16, vocab)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
        self.to(dtype)
        self.bend = bend
        self.config = SimpleNamespace(vocab_size=vocab, mask_token_id=vocab - 1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> SimpleNamespace:
        logits = self.head(self.emb(input_ids))
        if self.bend == "short":
            logits = logits[:, :-1]
        elif self.bend == "narrow":
            logits = logits[..., :30]
        elif self.bend == "batch":
            logits = torch.cat([logits, logits], 0)
        elif self.bend == "half":
            logits = logits.half()
        elif self.bend == "bf16":
            logits = logits.bfloat16() * 50
        return SimpleNamespace(logits=logits)


_CACHE: dict[str, object] = {}


def tiny_bert_dir() -> Path:
    """A tiny BERT with a letters tokenizer saved as an HF directory (loads in well under a second)."""
    if "bert_dir" in _CACHE:
        return _CACHE["bert_dir"]  # type: ignore[return-value]
    from transformers import BertConfig, BertForMaskedLM, BertTokenizer

    d = Path(tempfile.mkdtemp(prefix="probe_bert_"))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"ACDEFGHIKLMNPQRSTVWY"]
    (d / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizer(str(d / "vocab.txt"), do_lower_case=False)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=64, pad_token_id=0)
    model = BertForMaskedLM(cfg).eval()
    model.save_pretrained(d)
    tok.save_pretrained(d)
    _CACHE["bert_dir"] = d
    return d


def tiny_bert():
    import mdm_sched as ms

    if "bert" not in _CACHE:
        _CACHE["bert"] = ms.load_masked_lm(str(tiny_bert_dir()))
    return _CACHE["bert"]


def sapiens():
    import mdm_sched as ms

    if "sapiens" not in _CACHE:
        _CACHE["sapiens"] = ms.load_masked_lm("sapiens-vh")
    return _CACHE["sapiens"]


def tmpdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="probe_"))


def profile_file(**changes: object) -> Path:
    """A valid saved profile with some fields changed (``None`` deletes the field)."""
    from mdm_sched.profile import InformationProfile

    p = InformationProfile([0, 4, 8], [2.0, 1.5, 1.0], [0.1, 0.1, 0.1], n_tokens=10, metadata={"model": "x"})
    return _edited_json(p.to_dict(), changes, "prof.json")


def schedule_file(**changes: object) -> Path:
    from mdm_sched.schedules import Schedule

    return _edited_json(Schedule([4, 3, 3], name="x").to_dict(), changes, "sched.json")


def _edited_json(data: dict, changes: dict, name: str) -> Path:
    """``data`` with ``changes`` applied (``None`` removes the key), written to a fresh temporary file."""
    for k, v in changes.items():
        if v is None:
            data.pop(k, None)
        else:
            data[k] = v
    path = tmpdir() / name
    path.write_text(json.dumps(data))
    return path


def unwritable_dir() -> Path:
    if os.geteuid() == 0:  # root writes anywhere a mode allows nothing: use a folder no one can create files in
        return Path("/sys")
    d = tmpdir() / "ro"
    d.mkdir()
    d.chmod(0o500)
    return d


# --------------------------------------------------------------------------------------------------
# outcomes
# --------------------------------------------------------------------------------------------------

@dataclass
class Probe:
    group: str
    name: str
    run: Callable[[], tuple[str, str]]


def _names(msg: str, keys: tuple[str, ...]) -> bool:
    low = msg.lower()
    return any(k.lower() in low for k in keys)


def expect_error(fn: Callable[[], object], *keys: str, types: tuple[type, ...] = CLEAR_TYPES) -> tuple[str, str]:
    """An input that must be refused with one of ``types`` whose message names one of ``keys``."""
    try:
        with warnings_off():
            fn()
    except types as exc:
        msg = f"{type(exc).__name__}: {exc}"
        return ("clear" if _names(str(exc), keys) else "obscure"), msg
    except Exception as exc:
        return "obscure", f"{type(exc).__name__}: {exc}"
    return "silent", "no error"


def expect_ok(fn: Callable[[], object], check: Callable[[object], str | None]) -> tuple[str, str]:
    """A valid edge input: must run and ``check(result)`` return None (else the problem, a silent wrong answer).
    A clear refusal (ValueError naming the problem) also counts as clear."""
    try:
        with warnings_off():
            out = fn()
    except CLEAR_TYPES as exc:
        return "clear", f"refused: {type(exc).__name__}: {exc}"
    except Exception as exc:
        return "obscure", f"{type(exc).__name__}: {exc}"
    problem = check(out)
    return ("silent", problem) if problem else ("clear", "handled")


@contextlib.contextmanager
def warnings_off():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


class _Loaded(Exception):
    pass


def cli(argv: list[str], *keys: str, before_work: bool = True, expect_rc: int = 2) -> tuple[str, str]:
    """``mdm-sched ARGV`` in-process: exit code 2 and one error line naming ``keys``; with ``before_work`` the
    error must come before any model is loaded (loading is replaced by a sentinel that counts as the work)."""
    import mdm_sched
    import mdm_sched.models as models
    from mdm_sched import cli as cli_mod

    loaded = []
    real = models.load_masked_lm

    def sentinel(*a: object, **k: object) -> object:
        loaded.append(a)
        if before_work:
            raise _Loaded()
        return real(*a, **k)

    err, out = io.StringIO(), io.StringIO()
    saved = (models.load_masked_lm, mdm_sched.load_masked_lm)
    models.load_masked_lm = mdm_sched.load_masked_lm = sentinel
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out), warnings_off():
            try:
                rc = cli_mod.main(argv)
            except SystemExit as exc:
                rc = exc.code if isinstance(exc.code, int) else 1 if exc.code else 0
                if isinstance(exc.code, str):
                    err.write(exc.code)
    except _Loaded:
        return "obscure", "no error before the model was loaded (the work started)"
    except Exception as exc:
        return "crash", f"traceback: {type(exc).__name__}: {exc}".splitlines()[0][:200]
    finally:
        models.load_masked_lm, mdm_sched.load_masked_lm = saved
    text = err.getvalue().strip()
    last = text.splitlines()[-1] if text else ""
    if rc == 0:
        return "silent", f"exit 0; stderr: {last[:160]}"
    if "Traceback" in text:
        return "crash", last[:200]
    if rc != expect_rc:
        return "obscure", f"exit {rc}: {last[:200]}"
    return ("clear" if _names(text, keys) else "obscure"), last[:220]


def sub(code: str, timeout: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess | None:
    """Run ``code`` in a fresh interpreter (None on timeout: a hang)."""
    full = dict(os.environ, **(env or {}))
    try:
        return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                              timeout=timeout, env=full, cwd=str(ROOT))
    except subprocess.TimeoutExpired:
        return None


# --------------------------------------------------------------------------------------------------
# probes: the bullets
# --------------------------------------------------------------------------------------------------

def gen(model: object, **kw: object) -> object:
    import mdm_sched as ms

    kw.setdefault("gen_length", 6)
    kw.setdefault("schedule", 3)
    gen_ = kw.pop("generator", torch.Generator().manual_seed(0))
    return ms.generate(model, generator=gen_, **kw)


def valid_tokens(mlm_of: Callable[[], object]) -> Callable[[object], str | None]:
    """A check: every generated token is samplable (never the mask, pad or a suppressed special token)."""
    def check(out: object) -> str | None:
        from mdm_sched.models import wrap

        mlm = wrap(mlm_of())
        never = mlm.never_sampled("cpu")
        g = out.generated.cpu()
        if (g < 0).any() or (g >= never.numel()).any():
            return f"token outside the vocabulary: {g.tolist()}"
        bad = never[g]
        if bool(bad.any()):
            return f"sampled never-sampled ids {sorted(set(g[bad].tolist()))}"
        return None
    return check


def ids_probes() -> list[Probe]:
    t = Tiny()
    P = "prompt/stop/mask ids"
    return [
        Probe(P, "prompt id beyond the vocabulary (list)",
              lambda: expect_error(lambda: gen(t, prompts=[[1, 2, 45]]), "prompts", "vocab")),
        Probe(P, "negative prompt id (list)", lambda: expect_error(lambda: gen(t, prompts=[[1, -3, 2]]), "prompts")),
        Probe(P, "prompt id beyond the vocabulary (tensor)",
              lambda: expect_error(lambda: gen(t, prompts=torch.tensor([[1, 2, 400]])), "prompts")),
        Probe(P, "estimate_profile: data id beyond the vocabulary",
              lambda: expect_error(lambda: __import__("mdm_sched").estimate_profile(
                  t, torch.tensor([[1, 2, 99, 3]] * 4), levels=2, progress=False), "vocab")),
        Probe(P, "stop_at_eos beyond the vocabulary", lambda: expect_error(lambda: gen(t, stop_at_eos=1000), "stop_at_eos")),
        Probe(P, "stop_at_eos negative", lambda: expect_error(lambda: gen(t, stop_at_eos=-2), "stop_at_eos")),
        Probe(P, "stop_at_eos list with an id beyond the vocabulary",
              lambda: expect_error(lambda: gen(t, stop_at_eos=[3, 77]), "stop_at_eos")),
        Probe(P, "generator=123", lambda: expect_error(lambda: gen(t, generator=123), "generator")),
        Probe(P, "generator list of the wrong length",
              lambda: expect_error(lambda: gen(Tiny(), num_samples=3, generator=[torch.Generator()] * 2), "generator")),
        Probe(P, "mask_token_id beyond the vocabulary",
              lambda: expect_error(lambda: gen(Tiny(vocab=40, seed=1), mask_token_id=1000), "mask_token_id")),
        Probe(P, "mask_token_id contradicting the tokenizer's",
              lambda: expect_error(lambda: __import__("mdm_sched").wrap(tiny_bert().model, tokenizer=tiny_bert().tokenizer,
                                                                        mask_token_id=7), "mask_token_id")),
        Probe(P, "float mask_token_id=39.0",
              lambda: expect_error(lambda: gen(Tiny(seed=2), mask_token_id=39.0), "mask_token_id")),
        Probe(P, "np.int64 mask_token_id",
              lambda: expect_ok(lambda: gen(Tiny(seed=3), mask_token_id=np.int64(39)), valid_tokens(lambda: Tiny(seed=3)))),
        Probe(P, "np.int64 gen_length / steps / prompt ids", lambda: expect_ok(
            lambda: gen(t, gen_length=np.int64(6), schedule="constant", steps=np.int64(3),
                        prompts=[[np.int64(1), np.int64(2)]]), valid_tokens(lambda: t))),
        Probe(P, "np.int64 schedule builders",
              lambda: expect_ok(lambda: __import__("mdm_sched").schedules.constant(np.int64(8), np.int64(4)),
                                lambda s: None if list(s.sizes) == [2, 2, 2, 2] else f"sizes {s.sizes}")),
        Probe(P, "np.int64 stop_at_eos", lambda: expect_ok(lambda: gen(t, stop_at_eos=np.int64(5)), valid_tokens(lambda: t))),
        Probe(P, "CLS inside a prompt (bert family)",
              lambda: expect_error(lambda: gen(tiny_bert(), prompts=[[2, 8, 9]]), "prompts")),
        Probe(P, "PAD inside a prompt (bert family)",
              lambda: expect_error(lambda: gen(tiny_bert(), prompts=[[8, 0, 9]]), "prompts")),
        Probe(P, "SEP inside a prompt (bert family)",
              lambda: expect_error(lambda: gen(tiny_bert(), prompts=[[8, 9, 3]]), "prompts")),
    ]


def model_output_probes() -> list[Probe]:
    P = "model output"
    return [
        Probe(P, "logits one position short", lambda: expect_error(lambda: gen(Tiny(bend="short")), "Tiny", "shape")),
        Probe(P, "logits narrower than the vocabulary",
              lambda: expect_error(lambda: gen(Tiny(bend="narrow"), mask_token_id=39), "Tiny", "vocab")),
        Probe(P, "logits with another batch size", lambda: expect_error(lambda: gen(Tiny(bend="batch")), "Tiny", "batch")),
        Probe(P, "logits narrower than the vocabulary (estimate_profile)", lambda: expect_error(
            lambda: __import__("mdm_sched").estimate_profile(Tiny(bend="narrow"), torch.randint(0, 20, (4, 6)),
                                                             levels=2, progress=False), "Tiny", "vocab")),
    ]


def file_probes() -> list[Probe]:
    from mdm_sched.profile import InformationProfile
    from mdm_sched.schedules import Schedule

    P = "saved files"
    lp = InformationProfile.load
    ls = Schedule.load
    return [
        Probe(P, "profile with negative CE", lambda: expect_error(lambda: lp(profile_file(ce=[2.0, -1.0, 0.5])),
                                                                  "prof.json")),
        Probe(P, "profile with CE null (NaN)", lambda: expect_error(lambda: lp(profile_file(ce=[2.0, None, 0.5])),
                                                                    "prof.json")),
        Probe(P, "profile with version '1' (string)", lambda: expect_error(lambda: lp(profile_file(version="1")),
                                                                           "prof.json")),
        Probe(P, "profile without levels", lambda: expect_error(lambda: lp(profile_file(levels=None)), "prof.json")),
        Probe(P, "profile with metadata a list", lambda: expect_error(lambda: lp(profile_file(metadata=[1, 2])),
                                                                      "prof.json")),
        Probe(P, "profile with levels beyond n_tokens", lambda: expect_error(lambda: lp(profile_file(levels=[0, 4, 12])),
                                                                             "prof.json")),
        Probe(P, "profile with ce a string", lambda: expect_error(lambda: lp(profile_file(ce="abc")), "prof.json")),
        Probe(P, "profile with tokens negative", lambda: expect_error(lambda: lp(profile_file(tokens=[-1, 5, 5])),
                                                                      "prof.json")),
        Probe(P, "schedule without sizes", lambda: expect_error(lambda: ls(schedule_file(sizes=None)), "sched.json")),
        Probe(P, "schedule with a zero size", lambda: expect_error(lambda: ls(schedule_file(sizes=[4, 0, 6])), "sched.json")),
        Probe(P, "schedule with a fractional size", lambda: expect_error(lambda: ls(schedule_file(sizes=[4, 2.5, 3.5])),
                                                                         "sched.json")),
        Probe(P, "schedule with sizes a string", lambda: expect_error(lambda: ls(schedule_file(sizes="abc")), "sched.json")),
        Probe(P, "schedule with metadata a list", lambda: expect_error(lambda: ls(schedule_file(metadata=[1])),
                                                                       "sched.json")),
        Probe(P, "schedule with version '1'", lambda: expect_error(lambda: ls(schedule_file(version="1")), "sched.json")),
        Probe(P, "generation config with gen_length '8'", lambda: expect_error(_bad_config_file, "gen_length")),
        Probe(P, "profile.json folder through from_pretrained: negative CE", lambda: expect_error(
            lambda: InformationProfile.from_pretrained(str(profile_file(ce=[-2.0, -1.0, -3.0]))), "prof.json")),
    ]


def _bad_config_file() -> object:
    from mdm_sched.config import MaskedGenerationConfig

    d = tmpdir()
    data = MaskedGenerationConfig(gen_length=8, schedule=4).to_dict()
    data["gen_length"] = "8"
    (d / "mdm_generation_config.json").write_text(json.dumps(data))
    return MaskedGenerationConfig.from_pretrained(str(d)).validated()


def numeric_probes() -> list[Probe]:
    P = "numerical edges"
    t = Tiny()
    ok = valid_tokens(lambda: t)
    return [
        Probe(P, "temperature=1e-40", lambda: expect_ok(lambda: gen(t, temperature=1e-40), ok)),
        Probe(P, "temperature=1e39", lambda: expect_ok(lambda: gen(t, temperature=1e39), ok)),
        Probe(P, "temperature=1e-40, order=confidence", lambda: expect_ok(lambda: gen(t, temperature=1e-40,
                                                                                     order="confidence"), ok)),
        Probe(P, "temperature=1e39, order=entropy", lambda: expect_ok(lambda: gen(t, temperature=1e39, order="entropy"), ok)),
        Probe(P, "top_k=1 with top_p=1e-9", lambda: expect_ok(lambda: gen(t, top_k=1, top_p=1e-9), ok)),
        Probe(P, "top_k beyond the vocabulary with top_p=0.5", lambda: expect_ok(lambda: gen(t, top_k=10_000, top_p=0.5), ok)),
        Probe(P, "half-precision logits", lambda: expect_ok(lambda: gen(Tiny(bend="half"), temperature=1e-30),
                                                             valid_tokens(lambda: Tiny(bend="half")))),
        Probe(P, "bf16 logits, huge temperature, top_p", lambda: expect_ok(
            lambda: gen(Tiny(bend="bf16"), temperature=1e30, top_p=0.9), valid_tokens(lambda: Tiny(bend="bf16")))),
        Probe(P, "BERT wrapped without a tokenizer never samples specials", _bert_without_tokenizer),
        Probe(P, "per-row generators: a row is independent of the batch", _batch_invariance),
    ]


def _bert_without_tokenizer() -> tuple[str, str]:
    from transformers import BertForMaskedLM

    import mdm_sched as ms

    path = tiny_bert_dir()
    model = BertForMaskedLM.from_pretrained(str(path)).eval()
    with torch.no_grad():  # make the special tokens the most likely ones, so any leak shows
        model.cls.predictions.decoder.bias[:5] += 50.0
    specials = {0, 1, 2, 3, 4}  # [PAD] [UNK] [CLS] [SEP] [MASK]

    def check(out: object) -> str | None:
        found = specials & set(out.generated.flatten().tolist())
        return f"sampled special ids {sorted(found)}" if found else None

    return expect_ok(lambda: gen(ms.wrap(model, mask_token_id=4), gen_length=8, schedule=4, num_samples=4), check)


def _batch_invariance() -> tuple[str, str]:
    t = Tiny()

    def run() -> object:
        one = gen(t, gen_length=8, schedule=4, generator=[torch.Generator().manual_seed(5)])
        three = gen(t, gen_length=8, schedule=4, num_samples=3,
                    generator=[torch.Generator().manual_seed(s) for s in (1, 5, 9)])
        return one, three

    return expect_ok(run, lambda r: None if torch.equal(r[0].generated[0], r[1].generated[1]) else "rows differ")


def identity_probes() -> list[Probe]:
    P = "identity, saves, harness"
    return [
        Probe(P, "resume a float32 checkpoint with a bf16 model", lambda: _resume(lambda m: m.to(torch.bfloat16))),
        Probe(P, "resume a checkpoint with other weights (same architecture)", lambda: _resume(_perturb)),
        Probe(P, "profile.check(strict=True) with other weights", _check_other_weights),
        Probe(P, "profile.check(strict=True) with the same model passes", _check_same_weights),
        Probe(P, "stray WORLD_SIZE=2: estimate_profile", _stray_world_size),
        Probe(P, "kmer_js with a vocabulary of 5000 (k=3)", _kmer_large_vocab),
        Probe(P, "kmer_js sparse equals dense on a small vocabulary", _kmer_small),
        Probe(P, "SIGKILL during a save: hidden temp files", _sigkill_save),
        Probe(P, "run_eval with a model object", _run_eval_object),
        Probe(P, "recipes/train_text_mdm.py loads with weights_only=True", _recipe_weights_only),
    ]


def _perturb(m: nn.Module) -> nn.Module:
    with torch.no_grad():
        next(iter(m.parameters())).add_(0.01)
    return m


def _resume(change: Callable[[nn.Module], nn.Module]) -> tuple[str, str]:
    import mdm_sched as ms

    data = torch.randint(0, 30, (8, 6), generator=torch.Generator().manual_seed(0))
    ck = tmpdir() / "ck.npz"
    with warnings_off():
        ms.estimate_profile(Tiny(seed=4), data, levels=3, batch_size=4, tokens_per_level=8, checkpoint=ck,
                            checkpoint_every=1, max_batches=1, progress=False)
    other = change(Tiny(seed=4))
    return expect_error(lambda: ms.estimate_profile(other, data, levels=3, batch_size=4, tokens_per_level=8,
                                                    checkpoint=ck, checkpoint_every=1, max_batches=1, progress=False),
                        "checkpoint")


def _profile_of(model: nn.Module) -> object:
    import mdm_sched as ms

    data = torch.randint(0, 30, (8, 6), generator=torch.Generator().manual_seed(0))
    with warnings_off():
        return ms.estimate_profile(model, data, levels=3, batch_size=4, tokens_per_level=8, progress=False)


def _check_other_weights() -> tuple[str, str]:
    prof = _profile_of(Tiny(seed=4))
    return expect_error(lambda: prof.check(_perturb(Tiny(seed=4)), strict=True), "weights", "fingerprint", "hash")


def _check_same_weights() -> tuple[str, str]:
    prof = _profile_of(Tiny(seed=4))
    return expect_ok(lambda: prof.check(Tiny(seed=4), strict=True), lambda _: None)


def _stray_world_size() -> tuple[str, str]:
    res = sub("""
        import torch, mdm_sched as ms
        from types import SimpleNamespace
        class T(torch.nn.Module):
            def __init__(self):
                super().__init__(); self.e = torch.nn.Embedding(10, 10)
                self.config = SimpleNamespace(vocab_size=10, mask_token_id=9)
            def forward(self, input_ids, attention_mask=None):
                return SimpleNamespace(logits=self.e(input_ids))
        try:
            ms.estimate_profile(T(), torch.randint(0, 8, (4, 5)), levels=2, progress=False)
        except ValueError as exc:
            print("VALUEERROR", exc)
        """, timeout=90, env={"WORLD_SIZE": "2"})
    if res is None:
        return "crash", "hung (timeout 90 s)"
    if "VALUEERROR" in res.stdout:
        return ("clear" if "WORLD_SIZE" in res.stdout else "obscure"), res.stdout.strip()[:200]
    if res.returncode != 0:
        return "obscure", (res.stderr.strip().splitlines() or ["?"])[-1][:200]
    return "silent", "ran as one process without a word"


def _kmer_large_vocab() -> tuple[str, str]:
    res = sub("""
        import resource, torch
        resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))
        from mdm_sched.metrics import kmer_js
        g = torch.Generator().manual_seed(0)
        s = torch.randint(0, 5000, (64, 40), generator=g); r = torch.randint(0, 5000, (64, 40), generator=g)
        js, se = kmer_js(s, r, 3, n_boot=20, generator=g)
        print("JS", js, se)
        """, timeout=180)
    if res is None:
        return "crash", "hung (timeout)"
    if res.returncode == 0 and "JS" in res.stdout:
        js = float(res.stdout.split()[1])
        return ("clear", f"JS {js:.3f}") if 0 <= js <= 1 + 1e-9 else ("silent", f"JS {js}")
    last = (res.stderr.strip().splitlines() or ["killed"])[-1]
    return ("crash" if res.returncode < 0 else "obscure"), last[:200]


def _kmer_small() -> tuple[str, str]:
    from mdm_sched.metrics import _js_bits, kmer_js

    g = torch.Generator().manual_seed(0)
    s, r = torch.randint(0, 4, (16, 10), generator=g), torch.randint(0, 4, (16, 10), generator=g)

    def dense(x: torch.Tensor, k: int) -> torch.Tensor:
        counts = torch.zeros(4 ** k, dtype=torch.float64)
        for row in x.tolist():
            for i in range(len(row) - k + 1):
                code = 0
                for t in row[i:i + k]:
                    code = code * 4 + t
                counts[code] += 1
        return counts

    def run() -> object:
        return kmer_js(s, r, 3, n_boot=0)[0], float(_js_bits(dense(s, 3), dense(r, 3)))

    return expect_ok(run, lambda v: None if abs(v[0] - v[1]) < 1e-12 else f"{v[0]} != {v[1]}")


def _sigkill_save() -> tuple[str, str]:
    d = tmpdir()
    target = d / "big.json"
    code = f"""
        import os, time
        import mdm_sched._io as io_
        real = os.replace
        def slow(a, b):
            print("READY", flush=True); time.sleep(30); real(a, b)
        io_.os.replace = slow
        io_.atomic_write_bytes({str(target)!r}, b"x" * 1000)
        """
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE, text=True,
                            cwd=str(ROOT))
    assert proc.stdout is not None
    deadline = time.time() + 60
    while time.time() < deadline and "READY" not in (proc.stdout.readline() or ""):
        pass
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    from mdm_sched._io import atomic_write_bytes

    atomic_write_bytes(target, b"y")  # the next write
    left = sorted(p.name for p in d.iterdir() if p.name != target.name)
    return ("silent", f"left behind after the next write: {left}") if left else ("clear", "no temp files left")


def _run_eval_object() -> tuple[str, str]:
    from mdm_sched.harness import run_eval
    from mdm_sched.results import EvalConfig

    cfg = EvalConfig(model=Tiny(), judge=None)  # type: ignore[arg-type]
    return expect_error(lambda: run_eval(cfg, tmpdir()), "model")


def _recipe_weights_only() -> tuple[str, str]:
    text = (ROOT / "recipes" / "train_text_mdm.py").read_text()
    if "weights_only=False" in text:
        return "silent", "torch.load(..., weights_only=False)"
    return "clear", "weights_only=True"


# --------------------------------------------------------------------------------------------------
# the command line
# --------------------------------------------------------------------------------------------------

def cli_probes() -> list[Probe]:
    P = "CLI"
    bert = lambda: str(tiny_bert_dir())
    ro = lambda: str(unwritable_dir())
    prof = lambda: str(profile_file())
    data = lambda: _data_file("AC DE FG HI KL".replace(" ", "\n"))
    return [
        Probe(P, "generate --model /nonexistent", lambda: cli(["generate", "--model", "/no/such/model", "--gen-length", "4"],
                                                              "does not exist", "--model", before_work=False)),
        Probe(P, "generate --model unknown-hub-name", lambda: cli(["generate", "--model", "no-such-model-xyz",
                                                                   "--gen-length", "4"], "--model", "no-such-model-xyz",
                                                                  before_work=False)),
        Probe(P, "generate --schedule missing.json", lambda: cli(["generate", "--model", bert(), "--gen-length", "4",
                                                                  "--schedule", "/no/such/sched.json"], "does not exist")),
        Probe(P, "generate --profile missing", lambda: cli(["generate", "--model", bert(), "--gen-length", "4",
                                                            "--schedule", "optimal", "--profile", "/no/prof.json"],
                                                           "does not exist")),
        Probe(P, "generate --config missing", lambda: cli(["generate", "--model", bert(), "--config", "/no/such/cfg"],
                                                          "does not exist", "--config")),
        Probe(P, "generate --gen-length 0", lambda: cli(["generate", "--model", bert(), "--gen-length", "0"], "--gen-length")),
        Probe(P, "generate --steps 0", lambda: cli(["generate", "--model", bert(), "--gen-length", "4", "--steps", "0"],
                                                   "--steps")),
        Probe(P, "generate --num-samples 0", lambda: cli(["generate", "--model", bert(), "--gen-length", "4",
                                                          "--num-samples", "0"], "--num-samples")),
        Probe(P, "generate --top-p 0", lambda: cli(["generate", "--model", bert(), "--gen-length", "4", "--top-p", "0"],
                                                   "--top-p")),
        Probe(P, "generate --top-k 0", lambda: cli(["generate", "--model", bert(), "--gen-length", "4", "--top-k", "0"],
                                                   "--top-k")),
        Probe(P, "generate --temperature -1", lambda: cli(["generate", "--model", bert(), "--gen-length", "4",
                                                           "--temperature", "-1"], "--temperature")),
        Probe(P, "generate --block-length 0", lambda: cli(["generate", "--model", bert(), "--gen-length", "4",
                                                           "--block-length", "0"], "--block-length")),
        Probe(P, "generate --out in an unwritable folder", lambda: cli(["generate", "--model", bert(), "--gen-length", "4",
                                                                        "--out", ro() + "/s.jsonl"], "--out")),
        Probe(P, "generate --out in a missing folder", lambda: cli(["generate", "--model", bert(), "--gen-length", "4",
                                                                    "--out", str(tmpdir() / "no/such/dir/s.jsonl")], "--out")),
        Probe(P, "generate --device cuda on a CPU build", _cli_cuda),
        Probe(P, "generate --prompt with characters the tokenizer cannot encode",
              lambda: cli(["generate", "--model", bert(), "--gen-length", "4", "--prompt", "AC!!XZ"], "--prompt",
                          before_work=False)),
        Probe(P, "generate --num-samples 3 --prompt X: 3 samples", _cli_num_samples),
        Probe(P, "generate --stop-at-eos 999 (beyond the vocabulary)",
              lambda: cli(["generate", "--model", bert(), "--gen-length", "4", "--stop-at-eos", "999"],
                          "--stop-at-eos", before_work=False)),
        Probe(P, "profile --data missing file", lambda: cli(["profile", "--model", bert(), "--data", "/no/such/data.txt",
                                                             "--out", str(tmpdir() / "p.json")], "does not exist")),
        Probe(P, "profile --data corrupted file", lambda: cli(["profile", "--model", bert(), "--data", _corrupt_parquet(),
                                                               "--out", str(tmpdir() / "p.json"), "--no-progress"],
                                                              "--data", before_work=False)),
        Probe(P, "profile --model missing", lambda: cli(["profile", "--model", "/no/such/model", "--data", data(),
                                                         "--out", str(tmpdir() / "p.json")], "does not exist")),
        Probe(P, "profile --out in an unwritable folder", lambda: cli(["profile", "--model", bert(), "--data", data(),
                                                                       "--out", ro() + "/p.json"], "--out")),
        Probe(P, "profile --checkpoint in an unwritable folder",
              lambda: cli(["profile", "--model", bert(), "--data", data(), "--out", str(tmpdir() / "p.json"),
                           "--checkpoint", ro() + "/ck.npz"], "--checkpoint")),
        Probe(P, "profile --checkpoint in a missing folder (no implicit mkdir)",
              lambda: cli(["profile", "--model", bert(), "--data", data(), "--out", str(tmpdir() / "p.json"),
                           "--checkpoint", str(tmpdir() / "no/such/dir/ck.npz")], "--checkpoint")),
        Probe(P, "profile --batch-size 0", lambda: cli(["profile", "--model", bert(), "--data", data(),
                                                        "--out", str(tmpdir() / "p.json"), "--batch-size", "0"],
                                                       "--batch-size")),
        Probe(P, "profile --levels 0", lambda: cli(["profile", "--model", bert(), "--data", data(),
                                                    "--out", str(tmpdir() / "p.json"), "--levels", "0"], "--levels")),
        Probe(P, "profile --n-tokens 0", lambda: cli(["profile", "--model", bert(), "--data", data(),
                                                      "--out", str(tmpdir() / "p.json"), "--n-tokens", "0"], "--n-tokens")),
        Probe(P, "profile --help calls the checkpoint an .npz", _cli_help),
        Probe(P, "schedule --profile missing", lambda: cli(["schedule", "--profile", "/no/prof.json", "--steps", "4"],
                                                           "does not exist")),
        Probe(P, "schedule --n-tokens 0", lambda: cli(["schedule", "--profile", prof(), "--steps", "4", "--n-tokens", "0"],
                                                      "--n-tokens")),
        Probe(P, "schedule --steps 0", lambda: cli(["schedule", "--profile", prof(), "--steps", "0"], "--steps")),
        Probe(P, "schedule --profile with a wrong field type",
              lambda: cli(["schedule", "--profile", str(profile_file(version="1")), "--steps", "4"], "prof.json")),
        Probe(P, "schedule --profile without sizes-like field (no levels)",
              lambda: cli(["schedule", "--profile", str(profile_file(levels=None)), "--steps", "4"], "prof.json")),
        Probe(P, "schedule --out in an unwritable folder",
              lambda: cli(["schedule", "--profile", prof(), "--steps", "4", "--out", ro() + "/s.json"], "--out")),
        Probe(P, "schedule --out in a missing folder (no implicit mkdir)",
              lambda: cli(["schedule", "--profile", prof(), "--steps", "4", "--out", str(tmpdir() / "no/such/dir/s.json")],
                          "--out")),
        Probe(P, "subprocess: mdm-sched generate --model /nonexistent", _cli_subprocess),
    ]


def _data_file(text: str) -> str:
    path = tmpdir() / "data.txt"
    path.write_text(text + "\n")
    return str(path)


def _corrupt_parquet() -> str:
    path = tmpdir() / "data.parquet"
    path.write_bytes(b"PAR1 this is not a parquet file")
    return str(path)


def _cli_cuda() -> tuple[str, str]:
    if torch.cuda.is_available():
        return "clear", "skipped: this machine has CUDA"
    return cli(["generate", "--model", str(tiny_bert_dir()), "--gen-length", "4", "--device", "cuda"], "--device", "cuda",
               before_work=False)


def _cli_num_samples() -> tuple[str, str]:
    from mdm_sched import cli as cli_mod

    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()), warnings_off():
            rc = cli_mod.main(["generate", "--model", str(tiny_bert_dir()), "--gen-length", "4", "--num-samples", "3",
                               "--prompt", "A C D"])
    except SystemExit as exc:
        rc = exc.code
    except Exception as exc:
        return "crash", f"{type(exc).__name__}: {exc}"
    lines = [ln for ln in out.getvalue().splitlines() if ln.strip()]
    if rc != 0:
        return "clear", f"refused (exit {rc})"
    return ("clear", "3 samples") if len(lines) == 3 else ("silent", f"{len(lines)} samples printed")


def _cli_help() -> tuple[str, str]:
    from mdm_sched import cli as cli_mod

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        cli_mod.main(["profile", "--help"])
    text = " ".join(out.getvalue().split())
    start = max(text.rfind("--checkpoint CHECKPOINT"), text.rfind("--checkpoint FILE"))
    seg = text[start:start + 200] if start >= 0 else text
    if ".npz" in seg and "JSON" not in seg:
        return "clear", seg[:100]
    return "silent", seg[:160]


def _cli_subprocess() -> tuple[str, str]:
    res = subprocess.run([sys.executable, "-m", "mdm_sched.cli", "generate", "--model", "/no/such/model",
                          "--gen-length", "4"], capture_output=True, text=True, timeout=120, cwd=str(ROOT))
    if "Traceback" in res.stderr:
        return "crash", res.stderr.strip().splitlines()[-1][:200]
    if res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and "does not exist" in res.stderr:
        return "clear", res.stderr.strip()[:200]
    return "obscure", f"exit {res.returncode}: {res.stderr.strip()[-200:]}"


# --------------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------------

CLASSES = ("clear", "obscure", "silent", "crash")

#: The issue's "Why" bullets (issue 14), each with the probes that try it (exact probe names); the rest are extra.
BULLETS: dict[str, tuple[str, ...]] = {
    "W1 temperature 1e-40 / 1e39": ("temperature=1e-40", "temperature=1e39", "temperature=1e-40, order=confidence",
                                    "temperature=1e39, order=entropy"),
    "W2 prompt ids beyond vocab / negative": ("prompt id beyond the vocabulary (list)", "negative prompt id (list)",
                                              "prompt id beyond the vocabulary (tensor)"),
    "W3 stop_at_eos beyond vocab; generator=123": ("stop_at_eos beyond the vocabulary", "generator=123"),
    "W4 mask id beyond vocab / vs tokenizer": ("mask_token_id beyond the vocabulary",
                                               "mask_token_id contradicting the tokenizer's"),
    "W5 logits short / narrower than vocab": ("logits one position short", "logits narrower than the vocabulary"),
    "W6 pad/CLS/EOS ids inside a prompt": ("CLS inside a prompt (bert family)", "PAD inside a prompt (bert family)",
                                           "SEP inside a prompt (bert family)"),
    "W7 profile with negative CE": ("profile with negative CE",),
    "W8 CLI paths, 0-flags, out, unk, ckpt, help": (
        "generate --model /nonexistent", "generate --schedule missing.json", "generate --gen-length 0",
        "generate --out in an unwritable folder", "profile --out in an unwritable folder",
        "generate --prompt with characters the tokenizer cannot encode", "profile --checkpoint in an unwritable folder",
        "profile --help calls the checkpoint an .npz", "profile --checkpoint in a missing folder (no implicit mkdir)"),
    "W9 run_eval(model obj); k-mer dense": ("run_eval with a model object", "kmer_js with a vocabulary of 5000 (k=3)"),
    "W10 stray WORLD_SIZE>1": ("stray WORLD_SIZE=2: estimate_profile",),
    "W11 identity ignores weights/dtype": ("resume a float32 checkpoint with a bf16 model",
                                           "resume a checkpoint with other weights (same architecture)",
                                           "profile.check(strict=True) with other weights"),
    "W12 BERT w/o tokenizer samples specials": ("BERT wrapped without a tokenizer never samples specials",),
    "W13 JSON wrong field types": ("profile with version '1' (string)", "schedule without sizes",
                                   "profile with metadata a list", "schedule --profile with a wrong field type"),
    "W14 CLI 0-flags, num-samples, cuda, model": (
        "generate --steps 0", "schedule --n-tokens 0", "generate --num-samples 3 --prompt X: 3 samples",
        "generate --device cuda on a CPU build", "generate --model unknown-hub-name", "profile --data corrupted file"),
    "W15 np.int64; float mask id; SIGKILL tmp": ("np.int64 gen_length / steps / prompt ids", "float mask_token_id=39.0",
                                                 "SIGKILL during a save: hidden temp files"),
    "W16 recipe torch.load weights_only": ("recipes/train_text_mdm.py loads with weights_only=True",),
    "W17 batch dependence (documented)": ("per-row generators: a row is independent of the batch",),
}


def bullet_of(name: str) -> str:
    for bullet, names in BULLETS.items():
        if name in names:
            return bullet
    return "extra probes"


def print_table(title: str, rows: list[dict[str, str]], key: str) -> None:
    """One markdown table: per value of ``key``, probes tried and their outcome classes."""
    tally: dict[str, dict[str, int]] = {}
    for r in rows:
        tally.setdefault(r[key], dict.fromkeys(CLASSES, 0))[r["outcome"]] += 1
    width = max(len(title), *(len(k) for k in tally))
    print(f"| {title:{width}s} | tried | clear | obscure | silent | crash |")
    print(f"|{'-' * (width + 2)}|-------|-------|---------|--------|-------|")
    total = dict.fromkeys(CLASSES, 0)
    known = [*BULLETS, "extra probes"]
    ordered = sorted(tally, key=known.index) if all(k in known for k in tally) else list(tally)
    for group in ordered:
        t = tally[group]
        for c in CLASSES:
            total[c] += t[c]
        print(f"| {group:{width}s} | {sum(t.values()):5d} | {t['clear']:5d} | {t['obscure']:7d} | {t['silent']:6d} | "
              f"{t['crash']:5d} |")
    print(f"| {'total':{width}s} | {sum(total.values()):5d} | {total['clear']:5d} | {total['obscure']:7d} | "
          f"{total['silent']:6d} | {total['crash']:5d} |")


def all_probes() -> list[Probe]:
    return ids_probes() + model_output_probes() + file_probes() + numeric_probes() + identity_probes() + cli_probes()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--verbose", action="store_true", help="print each probe's message")
    ap.add_argument("--only", default=None, help="run only probes whose name contains this")
    ap.add_argument("--json", default=None, help="also write the outcomes here")
    args = ap.parse_args(argv)
    probes = [p for p in all_probes() if args.only is None or args.only in p.name]
    rows = []
    for p in probes:
        t0 = time.time()
        try:
            outcome, msg = p.run()
        except Exception as exc:
            outcome, msg = "crash", f"probe failed: {type(exc).__name__}: {exc}"
            if args.verbose:
                traceback.print_exc()
        rows.append({"group": p.group, "bullet": bullet_of(p.name), "probe": p.name, "outcome": outcome, "message": msg})
        line = f"{outcome:8s} {p.group:26s} {p.name}"
        print(line + (f"\n         -> {msg[:300]}" if args.verbose else "") + f"  ({time.time() - t0:.1f}s)", flush=True)
    print()
    print_table("issue bullet", rows, "bullet")
    print()
    print_table("group", rows, "group")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
