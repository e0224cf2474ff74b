"""mdm_sched.assets: offline pretrained models prepared from installed PyPI wheels."""
from __future__ import annotations

import json
import os

import pytest
import torch

from mdm_sched import assets, data

pytestmark = pytest.mark.skipif(not all(assets.available().values()),
                                reason="needs antiberty==0.1.3 and sapiens==1.0.5 (scripts/setup.sh)")


def masked_residue_accuracy(model, tok, seqs: list[str], separator: str, stride: int = 1) -> float:
    """Top-1 accuracy predicting a residue with only that residue masked (every ``stride``-th residue)."""
    correct = total = 0
    with torch.inference_mode():
        for s in seqs:
            ids = tok(separator.join(s), return_tensors="pt")["input_ids"][0]
            assert len(ids) == len(s) + 2 and tok.unk_token_id not in ids.tolist()
            pos = torch.arange(0, len(s), stride) + 1  # +1 skips the leading <s>/[CLS]
            rows = torch.arange(len(pos))
            batch = ids.repeat(len(pos), 1)
            batch[rows, pos] = tok.mask_token_id
            pred = model(input_ids=batch).logits[rows, pos].argmax(-1)
            correct += int((pred == ids[pos]).sum())
            total += len(pos)
    return correct / total


def test_builtin_names_and_available():
    assert set(assets.BUILTIN_MODELS) == {"antiberty", "sapiens-vh", "sapiens-vl"}
    assert assets.available() == {name: True for name in assets.BUILTIN_MODELS}


def test_unknown_name_lists_valid_ones(tmp_path):
    with pytest.raises(ValueError, match="sapiens-vh"):
        assets.resolve("sapiens", cache_dir=tmp_path)
    assert not any(tmp_path.iterdir())


def test_cache_root_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("MDM_SCHED_CACHE", str(tmp_path / "c"))
    assert assets.cache_root() == tmp_path / "c"
    monkeypatch.delenv("MDM_SCHED_CACHE")
    assert assets.cache_root().name == "mdm_sched"


def test_sapiens_vh_loads_and_tokenizes(sapiens_vh_dir):
    from transformers import AutoModelForMaskedLM, AutoTokenizer, RobertaForMaskedLM

    model = AutoModelForMaskedLM.from_pretrained(sapiens_vh_dir)
    tok = AutoTokenizer.from_pretrained(sapiens_vh_dir)
    assert isinstance(model, RobertaForMaskedLM)
    assert model.config.vocab_size == len(tok) == 25
    ids = tok("EVQ<mask>VES", add_special_tokens=False)["input_ids"]
    assert len(ids) == 7 and ids[3] == tok.mask_token_id and tok.unk_token_id not in ids
    # whitespace is ignored and residues decode without separators
    assert tok("E V Q L", add_special_tokens=False)["input_ids"] == tok("EVQL", add_special_tokens=False)["input_ids"]
    assert tok.decode(tok("EVQL")["input_ids"], skip_special_tokens=True) == "EVQL"
    full = tok("EVQL")["input_ids"]
    assert full[0] == tok.bos_token_id and full[-1] == tok.eos_token_id
    meta = assets.read_metadata(sapiens_vh_dir)
    assert meta["family"] == "bert" and meta["residue_separator"] == ""
    assert meta["allowed_tokens"] == list("ACDEFGHIKLMNPQRSTVWY")
    assert all(t in tok.get_vocab() for t in meta["allowed_tokens"])


def test_sapiens_vh_predicts_germline_residues(sapiens_vh_dir):
    """The converted weights are right: ~89% on all human VH germlines; a handful must exceed 75%."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    model = AutoModelForMaskedLM.from_pretrained(sapiens_vh_dir).eval()
    tok = AutoTokenizer.from_pretrained(sapiens_vh_dir)
    seqs = data.germlines("human", "H")[::25]  # 8 sequences spread over the IGHV families
    acc = masked_residue_accuracy(model, tok, seqs, separator="", stride=2)
    assert 0.75 < acc <= 1.0
    # A scrambled model (wrong conversion) is near chance (1/20); guard the test itself.
    torch.manual_seed(0)
    with torch.no_grad():
        model.lm_head.dense.weight.copy_(model.lm_head.dense.weight[torch.randperm(model.config.hidden_size)])
    assert masked_residue_accuracy(model, tok, seqs[:2], separator="", stride=2) < 0.5


def test_resolve_builds_once_then_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("MDM_SCHED_CACHE", str(tmp_path))
    first = assets.resolve("sapiens-vl")
    assert first.parent.parent == tmp_path and (first / "config.json").is_file()
    assert sorted(p.name for p in first.parent.iterdir()) == [first.name]  # no temporaries left

    def boom(*_):
        raise AssertionError("rebuilt a cached model")

    monkeypatch.setattr(assets, "_prepare_sapiens", boom)
    assert assets.resolve("sapiens-vl") == first


def test_failed_build_leaves_nothing(tmp_path, monkeypatch):
    def crash(sources, out):
        (out / "config.json").write_text("{}")  # half-written output
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(assets, "_prepare_sapiens", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        assets.resolve("sapiens-vh", cache_dir=tmp_path)
    assert list((tmp_path / "sapiens-vh").iterdir()) == []


def test_concurrent_builder_loses_race_gracefully(tmp_path, monkeypatch):
    """If another process finishes first, our rename fails and its (complete) directory is used."""
    real = assets._prepare_sapiens
    calls = []

    def racing(sources, out):
        calls.append(out)
        if len(calls) == 1:  # the "other process" completes while we are still converting
            assets.resolve("sapiens-vh", cache_dir=tmp_path)
        return real(sources, out)

    monkeypatch.setattr(assets, "_prepare_sapiens", racing)
    path = assets.resolve("sapiens-vh", cache_dir=tmp_path)
    assert len(calls) == 2
    assert json.loads((path / assets.METADATA_FILE).read_text())["name"] == "sapiens-vh"
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_incomplete_directory_is_replaced(tmp_path):
    key_dir = assets.resolve("sapiens-vh", cache_dir=tmp_path)
    (key_dir / assets.METADATA_FILE).unlink()  # e.g. damaged by hand
    again = assets.resolve("sapiens-vh", cache_dir=tmp_path)
    assert again == key_dir and (again / assets.METADATA_FILE).is_file()
    assert [p.name for p in again.parent.iterdir()] == [again.name]


def test_missing_package_names_pip_command(monkeypatch, tmp_path):
    monkeypatch.setattr(assets, "_package_dir", lambda package: None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps sapiens==1\.0\.5"):
        assets.resolve("sapiens-vh", cache_dir=tmp_path)
    with pytest.raises(ModuleNotFoundError, match=r"pip install antiberty==0\.1\.3"):
        assets.resolve("antiberty", cache_dir=tmp_path)
    assert assets.available() == {name: False for name in assets.BUILTIN_MODELS}


def test_package_without_weights_is_reported(monkeypatch, tmp_path):
    monkeypatch.setattr(assets, "_package_dir", lambda package: tmp_path)  # installed but empty
    with pytest.raises(ModuleNotFoundError, match="lacks"):
        assets.resolve("antiberty", cache_dir=tmp_path / "cache")


def test_antiberty_loads_and_tokenizes_residues(antiberty_dir):
    from transformers import AutoModelForMaskedLM, AutoTokenizer, BertForMaskedLM

    tok = AutoTokenizer.from_pretrained(antiberty_dir)
    ids = tok("E V Q L V E S", add_special_tokens=False)["input_ids"]
    assert len(ids) == 7 and tok.unk_token_id not in ids
    assert tok.convert_ids_to_tokens(ids) == list("EVQLVES")
    assert tok("E V [MASK] L", add_special_tokens=False)["input_ids"][2] == tok.mask_token_id
    meta = assets.read_metadata(antiberty_dir)
    assert meta["residue_separator"] == " " and meta["family"] == "bert"

    model, info = AutoModelForMaskedLM.from_pretrained(antiberty_dir, output_loading_info=True)
    assert isinstance(model, BertForMaskedLM)
    assert not info["missing_keys"] and not info["unexpected_keys"]  # extra heads were dropped
    seqs = data.germlines("human", "H")[::60][:2]
    # ~99% on all human VH germlines; 2 x 33 masked residues here keep the test a few seconds long
    assert masked_residue_accuracy(model.eval(), tok, seqs, separator=" ", stride=3) > 0.9


def test_resolve_second_call_is_instant(sapiens_vh_dir):
    import time

    t = time.perf_counter()
    for _ in range(20):
        assert assets.resolve("sapiens-vh") == sapiens_vh_dir
    assert time.perf_counter() - t < 1.0
    assert os.path.isdir(sapiens_vh_dir)
