"""The mdm-sched command: help, generate end to end on a real model, bad input as one clear line."""
from __future__ import annotations

import json

import pytest

import mdm_sched as ms
from mdm_sched import cli
from mdm_sched.assets import AMINO_ACIDS
from mdm_sched.config import MaskedGenerationConfig


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


def test_generate_writes_valid_reproducible_antibodies_and_their_record(tmp_path, capsys):
    args = ["generate", "--model", "sapiens-vh", "--gen-length", "24", "--steps", "6", "--schedule", "cosine",
            "--num-samples", "3", "--seed", "5"]
    assert cli.main(args + ["--out", str(tmp_path / "a.jsonl")]) == 0
    assert cli.main(args + ["--out", str(tmp_path / "b.jsonl")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert len(rows) == 3
    assert all(len(r["text"]) == 24 and set(r["text"]) <= set(AMINO_ACIDS) for r in rows), rows
    assert all(r["calls"] == 6 for r in rows)
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()
    assert "6 model calls" in capsys.readouterr().err
    record = json.loads((tmp_path / "a.record.json").read_text())
    cfg = MaskedGenerationConfig.from_dict(record["config"])
    assert (cfg.schedule, cfg.steps, cfg.gen_length, cfg.num_samples) == ("cosine", 6, 24, 3)
    assert record["block_schedules"] == [{"name": "cosine", "sizes": list(ms.schedules.cosine(24, 6).sizes)}]
    assert record["nfe"] == 6 and record["seed"] == 5 and record["samples"] == "a.jsonl"


def test_generate_flags_come_from_the_config(capsys):
    import dataclasses

    with pytest.raises(SystemExit):
        cli.main(["generate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for f in dataclasses.fields(MaskedGenerationConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.name == "return_history":
            assert flag not in text
            continue
        assert flag in text and " ".join(f.metadata["help"].split()) in text, f.name
    assert "PER BLOCK" in text and "--dtype {float32,bfloat16,float16}" in text and "None" not in text
    parser = cli.build_parser()
    base = ["generate", "--model", "m", "--gen-length", "8"]
    parse = lambda *extra: cli._generation_config(parser.parse_args(base + list(extra)))
    assert parse().schedule == "constant" and parse().steps == 8 and parse().num_samples is None
    assert parse("--stop-at-eos").stop_at_eos is True and parse("--stop-at-eos", "3").stop_at_eos == 3
    assert parse("--stop-at-eos", "3", "4").stop_at_eos == [3, 4] and parse().stop_at_eos is False
    assert parse("--schedule", "threshold:0.9").schedule == "threshold:0.9" and parse("--schedule", "4").schedule == 4
    assert parse("--schedule", "4,2,2").schedule == [4, 2, 2]
    assert parse("--stop-strings", "END", "STOP").stop_strings == ["END", "STOP"]
    assert parse("--order", "margin", "--top-p", "0.9", "--cfg-scale", "1.5").cfg_scale == 1.5
    with pytest.raises(SystemExit):
        parser.parse_args(base + ["--order", "sideways"])


def test_generate_bad_input_is_one_clear_line(capsys):
    code = cli.main(["generate", "--model", "sapiens-vh", "--gen-length", "10", "--steps", "11"])
    assert code == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("mdm-sched generate: error:") and "steps must be <= 10" in last and "got 11" in last
    assert cli.main(["generate", "--model", "sapiens-vh", "--gen-length", "10", "--schedule", "threshold"]) == 2
    assert "threshold:0.9" in capsys.readouterr().err.strip().splitlines()[-1]


def test_generate_optimal_needs_a_profile(capsys):
    code = cli.main(["generate", "--model", "sapiens-vh", "--gen-length", "10", "--steps", "3", "--schedule", "optimal"])
    assert code == 2 and "needs --profile" in capsys.readouterr().err


def test_generate_adaptive_rule_and_saved_config(tmp_path, capsys):
    MaskedGenerationConfig(gen_length=16, schedule=4, num_samples=2, temperature=0.0, order="confidence"
                           ).save_pretrained(tmp_path / "cfg")
    args = ["generate", "--model", "sapiens-vh", "--config", str(tmp_path / "cfg"), "--out", str(tmp_path / "s.jsonl")]
    assert cli.main(args) == 0
    record = json.loads((tmp_path / "s.record.json").read_text())
    assert record["nfe"] == 4 and record["config"]["schedule"] == 4 and record["config"]["temperature"] == 0.0
    assert cli.main(args + ["--schedule", "threshold:0.5", "--num-samples", "3"]) == 0  # flags override the file
    record = json.loads((tmp_path / "s.record.json").read_text())
    assert record["config"]["schedule"] == "threshold:0.5" and len(record["calls_per_row"]) == 3
    assert record["block_schedules"] == [] and 1 <= record["nfe"] <= 16
    assert max(record["calls_per_row"]) == record["nfe"]


def test_profile_help_and_every_flag_parses(capsys):
    parser = cli.build_parser()
    args = parser.parse_args(["profile", "--model", "m", "--data", "d", "--text-column", "t", "--n-tokens", "8",
                              "--prompt-length", "2", "--levels", "4", "--batch-size", "3", "--target-se", "0.1",
                              "--max-batches", "5", "--block-length", "4", "--checkpoint", "c.npz", "--seed", "1",
                              "--device", "cpu", "--dtype", "float32", "--trust-remote-code", "--no-progress",
                              "--out", "o.json", "--plot", "o.png", "--gain-steps", "2,4"])
    assert args.target_se == 0.1 and args.checkpoint == "c.npz" and args.block_length == 4
    with pytest.raises(SystemExit):
        parser.parse_args(["profile", "--model", "m", "--data", "d", "--out", "o", "--tokens-per-level", "5",
                           "--target-se", "0.1"])  # one stop rule
    capsys.readouterr()
    with pytest.raises(SystemExit):
        cli.main(["profile", "--help"])
    assert ".npz" in capsys.readouterr().out.replace("\n", " ")


def test_profile_with_a_stray_world_size_is_one_clear_line(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for var in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    code = cli.main(["profile", "--model", "sapiens-vh", "--data", "antibody-germlines:human:H:test", "--out", "x.json"])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and last.startswith("mdm-sched profile: error: WORLD_SIZE=2") and "unset WORLD_SIZE" in last


def test_schedule_and_generate_use_folders(tmp_path, capsys):
    levels = [0, 6, 12, 18, 23]
    prof = ms.InformationProfile(levels, [2.9, 1.5, 1.0, 0.8, 0.75], [0.01] * 5, n_tokens=24)
    prof.save_pretrained(tmp_path / "model")
    assert cli.main(["schedule", "--profile", str(tmp_path / "model"), "--steps", "6",
                     "--out", str(tmp_path / "model" / "T6")]) == 0
    saved = ms.Schedule.from_pretrained(tmp_path / "model", subfolder="T6")
    assert saved == ms.schedules.optimal(prof, steps=6, n_tokens=24)
    for schedule in (["--schedule", str(tmp_path / "model" / "T6")],
                     ["--schedule", "optimal", "--steps", "6", "--profile", str(tmp_path / "model")]):
        out = tmp_path / "s.jsonl"
        assert cli.main(["generate", "--model", "sapiens-vh", "--gen-length", "24", "--out", str(out), *schedule]) == 0
        record = json.loads(out.with_suffix(".record.json").read_text())
        assert record["block_schedules"][0]["sizes"] == list(saved.sizes) and record["nfe"] == 6


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
    assert cli.main(["generate", "--model", str(model_dir), "--chat", "--gen-length", "4"]) == 2
    assert "--chat needs" in capsys.readouterr().err
    assert cli.main(["generate", "--model", str(model_dir), "--system", "x", "--gen-length", "4"]) == 2
    assert "only used with --chat" in capsys.readouterr().err
