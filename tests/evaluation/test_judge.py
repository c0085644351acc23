"""The judge reads every rendered clip right, catches broken clips, and run_eval reports it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kinema.data.shapes import ALL_COMBOS, BACKGROUND, HELD_OUT, TRAIN_COMBOS, ClipSpec, render_clip, sample_spec
from kinema.errors import KinemaError
from kinema.evaluation.cli_eval import render_reference_set, run_eval
from kinema.evaluation.judge import JudgeResult, eval_prompts, format_table, judge_clip, score
from kinema.video import read_video, write_video


def _clip(colour="red", shape="circle", motion="left", seed=0, size=64):
    return render_clip(sample_spec(colour, shape, motion, np.random.default_rng(seed)), size=size)


@pytest.mark.parametrize("size,seeds", [(64, (0, 1)), (96, (2,))])
def test_judge_reads_every_combination(size, seeds):
    for seed in seeds:
        for i, combo in enumerate(ALL_COMBOS):
            clip = render_clip(sample_spec(*combo, np.random.default_rng([seed, i])), size=size)
            result = judge_clip(clip)
            assert result.ok, (combo, result)
            assert (result.colour, result.shape, result.motion) == combo, result
            assert result.matches(*combo)["overall"]


def test_judge_failures():
    empty = np.full((33, 64, 64, 3), BACKGROUND, dtype=np.uint8)
    result = judge_clip(empty)
    assert result.failures == ["empty foreground"] and not result.matches("red", "circle", "left")["overall"]

    two = np.maximum(_clip("red", "circle", "left", seed=0), _clip("red", "square", "right", seed=5))
    assert any("several blobs" in r for r in judge_clip(two).failures)

    flicker = _clip("green", "square", "up").copy()
    flicker[1::2] = BACKGROUND  # object vanishes every other frame
    assert any("flicker" in r for r in judge_clip(flicker).failures)
    big = render_clip(ClipSpec("green", "square", "up", size=0.34, start=(0.5, 0.7), travel=0.3))
    small = render_clip(ClipSpec("green", "square", "up", size=0.22, start=(0.5, 0.7), travel=0.3))
    shrink = np.concatenate([big[:20], small[20:]])  # area drops by more than half at frame 20
    result = judge_clip(shrink)
    assert [r for r in result.failures if "flicker" in r] == [r for r in result.failures]
    assert result.failures and "changes by" in result.failures[0]

    result = judge_clip(_clip("blue", "triangle", "down"))
    expected = {"colour": False, "shape": True, "motion": True, "overall": False}
    assert result.matches("red", "triangle", "down") == expected

    static = np.repeat(_clip("orange", "circle", "right")[:1], 33, axis=0)
    result = judge_clip(static)
    assert result.ok and result.motion == "none" and result.colour == "orange" and result.shape == "circle"

    with pytest.raises(KinemaError, match="uint8 frames"):
        judge_clip(np.zeros((64, 64, 3), np.uint8))


def test_judge_robust_to_noise_and_h264(tmp_path):
    rng = np.random.default_rng(0)
    combos = [
        ("red", "circle", "left"),
        ("green", "square", "up"),
        ("purple", "triangle", "right"),
        ("white", "triangle", "down"),
        ("blue", "circle", "down"),
        ("yellow", "square", "left"),
    ]
    for i, combo in enumerate(combos):
        clip = render_clip(sample_spec(*combo, np.random.default_rng([7, i])))
        noisy = np.clip(clip + rng.normal(0, 4, clip.shape), 0, 255).astype(np.uint8)
        result = judge_clip(noisy)
        assert result.ok and (result.colour, result.shape, result.motion) == combo, (combo, result)
        frames, _ = read_video(write_video(noisy, tmp_path / f"{i}.mp4", 16))
        result = judge_clip(frames)
        assert result.ok and (result.colour, result.shape, result.motion) == combo, (combo, result)


def test_score_and_prompts():
    prompts = eval_prompts("all")
    assert len(prompts) == 96 and prompts[0][3] == f"a {prompts[0][0]} {prompts[0][1]} moving {prompts[0][2]}"
    assert {p[:3] for p in eval_prompts("held_out")} == set(HELD_OUT)
    assert {p[:3] for p in eval_prompts("seen")} == set(TRAIN_COMBOS)
    reworded = eval_prompts("held_out", style="reworded")
    assert all("moving" not in p[3] for p in reworded)
    with pytest.raises(KinemaError, match="unknown evaluation split"):
        eval_prompts("test")

    held = next(iter(HELD_OUT))
    prompts = [("red", "square", "up", ""), ("blue", "circle", "left", ""), (*held, "")]
    results = [
        JudgeResult("red", "square", "up"),
        JudgeResult("blue", "circle", "none"),
        JudgeResult(*held, failures=["flicker: object missing in 3 of 33 frames"]),
    ]
    report = score(results, prompts)
    assert report["seen"] == {"n": 2, "colour": 1.0, "shape": 1.0, "motion": 0.5, "overall": 0.5}
    assert report["held_out"] == {"n": 1, "colour": 0.0, "shape": 0.0, "motion": 0.0, "overall": 0.0}
    assert report["all"]["overall"] == pytest.approx(1 / 3)
    assert report["failures"] == {"flicker": 1}
    table = format_table(report)
    assert "held_out" in table and "50.0%" in table
    empty = score([], [])
    assert empty["seen"]["overall"] is None and "-" in format_table(empty)


def test_run_eval_on_reference_set(tmp_path, capsys):
    # all held-out combinations, and a slice of the seen ones, merged into one clips folder
    render_reference_set(tmp_path / "held", "held_out", size=64, seed=0)
    render_reference_set(tmp_path / "seen", "seen", size=64, seed=1, style="reworded", limit=14)
    lines = []
    for sub in ("held", "seen"):
        for line in (tmp_path / sub / "prompts.jsonl").read_text().splitlines():
            entry = json.loads(line)
            entry["file"] = f"{sub}/{entry['file']}"
            lines.append(json.dumps(entry))
    (tmp_path / "prompts.jsonl").write_text("\n".join(lines) + "\n")

    report = run_eval(tmp_path, out_json=tmp_path / "report.json")
    assert "overall" in capsys.readouterr().out
    assert report["seen"]["n"] == 14 and report["held_out"]["n"] == 10
    for group in ("seen", "held_out", "all"):
        assert {"colour", "shape", "motion", "overall"} <= set(report[group])
        assert report[group]["overall"] == 1.0
    assert len(report["clips"]) == 24 and all(c["match"]["overall"] for c in report["clips"])
    assert json.loads((tmp_path / "report.json").read_text())["held_out"]["overall"] == 1.0

    with pytest.raises(KinemaError, match="clips folder not found"):
        run_eval(tmp_path / "held" / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(KinemaError, match="prompts.jsonl"):
        run_eval(tmp_path / "empty")
    with pytest.raises(KinemaError, match="no clips folder given"):
        run_eval(None)


def test_label_components():
    from kinema.evaluation.judge import _label

    m = np.zeros((2, 9, 9), bool)
    m[0, 1:4, 1:4] = True
    m[0, 6:8, 2:8] = True
    m[0, 5, 8] = True  # diagonal neighbour of the second blob: 8-connected to it
    m[1, ::2, ::2] = True
    m[1, 0, :] = True  # joins the top row of dots; the other 20 dots stay single
    labels = _label(m)
    assert len(np.unique(labels[0])) - 1 == 2 and labels[0, 5, 8] == labels[0, 6, 2]
    assert len(np.unique(labels[1])) - 1 == 21
    snake = np.zeros((1, 21, 21), bool)  # one long winding path: needs many propagation steps
    snake[0, ::2, 1:20] = True  # 11 rows...
    for k in range(10):  # ...joined end to end, alternately at the right and the left
        snake[0, 2 * k : 2 * k + 3, 19 if k % 2 == 0 else 1] = True
    assert len(np.unique(_label(snake))) - 1 == 1


@pytest.mark.parametrize("shape,fill", [("square", 1.0), ("circle", np.pi / 4), ("triangle", 0.5)])
@pytest.mark.parametrize("size", [0.2, 0.3])
def test_judge_reads_the_object_area(shape, fill, size):
    """``area`` is the object's share of the canvas: (size x side)^2 times the shape's fill, so a
    long video's windows can be compared for an object that grows (benchmarks/drift.py)."""
    spec = ClipSpec("blue", shape, "right", size=size, start=(0.4, 0.5), travel=0.3)
    result = judge_clip(render_clip(spec, size=64))
    assert result.area == pytest.approx(size**2 * fill, rel=0.15), result.area  # whole pixels of a 13-22 px object
    bigger = judge_clip(render_clip(ClipSpec("blue", shape, "right", size=size * 1.2, start=(0.4, 0.5), travel=0.3), size=64))
    assert bigger.area == pytest.approx((size * 1.2) ** 2 * fill, rel=0.15) and bigger.area > result.area * 1.2
    assert judge_clip(np.full((8, 64, 64, 3), BACKGROUND, dtype=np.uint8)).area is None
    assert result.to_dict()["area"] == result.area
