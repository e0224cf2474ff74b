"""mdm_sched.compat: the one place that knows how transformers releases differ. These tests also run under
4.38.2 and 4.46.3 (scripts/test_compat.sh), where they check the real keyword against the real release."""
from __future__ import annotations

import warnings

import pytest
import torch

from mdm_sched import compat


@pytest.mark.parametrize("text, parsed", [("4.38.2", (4, 38, 2)), ("4.46", (4, 46, 0)), ("5.0.0.dev0", (5, 0, 0)),
                                          ("4.57.0rc1", (4, 57, 0)), ("5.24.0+local", (5, 24, 0))])
def test_versions_parse(text, parsed):
    assert compat._parse(text) == parsed


def test_unreadable_version_raises():
    with pytest.raises(ValueError, match="version"):
        compat._parse("main")


@pytest.mark.parametrize("release, keyword", [((4, 38, 2), "torch_dtype"), ((4, 55, 4), "torch_dtype"),
                                              ((4, 56, 0), "dtype"), ((5, 24, 0), "dtype")])
def test_dtype_keyword_follows_the_release(monkeypatch, release, keyword):
    monkeypatch.setattr(compat, "transformers_version", lambda: release)
    assert compat.dtype_kwargs(torch.bfloat16) == {keyword: torch.bfloat16}
    assert compat.dtype_kwargs(None) == {}


def test_installed_release_loads_in_the_requested_dtype(tmp_path):
    """load_masked_lm's dtype reaches from_pretrained under the installed release (4.x rejected dtype=)."""
    from test_models import tiny_bert

    import mdm_sched as ms

    model = tiny_bert(dtype=torch.float32).model
    model.config.architectures = ["BertForMaskedLM"]
    model.save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no tokenizer in the directory
        for dtype in (torch.bfloat16, "float64", None):
            loaded = ms.load_masked_lm(tmp_path, dtype=dtype, mask_token_id=3, framing=(1, 2))
            assert loaded.dtype == {torch.bfloat16: torch.bfloat16, "float64": torch.float64, None: torch.float32}[dtype]
    assert compat.at_least(compat.MIN_TRANSFORMERS)  # the suite never runs under an unsupported release


def test_only_the_tokenizers_own_chat_template_counts():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>")))
    assert compat.own_chat_template(tok) is None  # 4.38 would fall back to a class-wide default template
    tok.chat_template = "{{ messages[0]['content'] }}"
    assert compat.own_chat_template(tok) == "{{ messages[0]['content'] }}"
