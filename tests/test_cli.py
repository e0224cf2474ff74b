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
