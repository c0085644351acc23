"""benchmarks/fp8_quality.py end to end on a tiny random token-ar model (64x64 frames: the shapes
world's smallest canvas), with one teacher-forced clip and one free-running prompt."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from kinema.pipelines.package import write_kinema_model
from tests.pipelines.test_token_ar_pipeline import CARD, TINY_AR, TINY_VQ, save_token_ar_components

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "fp8_quality.py"

# 16x spatial and 4x temporal compression: 64x64 frames are 4x4 token grids, 5 frames are 2 grids.
VQ_64 = dataclasses.replace(TINY_VQ, dim_mult=(1, 2, 2, 2, 2), temporal_downsample=(True, True, False, False))
AR_64 = dataclasses.replace(TINY_AR, grid=(4, 4))


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(SCRIPT.parent))  # the script imports its neighbour harness.py
    try:
        spec = importlib.util.spec_from_file_location("fp8_quality", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(SCRIPT.parent))
    return module


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("fp8-bench")
    ar_dir, vq_dir = save_token_ar_components(root, vq=VQ_64, ar=AR_64)
    return write_kinema_model(root / "model", ar_dir, vq_dir, **CARD)


def test_reports_bytes_agreement_and_judged_accuracy(bench, model_dir, tmp_path, capsys):
    out = tmp_path / "fp8.json"
    argv = ["--model", str(model_dir), "--clips", "1", "--limit", "1", "--seed", "3", "--device", "cpu", "--threads", "1"]
    results = bench.main([*argv, "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))
    printed = capsys.readouterr().out
    assert "teacher-forced 1/1" in printed and "free-running 1/1" in printed and "note: times are informational" in printed

    lin, total = results["weight_bytes"]["quantized_linears"], results["weight_bytes"]["token_model"]
    assert lin["layers"] == 11 * len(AR_64.layers)  # per block: self- and cross-attention q, k, v, o; gate, up, down
    assert lin["weights_only_ratio"] == 2.0  # 1 byte per weight against 2
    assert 1.7 < lin["ratio"] <= 2.0  # the float32 scales: 4 bytes per output channel of 32- or 48-wide inputs
    assert 1.0 < total["ratio"] < lin["ratio"]  # the embedding, head and norms are not quantised

    tf = results["teacher_forced"]
    assert tf["clips"] == 1 and tf["positions"] == 2 * 16
    assert 0.0 <= tf["argmax_agreement"] <= 1.0 and tf["mean_kl"] >= 0.0
    assert set(tf["nll"]) == {"bf16", "fp8"}

    fr = results["free_running"]
    assert fr["prompts"] == 1 and 0.0 <= fr["identical_tokens"] <= 1.0 and fr["identical_clips"] in (0, 1)
    for name in ("bf16", "fp8"):
        judge = fr["judge"][name]
        assert judge["n"] == 1 and all(0.0 <= judge[k] <= 1.0 for k in ("colour", "shape", "motion", "overall"))
        assert fr["seconds_per_clip"][name] > 0
    assert results["frames"] == 5 and results["size"] == [64, 64] and results["split"] == "seen"

    again = bench.main(argv)  # deterministic with a seed (times aside)
    untimed = lambda part: {k: v for k, v in part.items() if "seconds" not in k and k != "per_clip"}  # noqa: E731
    assert untimed(again["teacher_forced"]) == untimed(tf) and untimed(again["free_running"]) == untimed(fr)
