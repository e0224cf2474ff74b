"""MaskedGenerationConfig as JSON: every schedule form round-trips, rules rebuild from describe() and their text
form, a saved config regenerates the same samples, and outputs record the settings they were made with."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_models import TinyLLaDA

import mdm_sched as ms
from mdm_sched import rules
from mdm_sched.config import MaskedGenerationConfig
from mdm_sched.profile import InformationProfile
from mdm_sched.schedules import Schedule, parse_spec, spec_from_json, spec_to_json


def _profile() -> InformationProfile:
    return InformationProfile([0, 3, 6, 9], [2.0, 1.2, 0.9, 0.8], [0.01] * 4, n_tokens=12, metadata={"model": "tiny"})


RULES = [
    rules.threshold(0.9),
    rules.threshold(0.7, max_calls=5, min_schedule=Schedule([4, 4, 4])),
    rules.confidence_factor(1.5, max_calls=3),
    rules.entropy_bound(0.25),
    rules.FixedSchedule(Schedule([6, 4, 2], name="mine")),
]


@pytest.mark.parametrize("rule", RULES, ids=lambda r: type(r).__name__)
def test_rules_rebuild_from_their_description(rule):
    again = rules.from_description(json.loads(json.dumps(rule.describe())))
    assert type(again) is type(rule) and again.describe() == rule.describe()


def test_rule_text_form():
    assert rules.parse_rule("threshold:0.9").describe() == rules.threshold(0.9).describe()
    assert rules.parse_rule("entropy_bound:gamma=0.5,max_calls=8").describe() == rules.entropy_bound(0.5, max_calls=8).describe()
    assert rules.parse_rule("confidence_factor:2").describe() == rules.confidence_factor(2.0).describe()
    assert rules.parse_rule("factor:1,max_calls=none").describe() == rules.confidence_factor(1.0).describe()
    with pytest.raises(ValueError, match="needs its parameter"):
        rules.parse_rule("threshold")
    with pytest.raises(ValueError, match="unknown reveal rule 'thresh'"):
        rules.parse_rule("thresh:0.9")
    with pytest.raises(ValueError, match="tau must be <= 1"):
        rules.parse_rule("threshold:1.5")
    with pytest.raises(ValueError, match="key=value"):
        rules.parse_rule("threshold:0.9,8")
    with pytest.raises(ValueError, match="bad parameters"):
        rules.from_description({"rule": "threshold", "tau": 0.9, "colour": 1})


def test_text_specs_mean_what_the_objects_mean():
    assert parse_spec("16") == 16 and parse_spec("4,2,2") == [4, 2, 2] and parse_spec("cosine") == "cosine"
    assert parse_spec("entropy_bound:gamma=0.5,max_calls=8") == "entropy_bound:gamma=0.5,max_calls=8"
    found = ms.schedules.resolve("threshold:0.8", 12)
    assert isinstance(found, rules.ConfidenceThreshold) and found.tau == 0.8
    with pytest.raises(ValueError, match="needs its parameter"):
        ms.schedules.resolve("threshold", 12)
    with pytest.raises(ValueError, match="calls per block"):
        ms.schedules.resolve("cosine", 12)


SPECS = [8, [6, 4, 2], "cosine", Schedule([5, 4, 3], name="hand", metadata={"why": "test"}), "threshold:0.9", *RULES]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: type(s).__name__ + ":" + str(s)[:20])
def test_every_schedule_form_round_trips(spec):
    back = spec_from_json(json.loads(json.dumps(spec_to_json(spec))))
    if isinstance(spec, rules.RevealRule):
        assert type(back) is type(spec) and back.describe() == spec.describe()
    elif isinstance(spec, Schedule):
        assert back == spec and back.name == spec.name and back.metadata == spec.metadata
    else:
        assert back == spec
    cfg = MaskedGenerationConfig(gen_length=12, schedule=spec, steps=3)
    again = MaskedGenerationConfig.from_dict(json.loads(cfg.to_json_string()))
    assert again.to_dict() == cfg.to_dict()


def test_config_json_keeps_profile_order_and_stops(tmp_path):
    prof = _profile()
    prof.save(tmp_path / "p.json")
    for profile in (prof, str(tmp_path / "p.json")):
        cfg = MaskedGenerationConfig(gen_length=12, schedule="optimal", steps=4, profile=profile,
                                     order=ms.orders.ORDERS["margin"], temperature=0.7, top_k=5, top_p=0.9,
                                     block_length=12, stop_at_eos=[3, 4], stop_strings=["END"], cfg_scale=0.5)
        again = MaskedGenerationConfig.from_dict(json.loads(cfg.to_json_string()))
        assert again.order == "margin" and again.stop_at_eos == [3, 4] and again.stop_strings == ["END"]
        assert (again.profile == prof) if isinstance(profile, InformationProfile) else again.profile == profile
        plan = lambda c: ms.schedules.resolve(c.schedule, 12, steps=c.steps, profile=c.profile)
        assert plan(again) == plan(cfg)


def test_unsavable_values_and_bad_files_are_clear_errors():
    class Mine(rules.RevealRule):
        name = "mine"

        def planned_calls(self, length):
            return None

        def counts(self, step):
            return step.remaining

    with pytest.raises(ValueError, match=r"cannot be saved.*register_rule"):
        MaskedGenerationConfig(gen_length=4, schedule=Mine()).to_dict()
    data = MaskedGenerationConfig(gen_length=4, schedule=2).to_dict()
    with pytest.raises(ValueError, match=r"unknown generation setting.*colour"):
        MaskedGenerationConfig.from_dict({**data, "colour": "red"})
    with pytest.raises(ValueError, match="not an mdm_sched generation config"):
        MaskedGenerationConfig.from_dict({**data, "format": "mdm_sched.schedule"})
    with pytest.raises(ValueError, match="unknown reveal rule 'mine'"):
        MaskedGenerationConfig.from_dict({**data, "schedule": {"rule": "mine"}})
    try:
        rules.register_rule(Mine)
        assert isinstance(spec_from_json(spec_to_json(Mine())), Mine)
    finally:
        rules.RULES.pop("mine")


@pytest.mark.parametrize("schedule", [[5, 2, 1], "threshold:0.5"])
def test_a_saved_config_regenerates_the_same_samples_and_outputs_record_it(tmp_path, schedule):
    model = TinyLLaDA(seed=3)
    cfg = MaskedGenerationConfig(gen_length=8, schedule=schedule, num_samples=3, order="confidence", temperature=0.8)
    cfg.save_pretrained(tmp_path)
    loaded = MaskedGenerationConfig.from_pretrained(tmp_path)
    run = lambda c: ms.generate(model, [[1, 2]], generation_config=c, generator=torch.Generator().manual_seed(4))
    a, b = run(cfg), run(loaded)
    assert torch.equal(a.sequences, b.sequences) and a.nfe == b.nfe
    rec = json.loads(json.dumps(b.record()))
    assert MaskedGenerationConfig.from_dict(rec["config"]).to_dict() == loaded.validated().to_dict()
    assert rec["nfe"] == b.nfe and rec["calls_per_row"] == b.calls_per_row.tolist()
    if isinstance(schedule, list):
        assert rec["block_schedules"] == [{"name": None, "sizes": schedule}]
    else:
        assert rec["block_schedules"] == [] and rec["config"]["schedule"] == "threshold:0.5"
        assert max(rec["calls_per_row"]) <= b.nfe


def test_the_text_rule_equals_the_rule_object():
    model = TinyLLaDA(seed=2)
    run = lambda s: ms.generate(model, gen_length=8, schedule=s, num_samples=2, temperature=0.5,
                                generator=torch.Generator().manual_seed(1))
    a, b = run("threshold:0.3"), run(rules.threshold(0.3))
    assert torch.equal(a.sequences, b.sequences) and a.nfe == b.nfe


def test_every_field_has_help_and_the_cli_exposes_all_but_output_shape():
    import dataclasses

    from mdm_sched.config import cli_fields

    for f in dataclasses.fields(MaskedGenerationConfig):
        assert len(f.metadata.get("help", "")) > 10, f.name
    exposed = {f.name for f, _ in cli_fields()}
    assert exposed == {f.name for f in dataclasses.fields(MaskedGenerationConfig)} - {"return_history"}
    assert "PER BLOCK" in MaskedGenerationConfig.__dataclass_fields__["schedule"].metadata["help"]
    assert np.all([c.parse is None or callable(c.parse) for _, c in cli_fields()])
