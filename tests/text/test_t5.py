"""The T5 text-encoder seam: diffusers layout, original Wan layout, padding convention."""

from __future__ import annotations

import pytest
import torch

from kinema.checkpoints.io import save_safetensors
from kinema.checkpoints.t5_keys import WAN_T5_KEYS
from kinema.errors import CheckpointError
from kinema.text.encoder import clean_prompt
from kinema.text.t5 import T5TextEncoder
from tests.helpers import make_tokenizer, make_umt5

PROMPTS = ["a red circle moving left", "the cat walks on grass in snow at night"]


def reference_states(model, tokenizer, prompts, max_length):
    """diffusers' WanPipeline._get_t5_prompt_embeds, restated: pad to max_length, trim, zero-pad."""
    t = tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True, add_special_tokens=True,
                  return_attention_mask=True, return_tensors="pt")
    seq_lens = t.attention_mask.gt(0).sum(dim=1)
    states = model(t.input_ids, t.attention_mask).last_hidden_state
    return torch.stack([torch.cat([u[:v], u.new_zeros(max_length - v, u.size(1))]) for u, v in zip(states, seq_lens)])


@pytest.fixture
def umt5_dir(tmp_path):
    model = make_umt5()
    model.save_pretrained(tmp_path / "text_encoder")
    tokenizer = make_tokenizer(tmp_path / "tokenizer")
    return tmp_path, model, tokenizer


def test_diffusers_layout_matches_reference_padding(umt5_dir):
    root, model, tokenizer = umt5_dir
    enc = T5TextEncoder.from_diffusers(root / "text_encoder", root / "tokenizer", max_length=24)
    out = enc(PROMPTS)
    ref = reference_states(model, tokenizer, PROMPTS, 24)
    assert out.shape == (2, 24, 32)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    n0 = len(PROMPTS[0].split()) + 1  # words + </s>
    assert out[0, n0:].abs().max() == 0 and out[0, n0 - 1].abs().max() > 0


def test_original_wan_t5_pth_loads_with_weights_only(umt5_dir, tmp_path):
    root, model, tokenizer = umt5_dir
    sd = {k: v for k, v in model.state_dict().items() if k != "encoder.embed_tokens.weight"}
    original = WAN_T5_KEYS.to_theirs(sd)
    assert "blocks.1.ffn.gate.0.weight" in original and "token_embedding.weight" in original
    torch.save(original, tmp_path / "t5.pth")
    enc = T5TextEncoder.from_wan_original(tmp_path / "t5.pth", root / "tokenizer", max_length=24)
    torch.testing.assert_close(enc(PROMPTS), reference_states(model, tokenizer, PROMPTS, 24), atol=1e-5, rtol=0)
    save_safetensors(original, tmp_path / "t5.safetensors")
    enc2 = T5TextEncoder.from_wan_original(tmp_path / "t5.safetensors", root / "tokenizer", max_length=24)
    assert torch.equal(enc2(PROMPTS), enc(PROMPTS))


def test_missing_text_encoder_is_one_line_error(tmp_path):
    make_tokenizer(tmp_path / "tokenizer")
    with pytest.raises(CheckpointError, match="text encoder"):
        T5TextEncoder.from_diffusers(tmp_path / "nope", tmp_path / "tokenizer")


def test_clean_prompt():
    assert clean_prompt("  a &amp;amp; b \n\t c ") == "a & b c"
