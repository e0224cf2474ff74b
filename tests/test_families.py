"""The family registry: entries, registration, detection, and a new family wrapped end to end."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from mdm_sched import families
from mdm_sched.families import FAMILIES, Family, ModelFacts, detect_family, get_family, name_contains, register_family
from mdm_sched.models import wrap


@pytest.fixture
def register():
    """register_family for one test; the registry is restored afterwards."""
    before = dict(families._REGISTRY)

    def _register(family: Family, **kwargs) -> Family:
        return register_family(family, **kwargs)

    yield _register
    families._REGISTRY.clear()
    families._REGISTRY.update(before)


class EchoNext(nn.Module):
    """Logits at position i are a one-hot of the *next* token (Dream's convention, made visible);
    records what it was called with."""

    def __init__(self, vocab_size: int = 12) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.config = SimpleNamespace(model_type="toy-next", vocab_size=vocab_size, mask_token_id=vocab_size - 1)
        self.calls: list[dict] = []

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        self.calls.append({"input_ids": input_ids.clone(), "position_ids": position_ids})
        nxt = torch.roll(input_ids, -1, dims=1)
        return SimpleNamespace(logits=10.0 * nn.functional.one_hot(nxt, self.vocab_size).float())


def test_builtin_entries_say_what_the_adapter_does():
    assert set(FAMILIES) >= {"bert", "llada", "dream", "module"}
    bert, llada, dream, module = (FAMILIES[n] for n in ("bert", "llada", "dream", "module"))
    assert bert.framing and bert.right_pad and bert.suppress_special_tokens and bert.auto_class == "AutoModelForMaskedLM"
    assert dream.shifted_logits and dream.position_ids and dream.pairwise_mask and not llada.shifted_logits
    assert not llada.pairwise_mask and not bert.pairwise_mask  # the [B, L] padding mask of the HF convention
    assert (llada.chat_tokenization, dream.chat_tokenization, bert.chat_tokenization) == ("text", "template", "template")
    assert llada.default_mask_token_id == families.LLADA_MASK_TOKEN_ID and llada.remote_code
    assert module.detect is None and not module.head_shortcut


def test_registry_view_is_live_and_read_only(register):
    with pytest.raises(TypeError):
        FAMILIES["x"] = Family("x")  # type: ignore[index]
    register(Family("toy_view"))
    assert "toy_view" in FAMILIES and "toy_view" in ", ".join(FAMILIES)


def test_register_refuses_duplicates_and_bad_entries(register):
    register(Family("toy_dup"))
    with pytest.raises(ValueError, match="replace=True"):
        register(Family("toy_dup"))
    assert register(Family("toy_dup", shifted_logits=True), replace=True).shifted_logits
    with pytest.raises(ValueError, match="letters, digits"):
        Family("not a name")
    with pytest.raises(ValueError, match="default_mask_token_id"):
        Family("toy_bad", default_mask_token_id=-1)
    with pytest.raises(ValueError, match="chat_tokenization"):
        Family("toy_bad", chat_tokenization="jinja")
    with pytest.raises(ValueError, match="auto_class"):
        Family("toy_bad", auto_class="BertForMaskedLM")
    with pytest.raises(TypeError, match="Family"):
        register_family("toy")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"choose one of.*bert"):
        get_family("gpt")


def test_detection_tries_the_newest_entry_first(register):
    cfg = SimpleNamespace(model_type="bert", architectures=["BertForMaskedLM"])
    assert detect_family(cfg) == "bert"
    register(Family("toy_bert", framing=True, right_pad=True, detect=lambda f: f.model_type == "bert"))
    assert detect_family(cfg) == "toy_bert"  # the narrower, newer entry claims it
    assert detect_family(SimpleNamespace(model_type="roberta")) == "bert"


def test_detection_from_a_module_uses_its_class_name():
    class PlainForMaskedLM(nn.Module):
        pass

    class LLaDALookalike(nn.Module):  # a class name alone never selects a diffusion family
        pass

    assert detect_family(PlainForMaskedLM()) == "bert"
    assert detect_family(LLaDALookalike()) is None
    assert ModelFacts.of(SimpleNamespace(model_type="X", auto_map={"AutoModel": "m.LLaDA"})).names == ("x", "m.llada")
    assert name_contains("LLaDA")(ModelFacts(auto_map=("m.llada",)))


def test_a_new_family_is_one_entry(register):
    """A family registered in one line is detected and drives the layout: shifted logits, position ids."""
    register(Family("toy_next", shifted_logits=True, position_ids=True, detect=lambda f: f.model_type == "toy-next"))
    model = EchoNext()
    mlm = wrap(model)
    assert mlm.family == "toy_next" and mlm.family_spec is FAMILIES["toy_next"]
    ids = torch.tensor([[3, 4, 5, 6], [0, 0, 7, 8]])
    attn = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])
    pred = mlm.logits(ids, attn).argmax(-1)
    # position j reads the logits of j - 1 (which predict token j), a row's first token reads its own
    assert pred[0].tolist() == [4, 4, 5, 6]
    assert pred[1, 2:].tolist() == [8, 8]
    assert model.calls[-1]["position_ids"][1].tolist() == [0, 0, 0, 1]  # 0 on the first real token


def test_a_new_family_with_framing(register):
    register(Family("toy_framed", framing=True, right_pad=True))
    model = EchoNext()
    mlm = wrap(model, family="toy_framed", framing=(1, 2))
    logits = mlm.logits(torch.tensor([[0, 5, 6]]), torch.tensor([[0, 1, 1]]))
    assert model.calls[-1]["input_ids"].tolist() == [[1, 5, 6, 2, 0]]  # re-laid out right-padded, framed
    assert logits.shape == (1, 3, 12)
    assert logits[0, 1:].argmax(-1).tolist() == [6, 2]  # no shift: each position reads its own logits
