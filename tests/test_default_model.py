"""The shapes model shipped inside the package: no download, a video in seconds, prompts followed."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

import kinema
from kinema.cli import main
from kinema.evaluation.judge import judge_clip
from kinema.pipelines.loading import DEFAULT_MODEL, shipped_model_path
from kinema.video import read_video

ROOT = Path(__file__).resolve().parents[1]
MAX_BYTES = 50 * 1024 * 1024  # the limit for the shipped weights
MAX_ASSET_BYTES = 150 * 1024 * 1024  # every shipped model together (the diffusion default and shapes-ar; room for shapes-pixel)


def test_shipped_model_is_small_and_complete():
    root = shipped_model_path(DEFAULT_MODEL)
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert files == [
        "kinema.json",
        "transformer/config.json",
        "transformer/diffusion_pytorch_model.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
    ]
    assert sum((root / f).stat().st_size for f in files) <= MAX_BYTES
    card = json.loads((root / "kinema.json").read_text())
    assert card["defaults"]["num_frames"] == 33 and card["defaults"]["height"] >= 64
    assert card["defaults"]["num_inference_steps"] <= 20


def test_all_shipped_models_together_stay_within_150_mb():
    from kinema.pipelines.loading import ASSETS_DIR, SHIPPED_MODELS

    assert set(SHIPPED_MODELS) >= {"shapes", "shapes-ar"}
    files = [p for p in ASSETS_DIR.rglob("*") if p.is_file()]
    assert any(p.name.endswith(".safetensors") for p in files)
    assert sum(p.stat().st_size for p in files) <= MAX_ASSET_BYTES


def _bash_blocks(section: str) -> list[str]:
    readme = (ROOT / "README.md").read_text()
    text = readme.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)\n```", text, flags=re.S)


def _run_and_judge(command: list[str], tmp_path: Path, frames_fps: tuple[int, int] = (33, 16)) -> None:
    """Run a README ``kinema generate`` command in a fresh process; its one .mp4 (``frames_fps``:
    its frames and rate, the model card's) must follow the prompt."""
    assert command[:2] == ["kinema", "generate"]
    exe = [shutil.which("kinema")] if shutil.which("kinema") else [sys.executable, "-m", "kinema.cli"]
    res = subprocess.run([*exe, *command[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    written = [p for p in tmp_path.iterdir() if p.suffix == ".mp4"]
    assert len(written) == 1
    frames, fps = read_video(written[0])
    assert frames.shape == (frames_fps[0], 64, 64, 3) and fps == frames_fps[1]
    prompt = command[2]
    colour, shape, motion = re.fullmatch(r"an? (\w+) (\w+) moving (\w+)", prompt).groups()
    assert all(judge_clip(frames).matches(colour, shape, motion).values()), judge_clip(frames).to_dict()


def test_quickstart_command_writes_a_video_that_follows_its_prompt(tmp_path):
    """The README Quickstart's generate command, as written there, run in a fresh process."""
    command = shlex.split(_bash_blocks("Quickstart")[0].split("&&")[-1])
    assert "--model" not in command
    _run_and_judge(command, tmp_path)


def test_shipped_shapes_ar_command_follows_its_prompt(tmp_path):
    """The README's shapes-ar command (the autoregressive model shipped beside the default), in a fresh process."""
    lines = [ln for block in _bash_blocks("The autoregressive family") for ln in block.splitlines()]
    commands = [shlex.split(ln.split("#")[0]) for ln in lines if "--model shapes-ar" in ln]
    assert len(commands) == 1, lines
    _run_and_judge(commands[0], tmp_path)


def test_default_model_is_deterministic_and_named(tmp_path, capsys):
    pipe = kinema.load_pipeline("shapes", device="cpu")
    a = pipe("a blue square moving up", seed=3, num_inference_steps=4)
    b = pipe("a blue square moving up", seed=3, num_inference_steps=4)
    assert np.array_equal(a.frames, b.frames)
    assert main(["info", "shapes"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "kinema" and info["name"] == "shapes"


def test_loading_the_default_model_imports_neither_transformers_nor_dynamo():
    """Each costs seconds of the Quickstart's start (benchmarks/quickstart_speed.py)."""
    code = (
        "import sys, kinema; kinema.load_pipeline('shapes', device='cpu')\n"
        "print(sorted(m for m in ('transformers', 'torch._dynamo') if m in sys.modules))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "[]"
