"""The mdm-sched command: help, generate end to end on a real model, bad input as one clear line."""
from __future__ import annotations

import json

import pytest

from mdm_sched import cli
from mdm_sched.assets import AMINO_ACIDS


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in ("profile", "schedule", "generate", "eval", "demo"):
        assert name in out


def test_no_command_prints_help_and_fails(capsys):
    assert cli.main([]) == 2
    assert "usage" in capsys.readouterr().out


def test_generate_writes_valid_reproducible_antibodies(tmp_path, capsys):
    args = ["generate", "--model", "sapiens-vh", "--gen-length", "24", "--steps", "6", "--schedule", "cosine",
            "--num-samples", "3", "--seed", "5"]
    assert cli.main(args + ["--out", str(tmp_path / "a.jsonl")]) == 0
    assert cli.main(args + ["--out", str(tmp_path / "b.jsonl")]) == 0
    rows = [json.loads(line)["text"] for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert len(rows) == 3
    assert all(len(r) == 24 and set(r) <= set(AMINO_ACIDS) for r in rows), rows
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()
    assert "6 model calls" in capsys.readouterr().err


def test_generate_bad_input_is_one_clear_line(capsys):
    code = cli.main(["generate", "--model", "sapiens-vh", "--gen-length", "10", "--steps", "11"])
    assert code == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("mdm-sched generate: error:") and "steps must be <= 10" in last and "got 11" in last


def test_generate_optimal_needs_a_profile():
    with pytest.raises(SystemExit, match="--profile"):
        cli.main(["generate", "--model", "sapiens-vh", "--gen-length", "10", "--steps", "3", "--schedule", "optimal"])


def _chat_model_dir(tmp_path):
    """A tiny BERT-style masked LM saved with an instruct tokenizer (offline Jinja chat template)."""
    import torch
    from test_chat import LLADA_TEMPLATE, chat_tokenizer
    from transformers import BertConfig, BertForMaskedLM

    tok = chat_tokenizer(LLADA_TEMPLATE)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64, pad_token_id=tok.pad_token_id)
    model = BertForMaskedLM(config)
    model.config.architectures = ["BertForMaskedLM"]
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    return tmp_path


def test_generate_chat_sends_prompts_through_the_chat_template(tmp_path, capsys):
    import torch

    import mdm_sched as ms

    model_dir = _chat_model_dir(tmp_path / "model")
    out_file = tmp_path / "replies.jsonl"
    args = ["generate", "--model", str(model_dir), "--chat", "--system", "You are helpful .", "--prompt", "hello world",
            "--prompt", "how are you", "--gen-length", "4", "--steps", "2", "--seed", "3", "--out", str(out_file)]
    assert cli.main(args) == 0
    replies = [json.loads(line)["text"] for line in out_file.read_text().splitlines()]
    # the same run through the API: messages= with the system message first
    model = ms.load_masked_lm(model_dir)
    convs = [[{"role": "system", "content": "You are helpful ."}, {"role": "user", "content": p}]
             for p in ("hello world", "how are you")]
    want = ms.generate(model, messages=convs, gen_length=4, schedule="constant", steps=2,
                       generator=torch.Generator().manual_seed(3))
    assert replies == model.decode(want.generated)
    assert capsys.readouterr().out.splitlines()[-2:] == replies
    with pytest.raises(SystemExit, match="--chat needs"):
        cli.main(["generate", "--model", str(model_dir), "--chat", "--gen-length", "4"])
    with pytest.raises(SystemExit, match="only used with --chat"):
        cli.main(["generate", "--model", str(model_dir), "--system", "x", "--gen-length", "4"])
