"""Folder and Hub persistence of schedules, profiles and generation configs: round trips, model subfolders, a Hub id
resolved from a local cache (offline), push_to_hub with the upload mocked, and files from a newer format refused."""
from __future__ import annotations

import json

import numpy as np
import pytest

import mdm_sched as ms
from mdm_sched.profile import InformationProfile
from mdm_sched.schedules import Schedule

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _profile() -> InformationProfile:
    levels = np.array([0, 4, 8, 12, 15])
    ce = np.array([2.0, 1.5, 1.1, 0.9, 0.85])
    return InformationProfile(levels, ce, np.full(5, 0.02), n_tokens=16, entropy=ce - 0.1, accuracy=np.linspace(.2, .8, 5),
                              tokens=np.full(5, 100), rows=np.full(5, 10), metadata={"model": "tiny", "data": "toy"})


def _values():
    prof = _profile()
    return [ms.schedules.optimal(prof, steps=5, n_tokens=16), prof,
            ms.MaskedGenerationConfig(gen_length=16, schedule="optimal", steps=5, profile=prof, order="confidence",
                                      temperature=0.5, top_p=0.9, stop_at_eos=[2, 3])]


def _equal(a, b) -> bool:
    if isinstance(a, Schedule):
        return a == b and a.name == b.name and a.metadata == b.metadata
    return a.to_dict() == b.to_dict() if not isinstance(a, InformationProfile) else (a == b and a.metadata == b.metadata)


@pytest.mark.parametrize("index", [0, 1, 2], ids=["schedule", "profile", "config"])
def test_folder_round_trip_and_model_subfolder(tmp_path, index):
    value = _values()[index]
    cls = type(value)
    path = value.save_pretrained(tmp_path / "out")
    assert path == tmp_path / "out" / cls.FILENAME and json.loads(path.read_text())["version"] >= 1
    assert _equal(cls.from_pretrained(tmp_path / "out"), value)
    assert _equal(cls.from_pretrained(path), value)  # the file itself also works
    # shipped inside a model folder, next to the model's own files
    model_dir = tmp_path / "my-model"
    (model_dir).mkdir()
    (model_dir / "config.json").write_text("{}")
    value.save_pretrained(model_dir / "mdm")
    assert _equal(cls.from_pretrained(model_dir, subfolder="mdm"), value)
    with pytest.raises(FileNotFoundError, match=f"no .* file {cls.FILENAME} in .*my-model.*config.json"):
        cls.from_pretrained(model_dir)


def test_single_file_json_still_works_and_equals_the_folder_form(tmp_path):
    sched, prof, _ = _values()
    sched.save(tmp_path / "s.json")
    prof.save(tmp_path / "p.json")
    assert _equal(Schedule.load(tmp_path / "s.json"), sched) and _equal(InformationProfile.load(tmp_path / "p.json"), prof)
    sched.save_pretrained(tmp_path / "d")
    assert json.loads((tmp_path / "s.json").read_text()) == json.loads((tmp_path / "d" / Schedule.FILENAME).read_text())


@pytest.mark.parametrize("index", [0, 1, 2], ids=["schedule", "profile", "config"])
def test_newer_format_is_refused_with_the_file_named(tmp_path, index):
    value = _values()[index]
    data = value.to_dict()
    data["version"] = 1000  # newer than any format this library writes (profiles write 1 or 2)
    (tmp_path / value.FILENAME).write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"newer than this library understands.*upgrade mdm_sched") as exc:
        type(value).from_pretrained(tmp_path)
    assert str(tmp_path / value.FILENAME) in str(exc.value)


def _hub_cache(root, repo_id: str, files: dict[str, str]):
    """The folder layout huggingface_hub uses for a cached model repository at one commit."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    for name, text in files.items():
        target = repo / "snapshots" / COMMIT / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)


def test_hub_id_resolves_from_the_local_cache_offline(tmp_path, monkeypatch):
    sched, prof, cfg = _values()
    cache = tmp_path / "hf" / "hub"
    _hub_cache(cache, "someone/tiny-mdm", {
        "config.json": "{}",
        "mdm_profile.json": prof.to_json_string(),
        "schedules/optimal-5/mdm_schedule.json": sched.to_json_string(),
        "mdm_generation_config.json": cfg.to_json_string(),
    })
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert _equal(InformationProfile.from_pretrained("someone/tiny-mdm"), prof)
    assert _equal(Schedule.from_pretrained("someone/tiny-mdm", subfolder="schedules/optimal-5"), sched)
    assert _equal(ms.MaskedGenerationConfig.from_pretrained("someone/tiny-mdm"), cfg)
    # a profile given to generate() by Hub id resolves the same way
    assert ms.schedules.resolve("optimal", 16, steps=5, profile="someone/tiny-mdm") == sched
    with pytest.raises(FileNotFoundError, match="not in the local cache"):
        Schedule.from_pretrained("someone/tiny-mdm")  # no schedule at the top level
    with pytest.raises(FileNotFoundError, match="not in the local cache"):
        Schedule.from_pretrained("someone/absent")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Schedule.from_pretrained(tmp_path / "missing.json")


@pytest.mark.parametrize("index", [0, 1, 2], ids=["schedule", "profile", "config"])
def test_push_to_hub_uploads_the_saved_json(monkeypatch, index):
    from huggingface_hub import HfApi

    value = _values()[index]
    calls = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(("create", repo_id, kw)))
    monkeypatch.setattr(HfApi, "upload_file", lambda self, **kw: calls.append(("upload", kw)) or "commit")
    assert value.push_to_hub("me/repo", subfolder="mdm/", private=True, token="t") == "commit"
    (_, repo, create_kw), (_, upload) = calls
    assert repo == "me/repo" and create_kw["exist_ok"] and create_kw["private"] is True
    assert upload["repo_id"] == "me/repo" and upload["path_in_repo"] == f"mdm/{value.FILENAME}"
    assert upload["token"] == "t"
    uploaded = type(value).from_dict(json.loads(upload["path_or_fileobj"].decode("utf-8")))
    assert _equal(uploaded, value)


def test_save_pretrained_refuses_a_file_as_folder(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        Schedule([1, 2]).save_pretrained(tmp_path / "f")
