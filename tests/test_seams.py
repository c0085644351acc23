"""The seams of the design, pinned: models import no loaders, a request survives JSON, memory is
estimated and refused before loading, per-call options stay per call, activation checkpointing is
applied from outside, and training runs on CUDA where there is one."""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import kinema
from kinema.errors import KinemaError
from kinema.request import GenerationRequest

PACKAGE = Path(kinema.__file__).resolve().parent


def _imports(path: Path) -> list[str]:
    """The modules a file imports, absolute (``..checkpoints.io`` inside kinema/models -> kinema.checkpoints.io)."""
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                out.append(".".join(base + ([node.module] if node.module else [])))
            else:
                out.append(node.module or "")
    return out


def test_models_import_nothing_from_loaders_pipelines_or_training():
    forbidden = ("kinema.checkpoints", "kinema.pipelines", "kinema.training", "kinema.generation", "kinema.cli")
    offenders = {
        str(path.relative_to(PACKAGE)): name
        for path in (PACKAGE / "models").rglob("*.py")
        for name in _imports(path)
        if name.startswith(forbidden)
    }
    assert offenders == {}


def test_no_module_is_over_700_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 700}
    assert long == {}


def test_a_request_round_trips_through_json():
    request = GenerationRequest(
        prompt=["a red circle moving left", "a 🔵 square"], model="shapes", negative_prompt="blurry", height=64, width=48,
        num_frames=17, num_inference_steps=12, guidance_scale=4.5, shift=3.0, sampler="euler", seed=2**64 - 1,
        num_videos_per_prompt=2, output="out/clip.mp4", device="cpu", dtype="float32",
    )  # fmt: skip
    text = request.to_json()
    assert GenerationRequest.from_json(text) == request
    assert GenerationRequest.from_json(json.loads(text)) == request
    assert json.loads(text)["prompt"] == ["a red circle moving left", "a 🔵 square"]
    with pytest.raises(KinemaError, match="steps"):
        GenerationRequest.from_json({**json.loads(text), "steps": 3})


def test_requests_that_cannot_fit_are_refused_before_loading_saying_what_fits(monkeypatch, tmp_path):
    from kinema.checkpoints.layouts import resolve_model

    rules = resolve_model("shapes").rules()
    request = GenerationRequest("a red circle", num_frames=401)
    need = rules.needed_bytes(request.checked(rules), 1)
    with pytest.raises(KinemaError, match=r"needs about .* of memory .* at most [\d,]+ frames of 64x64 fit") as info:
        request.checked(rules, free_bytes=need // 2)
    most = int(str(info.value).rsplit("at most ", 1)[1].split(" ")[0].replace(",", ""))
    assert 1 <= most < 401 and (most - 1) % rules.temporal_multiple == 0
    GenerationRequest("a red circle", num_frames=most).checked(rules, free_bytes=need // 2)  # the advice holds
    assert rules.needed_bytes(request.checked(rules), 2) > need  # a batch needs more

    import kinema.pipelines.loading as loading
    import kinema.runtime as runtime

    monkeypatch.setattr(runtime, "available_memory", lambda device: 10 * 2**20)  # 10 MiB free
    monkeypatch.setattr(loading, "load_pipeline", lambda *a, **k: pytest.fail("loaded weights"))
    with pytest.raises(KinemaError, match="needs about"):
        kinema.generate(GenerationRequest("a red circle", num_frames=401, output=str(tmp_path / "a.mp4")), progress_bar=False)
    assert list(tmp_path.iterdir()) == []


def test_per_call_options_leave_the_pipeline_as_it_was():
    pipe = kinema.load_pipeline("shapes")
    before = dict(vars(pipe))
    kw = dict(prompt=["a red circle moving left", "a blue square moving up"], num_frames=1, num_inference_steps=2, seed=3,
              output_type="latent")  # fmt: skip
    batched = pipe(**kw, batch_cfg=True, progress_bar=False).latents
    sequential = pipe(**kw, batch_cfg=False, progress_bar=False).latents
    torch.testing.assert_close(batched, sequential, rtol=1e-3, atol=2e-4)  # one batch or two: float order only
    assert {k: v for k, v in vars(pipe).items() if k != "rules"} == {k: v for k, v in before.items() if k != "rules"}


def test_activation_checkpointing_is_applied_from_outside():
    from kinema.models.wan import WanTransformer, WanTransformerConfig
    from kinema.training.loop import enable_grad_checkpointing

    torch.manual_seed(0)
    config = WanTransformerConfig(dim=24, ffn_dim=48, num_heads=2, num_layers=2, in_dim=4, out_dim=4, freq_dim=32, text_dim=16, text_len=8)
    model = WanTransformer(config)
    keys, forward = list(model.state_dict()), type(model.blocks[0]).forward
    x, t, text = torch.randn(1, 4, 1, 4, 4), torch.tensor([500.0]), torch.randn(1, 8, 16)
    plain = model(x, t, model.prepare_context(text))
    plain.square().mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    enable_grad_checkpointing(model)
    assert list(model.state_dict()) == keys and type(model.blocks[0]).forward is forward
    assert "forward" not in vars(model.blocks[0])  # no instance-level replacement
    out = model(x, t, model.prepare_context(text))
    torch.testing.assert_close(out, plain)
    out.square().mean().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], rtol=1e-5, atol=1e-7)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_training_runs_on_cuda(tmp_path):
    import yaml

    from kinema.training import train

    config = yaml.safe_load((PACKAGE.parent / "configs" / "tiny-vae.yaml").read_text())
    config.update(out_dir=str(tmp_path / "run"), steps=2, precision="bf16")
    out = train(config, device="cuda", progress=False)
    from kinema.checkpoints.io import load_safetensors

    assert all(torch.isfinite(v).all() for v in load_safetensors(out / "diffusion_pytorch_model.safetensors").values())


def test_the_same_request_writes_the_same_mp4_bytes(tmp_path):
    """Frames and encode are both deterministic: two runs of one request give one file."""
    from kinema.cli import main

    args = ["generate", "a red circle moving left", "--frames", "9", "--steps", "2", "-q", "--seed", "7"]
    assert main([*args, "-o", str(tmp_path / "a.mp4")]) == 0
    assert main([*args, "-o", str(tmp_path / "b.mp4")]) == 0
    from kinema.video import read_video

    a, b = read_video(tmp_path / "a.mp4")[0], read_video(tmp_path / "b.mp4")[0]
    assert np.array_equal(a, b)
    assert (tmp_path / "a.mp4").read_bytes() == (tmp_path / "b.mp4").read_bytes()


def test_gen_request_fields_are_what_every_front_end_names():
    """The command line's flag table covers every request field it can set (a new field needs a flag
    name for its messages)."""
    from kinema.cli import FLAGS

    fields = {f.name for f in dataclasses.fields(GenerationRequest)}
    assert set(FLAGS) - fields - {"threads"} == set()
    assert fields - set(FLAGS) <= {"num_videos_per_prompt", "frame_rate", "height", "width"}


ENCODE_IN_A_CHILD = """
import hashlib, os, sys
import numpy as np
if len(sys.argv) > 1:
    os.sched_setaffinity(0, {int(sys.argv[1])})
from kinema.video import encode_video
noise = np.random.default_rng(0).integers(0, 256, (33, 128, 128, 3), dtype=np.uint8)
frames = (np.cumsum(noise, axis=0) // 33).astype(np.uint8)  # big enough that x264's own threading would show
print(hashlib.sha256(encode_video(frames, 16)).hexdigest())
"""


def test_one_array_encodes_to_the_same_bytes_whatever_the_cores():
    """x264 picks its threads from the CPUs it may use unless told; kinema fixes them, so the mp4
    (and what decodes from it) does not depend on the machine's cores or the process's affinity."""
    import hashlib
    import os
    import subprocess
    import sys

    from kinema.video import encode_video

    noise = np.random.default_rng(0).integers(0, 256, (33, 128, 128, 3), dtype=np.uint8)
    frames = (np.cumsum(noise, axis=0) // 33).astype(np.uint8)
    here = {hashlib.sha256(encode_video(frames, 16)).hexdigest() for _ in range(3)}
    assert len(here) == 1
    env = {**os.environ, "PYTHONPATH": str(PACKAGE.parent)}
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    runs = [[]] + [[str(c)] for c in cpus[:1]]
    for extra in runs:
        child = subprocess.run([sys.executable, "-c", ENCODE_IN_A_CHILD, *extra], env=env, capture_output=True, text=True, timeout=120)
        assert child.returncode == 0, child.stderr[-1000:]
        assert child.stdout.strip() in here, extra


def test_a_small_clip_encodes_to_the_same_bytes_every_time():
    """A 64x64 clip of flat shapes, encoded 40 times in one process: one file. (x264's AVX-512
    kernels gave up to 6 different files in 100 such encodes; kinema holds x264 to AVX2 there.)"""
    import hashlib

    from kinema.data.shapes import ClipSpec, render_clip
    from kinema.video import encode_video, x264_options

    frames = render_clip(ClipSpec("red", "circle", "left", size=0.3, start=(0.6, 0.5), travel=0.3), 64, 13)
    noisy = np.clip(frames.astype(np.int16) + np.random.default_rng(0).integers(-12, 13, frames.shape), 0, 255).astype(np.uint8)
    assert len({hashlib.sha256(encode_video(noisy, 16)).hexdigest() for _ in range(40)}) == 1
    assert x264_options("libx264") in ({}, {"x264-params": "asm=AVX2"}) and x264_options("libvpx-vp9") == {}
