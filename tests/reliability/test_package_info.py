"""`kinema package` and `kinema info` with bad inputs: one line, exit 2, no model folder written."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from .conftest import assert_cli_refuses

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A 0-step VAE run and a 0-step transformer run over it (their model/ exports)."""
    from kinema.training import train

    root = tmp_path_factory.mktemp("runs")
    vae = yaml.safe_load((REPO / "configs" / "tiny-vae.yaml").read_text())
    vae_model = train({**vae, "steps": 0, "out_dir": str(root / "vae")}, progress=False)
    transformer = yaml.safe_load((REPO / "configs" / "tiny-transformer.yaml").read_text())
    toy = train({**transformer, "steps": 0, "vae": str(vae_model), "out_dir": str(root / "toy")}, progress=False)
    architecture = {**transformer["architecture"], "text_dim": 384, "text_len": 16}
    minilm = {**transformer, "text_encoder": "minilm", "text_max_length": 16, "architecture": architecture}
    model = train({**minilm, "steps": 0, "vae": str(vae_model), "out_dir": str(root / "transformer")}, progress=False)
    return {"vae": vae_model, "transformer": model, "toy": toy}


@pytest.mark.parametrize(
    "args, pattern",
    [
        (["{transformer}", "--steps", "0"], "--steps must be a positive integer"),
        (["{transformer}", "--shift", "-1"], "--shift must be positive"),
        (["{transformer}", "--shift", "nan"], "--shift must be positive"),
        (["{transformer}", "--guidance", "nan"], "guidance"),
        (["{transformer}", "--temperature", "0.5"], "temperature"),
        (["{transformer}", "--tokenizer", "{vae}"], "tokenizer"),
        (["{transformer}", "--vae", "{tmp}/no-vae"], "no-vae|not found"),
        (["{vae}"], "vae|transformer|token"),
        (["{tmp}/nowhere"], "not found"),
        (["{tmp}"], "not a training run's model/ folder"),
        (["{toy}"], "trained with the 'toy' text encoder, which a model card cannot name"),
    ],
)
def test_package_refuses(args, pattern, runs, tmp_path, capsys):
    values = {"transformer": str(runs["transformer"]), "vae": str(runs["vae"]), "toy": str(runs["toy"]), "tmp": str(tmp_path)}
    args = [a.format(**values) for a in args]
    assert_cli_refuses(["package", *args, "--out", str(tmp_path / "out")], capsys, tmp_path, pattern)


def test_package_writes_a_model_that_loads(runs, tmp_path, capsys):
    """The control: the same run without the fault packages."""
    from kinema.cli import main

    assert main(["package", str(runs["transformer"]), "--out", str(tmp_path / "model")]) == 0
    assert main(["info", str(tmp_path / "model")]) == 0


def test_package_refuses_an_output_that_is_a_file(runs, tmp_path, capsys):
    (tmp_path / "out").write_text("x")
    assert_cli_refuses(["package", str(runs["transformer"]), "--out", str(tmp_path / "out")], capsys, tmp_path, "is a file")
    assert (tmp_path / "out").read_text() == "x"


@pytest.mark.parametrize(
    "target, pattern",
    [
        ("/nonexistent/model", "neither a path, a shipped model"),
        ("", "give a preset"),
        ("wan2.1-t2v-1.4b", "neither a path, a shipped model"),
        ("/dev/null", "file|model"),
    ],
)
def test_info_refuses(target, pattern, tmp_path, capsys):
    assert_cli_refuses(["info", target], capsys, tmp_path, pattern)
