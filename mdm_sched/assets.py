"""Offline pretrained masked LMs whose weights ship inside PyPI packages, as ready HF directories.

No model can be downloaded from the Hugging Face hub on the machines this library targets, but three
small antibody language models ship inside ordinary PyPI wheels:

=============  =======================================  ==============================================
name           install                                  what :func:`resolve` does
=============  =======================================  ==============================================
``antiberty``  ``pip install antiberty==0.1.3``         BERT weights (extra heads dropped) + a working
                                                        tokenizer saved next to them
``sapiens-vh`` ``pip install --no-deps sapiens==1.0.5`` fairseq RoBERTa checkpoint converted to
``sapiens-vl``                                          ``RobertaForMaskedLM`` + a fast tokenizer
=============  =======================================  ==============================================

``resolve(name)`` returns a directory that ``AutoModelForMaskedLM.from_pretrained`` and
``AutoTokenizer.from_pretrained`` load offline. It is built once into a cache
(``$MDM_SCHED_CACHE`` or ``~/.cache/mdm_sched``), in ``<cache>/<name>/<version key>/``; later calls
only check that the directory exists. Each directory also holds ``mdm_sched.json``, the facts a
generic adapter cannot infer from the HF files::

    {"family": "bert",              # framing-token masked LM (BERT/RoBERTa style)
     "residue_separator": " ",      # join residues with this before tokenizing ("" for Sapiens)
     "allowed_tokens": ["A", ...],  # the 20 amino acids: the only tokens worth sampling
     "description": "...", "source": "...", "name": "antiberty", "key": "..."}

The packages are located with :func:`importlib.util.find_spec` and never imported: ``import sapiens``
pulls in fairseq, which is neither installed nor installable next to a modern torch.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path

__all__ = ["BUILTIN_MODELS", "AMINO_ACIDS", "available", "resolve", "cache_root", "read_metadata"]

#: The 20 standard amino acids, in the order both vocabularies list them.
AMINO_ACIDS: tuple[str, ...] = tuple("ACDEFGHIKLMNPQRSTVWY")

#: Built-in offline model names -> short description.
BUILTIN_MODELS: Mapping[str, str] = {
    "antiberty": "AntiBERTy (Ruffolo et al. 2021): 26M-parameter BERT on antibody heavy and light chains; "
                 "residues separated by spaces; ~99% masked-residue accuracy on human VH germlines",
    "sapiens-vh": "Sapiens VH (Prihoda et al. 2022): 0.57M-parameter RoBERTa on human heavy chains; "
                  "one token per residue; ~89% masked-residue accuracy on human VH germlines",
    "sapiens-vl": "Sapiens VL (Prihoda et al. 2022): 0.57M-parameter RoBERTa on human light chains; "
                  "one token per residue",
}

#: Bump when the layout of a prepared directory changes: old cache entries are then ignored.
_FORMAT_VERSION = "1"
#: Name of the metadata file inside every prepared directory. Written last inside the temporary
#: directory, so its presence marks a complete directory.
METADATA_FILE = "mdm_sched.json"

_PIP = {
    "antiberty": "pip install antiberty==0.1.3",
    # --no-deps is essential: sapiens depends on fairseq, which would downgrade torch.
    "sapiens": "pip install --no-deps sapiens==1.0.5",
}
_PACKAGE = {"antiberty": "antiberty", "sapiens-vh": "sapiens", "sapiens-vl": "sapiens"}


# --------------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------------

def cache_root() -> Path:
    """Directory under which prepared models live: ``$MDM_SCHED_CACHE`` or ``~/.cache/mdm_sched``."""
    env = os.environ.get("MDM_SCHED_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mdm_sched"


def available() -> dict[str, bool]:
    """Which built-in models can be resolved here (their package and files are installed).

    Converts nothing and imports nothing; cheap enough for ``pytest.mark.skipif``.
    """
    out = {}
    for name in BUILTIN_MODELS:
        try:
            _source_files(name)
            out[name] = True
        except ModuleNotFoundError:
            out[name] = False
    return out


def resolve(name: str, *, cache_dir: str | os.PathLike | None = None) -> Path:
    """Return an HF-format directory for the built-in model ``name``, preparing it on first use.

    Args:
        name: one of :data:`BUILTIN_MODELS` (``"antiberty"``, ``"sapiens-vh"``, ``"sapiens-vl"``).
        cache_dir: where to keep prepared directories; default :func:`cache_root`.

    Returns:
        A directory loadable offline with ``AutoModelForMaskedLM.from_pretrained`` and
        ``AutoTokenizer.from_pretrained``, holding also ``mdm_sched.json`` (see the module docstring).

    Raises:
        ValueError: unknown ``name``.
        ModuleNotFoundError: the package shipping the weights is missing (the message gives the pip command).

    The directory is built in a temporary sibling and renamed into place (``os.replace``), so a
    crash never leaves a half-written model and concurrent processes may call this safely: the first
    rename wins and the others discard their copy.
    """
    if not isinstance(name, str) or name not in BUILTIN_MODELS:
        raise ValueError(f"resolve(name={name!r}): unknown built-in model; valid names: "
                         f"{', '.join(BUILTIN_MODELS)}")
    sources = _source_files(name)
    root = (Path(cache_dir).expanduser() if cache_dir is not None else cache_root()).absolute()
    final = root / name / _version_key(name, sources)
    if (final / METADATA_FILE).is_file():
        return final  # fast path: nothing but a stat
    builder: Callable[[dict[str, Path], Path], dict] = _prepare_antiberty if name == "antiberty" else _prepare_sapiens
    return _build_atomically(final, lambda tmp: _finish(name, final.name, sources, builder(sources, tmp), tmp))


def read_metadata(path: str | os.PathLike) -> dict | None:
    """The ``mdm_sched.json`` facts of a model directory, or ``None`` when it has none.

    Raises:
        ValueError: the file is not a JSON object (the message says how to fix the directory).
    """
    f = Path(path) / METADATA_FILE
    if not f.is_file():
        return None
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{f} is not valid JSON ({exc}); delete it or rebuild the model directory") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{f} must hold a JSON object of model facts, got {type(data).__name__}; "
                         "delete it or rebuild the model directory")
    return data


# --------------------------------------------------------------------------------------------------
# locating the packaged files
# --------------------------------------------------------------------------------------------------

def _package_dir(package: str) -> Path | None:
    """Directory of an installed package, found without importing it (``import sapiens`` needs fairseq)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent


def _source_files(name: str) -> dict[str, Path]:
    """The packaged files the model ``name`` is built from; ModuleNotFoundError naming pip if absent."""
    package = _PACKAGE[name]
    pip = _PIP[package]
    pkg = _package_dir(package)
    if pkg is None:
        raise ModuleNotFoundError(f"built-in model {name!r} needs the {package!r} package, which ships its "
                                  f"weights; install it with: {pip}", name=package)
    if package == "antiberty":
        files = {"weights_dir": pkg / "trained_models" / "AntiBERTy_md_smooth",
                 "weights": pkg / "trained_models" / "AntiBERTy_md_smooth" / "pytorch_model.bin",
                 "config": pkg / "trained_models" / "AntiBERTy_md_smooth" / "config.json",
                 "vocab_dir": pkg / "trained_models",
                 "vocab": pkg / "trained_models" / "vocab.txt"}
    else:
        chain = name.split("-")[1]
        files = {"checkpoint": pkg / "models" / "v1" / f"checkpoint_{chain}.pt",
                 "dict": pkg / "models" / "v1" / "dict.txt"}
    missing = [str(p) for p in files.values() if not p.exists()]
    if missing:
        # Newer releases dropped the weights (antiberty>=1.0 downloads them at run time).
        raise ModuleNotFoundError(f"built-in model {name!r}: the installed {package!r} package lacks "
                                  f"{', '.join(missing)}; install the release that ships the weights "
                                  f"with: {pip}", name=package)
    return files


def _version_key(name: str, sources: dict[str, Path]) -> str:
    """Cache key: format version, package version and source sizes (cheap; no hashing of 100 MB)."""
    try:
        version = importlib.metadata.version(_PACKAGE[name])
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    size = sum(p.stat().st_size for p in sources.values() if p.is_file())
    return f"f{_FORMAT_VERSION}-{version}-{size}"


# --------------------------------------------------------------------------------------------------
# atomic directory construction
# --------------------------------------------------------------------------------------------------

_STALE_SECONDS = 24 * 3600


def _build_atomically(final: Path, build: Callable[[Path], None]) -> Path:
    """Run ``build(tmp)`` in a fresh sibling directory, then rename it to ``final``.

    If another process renamed its copy first, ours is discarded and theirs returned.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(final.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private (0700); the final directory should not be
    try:
        build(tmp)
        if final.exists() and not (final / METADATA_FILE).is_file():
            # A directory without the completion marker was not made by us (we rename whole
            # directories); it cannot be trusted, so set it aside before taking its place.
            os.replace(final, final.parent / f".tmp-broken-{uuid.uuid4().hex}")
        try:
            os.replace(tmp, final)
        except OSError:
            if not (final / METADATA_FILE).is_file():
                raise
            # Lost the race to a concurrent process: its directory is complete and equivalent.
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    _remove_stale_temporaries(final.parent, max_age=0, only_broken=True)
    return final


def _remove_stale_temporaries(parent: Path, max_age: float = _STALE_SECONDS, only_broken: bool = False) -> None:
    """Delete temporary directories left behind by crashed conversions (older than ``max_age`` s)."""
    now = time.time()
    for p in parent.glob(".tmp-broken-*" if only_broken else ".tmp-*"):
        try:
            if now - p.stat().st_mtime >= max_age:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass  # removed concurrently


def _finish(name: str, key: str, sources: dict[str, Path], meta: dict, tmp: Path) -> None:
    """Write ``mdm_sched.json`` last: its presence marks a complete directory."""
    meta = {"name": name, "key": key, "description": BUILTIN_MODELS[name],
            "source": str(next(iter(sources.values()))), **meta}
    (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=2) + "\n")


# --------------------------------------------------------------------------------------------------
# AntiBERTy
# --------------------------------------------------------------------------------------------------

def _quiet_transformers():
    """Context manager silencing transformers' load report (AntiBERTy's extra heads are expected)."""
    import contextlib

    from transformers.utils import logging as hf_logging

    @contextlib.contextmanager
    def quiet():
        old = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            yield
        finally:
            hf_logging.set_verbosity(old)

    return quiet()


def _prepare_antiberty(sources: dict[str, Path], out: Path) -> dict:
    """Save AntiBERTy as a plain ``BertForMaskedLM`` (safetensors) plus a working tokenizer into ``out``.

    The checkpoint also holds species/chain/graft heads and a pooler that ``BertForMaskedLM`` does
    not use; re-saving drops them, so loading is silent and reads no pickle.
    """
    import torch
    from transformers import BertForMaskedLM, BertTokenizer

    from .compat import dtype_kwargs

    with _quiet_transformers():
        model = BertForMaskedLM.from_pretrained(str(sources["weights_dir"]), **dtype_kwargs(torch.float32))
    # Guard against a silent untying problem: the MLM decoder must equal the checkpoint's decoder.
    state = torch.load(sources["weights"], map_location="cpu", weights_only=True)
    expected = state["cls.predictions.decoder.weight"]
    if not torch.equal(model.cls.predictions.decoder.weight.detach(), expected):
        raise RuntimeError("AntiBERTy conversion: the loaded MLM decoder differs from the checkpoint's; "
                           "this transformers version ties weights differently than expected")
    model.config.architectures = ["BertForMaskedLM"]
    model.config.name_or_path = "antiberty"
    model.eval().save_pretrained(str(out))

    # transformers 5: BertTokenizer(vocab_file=...) silently ignores the file (everything -> [UNK]);
    # from_pretrained on the directory holding vocab.txt reads it. Residues are upper case.
    tok = BertTokenizer.from_pretrained(str(sources["vocab_dir"]), do_lower_case=False, model_max_length=512)
    tok.save_pretrained(str(out))
    _check_tokenizer(out, " ".join("EVQLVES"), n_expected=7)
    return {"family": "bert", "residue_separator": " ", "allowed_tokens": list(AMINO_ACIDS),
            "max_length": 510}


def _check_tokenizer(path: Path, text: str, n_expected: int) -> None:
    """Reload the saved tokenizer the way users will and check it maps residues to real ids."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    ids = tok(text, add_special_tokens=False)["input_ids"]
    if len(ids) != n_expected or tok.unk_token_id in ids:
        raise RuntimeError(f"prepared tokenizer in {path} maps {text!r} to {ids} (expected {n_expected} "
                           f"ids without unk {tok.unk_token_id}); the installed transformers version "
                           f"saves tokenizers differently than expected")


# --------------------------------------------------------------------------------------------------
# Sapiens (fairseq RoBERTa -> RobertaForMaskedLM, without fairseq)
# --------------------------------------------------------------------------------------------------

def _sapiens_vocab(dict_file: Path) -> dict[str, int]:
    """fairseq Dictionary order: 4 specials, the dict.txt symbols, then ``<mask>`` (added by the task)."""
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for line in dict_file.read_text().splitlines():
        if line.strip():
            vocab.setdefault(line.split()[0], len(vocab))
    vocab["<mask>"] = len(vocab)
    return vocab


def _sapiens_tokenizer(vocab: dict[str, int], max_positions: int):
    """Fast tokenizer: one token per residue, literal ``<mask>`` kept whole, whitespace ignored."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    # Whitespace is dropped first so "E V Q" and "EVQ" tokenize alike; then every character is a token.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Split(Regex(r"<mask>|<unk>|<pad>|<s>|</s>|."), behavior="isolated"),
    ])
    tok.decoder = decoders.Fuse()  # residues decode without spaces between them
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", vocab["<s>"]), ("</s>", vocab["</s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", mask_token="<mask>", cls_token="<s>", sep_token="</s>",
                                   model_max_length=max_positions)


def _load_fairseq_checkpoint(path: Path) -> tuple[argparse.Namespace, dict]:
    """Read a fairseq checkpoint with ``weights_only=True``: its only non-tensor class is Namespace."""
    import torch

    with torch.serialization.safe_globals([argparse.Namespace]):
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return ckpt["args"], ckpt["model"]


def _roberta_state_dict(sd: dict, n_layers: int, hidden: int) -> dict:
    """Rename fairseq RoBERTa parameters to HF ``RobertaForMaskedLM`` names."""
    import torch

    enc = "decoder.sentence_encoder."
    new = {
        "roberta.embeddings.word_embeddings.weight": sd[enc + "embed_tokens.weight"],
        "roberta.embeddings.position_embeddings.weight": sd[enc + "embed_positions.weight"],
        # fairseq has no token types; HF adds type 0's embedding to every token, so make it zero.
        "roberta.embeddings.token_type_embeddings.weight": torch.zeros(1, hidden),
        "roberta.embeddings.LayerNorm.weight": sd[enc + "emb_layer_norm.weight"],
        "roberta.embeddings.LayerNorm.bias": sd[enc + "emb_layer_norm.bias"],
        "lm_head.dense.weight": sd["decoder.lm_head.dense.weight"],
        "lm_head.dense.bias": sd["decoder.lm_head.dense.bias"],
        "lm_head.layer_norm.weight": sd["decoder.lm_head.layer_norm.weight"],
        "lm_head.layer_norm.bias": sd["decoder.lm_head.layer_norm.bias"],
        "lm_head.decoder.weight": sd["decoder.lm_head.weight"],
        "lm_head.bias": sd["decoder.lm_head.bias"],
    }
    per_layer = [("self_attn.q_proj", "attention.self.query"), ("self_attn.k_proj", "attention.self.key"),
                 ("self_attn.v_proj", "attention.self.value"), ("self_attn.out_proj", "attention.output.dense"),
                 ("self_attn_layer_norm", "attention.output.LayerNorm"), ("fc1", "intermediate.dense"),
                 ("fc2", "output.dense"), ("final_layer_norm", "output.LayerNorm")]
    for i in range(n_layers):
        for src, dst in per_layer:
            for kind in ("weight", "bias"):
                new[f"roberta.encoder.layer.{i}.{dst}.{kind}"] = sd[f"{enc}layers.{i}.{src}.{kind}"]
    return new


def _prepare_sapiens(sources: dict[str, Path], out: Path) -> dict:
    """Convert a Sapiens fairseq checkpoint into ``RobertaForMaskedLM`` + tokenizer in ``out``."""
    import torch
    from transformers import RobertaConfig, RobertaForMaskedLM

    args, sd = _load_fairseq_checkpoint(sources["checkpoint"])
    if getattr(args, "encoder_normalize_before", False):
        # HF RoBERTa is post-LN; a pre-LN checkpoint would convert into a silently wrong model.
        raise RuntimeError(f"{sources['checkpoint']}: pre-LayerNorm fairseq checkpoints are not supported")
    vocab = _sapiens_vocab(sources["dict"])
    n_vocab = sd["decoder.sentence_encoder.embed_tokens.weight"].shape[0]
    if n_vocab != len(vocab):
        raise RuntimeError(f"{sources['checkpoint']}: embedding has {n_vocab} rows but dict.txt gives "
                           f"{len(vocab)} symbols")
    tied = torch.equal(sd["decoder.sentence_encoder.embed_tokens.weight"], sd["decoder.lm_head.weight"])
    config = RobertaConfig(
        vocab_size=len(vocab), hidden_size=args.encoder_embed_dim, num_hidden_layers=args.encoder_layers,
        num_attention_heads=args.encoder_attention_heads, intermediate_size=args.encoder_ffn_embed_dim,
        # fairseq learned positions start after the padding index (1), exactly like HF RoBERTa.
        max_position_embeddings=args.max_positions + 2, type_vocab_size=1, layer_norm_eps=1e-5,
        hidden_act=args.activation_fn, pad_token_id=vocab["<pad>"], bos_token_id=vocab["<s>"],
        eos_token_id=vocab["</s>"], hidden_dropout_prob=args.dropout,
        attention_probs_dropout_prob=args.attention_dropout, tie_word_embeddings=tied,
        architectures=["RobertaForMaskedLM"])
    model = RobertaForMaskedLM(config).eval()
    missing, unexpected = model.load_state_dict(
        _roberta_state_dict(sd, config.num_hidden_layers, config.hidden_size), strict=False)
    # position_ids-style buffers may be reported missing; any real parameter missing is a bug.
    params = {n for n, _ in model.named_parameters()}
    if unexpected or (set(missing) & params):
        raise RuntimeError(f"Sapiens conversion: missing {sorted(set(missing) & params)}, "
                           f"unexpected {sorted(unexpected)}")
    model.save_pretrained(str(out))
    _sapiens_tokenizer(vocab, args.max_positions).save_pretrained(str(out))
    _check_tokenizer(out, "EVQLVES", n_expected=7)
    return {"family": "bert", "residue_separator": "", "allowed_tokens": list(AMINO_ACIDS),
            "max_length": args.max_positions - 2}
