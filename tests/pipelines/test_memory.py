"""The memory planner and the weight streaming it applies: its decisions on made-up component sizes,
and on every family the same frames, bit for bit, whether the weights stay resident, take turns by
component or stream block by block."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import kinema
from kinema.errors import KinemaError
from kinema.replay import read_metadata
from kinema.video import read_video
from kinema.pipelines.memory import (
    ComponentSize,
    FileMappings,
    current_rss,
    drop_pages,
    parse_bytes,
    plan_memory,
)
from tests.helpers import (
    save_diffusers_ltx_pipeline,
    save_diffusers_wan_i2v_pipeline,
    save_diffusers_wan_pipeline,
)

REPO = Path(__file__).resolve().parents[2]
PROMPT = "a red circle moving left"
MiB = 1 << 20


# ------------------------------------------------------------------------------------------------
# Sizes
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, expected",
    [("12GiB", 12 << 30), ("8GB", 8 * 10**9), ("512MiB", 512 << 20), ("1.5G", 1_500_000_000), (" 3 gib ", 3 << 30), (4096, 4096), ("100", 100)],
)
def test_sizes_in_words_and_bytes(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("bad", ["12 parsecs", "GiB", "-1GiB", 0, -5, float("nan"), True, [12], "1e9", ""])
def test_bad_sizes_are_one_line(bad):
    with pytest.raises(KinemaError, match="max_memory must be") as e:
        parse_bytes(bad)
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------------
# The planner's decisions
# ------------------------------------------------------------------------------------------------
def sizes(text=2000, transformer_core=1000, block=500, blocks=10, codec=800, parked=0):
    return {
        "text_encoder": ComponentSize(text * MiB, parked * MiB, "text"),
        "transformer": ComponentSize((transformer_core + block * blocks) * MiB, 0, "denoise", transformer_core * MiB, block * MiB, blocks),
        "codec": ComponentSize(codec * MiB, 0, "decode"),
    }


ACTS = {"denoise": 300 * MiB, "decode": 700 * MiB}


def test_no_budget_keeps_everything_resident():
    plan = plan_memory(sizes(), ACTS, None)
    assert plan.strategy == "none" and plan.peak == (2000 + 6000 + 800 + 700) * MiB


@pytest.mark.parametrize(
    "budget_mib, strategy, slots",
    [
        (9500, "none", 0),  # 8,800 of weights + the largest stage's 700
        (9499, "model", 0),  # one component at a time: the transformer's 6,000 + 700
        (6700, "model", 0),
        (6699, "block", 9),  # core 1,000 + 9 blocks of 500 + 700 = 6,200; 10 blocks would be 6,700
        (2700, "block", 2),  # the text encoder's 2,000 + 700 bounds it from below
    ],
)
def test_auto_picks_the_first_strategy_that_fits_with_the_most_blocks(budget_mib, strategy, slots):
    plan = plan_memory(sizes(), ACTS, budget_mib * MiB)
    assert (plan.strategy, plan.slots) == (strategy, slots)
    assert plan.peak <= budget_mib * MiB
    assert plan.strategy in plan.describe() and "budget" in plan.describe()


def test_what_waits_on_the_device_and_the_process_itself_count():
    plain = plan_memory(sizes(), ACTS, 9500 * MiB)
    assert plain.strategy == "none"
    # 300 MiB of the text encoder is in RAM whatever happens (not mapped from a file): model no longer fits at 6,700
    assert plan_memory(sizes(parked=300), ACTS, 6700 * MiB).strategy == "block"
    assert plan_memory(sizes(), ACTS, 9500 * MiB, baseline=1).strategy == "model"


def test_a_budget_nothing_fits_names_the_least_that_would_do():
    with pytest.raises(KinemaError, match=r"needs at least about 2\.\d+ GiB even with block .*budget is 1\.00 GiB") as e:
        plan_memory(sizes(), ACTS, 1 << 30)
    assert "\n" not in str(e.value)


def test_forced_strategies():
    assert plan_memory(sizes(), ACTS, None, "model").strategy == "model"
    assert (plan_memory(sizes(), ACTS, None, "block").slots, plan_memory(sizes(), ACTS, None, "block", min_slots=2).slots) == (1, 2)
    assert plan_memory(sizes(), ACTS, 6699 * MiB, "block").slots == 9
    with pytest.raises(KinemaError, match="needs at least"):
        plan_memory(sizes(), ACTS, 9000 * MiB, "none")  # forced and over the budget: refused, not ignored
    no_blocks = {k: v for k, v in sizes(blocks=0).items()}
    with pytest.raises(KinemaError, match="no blocks|none to stream"):
        plan_memory(no_blocks, ACTS, None, "block")
    with pytest.raises(KinemaError, match="offload must be one of"):
        plan_memory(sizes(), ACTS, None, "disk")


# ------------------------------------------------------------------------------------------------
# Pages of a memory-mapped file
# ------------------------------------------------------------------------------------------------
def test_dropping_the_pages_of_a_mapped_weight_frees_them_and_keeps_its_values(tmp_path):
    from safetensors.torch import save_file

    from kinema.checkpoints.io import load_safetensors

    if not Path("/proc/self/status").exists():
        pytest.skip("needs Linux's /proc")
    save_file({"w": torch.randn(2048, 2048)}, str(tmp_path / "w.safetensors"))  # 16 MiB
    w = load_safetensors(tmp_path / "w.safetensors")["w"]
    assert FileMappings().covers(w) and not FileMappings().covers(w.clone())
    total = float(w.sum())  # reads every page
    before = current_rss()
    drop_pages(w)
    assert before - current_rss() > 12 * MiB
    assert float(w.sum()) == total  # read again from the file


# ------------------------------------------------------------------------------------------------
# Every family: the same frames whatever the strategy
# ------------------------------------------------------------------------------------------------
def _pixel_model(base: Path) -> Path:
    from kinema.pipelines.package import package_trained_model
    from kinema.training import train

    cfg = {**yaml.safe_load((REPO / "configs" / "tiny-pixel.yaml").read_text()), "out_dir": str(base / "run"), "steps": 2}
    return package_trained_model(train(cfg, progress=False), base / "model", defaults={"num_inference_steps": 3, "fps": 8})


def _to_bf16(directory: Path) -> None:
    """The transformer's weights stored in bfloat16 (as published checkpoints are): offload then
    converts each block as it comes in, into reused buffers."""
    from safetensors.torch import load_file, save_file

    for f in directory.glob("*.safetensors"):
        save_file({k: v.to(torch.bfloat16) for k, v in load_file(str(f)).items()}, str(f))


@pytest.fixture(scope="module", params=["wan", "wan-bf16", "wan-i2v", "ltx", "pixel", "token-ar"])
def family(request, tmp_path_factory):
    base = tmp_path_factory.mktemp("memory") / request.param
    if request.param in ("wan", "wan-bf16"):
        save_diffusers_wan_pipeline(base)
        if request.param == "wan-bf16":
            _to_bf16(base / "transformer")
        return base, dict(height=32, width=32, num_frames=5, num_inference_steps=3, guidance_scale=3.0)
    if request.param == "wan-i2v":
        save_diffusers_wan_i2v_pipeline(base)
        image = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
        return base, dict(image=image, height=32, width=32, num_frames=5, num_inference_steps=2, guidance_scale=3.0)
    if request.param == "ltx":
        save_diffusers_ltx_pipeline(base)
        return base, dict(height=64, width=96, num_frames=9, num_inference_steps=3, guidance_scale=3.0)
    if request.param == "pixel":
        return _pixel_model(base), dict(height=32, width=32, num_frames=4, num_inference_steps=3, guidance_scale=3.0)
    return "shapes-ar", dict(num_frames=5)


def test_model_and_block_offload_give_the_same_frames_bit_for_bit(family):
    root, call = family
    plain = kinema.load_pipeline(root, device="cpu")
    want = plain(prompt=PROMPT, seed=3, progress_bar=False, **call)
    assert plain.memory_plan is None
    for strategy in ("model", "block"):
        pipe = kinema.load_pipeline(root, device="cpu", offload=strategy)
        got = pipe(prompt=PROMPT, seed=3, progress_bar=False, **call)
        assert np.array_equal(got.frames, want.frames), strategy
        assert torch.equal(got.latents, want.latents), strategy
        assert pipe.memory_plan.strategy == strategy
        n_blocks = len(pipe.transformer.blocks)
        if strategy == "block":
            assert pipe.memory_plan.slots == 1
            if "bf16" in str(root):  # converted as they came in: the buffers of a block sent back serve the next
                assert pipe.transformer.blocks[0].ffn[0].weight.dtype == torch.float32 and pipe.offloader.reused > 0
            assert pipe.offloader.loads > n_blocks  # every block came in, some more than once
            resident = [g for g in pipe.offloader.groups if g.block and g.resident]
            assert len(resident) <= 1
            waiting = next(g for g in pipe.offloader.groups if g.block and not g.resident)
            assert all(torch.isnan(s.value).all() for s in waiting.slots if s.value.is_floating_point())  # no stale copy
        assert pipe.transformer.compute_dtype == plain.transformer.compute_dtype
        again = pipe(prompt=PROMPT, seed=3, progress_bar=False, **call)  # a second call finds the weights again
        assert torch.equal(again.latents, want.latents), strategy


def test_a_budget_picks_the_strategy_and_says_so(family):
    root, call = family
    pipe = kinema.load_pipeline(root, device="cpu", max_memory="64GiB")
    assert pipe.memory_plan.strategy == "none" and "64.00 GiB budget" in pipe.memory_plan.describe()
    with pytest.raises(KinemaError, match="needs at least about") as e:
        kinema.load_pipeline(root, device="cpu", max_memory="1MiB")
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------------
# The request, generate() and the command line
# ------------------------------------------------------------------------------------------------
SMALL = dict(num_frames=5, num_inference_steps=2)


def test_generate_plans_when_everything_would_not_fit_in_what_is_free(monkeypatch):
    """The rules' all-resident estimate over what is free: the planner, given what is free (and
    what the process holds), decides instead of refusing; ``offload="none"`` keeps the refusal."""
    from kinema import runtime
    from kinema.generation import generate
    from kinema.request import GenerationRequest, ModelRules

    plain = generate(GenerationRequest(prompt=PROMPT, **SMALL), write=False, progress_bar=False)
    assert "plan" not in plain.memory and plain.memory["peak_bytes"] > 0
    monkeypatch.setattr(runtime, "available_memory", lambda device=None: 2 << 30)
    monkeypatch.setattr(ModelRules, "needed_bytes", lambda self, request, batch: 3 << 30)
    tight = generate(GenerationRequest(prompt=PROMPT, **SMALL), write=False, progress_bar=False)
    assert tight.memory["plan"].startswith("memory plan: none") and "budget" in tight.memory["plan"]
    assert tight.memory["estimate_bytes"] <= (2 << 30) + current_rss()
    assert np.array_equal(tight.output.frames, plain.output.frames)
    with pytest.raises(KinemaError, match="this request needs about 3.0 GiB .* but 2.0 GiB is free"):
        generate(GenerationRequest(prompt=PROMPT, offload="none", **SMALL), write=False, progress_bar=False)
    import kinema.pipelines.loading as loading

    monkeypatch.setattr(loading, "load_pipeline", lambda *a, **k: pytest.fail("loaded weights"))
    monkeypatch.setattr(runtime, "available_memory", lambda device=None: 1 << 20)  # not even the activations: refused before loading
    with pytest.raises(KinemaError, match="this request needs about 3.0 GiB"):
        generate(GenerationRequest(prompt=PROMPT, **SMALL), write=False, progress_bar=False)
    with pytest.raises(KinemaError, match="activations alone need about .* the budget is 1 MiB"):
        generate(GenerationRequest(prompt=PROMPT, max_memory="1MiB", **SMALL), write=False, progress_bar=False)


@pytest.mark.parametrize(
    "field, value, message",
    [("max_memory", "lots", "max_memory must be a size"), ("max_memory", -3, "max_memory must be a positive size"),
     ("offload", "disk", "offload must be one of"), ("offload", 3, "offload must be a string")],
)  # fmt: skip
def test_bad_memory_options_in_a_request_are_one_line(field, value, message):
    from kinema.request import GenerationRequest

    with pytest.raises(KinemaError, match=message) as e:
        GenerationRequest.from_json({"prompt": PROMPT, field: value})
    assert "\n" not in str(e.value)


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "kinema.cli", *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)


def test_command_line_max_memory_and_offload(tmp_path):
    base = ["generate", PROMPT, "--frames", "5", "--steps", "2", "-q"]
    plain = _cli(*base, "-o", str(tmp_path / "plain.mp4"))
    assert plain.returncode == 0, plain.stderr
    done = _cli(*base, "-o", str(tmp_path / "block.mp4"), "--offload", "block", "--max-memory", "16GiB", "--timings")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stderr.strip().splitlines()[-1])
    assert report["memory"]["plan"].startswith("memory plan: block") and report["memory"]["peak_bytes"] > 0
    assert np.array_equal(read_video(tmp_path / "block.mp4")[0], read_video(tmp_path / "plain.mp4")[0])  # the same frames
    recorded = read_metadata(tmp_path / "block.mp4")["request"]
    assert (recorded["max_memory"], recorded["offload"]) == ("16GiB", "block")  # the file says how it was made
    small = _cli(*base, "-o", str(tmp_path / "x.mp4"), "--max-memory", "1MiB")
    assert small.returncode == 2 and small.stderr.count("\n") == 1 and "the budget is 1 MiB" in small.stderr
    bad = _cli(*base, "-o", str(tmp_path / "x.mp4"), "--max-memory", "twelve")
    assert bad.returncode == 2 and bad.stderr.startswith("error: --max-memory must be a size")
    assert not (tmp_path / "x.mp4").exists()


def test_removing_the_offloader_brings_every_weight_back_and_leaves_the_model_as_loaded():
    pipe = kinema.load_pipeline("shapes", offload="block")
    call = dict(prompt=PROMPT, seed=1, progress_bar=False, **SMALL)
    want = pipe(**call).latents
    pipe.offloader.remove()
    assert not any(torch.isnan(p).any() for p in pipe.transformer.parameters())
    assert not any(m._forward_pre_hooks for m in pipe.transformer.modules())
    assert "prepare_context" not in vars(pipe.transformer) and "decode" not in vars(pipe.codec)
    assert torch.equal(pipe(**call).latents, want)
