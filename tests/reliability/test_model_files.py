"""Broken model directories: truncated, corrupt and wrong-shape weights, NaN weights, bad configs
and indexes, a pickle that would run code. Each is one line and exit 2 with no video written;
nothing a malicious pickle asks for happens."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from kinema.checkpoints.layouts import ASSETS_DIR
from tests.helpers import save_original_wan_layout

from .conftest import assert_cli_refuses, broken_copy, rewrite_safetensors

SMALL = ["--size", "32x32", "--frames", "5", "--steps", "2", "--guidance", "3", "-q"]
TRANSFORMER = Path("transformer") / "diffusion_pytorch_model.safetensors"
VAE = Path("vae") / "diffusion_pytorch_model.safetensors"


def _first_weight(tensors: dict, word: str = "weight") -> str:
    return next(k for k in sorted(tensors) if k.endswith(word) and tensors[k].dim() >= 2)


def _fill(value: float, target: str = "first"):
    def change(tensors):
        keys = sorted(tensors) if target == "all" else [_first_weight(tensors)]
        for k in keys:
            if tensors[k].is_floating_point():
                tensors[k].fill_(value)
        return tensors

    return change


def _drop_one(tensors):
    tensors.pop(_first_weight(tensors))
    return tensors


def _extra(tensors):
    tensors["blocks.0.mystery.weight"] = torch.zeros(2)
    return tensors


def _wrong_shape(tensors):
    k = _first_weight(tensors)
    tensors[k] = torch.zeros(*tensors[k].shape[:-1], tensors[k].shape[-1] + 1)
    return tensors


def _as_int(tensors):
    k = _first_weight(tensors)
    tensors[k] = tensors[k].to(torch.int32)
    return tensors


def _break(root: Path, how: str) -> None:
    t = root / TRANSFORMER
    if how == "truncated":
        t.write_bytes(t.read_bytes()[:1000])
    elif how == "corrupt":
        data = bytearray(t.read_bytes())
        data[8:40] = b"\xff" * 32  # inside the JSON header
        t.write_bytes(bytes(data))
    elif how == "empty-file":
        t.write_bytes(b"")
    elif how == "huge-header":
        t.write_bytes((2**62).to_bytes(8, "little") + b"{}")
    elif how == "not-safetensors":
        t.write_text("this is not a checkpoint\n")
    elif how == "missing-component":
        shutil.rmtree(root / "vae")
    elif how == "missing-weights-file":
        t.unlink()
    elif how == "missing-key":
        rewrite_safetensors(t, _drop_one)
    elif how == "extra-key":
        rewrite_safetensors(t, _extra)
    elif how == "wrong-shape":
        rewrite_safetensors(t, _wrong_shape)
    elif how == "integer-weights":
        rewrite_safetensors(t, _as_int)
    elif how == "vae-wrong-shape":
        rewrite_safetensors(root / VAE, _wrong_shape)
    elif how == "config-not-json":
        (root / "transformer" / "config.json").write_text("{ not json")
    elif how == "config-a-list":
        (root / "transformer" / "config.json").write_text("[1, 2]")
    elif how in ("config-negative-layers", "config-string-layers", "config-float-heads"):
        path = root / "transformer" / "config.json"
        config = json.loads(path.read_text())
        key, value = {"config-negative-layers": ("num_layers", -1), "config-string-layers": ("num_layers", "two"),
                      "config-float-heads": ("num_attention_heads", 1.5)}[how]  # fmt: skip
        config[key] = value
        path.write_text(json.dumps(config))
    elif how == "index-null":
        (root / "model_index.json").write_text("null")
    elif how == "index-list":
        (root / "model_index.json").write_text("[]")
    elif how == "index-not-json":
        (root / "model_index.json").write_text("{")
    elif how == "index-unknown-pipeline":
        index = json.loads((root / "model_index.json").read_text())
        index["_class_name"] = "MysteryPipeline"
        (root / "model_index.json").write_text(json.dumps(index))
    elif how in ("scheduler-negative-shift", "scheduler-unknown-class", "scheduler-not-json"):
        path = root / "scheduler" / "scheduler_config.json"
        if how == "scheduler-not-json":
            path.write_text("shift = 3")
        else:
            config = json.loads(path.read_text())
            if how == "scheduler-negative-shift":
                config["flow_shift"] = -3.0
            else:
                config["_class_name"] = "MysteryScheduler"
            path.write_text(json.dumps(config))
    elif how.startswith("gguf-"):  # the transformer as a GGUF file instead of safetensors
        t.unlink()
        g = t.with_suffix(".gguf")
        if how == "gguf-not-gguf":
            g.write_text("this is not a checkpoint\n")
        elif how == "gguf-empty":
            g.write_bytes(b"")
        else:
            import gguf
            import numpy as np

            w = gguf.GGUFWriter(str(g), arch="wan")
            w.add_tensor("patch_embedding.weight", np.zeros((1, 84), dtype=np.uint8), raw_dtype=gguf.GGMLQuantizationType.Q2_K)
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_tensors_to_file()
            w.close()
            if how == "gguf-truncated":
                g.write_bytes(g.read_bytes()[:40])
    elif how == "no-tokenizer":
        shutil.rmtree(root / "tokenizer")
    elif how == "tokenizer-corrupt":
        (root / "tokenizer" / "tokenizer.json").write_text("{")
    else:
        raise AssertionError(how)


WAN_CASES = [
    ("truncated", "not a readable safetensors file"),
    ("corrupt", "not a readable safetensors file"),
    ("empty-file", "not a readable safetensors file|empty"),
    ("huge-header", "not a readable safetensors file"),
    ("not-safetensors", "not a readable safetensors file"),
    ("missing-component", "missing component 'vae'"),
    ("missing-weights-file", "transformer"),
    ("missing-key", "missing"),
    ("extra-key", "blocks.0.mystery.weight"),
    ("wrong-shape", "shape"),
    ("integer-weights", "dtype|int32|floating"),
    ("vae-wrong-shape", "shape"),
    ("config-not-json", "config.json"),
    ("config-a-list", "config.json"),
    ("config-negative-layers", "num_layers"),
    ("config-string-layers", "num_layers"),
    ("config-float-heads", "num_attention_heads"),
    ("index-null", "model_index.json must hold a JSON object"),
    ("index-list", "model_index.json must hold a JSON object"),
    ("index-not-json", "model_index.json"),
    ("index-unknown-pipeline", "MysteryPipeline"),
    ("scheduler-negative-shift", "shift"),
    ("scheduler-unknown-class", "MysteryScheduler"),
    ("scheduler-not-json", "scheduler_config.json"),
    ("no-tokenizer", "tokenizer"),
    ("tokenizer-corrupt", "tokenizer"),
    ("gguf-not-gguf", "not a readable GGUF file"),
    ("gguf-empty", "not a readable GGUF file"),
    ("gguf-truncated", "not a readable GGUF file"),
    ("gguf-unsupported-type", "GGML type Q2_K; kinema reads"),
]


@pytest.mark.parametrize("how, pattern", WAN_CASES)
def test_broken_diffusers_model(how, pattern, tiny_wan_dir, tmp_path, capsys):
    root = broken_copy(tiny_wan_dir, tmp_path)
    _break(root, how)
    out = tmp_path / "out"
    assert_cli_refuses(["generate", "a red circle", "--model", str(root), "-o", str(out / "x.mp4"), *SMALL], capsys, out, pattern)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("part", [TRANSFORMER, VAE])
def test_non_finite_weights_give_an_error_not_a_black_video(part, value, tiny_wan_dir, tmp_path, capsys):
    root = broken_copy(tiny_wan_dir, tmp_path)
    rewrite_safetensors(root / part, _fill(value, "all"))
    out = tmp_path / "out"
    assert_cli_refuses(["generate", "a red circle", "--model", str(root), "-o", str(out / "x.mp4"), *SMALL], capsys, out, "NaN or infinite")


def test_token_model_with_nan_weights_is_an_error(tmp_path, capsys):
    root = broken_copy(ASSETS_DIR / "shapes-ar", tmp_path)
    rewrite_safetensors(root / TRANSFORMER, _fill(float("nan"), "all"))
    out = tmp_path / "out"
    assert_cli_refuses(["generate", "a red circle", "--model", str(root), "--frames", "5", "-o", str(out / "x.mp4"), "-q"], capsys, out, "NaN or infinite")


@pytest.mark.parametrize(
    "how, pattern",
    [
        ("card-not-json", "kinema.json"),
        ("card-unknown-pipeline", "pipeline"),
        ("card-bad-default", "kinema.json: defaults: num_frames must be a positive integer; got -3"),
        ("card-nan-guidance", "kinema.json: defaults: guidance_scale must be a finite number"),
        ("card-bad-slide", "kinema.json: defaults.slide must be true or false; got 'no'"),
        ("card-bad-sampler", "temperature"),
        ("tokenizer-missing", "tokenizer"),
    ],
)
def test_broken_kinema_card(how, pattern, tmp_path, capsys):
    root = broken_copy(ASSETS_DIR / "shapes-ar", tmp_path)
    card = json.loads((root / "kinema.json").read_text())
    if how == "card-not-json":
        (root / "kinema.json").write_text("{]")
    elif how == "tokenizer-missing":
        shutil.rmtree(root / "tokenizer")
    else:
        if how == "card-unknown-pipeline":
            card["pipeline"] = "mystery"
        elif how == "card-bad-default":
            card["defaults"]["num_frames"] = -3
        elif how == "card-nan-guidance":
            card["defaults"]["guidance_scale"] = float("nan")
        elif how == "card-bad-slide":
            card["defaults"]["slide"] = "no"
        else:
            card["sampler"]["temperature"] = "hot"
        (root / "kinema.json").write_text(json.dumps(card))
    out = tmp_path / "out"
    assert_cli_refuses(["generate", "a red circle", "--model", str(root), "-o", str(out / "x.mp4"), "-q"], capsys, out, pattern)


@pytest.mark.parametrize("value", [1.5, -0.1, "low", True, float("nan")])
def test_a_card_with_a_bad_past_sigma(value, tmp_path, capsys):
    """The sampler's past_sigma (the level a model trained with a given past holds it at) is checked on load."""
    root = broken_copy(ASSETS_DIR / "shapes", tmp_path)
    card = json.loads((root / "kinema.json").read_text())
    card["sampler"]["past_sigma"] = value
    (root / "kinema.json").write_text(json.dumps(card))
    out = tmp_path / "out"
    assert_cli_refuses(["generate", "a red circle", "--model", str(root), "-o", str(out / "x.mp4"), "-q"], capsys, out, "past_sigma")


class Plant:
    """Unpickling this creates a file: the test checks that the file never appears."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pth_whose_pickle_would_run_code_is_refused_and_nothing_happens(tiny_wan_dir, tmp_path, capsys):
    root = save_original_wan_layout(tiny_wan_dir, tmp_path / "original")
    marker = tmp_path / "pwned"
    torch.save({"encoder.conv1.weight": Plant(marker)}, root / "Wan2.1_VAE.pth")
    out = tmp_path / "out"
    assert_cli_refuses(["generate", "a red circle", "--model", str(root), "-o", str(out / "x.mp4"), *SMALL], capsys, out, "unpickle code")
    assert not marker.exists()


@pytest.mark.parametrize("family", ["wan", "ltx"])
def test_zero_token_negative_prompt_works_with_a_tokenizer_without_eos(family, request, tmp_path):
    """diffusers' tiny test pipelines' tokenizers add no end token: the default empty negative prompt
    is zero tokens, which must still encode (as padding) rather than crash the text encoder."""
    from kinema.cli import main
    from kinema.video import read_video

    model = request.getfixturevalue(f"no_eos_{family}_dir")
    frames = "5" if family == "wan" else "9"
    small = [*SMALL[:2], "--frames", frames, *SMALL[4:]]
    out = tmp_path / "clip.mp4"
    assert main(["generate", "--model", str(model), "--prompt", "a red circle", "-o", str(out), *small]) == 0
    assert read_video(out)[0].shape == (int(frames), 32, 32, 3)
    out2 = tmp_path / "clip2.mp4"
    args = ["generate", "--model", str(model), "--prompt", "a red circle", "--negative-prompt", "  ", "-o", str(out2), *small]
    assert main(args) == 0 and out2.exists()
