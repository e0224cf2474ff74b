"""Instruct prompts: messages= / apply_chat_template=True put exactly the templated ids on the canvas, with the
special tokens each family's reference sampler adds (LLaDA's chat.py: BOS from the tokenizer; Dream: the
template's own tokens). Tokenizers are real PreTrainedTokenizerFast objects built offline, with Jinja templates."""
from __future__ import annotations

import pytest
import torch
from test_models import TinyDream, TinyLLaDA

import mdm_sched as ms
from mdm_sched.text import as_conversations

SPECIAL = ["<pad>", "<unk>", "<|startoftext|>", "<|endoftext|>", "<|mdm_mask|>", "<|start_header_id|>",
           "<|end_header_id|>", "<|eot_id|>", "<|im_start|>", "<|im_end|>"]
WORDS = ["user", "assistant", "system", "hello", "world", "how", "are", "you", "You", "a", "helpful", ".", "hi",
         "there", "what", "is", "two", "plus", "?"]

# LLaDA-8B-Instruct's format (Llama-3 headers); with_bos: the template renders the BOS itself as well
LLADA_TEMPLATE = ("{% for m in messages %}{% if loop.index0 == 0 and with_bos %}{{ bos_token }}{% endif %}"
                  "<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] | trim }}<|eot_id|>"
                  "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
# Dream-v0-Instruct's format (Qwen2.5 ChatML with a default system prompt)
DREAM_TEMPLATE = ("{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant."
                  "<|im_end|>\n{% endif %}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                  "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def chat_tokenizer(template: str, adds_bos: bool = True, with_bos: bool = False):
    """A word-level fast tokenizer; ``adds_bos``: its post-processor prepends BOS (as LLaDA's does)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIAL + WORDS)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    if adds_bos:
        core.post_processor = processors.TemplateProcessing(single="<|startoftext|> $A", pair="<|startoftext|> $A $B",
                                                            special_tokens=[("<|startoftext|>", vocab["<|startoftext|>"])])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                                  pad_token="<pad>", unk_token="<unk>", mask_token="<|mdm_mask|>",
                                  additional_special_tokens=SPECIAL[5:])
    tok.chat_template = template.replace("with_bos", "true" if with_bos else "false")
    return tok


def ids(tok, *tokens: str) -> list[int]:
    """Ids of tokens listed by hand (the expected prompt, written without the code under test)."""
    out = tok.convert_tokens_to_ids(list(tokens))
    assert tok.unk_token_id not in out
    return out


def llada_like(tok, seed: int = 0):
    return ms.wrap(TinyLLaDA(vocab_size=len(tok), mask_token_id=tok.mask_token_id, seed=seed), tokenizer=tok)


def dream_like(tok, seed: int = 0):
    return ms.wrap(TinyDream(vocab_size=len(tok), mask_token_id=tok.mask_token_id, seed=seed), tokenizer=tok)


def prompt_rows(out) -> list[list[int]]:
    """The real (unpadded) prompt ids of each row of a generate() output."""
    p = out.prompt_length
    return [row[:p][attn[:p].bool()].tolist() for row, attn in zip(out.sequences, out.attention_mask)]


HELLO = [{"role": "user", "content": "hello world"}]
LLADA_HELLO = ("<|startoftext|>", "<|start_header_id|>", "user", "<|end_header_id|>", "hello", "world", "<|eot_id|>",
               "<|start_header_id|>", "assistant", "<|end_header_id|>")


@pytest.mark.parametrize("with_bos", [False, True])
def test_llada_chat_prompt_has_exactly_one_bos(with_bos):
    """LLaDA: template to text, then the tokenizer adds BOS; a template that renders BOS too still gives one."""
    tok = chat_tokenizer(LLADA_TEMPLATE, adds_bos=True, with_bos=with_bos)
    out = ms.generate(llada_like(tok), messages=[HELLO], gen_length=6, schedule=3, order="confidence", temperature=0)
    assert prompt_rows(out) == [ids(tok, *LLADA_HELLO)]
    assert out.generated.shape == (1, 6) and (out.generated != tok.mask_token_id).all()


def test_dream_chat_prompt_is_the_templates_own_tokens():
    """Dream: apply_chat_template(..., return_dict=True) ids, so no BOS even when the tokenizer would add one."""
    tok = chat_tokenizer(DREAM_TEMPLATE, adds_bos=True)
    out = ms.generate(dream_like(tok), messages=HELLO, gen_length=4, schedule=2, order="entropy", temperature=0)
    want = ids(tok, "<|im_start|>", "system", "You", "are", "a", "helpful", "assistant", ".", "<|im_end|>",
               "<|im_start|>", "user", "hello", "world", "<|im_end|>", "<|im_start|>", "assistant")
    assert prompt_rows(out) == [want]


def test_same_tokenizer_different_family_different_special_tokens():
    """The difference lives in the family entry: one tokenizer, one template, BOS only for LLaDA."""
    tok = chat_tokenizer(LLADA_TEMPLATE, adds_bos=True)
    llada = llada_like(tok).encode_chat(HELLO)[0]
    dream = dream_like(tok).encode_chat(HELLO)[0]
    assert llada == [tok.bos_token_id, *dream] and tok.bos_token_id not in dream


def test_batch_of_conversations_left_padded_and_repeated():
    tok = chat_tokenizer(LLADA_TEMPLATE, adds_bos=True)
    convs = [HELLO, [{"role": "system", "content": "You are helpful ."}, {"role": "user", "content": "what is two plus two ?"}]]
    out = ms.generate(llada_like(tok, seed=1), messages=convs, gen_length=5, schedule=5, num_samples=2,
                      generator=torch.Generator().manual_seed(0))
    second = ids(tok, "<|startoftext|>", "<|start_header_id|>", "system", "<|end_header_id|>", "You", "are", "helpful",
                 ".", "<|eot_id|>", "<|start_header_id|>", "user", "<|end_header_id|>", "what", "is", "two", "plus",
                 "two", "?", "<|eot_id|>", "<|start_header_id|>", "assistant", "<|end_header_id|>")
    assert prompt_rows(out) == [ids(tok, *LLADA_HELLO)] * 2 + [second] * 2
    assert out.attention_mask[:2, :len(second) - len(LLADA_HELLO)].eq(0).all()  # the shorter chat is left-padded


def test_apply_chat_template_with_string_prompts_equals_messages():
    tok = chat_tokenizer(LLADA_TEMPLATE, adds_bos=True)
    mlm = llada_like(tok)
    kw = dict(gen_length=6, schedule=3, order="confidence", temperature=0)
    by_flag = ms.generate(mlm, ["hello world", "how are you"], apply_chat_template=True, **kw)
    by_messages = ms.generate(mlm, messages=[HELLO, [{"role": "user", "content": "how are you"}]], **kw)
    assert torch.equal(by_flag.sequences, by_messages.sequences)
    assert prompt_rows(ms.generate(mlm, "hello world", apply_chat_template=True, **kw)) == [ids(tok, *LLADA_HELLO)]
    plain = ms.generate(mlm, "hello world", **kw)  # without the flag a string is plain text: no template
    assert prompt_rows(plain) == [ids(tok, "hello", "world")]


def test_chat_input_errors_name_the_fix():
    tok = chat_tokenizer(LLADA_TEMPLATE)
    mlm = llada_like(tok)
    with pytest.raises(ValueError, match="not both"):
        ms.generate(mlm, "hi", messages=HELLO, gen_length=2, schedule=1)
    with pytest.raises(ValueError, match="string prompts"):
        ms.generate(mlm, [[5, 6]], apply_chat_template=True, gen_length=2, schedule=1)
    with pytest.raises(TypeError, match="apply_chat_template must be"):
        ms.generate(mlm, "hi", apply_chat_template="yes", gen_length=2, schedule=1)
    with pytest.raises(TypeError, match="messages must be"):
        ms.generate(mlm, messages=[{"role": "user"}], gen_length=2, schedule=1)
    tok.chat_template = None  # a base model's tokenizer: no fallback to some default template
    with pytest.raises(ValueError, match="chat template"):
        ms.generate(llada_like(tok), messages=HELLO, gen_length=2, schedule=1)
    with pytest.raises(TypeError, match="tokenizer"):
        ms.generate(TinyLLaDA(), messages=HELLO, gen_length=2, schedule=1)


def test_as_conversations_shapes():
    assert as_conversations(HELLO) == [HELLO]
    assert as_conversations([HELLO, HELLO]) == [HELLO, HELLO]
    for bad in ([], "hello", [[]], [["hello"]], [{"role": "user", "content": 3}]):
        with pytest.raises(TypeError, match="messages must be"):
            as_conversations(bad)
