"""Prompt extension with a local causal LM: seeded, RNG-neutral, and every bad directory refused in one line."""

from __future__ import annotations

import json
import pickle
import shutil

import pytest
import torch

from kinema.errors import KinemaError
from kinema.seeds import derive_seed
from kinema.text.prompt_extend import EXTEND_INSTRUCTION, TEMPERATURE, TOP_P, PromptExtender, check_extend_dir

from ..helpers import save_lm

PROMPT = "a red ball rolls left"


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory):
    return save_lm(tmp_path_factory.mktemp("chat-lm"), chat=True)


@pytest.fixture(scope="module")
def plain_dir(tmp_path_factory):
    return save_lm(tmp_path_factory.mktemp("plain-lm"), chat=False)


@pytest.fixture(scope="module")
def chat_ext(chat_dir):
    return PromptExtender(chat_dir, max_new_tokens=12)


@pytest.fixture(scope="module")
def plain_ext(plain_dir):
    return PromptExtender(plain_dir, max_new_tokens=12)


def one_line_error(fn, *args, match: str, **kwargs) -> str:
    with pytest.raises(KinemaError, match=match) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message and message.strip() == message and len(message) < 400, message
    return message


# -- extension -------------------------------------------------------------------------------
def test_chat_template_is_used(chat_ext, chat_dir):
    text = chat_ext.model_input(PROMPT)
    assert text == (
        f"<|im_start|>system\n{EXTEND_INSTRUCTION}<|im_end|>\n<|im_start|>user\n{PROMPT}<|im_end|>\n<|im_start|>assistant\n"
    )
    assert chat_ext.name == chat_dir.name and chat_ext.path == chat_dir
    assert next(chat_ext.model.parameters()).dtype == torch.float32 and not chat_ext.model.training


def test_plain_layout_without_chat_template(plain_ext):
    text = plain_ext.model_input("  a red   ball\n")
    assert text.startswith(EXTEND_INSTRUCTION) and text.endswith("\nShort prompt: a red ball\nDetailed prompt:")


@pytest.mark.parametrize("which", ["chat_ext", "plain_ext"])
def test_same_seed_same_text_across_instances(which, request, chat_dir, plain_dir):
    ext = request.getfixturevalue(which)
    again = PromptExtender(chat_dir if which == "chat_ext" else plain_dir, max_new_tokens=12)
    out = ext.extend(PROMPT, 7)
    assert isinstance(out, str) and out and out == again.extend(PROMPT, 7)
    assert out == " ".join(out.split())  # whitespace collapsed
    assert "<|" not in out and EXTEND_INSTRUCTION[:30] not in out  # only the new tokens, special tokens skipped


def test_extend_is_seeded_sampling_of_new_tokens_only(chat_ext):
    """The text is the decoded continuation, sampled from the derived seed, with nothing of the input."""
    ids = chat_ext.tokenizer(chat_ext.model_input(PROMPT), add_special_tokens=False, return_tensors="pt").input_ids
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed("prompt-extend", 7, PROMPT))
        out = chat_ext.model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=TEMPERATURE, top_p=TOP_P,
            max_new_tokens=12, pad_token_id=chat_ext.tokenizer.pad_token_id,
        )
    new = out[0, ids.shape[1]:]
    assert 1 <= len(new) <= 12
    assert chat_ext.extend(PROMPT, 7) == " ".join(chat_ext.tokenizer.decode(new, skip_special_tokens=True).split())


def test_different_seeds_and_prompts_differ(chat_ext):
    outs = {chat_ext.extend(PROMPT, s) for s in (0, 1, 2)}
    assert len(outs) == 3, outs
    assert chat_ext.extend(PROMPT, 0) != chat_ext.extend("a blue cube flies up", 0)


def test_caller_rng_untouched(chat_ext):
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    expected = torch.rand(4)
    torch.set_rng_state(state)
    chat_ext.extend(PROMPT, 3)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(torch.rand(4), expected)


def test_extend_prompts_deterministic_and_per_index(chat_ext):
    prompts = [PROMPT, PROMPT, "a cat walks on grass"]
    a, b = chat_ext.extend_prompts(prompts, 11), chat_ext.extend_prompts(prompts, 11)
    assert a == b and len(a) == 3 and all(isinstance(x, str) and x for x in a)
    assert a[0] != a[1]  # same text, different index: its own seed
    assert chat_ext.extend_prompts(prompts, 12) != a
    assert chat_ext.extend_prompts([], 11) == []


def test_extend_in_plain_layout(plain_ext):
    out = plain_ext.extend(PROMPT, 5)
    assert out and out == plain_ext.extend(PROMPT, 5) and out != plain_ext.extend(PROMPT, 6)


def test_model_writing_nothing_is_one_line_error(chat_ext):
    eos = chat_ext.tokenizer.eos_token_id

    def only_eos(module, args, logits):
        out = torch.full_like(logits, -1e4)
        out[..., eos] = 0
        return out

    handle = chat_ext.model.lm_head.register_forward_hook(only_eos)
    try:
        one_line_error(chat_ext.extend, PROMPT, 0, match="wrote nothing for the prompt")
    finally:
        handle.remove()


@pytest.mark.parametrize("prompt, match", [("", "empty prompt"), ("  \n ", "empty prompt"), (None, "must be a string"), (3, "must be a string")])
def test_bad_prompt(chat_ext, prompt, match):
    one_line_error(chat_ext.extend, prompt, 0, match=match)


@pytest.mark.parametrize("seed", [-1, 2**64, 1.5, True, "3", None])
def test_bad_seed(chat_ext, seed):
    one_line_error(chat_ext.extend, PROMPT, seed, match="seed must be a whole number")
    one_line_error(chat_ext.extend_prompts, [PROMPT], seed, match="seed must be a whole number")


def test_largest_seed_accepted(chat_ext):
    assert chat_ext.extend(PROMPT, 2**64 - 1)


def test_bad_prompt_list(chat_ext):
    one_line_error(chat_ext.extend_prompts, PROMPT, 0, match="list of strings")
    one_line_error(chat_ext.extend_prompts, [PROMPT, ""], 0, match="empty prompt")


@pytest.mark.parametrize("n", [0, -3, True, 2.0])
def test_bad_max_new_tokens(chat_dir, n):
    one_line_error(PromptExtender, chat_dir, max_new_tokens=n, match="max_new_tokens")


# -- refused directories ---------------------------------------------------------------------
def copy_without(src, dst, *names):
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*names))
    return dst


def test_check_extend_dir_accepts_good_dir(chat_dir):
    assert check_extend_dir(str(chat_dir)) == chat_dir


def test_missing_dir(tmp_path):
    msg = one_line_error(PromptExtender, tmp_path / "nope", match="not found")
    assert "nope" in msg and "causal LM" in msg


def test_file_not_dir(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"x")
    one_line_error(PromptExtender, tmp_path / "model.safetensors", match="is a file, not a directory")


def test_no_config(chat_dir, tmp_path):
    d = copy_without(chat_dir, tmp_path / "m", "config.json")
    one_line_error(PromptExtender, d, match="no config.json")


def test_bert_config_refused(chat_dir, tmp_path):
    from transformers import BertConfig

    d = copy_without(chat_dir, tmp_path / "m", "config.json")
    BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64).save_pretrained(str(d))
    one_line_error(check_extend_dir, d, match="'bert' encoder")


def test_t5_config_refused(chat_dir, tmp_path):
    d = copy_without(chat_dir, tmp_path / "m", "config.json")
    (d / "config.json").write_text(json.dumps({"model_type": "t5", "architectures": ["T5EncoderModel"]}))
    one_line_error(check_extend_dir, d, match="'t5' model, which is not a text-generating")


def test_base_model_without_lm_head_refused(chat_dir, tmp_path):
    d = copy_without(chat_dir, tmp_path / "m", "config.json")
    config = json.loads((chat_dir / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**config, "architectures": ["Qwen2Model"]}))
    one_line_error(check_extend_dir, d, match="no language-model head")


def test_config_not_json(chat_dir, tmp_path):
    d = copy_without(chat_dir, tmp_path / "m", "config.json")
    (d / "config.json").write_text("{not json")
    one_line_error(check_extend_dir, d, match="not readable JSON")


class Trap:
    """Unpickling this writes a marker file: proof that the loader ran pickle code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_only_weights_refused_without_unpickling(chat_dir, tmp_path, monkeypatch):
    d = copy_without(chat_dir, tmp_path / "m", "*.safetensors")
    marker = tmp_path / "unpickled"
    state = {k: v.clone() for k, v in PromptExtender(chat_dir).model.state_dict().items()}
    torch.save({**state, "trap": Trap(marker)}, d / "pytorch_model.bin")
    calls = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(a) or pytest.fail("torch.load called"))
    monkeypatch.setattr(pickle, "load", lambda *a, **k: calls.append(a) or pytest.fail("pickle.load called"))
    msg = one_line_error(PromptExtender, d, match="weights only as pickles")
    assert "pytorch_model.bin" in msg and "safetensors" in msg
    assert calls == [] and not marker.exists()


def test_no_weights(chat_dir, tmp_path):
    d = copy_without(chat_dir, tmp_path / "m", "*.safetensors")
    one_line_error(PromptExtender, d, match="has no weights")


def test_no_tokenizer(chat_dir, tmp_path):
    d = copy_without(chat_dir, tmp_path / "m", "tokenizer*", "special_tokens_map.json", "chat_template.*")
    one_line_error(PromptExtender, d, match="no tokenizer files")


def test_corrupt_safetensors(chat_dir, tmp_path):
    d = copy_without(chat_dir, tmp_path / "m", "*.safetensors")
    (d / "model.safetensors").write_bytes(b"\x93garbage, not a safetensors header" * 10)
    one_line_error(PromptExtender, d, match="model.safetensors is not a readable safetensors file")


def test_weights_not_matching_config(chat_dir, tmp_path):
    from safetensors.torch import save_file

    d = copy_without(chat_dir, tmp_path / "m", "*.safetensors")
    save_file({"something.else": torch.zeros(2)}, str(d / "model.safetensors"))
    one_line_error(PromptExtender, d, match="weights do not match config.json")


def test_unreadable_tokenizer(chat_dir, tmp_path):
    d = copy_without(chat_dir, tmp_path / "m")
    (d / "tokenizer.json").write_text("{broken")
    one_line_error(PromptExtender, d, match="could not load the prompt-extension tokenizer")
