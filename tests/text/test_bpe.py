"""The byte-level BPE a pixel-dit run trains on its captions, and the text encoder built on it."""

from __future__ import annotations

import pytest
import torch

from kinema.errors import CheckpointError, KinemaError
from kinema.text.bpe import (
    END_OF_TEXT,
    OwnTextEncoder,
    load_bpe,
    load_own_text_encoder,
    tokenize,
    train_bpe,
)

CAPTIONS = [f"a {c} {s} moving {d}" for c in ("red", "green", "blue") for s in ("circle", "square") for d in ("left", "right", "up")] * 3


def test_training_is_deterministic_and_learns_the_caption_words(tmp_path):
    a, b = train_bpe(CAPTIONS, 400), train_bpe(CAPTIONS, 400)
    assert a.to_str() == b.to_str()
    assert a.get_vocab_size() <= 400
    for word in ("red", "circle", "moving", "left"):
        assert a.encode(word).tokens == [f"Ġ{word}", END_OF_TEXT], word  # one token per seen word, then the end
    path = tmp_path / "tokenizer.json"
    path.write_text(a.to_str())
    assert load_bpe(tmp_path).encode("a red circle").ids == a.encode("a red circle").ids


def test_any_text_has_ids_case_and_width_folded_and_the_empty_prompt_is_end_of_text():
    tok = train_bpe(CAPTIONS, 300)
    end = tok.token_to_id(END_OF_TEXT)
    assert tok.encode("").ids == [end]
    assert tok.encode("A RED Circle").ids == tok.encode("a red circle").ids
    assert tok.encode("ａ red").ids == tok.encode("a red").ids  # NFKC: full-width letters
    unseen = tok.encode("a magenta hexagon 🙂").ids
    assert unseen[-1] == end and all(0 <= i < tok.get_vocab_size() for i in unseen) and len(unseen) > 4  # byte pieces


def test_tokenize_pads_masks_and_cuts_keeping_the_end():
    tok = train_bpe(CAPTIONS, 300)
    end = tok.token_to_id(END_OF_TEXT)
    ids, mask = tokenize(tok, ["a red circle", ""], max_length=8)
    assert ids.shape == mask.shape == (2, 4) and mask.sum(1).tolist() == [4, 1]
    assert ids[1, 0] == end and ids[0, 3] == end and (ids[~mask] == 0).all()
    ids, mask = tokenize(tok, ["a red circle moving left a blue square moving up"], max_length=5)
    assert ids.shape == (1, 5) and ids[0, -1] == end and bool(mask.all())


def test_a_vocabulary_too_small_for_the_bytes_is_refused():
    with pytest.raises(KinemaError, match=r"^a byte-level BPE needs vocab_size >= 257"):
        train_bpe(CAPTIONS, 256)


def test_bad_tokenizer_files_and_mismatched_models_are_one_line_errors(tmp_path):
    with pytest.raises(CheckpointError, match=r"^no tokenizer at "):
        load_bpe(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"not a tokenizers tokenizer.json"):
        load_bpe(tmp_path)
    from kinema.models.pixel_dit import PIXEL_DIT_PRESETS, PixelDiT

    model = PixelDiT(PIXEL_DIT_PRESETS["ttv-tiny"]())  # 300 ids, 16 positions
    good = tmp_path / "good"
    good.mkdir()
    (good / "tokenizer.json").write_text(train_bpe([f"zebra{i} quokka{i * 7}" for i in range(300)], 400).to_str())
    assert load_bpe(good).get_vocab_size() > 300
    with pytest.raises(CheckpointError, match=r"the tokenizer has \d+ ids but the model's text encoder takes 300"):
        load_own_text_encoder(good, model, 8)
    (good / "tokenizer.json").write_text(train_bpe(CAPTIONS, 300).to_str())
    with pytest.raises(CheckpointError, match=r"text max_length 17 exceeds the model's text_len 16"):
        load_own_text_encoder(good, model, 17)


def test_the_encoder_returns_zero_padded_states_to_max_length():
    from kinema.models.pixel_dit import PIXEL_DIT_PRESETS, PixelDiT

    torch.manual_seed(0)
    model = PixelDiT(PIXEL_DIT_PRESETS["ttv-tiny"]())
    model.init_weights()
    enc = OwnTextEncoder(train_bpe(CAPTIONS, 300), model, max_length=8)
    states = enc(["a red circle", ""])
    assert states.shape == (2, 8, 16) and states.dtype == torch.float32
    assert (states[0, :4].abs().sum(-1) > 0).all() and (states[0, 4:] == 0).all() and (states[1, 1:] == 0).all()
    torch.testing.assert_close(enc(["a red circle"])[0], states[0], rtol=0, atol=1e-6)  # alone or in a batch
    padded, mask = enc.encode_padded(["a red circle", ""])
    assert torch.equal(padded, states) and mask.sum(1).tolist() == [4, 1] and mask.shape == (2, 8)
    with pytest.raises(KinemaError, match="pass a list of prompts"):
        enc("a red circle")
