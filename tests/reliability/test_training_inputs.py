"""`kinema train` with bad configs and bad data folders: one line, exit 2, and no run folder left
behind (nothing half-made to resume from or to confuse the next run)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from .conftest import assert_cli_refuses

REPO = Path(__file__).resolve().parents[2]


def _config(name: str, tmp_path: Path, **over) -> dict:
    config = yaml.safe_load((REPO / "configs" / name).read_text())
    config["out_dir"] = str(tmp_path / "run")
    config["steps"] = 1
    for key, value in over.items():
        section, _, field = key.partition(".")
        if field:
            config.setdefault(section, {})
            if value is DROP:
                config[section].pop(field, None)
            else:
                config[section][field] = value
        elif value is DROP:
            config.pop(section, None)
        else:
            config[section] = value
    return config


DROP = object()


def _train_refuses(config, tmp_path, capsys, pattern, text: str | None = None):
    path = tmp_path / "config.yaml"
    path.write_text(text if text is not None else yaml.safe_dump(config))
    assert_cli_refuses(["train", str(path), "--no-progress"], capsys, tmp_path / "run", pattern)
    assert not (tmp_path / "run").exists(), "a failed run left its folder"


VAE_CASES = [
    ({"optim.lr": -1.0}, "optim.lr"),
    ({"optim.lr": float("nan")}, "optim.lr"),
    ({"optim.lr": float("inf")}, "optim.lr"),
    ({"optim.lr": "1e-4"}, "optim.lr"),
    ({"optim.lr": 0.0}, "optim.lr"),
    ({"optim.betas": [0.9]}, "optim.betas"),
    ({"optim.betas": [0.9, 1.5]}, "optim.betas"),
    ({"optim.betas": "0.9, 0.99"}, "optim.betas"),
    ({"optim.weight_decay": -0.1}, "optim.weight_decay"),
    ({"optim.warmup_steps": 1.5}, "optim.warmup_steps"),
    ({"optim.grad_clip": "no"}, "optim.grad_clip"),
    ({"optim.decay_steps": 5}, "decay_steps"),
    ({"optim.mystery": 1}, "mystery"),
    ({"architecture.base_dim": -8}, "base_dim"),
    ({"architecture.base_dim": "eight"}, "base_dim"),
    ({"architecture.z_dim": 0}, "z_dim"),
    ({"architecture.dim_mult": []}, "dim_mult"),
    ({"architecture.unknown_field": 3}, "unknown_field"),
    ({"architecture": [1, 2]}, "architecture"),
    ({"architecture": DROP}, "architecture"),
    ({"model": "wan-vea"}, "model must be one of"),
    ({"model": DROP}, "model must be one of"),
    ({"batch_size": 0}, "batch_size"),
    ({"batch_size": True}, "batch_size"),
    ({"grad_accum": -1}, "grad_accum"),
    ({"steps": -5}, "steps"),
    ({"steps": "many"}, "steps"),
    ({"ema_decay": 1.5}, "ema_decay"),
    ({"checkpoint_every": 0}, "checkpoint_every"),
    ({"precision": "fp16"}, "precision"),
    ({"seed": -1}, "seed"),
    ({"threads": 0}, "threads"),
    ({"device": "meta"}, "not one kinema runs on"),
    ({"device": "mps"}, "mps"),
    ({"data.kind": "webdataset"}, "data.kind"),
    ({"data.size": 0}, "data.size"),
    ({"data.frames": -1}, "data.frames"),
    ({"data.kind": "video_folder"}, "data.path"),
    ({"data.clip_frames": "a clip"}, "data.clip_frames"),
    ({"data.kind": "shapes", "data.size": 64, "data.clip_frames": 9}, "clip_frames must be from 2 to the item's 5 frames"),
    ({"data.kind": "shapes", "data.size": 64, "data.clip_frames": 1}, "clip_frames must be from 2"),
    ({"objective.kl_weight": -1.0}, "kl_weight"),
    ({"objective.sigma_sampling": "uniform"}, "sigma_sampling"),
    ({"latent_cache": True}, "latent_cache"),
    ({"grad_checkpointing": True}, "grad_checkpointing"),
    ({"freeze": "encoder"}, "freeze"),
    ({"objective.adversarial_weight": -0.5}, "adversarial_weight"),
    ({"objective.adversarial_weight": "strong"}, "adversarial_weight"),
    ({"objective.adversarial_start": -1}, "adversarial_start"),
    ({"objective.discriminator_lr": 0.0}, "discriminator_lr"),
    ({"objective.discriminator_channels": 0}, "discriminator_channels"),
    ({"objective.adversarial_weight": 0.5, "data.size": 4}, "needs data.size of at least 8"),
    ({"objective.discriminator_layers": 4}, "discriminator_layers"),
    ({"tokenizer": "runs/x"}, "tokenizer is for"),
    ({"out_dir": DROP}, "out_dir"),
]


@pytest.mark.parametrize("over, pattern", VAE_CASES, ids=lambda v: repr(v)[:50] if isinstance(v, dict) else None)
def test_bad_training_config(over, pattern, tmp_path, capsys):
    _train_refuses(_config("tiny-vae.yaml", tmp_path, **over), tmp_path, capsys, pattern)


@pytest.mark.parametrize(
    "over, pattern",
    [
        ({"freeze": ["quantizer"]}, "codebook was never trained"),  # nothing seeded it: no init_from
        ({"freeze": ["quantizer.codebook"]}, "names no parameter"),  # a buffer, not a module
        ({"freeze": ["codebook"]}, "names no parameter.*quantizer"),
        ({"objective.adversarial_weight": 0.5, "data.size": 6}, "needs data.size of at least 8"),
        ({"objective.adversarial_start": 1.5}, "adversarial_start"),
        ({"freeze": ["encoder", "conv1", "quant_proj", "quantizer", "post_quant_proj", "conv2", "decoder"]}, "leaves no parameter to train"),
    ],
)
def test_bad_vq_tokenizer_config(over, pattern, tmp_path, capsys):
    _train_refuses(_config("tiny-vq.yaml", tmp_path, **over), tmp_path, capsys, pattern)


@pytest.mark.parametrize(
    "text, pattern",
    [
        ("model: wan-vae\narchitecture: {base_dim: 8\n", "not valid YAML"),
        ("- model\n- wan-vae\n", "must hold a mapping"),
        ("", "must hold a mapping"),
        ("\xff\xfe", "YAML|mapping"),
    ],
)
def test_unreadable_training_config(text, pattern, tmp_path, capsys):
    _train_refuses(None, tmp_path, capsys, pattern, text=text)


def test_missing_training_config(tmp_path, capsys):
    assert_cli_refuses(["train", str(tmp_path / "nope.yaml")], capsys, tmp_path, "training config not found")


@pytest.mark.parametrize(
    "over, pattern",
    [
        ({"vae": str(Path("/no/such/vae"))}, "vae|not found"),
        ({"text_encoder": "clip"}, "text_encoder must be one of"),
        ({"text_max_length": 0}, "text_max_length"),
        ({"caption_dropout": 1.5}, "caption_dropout"),
        ({"objective.logit_std": -1.0}, "logit_std"),
        ({"objective.past_share": 2.0}, "past_share"),
        ({"objective.past_share": "half"}, "past_share"),
        ({"objective.past_sigma": 1.0}, "past_sigma"),
        ({"objective.past_sigma": -0.1}, "past_sigma"),
        ({"objective.past_frames": [0, 2]}, "past_frames"),
        ({"objective.past_frames": "three"}, "past_frames"),
        ({"objective.past_from_data": "yes"}, "past_from_data"),
        ({"objective.past_roundtrip": 1.5}, "past_roundtrip"),
        ({"objective.past_roundtrip": "often"}, "past_roundtrip"),
        ({"objective.past_length": 3}, "past_length"),
        ({"objective.adversarial_weight": 0.5}, "unknown key.*adversarial_weight"),  # a codec's setting, not a transformer's
        ({"init_from": "/no/such/checkpoint"}, "init_from|not found"),
    ],
)
def test_bad_transformer_config(over, pattern, tmp_path, capsys):
    config = _config("tiny-transformer.yaml", tmp_path, **{"vae": str(tmp_path / "missing-vae"), **over})
    _train_refuses(config, tmp_path, capsys, pattern)


# ------------------------------------------------------------------------------------------------
# Data folders
# ------------------------------------------------------------------------------------------------
def _folder(tmp_path: Path, how: str) -> Path:
    from kinema.video import write_video

    folder = tmp_path / "videos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    write_video(rng.integers(0, 256, (9, 24, 24, 3), dtype=np.uint8), folder / "a.mp4", fps=8)
    lines = [{"file": "a.mp4", "caption": "a red ball"}]
    if how == "corrupt-video":
        (folder / "b.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(200))
        lines.append({"file": "b.mp4", "caption": "broken"})
    elif how == "text-as-video":
        (folder / "b.mp4").write_text("not a video")
        lines.append({"file": "b.mp4", "caption": "broken"})
    elif how == "short-video":
        write_video(rng.integers(0, 256, (3, 24, 24, 3), dtype=np.uint8), folder / "b.mp4", fps=8)
        lines.append({"file": "b.mp4", "caption": "too short"})
    elif how == "missing-video":
        lines.append({"file": "gone.mp4", "caption": "nowhere"})
    elif how == "escaping-path":
        lines.append({"file": "../a.mp4", "caption": "outside"})
    if how == "no-captions":
        return folder
    text = "\n".join(json.dumps(x) for x in lines) + "\n"
    if how == "captions-not-json":
        text = '{"file": "a.mp4", "caption": "a red ball"}\nthis is not json\n'
    elif how == "captions-missing-key":
        text = '{"file": "a.mp4"}\n'
    elif how == "captions-empty":
        text = ""
    elif how == "caption-null":
        text = '{"file": "a.mp4", "caption": null}\n'
    elif how == "captions-not-utf8":
        (folder / "captions.jsonl").write_bytes(b'{"file": "a.mp4", "caption": "caf\xe9"}\n')
        return folder
    (folder / "captions.jsonl").write_text(text)
    return folder


@pytest.mark.parametrize(
    "how, pattern",
    [
        ("no-captions", "captions.jsonl"),
        ("captions-not-json", "jsonl:2 is not valid JSON"),
        ("captions-missing-key", "caption"),
        ("captions-empty", "lists nothing"),
        ("caption-null", "has caption null; it must be a string"),
        ("captions-not-utf8", "is not UTF-8 text"),
        ("corrupt-video", "could not read video|no video stream"),
        ("text-as-video", "could not read video|no video stream"),
        ("short-video", "has 3 frames; clips need 5"),
        ("missing-video", "gone.mp4"),
        ("escaping-path", "inside"),
    ],
)
def test_bad_data_folder(how, pattern, tmp_path, capsys):
    folder = _folder(tmp_path, how)
    config = _config("tiny-vae.yaml", tmp_path, **{"data.kind": "video_folder", "data.path": str(folder), "data.size": 16})
    _train_refuses(config, tmp_path, capsys, pattern)


def test_missing_data_folder(tmp_path, capsys):
    config = _config("tiny-vae.yaml", tmp_path, **{"data.kind": "video_folder", "data.path": str(tmp_path / "nowhere")})
    _train_refuses(config, tmp_path, capsys, "video folder not found")


def test_a_good_data_folder_trains(tmp_path):
    """The control: the same folder without the fault trains and exports."""
    from kinema.training import train

    folder = _folder(tmp_path, "good")
    config = _config("tiny-vae.yaml", tmp_path, **{"data.kind": "video_folder", "data.path": str(folder), "data.size": 16})
    assert (train(config, progress=False) / "config.json").exists()
