"""Several processes with bad inputs: the parallel flags of `kinema generate` in a process torchrun
did not start, `parallel:` in training configs, and the Python API's plans: one line, exit 2 (or a
KinemaError), nothing written, before any weights load."""

from __future__ import annotations

import pytest

from kinema.generation import generate
from kinema.parallel import ParallelPlan
from kinema.request import GenerationRequest

from .conftest import assert_api_refuses, assert_cli_refuses
from .test_extend_replay_inputs import _forbid_loading
from .test_training_inputs import _config, _train_refuses


@pytest.mark.parametrize(
    "args, pattern",
    [
        (["--sequence-parallel", "2"], "ask for 2 processes; this is one: launch with torchrun --nproc-per-node 2"),
        (["--guidance-parallel", "2"], "ask for 2 processes; this is one"),
        (["--sequence-parallel", "2", "--guidance-parallel", "2"], "ask for 4 processes"),
        (["--sequence-parallel", "0"], "sequence-parallel degree must be a positive integer"),
        (["--sequence-parallel", "-3"], "sequence-parallel degree must be a positive integer"),
        (["--sequence-parallel", "two"], "--sequence-parallel"),
        (["--guidance-parallel", "3"], "--guidance-parallel"),
        (["--ulysses-degree", "0"], "ulysses-parallel degree must be a positive integer"),
        (["--sequence-parallel", "2", "--ulysses-degree", "3"], "ulysses degree \\(3\\) must divide the sequence-parallel degree \\(2\\)"),
    ],
)
def test_parallel_flags_in_one_process(args, pattern, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    _forbid_loading(monkeypatch)
    assert_cli_refuses(["generate", "a red circle moving left", *args, "-o", str(tmp_path / "v.mp4")], capsys, tmp_path, pattern)


@pytest.mark.parametrize(
    "over, pattern",
    [
        ({"parallel.fsdp": "yes"}, "parallel.fsdp"),
        ({"parallel.fsdp": 1}, "parallel.fsdp"),
        ({"parallel.tensor": 2}, "tensor"),
        ({"parallel": [2]}, "parallel"),
    ],
    ids=repr,
)
def test_bad_parallel_training_config(over, pattern, tmp_path, capsys):
    _train_refuses(_config("tiny-vae.yaml", tmp_path, **over), tmp_path, capsys, pattern)


@pytest.mark.parametrize(
    "make, pattern",
    [
        (lambda: ParallelPlan(guidance=3), "guidance-parallel degree must be 1 or 2"),
        (lambda: ParallelPlan(sequence=True), "sequence-parallel degree must be a positive integer"),
        (lambda: ParallelPlan(sequence=2.0), "sequence-parallel degree must be a positive integer"),
        (lambda: ParallelPlan(sequence=4, ulysses=3), "must divide the sequence-parallel degree"),
        (lambda: ParallelPlan.for_world(3, guidance=2), "times guidance-parallel degree 2 is 2 processes, but this run has 3"),
    ],
)
def test_bad_plans(make, pattern):
    assert_api_refuses(make, pattern)


@pytest.mark.parametrize(
    "request_over, plan, pattern",
    [
        ({}, ParallelPlan(sequence=2), "is 2 processes, but this run has 1"),
        ({"offload": "block"}, ParallelPlan(), "do not combine with several processes"),
        ({"max_memory": "4GiB"}, ParallelPlan(), "do not combine with several processes"),
    ],
)
def test_generate_with_a_plan_this_process_cannot_run(request_over, plan, pattern, tmp_path, monkeypatch):
    _forbid_loading(monkeypatch)
    request = GenerationRequest(prompt="a red circle moving left", num_inference_steps=2, num_frames=5, output=str(tmp_path / "v.mp4"), **request_over)
    assert_api_refuses(lambda: generate(request, parallel=plan, progress_bar=False), pattern, tmp_path)
