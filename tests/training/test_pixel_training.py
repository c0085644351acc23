"""Training the pixel DiT (TTV-1B design) with its own text encoder: DDPM loss, the BPE made from the
captions, the text tower learning from the denoising loss, checkpointing, bf16, config errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from kinema.checkpoints.io import load_safetensors
from kinema.errors import KinemaError
from kinema.training import load_config, train
from kinema.training.loop import (
    METRICS_FILE,
    _trainable,
    accumulate_gradients,
    enable_grad_checkpointing,
)

REPO = Path(__file__).resolve().parents[2]


def pixel_config(out_dir: Path, **over) -> dict:
    return {**yaml.safe_load((REPO / "configs" / "tiny-pixel.yaml").read_text()), "out_dir": str(out_dir), **over}


def _grads(cfg: dict, checkpointing: bool = False) -> dict[str, torch.Tensor]:
    config = load_config(cfg)
    model, objective, dataset = _trainable(config, Path(config.out_dir))
    if checkpointing:
        enable_grad_checkpointing(model)
    accumulate_gradients(model, objective, dataset, config, step=0)
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_the_text_tower_learns_from_the_denoising_loss(tmp_path):
    # One step from adaLN-zero starts with zero modulation: the text's only path is through c, so
    # take a second step's gradients (the first moved the zero-initialised layers).
    cfg = pixel_config(tmp_path / "r", steps=3, caption_dropout=0.0)
    train(cfg, progress=False)
    config = load_config(cfg)
    model, objective, dataset = _trainable(config, Path(config.out_dir))
    model.load_state_dict(load_safetensors(Path(config.out_dir) / "checkpoints" / "step-0000003" / "model.safetensors"))
    accumulate_gradients(model, objective, dataset, config, step=3)
    grads = {n: p.grad for n, p in model.named_parameters()}
    for name in ("text_encoder.token_embedding.weight", "text_encoder.layers.0.qkv.weight", "text_proj.weight"):
        assert grads[name] is not None and grads[name].abs().max() > 0, name


def test_loss_decreases_when_overfitting_two_clips(tmp_path):
    cfg = pixel_config(tmp_path / "o", steps=40, data={"kind": "synthetic", "size": 16, "frames": 4, "length": 2}, caption_dropout=0.0)
    train(cfg, progress=False)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "o" / METRICS_FILE).read_text().splitlines()]
    assert np.mean(losses[-5:]) < 0.85 * np.mean(losses[:5]), losses  # epsilon at random levels: the loss keeps a floor


def test_the_run_trains_its_bpe_once_and_exports_it(tmp_path):
    out = train(pixel_config(tmp_path / "t", steps=2), progress=False)
    run = out.parent
    made = (run / "tokenizer.json").read_text()
    assert (out / "tokenizer.json").read_text() == made
    assert json.loads((out / "config.json").read_text())["_class_name"] == "PixelDiT"
    # the same captions in the same order give the same tokenizer: a second run makes it again alike
    out2 = train(pixel_config(tmp_path / "t2", steps=2), progress=False)
    assert (out2 / "tokenizer.json").read_text() == made
    a, b = load_safetensors(out / "diffusion_pytorch_model.safetensors"), load_safetensors(out2 / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_grad_checkpointing_gives_the_same_gradients_and_bf16_runs(tmp_path):
    cfg = pixel_config(tmp_path / "g")
    a, b = _grads(cfg), _grads(cfg, checkpointing=True)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-7)
    out = train(pixel_config(tmp_path / "bf", steps=1, precision="bf16", grad_checkpointing=True), progress=False)
    assert all(torch.isfinite(v).all() for v in load_safetensors(out / "diffusion_pytorch_model.safetensors").values())


@pytest.mark.parametrize("prediction_type", ["v_prediction", "sample"])
def test_other_prediction_targets_train(prediction_type, tmp_path):
    out = train(pixel_config(tmp_path / prediction_type, steps=1, objective={"prediction_type": prediction_type}), progress=False)
    assert json.loads((out / "training.json").read_text())["objective"]["prediction_type"] == prediction_type


@pytest.mark.parametrize(
    "over, message",
    [
        ({"text_encoder": "minilm"}, r"^a pixel-dit trains its own text encoder: set text_encoder: bpe; got 'minilm'$"),
        ({"text_encoder": "toy"}, r"^a pixel-dit trains its own text encoder"),
        ({"objective": {"prediction_type": "x0"}}, r"prediction_type"),
        ({"objective": {"beta_end": 1.5}}, r"beta_end"),
        ({"latent_cache": True}, r"latent_cache is for .* runs \(a pixel-dit trains on pixels\)"),
    ],
)
def test_bad_pixel_configs_are_one_line_errors(over, message, tmp_path):
    with pytest.raises(KinemaError, match=message):
        load_config(pixel_config(tmp_path, **over))


def test_bad_data_vocabulary_and_encoders_are_refused(tmp_path):
    with pytest.raises(KinemaError, match=r"^data\.frames \(5\) must be a multiple of 2 and data\.size \(16\) of 4 and 4"):
        train(pixel_config(tmp_path / "f", data={"kind": "synthetic", "size": 16, "frames": 5, "length": 2}), progress=False)
    arch = {**pixel_config(tmp_path)["architecture"], "vocab_size": 200}
    with pytest.raises(KinemaError, match=r"^a byte-level BPE needs vocab_size >= 257 \(256 bytes and <\|endoftext\|>\); got 200$"):
        train(pixel_config(tmp_path / "v", architecture=arch), progress=False)
    wan = {**yaml.safe_load((REPO / "configs" / "tiny-transformer.yaml").read_text()), "out_dir": str(tmp_path), "text_encoder": "bpe"}
    with pytest.raises(KinemaError, match=r"^text_encoder bpe trains with a pixel-dit model; a wan-transformer uses a frozen one: minilm, toy$"):
        load_config(wan)
    assert not (tmp_path / "f" / "checkpoints").exists() and not (tmp_path / "v" / "checkpoints").exists()
