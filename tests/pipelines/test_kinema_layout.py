"""kinema's own model layout: models trained by `kinema train` load and generate like any other."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import kinema
from kinema.cli import main
from kinema.errors import CheckpointError
from kinema.pipelines.package import KINEMA_MODEL_FILE, write_kinema_model
from kinema.training import train
from kinema.video import read_video
from tests.training.test_training import transformer_config, vae_config

CARD = dict(
    text_encoder={"kind": "minilm", "max_length": 16},
    sampler={"name": "unipc", "shift": 3.0},
    defaults={"height": 16, "width": 16, "num_frames": 5, "num_inference_steps": 3, "guidance_scale": 3.0, "fps": 8},
)


@pytest.fixture(scope="module")
def kinema_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("kinema-model")
    vae = train(vae_config(root / "vae-run", steps=1), progress=False)
    transformer = train(
        transformer_config(
            root / "transformer-run", vae, steps=1, text_encoder="minilm", text_max_length=16,
            architecture={**transformer_config(root, vae)["architecture"], "text_dim": 384, "text_len": 16},
        ),  # fmt: skip
        progress=False,
    )
    return write_kinema_model(root / "model", transformer, vae, **CARD)


def test_trained_model_loads_and_uses_its_card(kinema_model):
    pipe = kinema.load_pipeline(kinema_model, device="cpu")
    out = pipe("a red circle moving left", seed=0)  # every size and step count from the card
    assert out.frames.shape == (1, 5, 16, 16, 3) and out.fps == 8
    again = pipe("a red circle moving left", seed=0)
    assert np.array_equal(out.frames, again.frames)


def test_cli_generate_and_info_on_a_kinema_model(kinema_model, tmp_path, capsys):
    assert main(["generate", "a blue square moving up", "--model", str(kinema_model), "-o", str(tmp_path / "a.mp4"), "-q"]) == 0
    frames, fps = read_video(tmp_path / "a.mp4")
    assert frames.shape == (5, 16, 16, 3) and fps == 8
    assert main(["generate", "x", "--model", str(kinema_model), "--frames", "4", "-o", str(tmp_path / "b.mp4")]) == 2
    assert "2k+1" in capsys.readouterr().err  # this VAE halves time once: its own rule, checked before loading
    assert main(["info", str(kinema_model)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "kinema" and set(info["components"]) == {"transformer", "vae"}


@pytest.mark.parametrize(
    "change",
    [{"text_encoder": {"kind": "clip", "max_length": 16}}, {"sampler": {"name": "unipc", "karras": True}}, {"defaults": {"steps": 3}}],
)
def test_bad_cards_are_refused_and_leave_nothing(kinema_model, tmp_path, change):
    with pytest.raises(CheckpointError):
        write_kinema_model(tmp_path / "bad", kinema_model / "transformer", kinema_model / "vae", **{**CARD, **change})
    assert list(tmp_path.iterdir()) == []


def test_card_with_unknown_keys_does_not_load(kinema_model, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(kinema_model, copy)
    card = json.loads((copy / KINEMA_MODEL_FILE).read_text())
    (copy / KINEMA_MODEL_FILE).write_text(json.dumps({**card, "extra": 1}))
    with pytest.raises(CheckpointError, match="unknown keys"):
        kinema.load_pipeline(copy)


def test_package_command_reads_what_the_transformer_trained_with(kinema_model, tmp_path, capsys):
    run = kinema_model.parent / "transformer-run" / "model"
    out = tmp_path / "packaged"
    assert main(["package", str(run), "--out", str(out), "--shift", "2", "--steps", "3", "--guidance", "4"]) == 0
    card = json.loads((out / KINEMA_MODEL_FILE).read_text())
    assert card["text_encoder"] == {"kind": "minilm", "max_length": 16}
    assert card["sampler"] == {"name": "unipc", "shift": 2.0}
    assert card["defaults"] == {"num_inference_steps": 3, "guidance_scale": 4.0, "height": 16, "width": 16, "num_frames": 5}
    assert main(["generate", "a red circle moving left", "--model", str(out), "-o", str(tmp_path / "p.mp4"), "-q"]) == 0
    assert read_video(tmp_path / "p.mp4")[0].shape == (5, 16, 16, 3)


def test_package_command_errors(kinema_model, tmp_path, capsys):
    run = kinema_model.parent / "transformer-run" / "model"
    vae_run = kinema_model.parent / "vae-run" / "model"
    assert main(["package", str(vae_run), "--out", str(tmp_path / "a")]) == 2  # a VAE is not a transformer
    assert main(["package", str(tmp_path / "nowhere"), "--out", str(tmp_path / "b")]) == 2
    assert main(["package", str(run), "--out", str(tmp_path / "c"), "--vae", str(tmp_path / "no-vae")]) == 2
    assert main(["package", str(run), "--out", str(tmp_path / "d"), "--steps", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and all(line.startswith("error: ") for line in err), err
    assert not any(p.name in "abcd" for p in tmp_path.iterdir())


def test_generate_without_model_uses_the_shipped_default(kinema_model, tmp_path, monkeypatch, capsys):
    from kinema.checkpoints import layouts

    monkeypatch.setattr(layouts, "ASSETS_DIR", tmp_path / "assets")
    assert main(["generate", "a red circle moving left", "-o", str(tmp_path / "none.mp4")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: the shipped model 'shapes' is not in this install") and "--model" in err
    shutil.copytree(kinema_model, tmp_path / "assets" / layouts.SHIPPED_MODELS["shapes"])
    assert main(["generate", "a red circle moving left", "-o", str(tmp_path / "a.mp4"), "-q"]) == 0
    assert read_video(tmp_path / "a.mp4")[0].shape == (5, 16, 16, 3)  # the card's defaults
    assert main(["info", "shapes"]) == 0 and json.loads(capsys.readouterr().out)["format"] == "kinema"
