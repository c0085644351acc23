"""The reliability matrix: bad and edge-case inputs across the command line, the Python API, model
files, training configs, data folders and eval inputs.

Every bad case asserts the same contract: one clean line (the command line: ``error: ...`` on
stderr and exit status 2; the Python API: a :class:`~kinema.errors.KinemaError`) and nothing left
where the output would have gone (no file, no hidden temporary). Cases that must work (long and
emoji prompts, nested output folders) assert a playable file instead.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from kinema.cli import main


def files_under(folder: Path) -> list[str]:
    """Every file and folder under ``folder``, hidden ones included (relative names)."""
    if not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def assert_cli_refuses(args: list[str], capsys, out_dir: Path, pattern: str | None = None) -> str:
    """``kinema ARGS`` exits 2 with one ``error: ...`` line (matching ``pattern``) and writes nothing
    into ``out_dir``. Returns the line."""
    before = files_under(out_dir)
    code = main(args)
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert code == 2, f"exit {code}, stderr: {captured.err[-2000:]}"
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err[-2000:]
    assert "Traceback" not in captured.err and "Traceback" not in captured.out
    if pattern is not None:
        assert re.search(pattern, lines[0], re.IGNORECASE), lines[0]
    assert files_under(out_dir) == before, f"left behind: {set(files_under(out_dir)) - set(before)}"
    return lines[0]


def assert_api_refuses(call, pattern: str | None = None, out_dir: Path | None = None) -> str:
    """``call()`` raises a KinemaError whose message is one line (matching ``pattern``)."""
    from kinema.errors import KinemaError

    before = files_under(out_dir) if out_dir is not None else None
    with pytest.raises(KinemaError) as info:
        call()
    message = str(info.value)
    assert message.strip() and "\n" not in message.strip(), message
    if pattern is not None:
        assert re.search(pattern, message, re.IGNORECASE), message
    if out_dir is not None:
        assert files_under(out_dir) == before
    return message


@pytest.fixture(scope="session")
def tiny_wan_dir(tmp_path_factory) -> Path:
    """A tiny random Wan model in diffusers' layout (read-only for the tests: copy before breaking)."""
    from tests.helpers import save_diffusers_wan_pipeline

    root = tmp_path_factory.mktemp("reliability") / "wan"
    save_diffusers_wan_pipeline(root)
    return root


@pytest.fixture(scope="session")
def tiny_wan_i2v_dir(tmp_path_factory) -> Path:
    """A tiny random Wan image-to-video model in diffusers' layout, and a picture file beside it."""
    from tests.helpers import save_diffusers_wan_i2v_pipeline

    root = tmp_path_factory.mktemp("reliability-i2v") / "wan-i2v"
    save_diffusers_wan_i2v_pipeline(root)
    return root


@pytest.fixture(scope="session")
def tiny_pixel_dir(tmp_path_factory) -> Path:
    """A tiny pixel-dit model (configs/tiny-pixel.yaml after one step), packaged as kinema's layout."""
    import yaml

    from kinema.pipelines.package import package_trained_model
    from kinema.training import train

    base = tmp_path_factory.mktemp("reliability-pixel")
    config = yaml.safe_load((Path(__file__).resolve().parents[2] / "configs" / "tiny-pixel.yaml").read_text())
    exported = train({**config, "out_dir": str(base / "run"), "steps": 1}, progress=False)
    return package_trained_model(exported, base / "model")


def _without_eos(root: Path) -> Path:
    """``root`` with a tokenizer that adds no end-of-sequence token (as diffusers' own tiny test
    pipelines have): an empty prompt tokenizes to zero tokens."""
    from tokenizers import Tokenizer

    path = root / "tokenizer" / "tokenizer.json"
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.post_processor = None
    tokenizer.save(str(path))
    return root


@pytest.fixture(scope="session")
def no_eos_wan_dir(tmp_path_factory, tiny_wan_dir) -> Path:
    root = tmp_path_factory.mktemp("reliability") / "wan-no-eos"
    shutil.copytree(tiny_wan_dir, root)
    return _without_eos(root)


@pytest.fixture(scope="session")
def tiny_ltx_dir(tmp_path_factory) -> Path:
    """A tiny random LTX-Video model in diffusers' layout (read-only for the tests)."""
    from tests.helpers import save_diffusers_ltx_pipeline

    root = tmp_path_factory.mktemp("reliability") / "ltx"
    save_diffusers_ltx_pipeline(root)
    return root


@pytest.fixture(scope="session")
def no_eos_ltx_dir(tmp_path_factory, tiny_ltx_dir) -> Path:
    root = tmp_path_factory.mktemp("reliability") / "ltx-no-eos"
    shutil.copytree(tiny_ltx_dir, root)
    return _without_eos(root)


def broken_copy(source: Path, tmp_path: Path, name: str = "broken") -> Path:
    root = tmp_path / name
    shutil.copytree(source, root)
    return root


def rewrite_safetensors(path: Path, change) -> None:
    """Apply ``change(tensors) -> tensors`` to a safetensors file, keeping its metadata."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k).clone() for k in f.keys()}
    save_file(change(tensors), str(path), metadata=metadata)


@pytest.fixture
def no_loading(monkeypatch):
    """Fail the test if any weights load: the case must be refused before."""

    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded before the input was refused")

    import kinema.pipelines.loading as loading

    monkeypatch.setattr(loading, "load_pipeline", refuse)
