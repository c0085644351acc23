"""`kinema eval` with bad inputs: labels the shapes world does not have (which could only ever
score 0%), unreadable prompt files and clips, bad numbers."""

from __future__ import annotations

import json

import pytest

from kinema.cli import main

from .conftest import assert_cli_refuses


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Two rendered reference clips with their prompts.jsonl (read-only: copy before breaking)."""
    root = tmp_path_factory.mktemp("eval") / "ref"
    assert main(["eval", "--reference", "--out", str(root), "--limit", "2", "--frames", "9"]) == 0
    return root


def _entries(folder):
    return [json.loads(line) for line in (folder / "prompts.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(
    "change, pattern",
    [
        ({"colour": "magenta"}, "colour 'magenta', which the shapes world does not have"),
        ({"shape": "hexagon"}, "shape 'hexagon'"),
        ({"motion": "sideways"}, "motion 'sideways'"),
        ({"colour": 3}, "has colour 3; it must be a string"),
        ({"file": "../outside.mp4"}, "inside the clips folder"),
        ({"file": "/etc/passwd"}, "inside the clips folder"),
        ({"file": "missing.mp4"}, "video file not found"),
        ({"prompt": None}, None),
    ],
)
def test_bad_prompt_entries(change, pattern, reference, tmp_path, capsys):
    import shutil

    folder = tmp_path / "clips"
    shutil.copytree(reference, folder)
    entries = _entries(folder)
    entries[1].update(change)
    if change.get("prompt", "") is None:
        del entries[1]["prompt"]
        pattern = "prompt"
    (folder / "prompts.jsonl").write_text("\n".join(json.dumps(e) for e in entries) + "\n")
    assert_cli_refuses(["eval", "--clips", str(folder)], capsys, folder, pattern)


@pytest.mark.parametrize(
    "how, pattern",
    [
        ("no-prompts", "prompts.jsonl"),
        ("prompts-not-json", "not valid JSON"),
        ("prompts-not-utf8", "is not UTF-8 text"),
        ("corrupt-clip", "could not read video"),
        ("not-a-folder", "clips folder not found"),
    ],
)
def test_unreadable_clips(how, pattern, reference, tmp_path, capsys):
    import shutil

    folder = tmp_path / "clips"
    shutil.copytree(reference, folder)
    if how == "no-prompts":
        (folder / "prompts.jsonl").unlink()
    elif how == "prompts-not-json":
        (folder / "prompts.jsonl").write_text("{nope\n")
    elif how == "prompts-not-utf8":
        (folder / "prompts.jsonl").write_bytes(b"\xff\xfe{}\n")
    elif how == "corrupt-clip":
        (folder / _entries(folder)[0]["file"]).write_bytes(b"garbage" * 10)
    else:
        folder = tmp_path / "nowhere"
    assert_cli_refuses(["eval", "--clips", str(folder)], capsys, tmp_path, pattern)


@pytest.mark.parametrize(
    "args, pattern",
    [
        (["--reference", "--limit", "0"], "--limit must be a positive integer"),
        (["--reference", "--size", "-8"], "--size must be a positive integer"),
        (["--reference", "--frames", "0"], "--frames must be a positive integer"),
        (["--reference", "--per-prompt", "0"], "--per-prompt must be a positive integer"),
        (["--reference", "--steps", "4"], "--steps set how --model samples"),
        (["--reference", "--device", "cpu"], "--device is for --model"),
        (["--model", "shapes", "--guidance", "nan"], "--guidance must be a finite number"),
        (["--model", "shapes", "--steps", str(10**13)], "--steps must be at most"),
        (["--model", "shapes-ar", "--steps", "4"], "--steps does not apply"),
        (["--model", "shapes", "--frames", "30"], "4k\\+1"),
        (["--model", "no-such-model"], "neither a model directory nor a shipped model"),
        (["--reconstruct", "no-such-model"], "neither a model directory nor a shipped model|not found"),
        (["--split", "test"], "invalid choice"),
    ],
)
def test_bad_eval_arguments(args, pattern, tmp_path, capsys):
    out = tmp_path / "out"
    assert_cli_refuses(["eval", *args, "--out", str(out)], capsys, tmp_path, pattern)
