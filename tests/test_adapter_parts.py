"""The adapter's parts one by one: token policy, text codec, layout, positions-only head."""
from __future__ import annotations

from types import SimpleNamespace
from typing import ClassVar

import pytest
import torch
from test_models import TinyLLaDA
from torch import nn

from mdm_sched import heads as heads_mod
from mdm_sched.families import FAMILIES, Family
from mdm_sched.heads import PositionsHead, head_candidates
from mdm_sched.layout import Layout, max_content_length
from mdm_sched.text import TextCodec
from mdm_sched.tokens import TokenPolicy, first_int, token_ids


class CharTokenizer:
    """A whitespace tokenizer over a tiny vocabulary, with the HF attributes the adapter reads."""

    vocab: ClassVar[dict[str, int]] = {"<pad>": 0, "<cls>": 1, "<sep>": 2, "<mask>": 3, "<unk>": 4,
                                       "A": 5, "C": 6, "D": 7, "E": 8}
    pad_token_id, cls_token_id, sep_token_id, mask_token_id, unk_token_id = 0, 1, 2, 3, 4
    mask_token, unk_token = "<mask>", "<unk>"
    all_special_ids: ClassVar[list[int]] = [0, 1, 2, 3, 4]

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[self.vocab.get(t, 4) for t in text.split()] for text in texts]}

    def convert_tokens_to_ids(self, token):
        return self.vocab.get(token, 4)

    def convert_ids_to_tokens(self, ids):
        inv = {v: k for k, v in self.vocab.items()}
        return [inv[i] for i in ids]

    def batch_decode(self, rows, skip_special_tokens=True):
        return [" ".join(t for t in self.convert_ids_to_tokens(r) if not (skip_special_tokens and t.startswith("<")))
                for r in rows]


def _plain(config: SimpleNamespace | None = None) -> nn.Module:
    module = nn.Linear(2, 2)
    if config is not None:
        module.config = config
    return module


# -- token policy -------------------------------------------------------------------------------------

def test_token_policy_resolution_order():
    cfg = SimpleNamespace(mask_token_id=9, pad_token_id=7, eos_token_id=[6, 8])
    llada = FAMILIES["llada"]
    assert TokenPolicy.resolve(llada, _plain(cfg)).mask_token_id == 9                       # config
    assert TokenPolicy.resolve(llada, _plain(cfg), CharTokenizer()).mask_token_id == 3      # tokenizer over config
    with pytest.raises(ValueError, match="contradicts the tokenizer's mask token"):  # explicit vs tokenizer: refused
        TokenPolicy.resolve(llada, _plain(cfg), CharTokenizer(), mask_token_id=5)
    forced = TokenPolicy.resolve(llada, _plain(cfg), CharTokenizer(), mask_token_id=5, force_mask_token_id=True)
    assert forced.mask_token_id == 5  # ... unless the user says so
    assert TokenPolicy.resolve(llada, _plain()).mask_token_id == llada.default_mask_token_id    # family default
    assert TokenPolicy.resolve(llada, _plain(cfg)).eos_token_id == 6                        # first of a list
    with pytest.raises(ValueError, match="mask_token_id=<id>"):
        TokenPolicy.resolve(FAMILIES["module"], _plain())
    with pytest.raises(ValueError, match="mask_token_id must be >= 0"):
        TokenPolicy.resolve(llada, _plain(), mask_token_id=-1)


def test_special_token_policy_follows_the_family():
    tok = CharTokenizer()
    bert = TokenPolicy.resolve(FAMILIES["bert"], _plain(), tok)
    assert bert.framing == (1, 2) and bert.never == {0, 1, 2, 3, 4}
    diffusion = TokenPolicy.resolve(FAMILIES["llada"], _plain(), tok)
    assert diffusion.framing == (None, None) and diffusion.never == {0, 3}  # mask and pad only
    pad_is_eos = TokenPolicy.resolve(FAMILIES["llada"], _plain(), mask_token_id=3, pad_token_id=8, eos_token_id=8)
    assert pad_is_eos.never == {3}  # EOS used as padding must stay samplable
    with pytest.raises(ValueError, match="framing="):
        TokenPolicy.resolve(FAMILIES["llada"], _plain(), tok, framing=(1, 2))


def test_never_sampled_mask_is_cached_and_honours_allowed_tokens():
    policy = TokenPolicy.resolve(FAMILIES["llada"], _plain(), CharTokenizer(), suppress_tokens=["E"],
                                 allowed_tokens=["A", "C", "D", "E"])
    mask = policy.never_sampled(9)
    assert mask.dtype == torch.bool and (~mask).nonzero().squeeze(1).tolist() == [5, 6, 7]
    assert policy.never_sampled(9, "cpu") is mask and policy.never_sampled(9, torch.device("cpu")) is mask
    assert policy.never_sampled(12).shape == (12,)
    with pytest.raises(ValueError, match="empty"):
        TokenPolicy.resolve(FAMILIES["llada"], _plain(), mask_token_id=3, allowed_tokens=[])


def test_token_id_helpers():
    assert first_int(None, [4, 5], 6) == 4 and first_int(True, None) is None
    assert first_int(torch.tensor(3)) == 3
    assert token_ids(["A", 7, torch.tensor(2)], CharTokenizer(), "x") == [5, 7, 2]
    with pytest.raises(ValueError, match="not in the tokenizer's vocabulary"):
        token_ids(["Z"], CharTokenizer(), "allowed_tokens")
    with pytest.raises(ValueError, match="no tokenizer"):
        token_ids(["A"], None, "suppress_tokens")
    with pytest.raises(TypeError, match="token ids"):
        token_ids([1.5], None, "suppress_tokens")


# -- text codec ---------------------------------------------------------------------------------------

def test_text_codec_residue_separator():
    codec = TextCodec(CharTokenizer(), residue_separator=" ", pad_token_id=0)
    assert codec.encode("AC<mask>D") == [[5, 6, 3, 7]]  # the mask token stays whole
    assert codec.decode([[0, 5, 6, 3, 7]]) == ["ACD"]    # padding and specials dropped, residues joined
    assert codec.decode(torch.tensor([5, 8])) == ["AE"]  # one flat row
    plain = TextCodec(CharTokenizer())
    assert plain.encode(["A C"]) == [[5, 6]] and plain.decode([[5, 6, 0]]) == ["A C"]
    with pytest.raises(TypeError, match="needs a tokenizer"):
        TextCodec(None).encode("AC")
    with pytest.raises(TypeError, match="list of strings"):
        plain.encode([[1, 2]])


# -- layout -------------------------------------------------------------------------------------------

def test_layout_reframes_left_padded_rows_right_padded():
    layout = Layout(FAMILIES["bert"], framing=(1, 2), pad_token_id=0)
    ids = torch.tensor([[0, 0, 5, 6], [7, 8, 9, 10]])
    attn = ids != 0
    inputs = layout(ids, attn)
    assert inputs.input_ids.tolist() == [[1, 5, 6, 2, 0, 0], [1, 7, 8, 9, 10, 2]]
    assert inputs.attention_mask.tolist() == [[True] * 4 + [False] * 2, [True] * 6]
    assert inputs.position_ids is None
    assert inputs.index[0, 2:].tolist() == [1, 2] and inputs.index[1].tolist() == [1, 2, 3, 4]
    assert layout(ids[1:], attn[1:]).attention_mask is None  # no padding: no mask passed


def test_layout_shift_and_position_ids():
    layout = Layout(FAMILIES["dream"], pad_token_id=0, accepts_position_ids=True)
    inputs = layout(torch.tensor([[0, 5, 6, 7]]), torch.tensor([[False, True, True, True]]))
    assert inputs.position_ids.tolist() == [[0, 0, 1, 2]]
    assert inputs.index[0, 1:].tolist() == [1, 1, 2]  # first real token reads its own logits, then j - 1
    no_pos = Layout(FAMILIES["dream"], accepts_position_ids=False)
    assert no_pos(torch.tensor([[0, 5]]), torch.tensor([[False, True]])).position_ids is None
    assert Layout(FAMILIES["llada"])(torch.tensor([[4, 5]]), torch.ones(1, 2, dtype=torch.bool)).index.tolist() == [[0, 1]]


def test_forward_mask_takes_the_form_the_family_forward_takes():
    attn = torch.tensor([[False, True, True], [True, True, True]])
    hf = Layout(FAMILIES["llada"]).forward_mask(attn)
    assert hf.dtype == torch.long and hf.tolist() == [[0, 1, 1], [1, 1, 1]]
    pairwise = Layout(FAMILIES["dream"]).forward_mask(attn)
    assert pairwise.dtype == torch.bool and pairwise.shape == (2, 1, 3, 3)
    assert pairwise[0, 0].tolist() == [[False] * 3, [False, True, True], [False, True, True]] and pairwise[1].all()
    assert Layout(FAMILIES["dream"]).forward_mask(None) is None


def test_max_content_length():
    roberta_like = nn.Module()
    roberta_like.embeddings = SimpleNamespace(position_embeddings=nn.Embedding(66, 4, padding_idx=1))
    assert max_content_length(roberta_like, n_framing=2) == 62  # 66 - (padding_idx + 1) - CLS/SEP
    assert max_content_length(_plain(SimpleNamespace(max_sequence_length=64)), n_framing=0) == 64
    assert max_content_length(_plain(), n_framing=0) is None
    assert max_content_length(_plain(), 0, explicit=10) == 10
    with pytest.raises(ValueError, match="max_length"):
        max_content_length(_plain(), 0, explicit=0)


# -- positions-only head ------------------------------------------------------------------------------

def _forward_of(model: nn.Module, counter: list[int]):
    def forward(ids, attn, position_ids):
        counter.append(ids.shape[1])
        return model(ids, attention_mask=attn).logits
    return forward


def test_head_verifies_once_then_applies_only_at_positions(monkeypatch):
    model = TinyLLaDA().double()
    checks: list[int] = []
    real = heads_mod._head_matches
    monkeypatch.setattr(heads_mod, "_head_matches", lambda *a: checks.append(1) or real(*a))
    head = PositionsHead(model)
    assert head.state == "unverified" and head.candidates == head_candidates(model) == [model.lm_head]
    layout = Layout(FAMILIES["llada"])
    ids = torch.randint(0, 39, (2, 20), generator=torch.Generator().manual_seed(0))
    inputs = layout(ids, torch.ones_like(ids, dtype=torch.bool))
    rows, cols = torch.tensor([0, 1, 1]), torch.tensor([3, 0, 19])
    calls: list[int] = []
    with torch.inference_mode():  # as inside MaskedLM.logits
        for _ in range(2):
            got = head.logits_at(_forward_of(model, calls), inputs, rows, cols)
            torch.testing.assert_close(got, model(ids).logits[rows, cols])
    assert head.state == "verified" and len(checks) == 1
    assert calls == [16, 20, 20]  # one 16-token probe, then one body forward per call


def test_head_off_gives_none():
    model = TinyLLaDA()
    inputs = Layout(FAMILIES["llada"])(torch.tensor([[1, 2]]), torch.ones(1, 2, dtype=torch.bool))
    off = PositionsHead(model, enabled=False)
    assert off.state == "off"
    assert off.logits_at(_forward_of(model, []), inputs, torch.tensor([0]), torch.tensor([1])) is None
    assert PositionsHead(nn.Linear(2, 2)).candidates == []  # nothing that looks like an LM head


def test_family_without_head_shortcut_never_looks_for_one():
    from mdm_sched.models import MaskedLM

    assert MaskedLM(TinyLLaDA(), family="module").head.state == "off"
    assert MaskedLM(TinyLLaDA(), family=Family("toy_unregistered", position_ids=True)).head.state == "unverified"
