"""A codec's adversarial term (objective.adversarial_weight): the discriminator, its balance against
the reconstruction loss, its schedule, its checkpoints and exact resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from kinema.errors import CheckpointError, KinemaError
from kinema.training import load_config, train
from kinema.training.adversarial import PatchDiscriminator, balanced_weight, hinge_d_loss, hinge_g_loss
from kinema.training.checkpointing import OBJECTIVE_FILE
from kinema.training.loop import METRICS_FILE

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
ADV = {"adversarial_weight": 0.5, "adversarial_start": 1, "discriminator_channels": 4}


def config(name: str, out_dir: Path, **over) -> dict:
    base = yaml.safe_load((CONFIGS / name).read_text())
    objective = {**base.get("objective", {}), **over.pop("objective", {})}
    return {**base, "out_dir": str(out_dir), "objective": objective, **over}


def metrics(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / METRICS_FILE).read_text().splitlines()]


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "diffusion_pytorch_model.safetensors"))


def test_hinge_losses_and_the_balance_at_the_output():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    assert hinge_d_loss(real, fake).item() == pytest.approx((0 + 0.5) / 2 + (0 + 1) / 2)
    assert hinge_g_loss(fake).item() == pytest.approx(1.0)
    out = torch.randn(2, 3, 5, 16, 16, requires_grad=True)
    target = torch.zeros_like(out)
    rec = (out - target).abs().mean() + (out - target).square().mean()
    for width in (3, 7, 32):  # any width: the group norm's groups divide it
        assert PatchDiscriminator(channels=width)(out).shape == (2, 1, 5, 2, 2)  # a logit per space-time patch
    disc = PatchDiscriminator(channels=4)
    adv = hinge_g_loss(disc(out))
    for weight in (0.5, 2.0):
        factor = balanced_weight(rec, adv, out, weight)
        g_rec = torch.autograd.grad(rec, out, retain_graph=True)[0]
        g_adv = torch.autograd.grad(factor * adv, out, retain_graph=True)[0]
        assert g_adv.norm().item() == pytest.approx(weight * g_rec.norm().item(), rel=1e-4)
        assert not factor.requires_grad


def test_a_vq_run_trains_a_discriminator_and_resumes_exactly(tmp_path):
    """The discriminator steps from step 1, the codec's term counts from adversarial_start; each
    checkpoint keeps the discriminator, and a run stopped at step 2 and resumed ends as one that
    never stopped, discriminator included."""
    cfg = config("tiny-vq.yaml", tmp_path / "a", steps=4, checkpoint_every=2, objective=ADV)
    out = train(cfg, progress=False)
    logged = metrics(tmp_path / "a")
    assert all("d_loss" in m for m in logged)
    assert ["g_adv" in m for m in logged] == [False, True, True, True]
    assert all(m["adv_weight"] > 0 for m in logged[1:])
    ckpts = tmp_path / "a" / "checkpoints"
    first = torch.load(ckpts / "step-0000002" / OBJECTIVE_FILE, weights_only=True)
    last = torch.load(ckpts / "step-0000004" / OBJECTIVE_FILE, weights_only=True)
    assert set(first) == {"discriminator", "optimizer"}
    assert any(not torch.equal(first["discriminator"][k], v) for k, v in last["discriminator"].items())  # it learns
    assert not any("discriminator" in k or k.startswith("net.") for k in weights(out))  # the export is the codec alone

    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "step-0000004")
    shutil.rmtree(tmp_path / "b" / "model")
    (tmp_path / "b" / "checkpoints" / "latest").write_text("step-0000002")
    resumed = train({**cfg, "out_dir": str(tmp_path / "b")}, resume=True, progress=False)
    assert all(torch.equal(weights(resumed)[k], v) for k, v in weights(out).items())
    again = torch.load(tmp_path / "b" / "checkpoints" / "step-0000004" / OBJECTIVE_FILE, weights_only=True)
    assert all(torch.equal(again["discriminator"][k], v) for k, v in last["discriminator"].items())
    assert metrics(tmp_path / "b") == logged

    (tmp_path / "b" / "checkpoints" / "step-0000004" / OBJECTIVE_FILE).unlink()  # a checkpoint without it does not resume
    with pytest.raises(CheckpointError, match=r"has no objective.pt but the config trains a discriminator"):
        train({**cfg, "out_dir": str(tmp_path / "b"), "steps": 6}, resume=True, progress=False)


def test_the_term_moves_the_codec_only_from_its_start(tmp_path):
    """Before adversarial_start the codec trains as without the term (the discriminator learning
    beside it changes nothing); from it on, the weights part."""
    plain = weights(train(config("tiny-vq.yaml", tmp_path / "p", steps=3), progress=False))
    late = weights(train(config("tiny-vq.yaml", tmp_path / "l", steps=3, objective={**ADV, "adversarial_start": 3}), progress=False))
    early = weights(train(config("tiny-vq.yaml", tmp_path / "e", steps=3, objective={**ADV, "adversarial_start": 2}), progress=False))
    assert all(torch.equal(late[k], v) for k, v in plain.items())
    assert any(not torch.equal(early[k], v) for k, v in plain.items() if k.startswith("decoder."))


def test_a_vae_run_takes_the_term_too(tmp_path):
    out = train(config("tiny-vae.yaml", tmp_path / "v", steps=2, objective=ADV), progress=False)
    assert (out / "diffusion_pytorch_model.safetensors").is_file()
    assert "g_adv" in metrics(tmp_path / "v")[1]


def test_bad_adversarial_settings_are_one_line(tmp_path):
    with pytest.raises(KinemaError, match="adversarial_weight"):
        load_config(config("tiny-vq.yaml", tmp_path / "n", objective={"adversarial_weight": -1}))
    with pytest.raises(KinemaError, match="discriminator_channels"):
        load_config(config("tiny-vq.yaml", tmp_path / "n", objective={**ADV, "discriminator_channels": 0}))
    with pytest.raises(KinemaError, match=r"needs data.size of at least 8.*got 4"):
        train(config("tiny-vq.yaml", tmp_path / "s", steps=1, data={"kind": "synthetic", "size": 4, "frames": 5, "length": 8}, objective=ADV),
              progress=False)  # fmt: skip
    assert not (tmp_path / "s").exists()  # no run folder left behind
    with pytest.raises(KinemaError, match="unknown key"):
        load_config(config("tiny-transformer.yaml", tmp_path / "t", vae=str(tmp_path), objective={"adversarial_weight": 0.5}))


def test_a_distributed_run_refuses_the_term(tmp_path):
    from kinema.parallel.groups import World
    from kinema.training.distributed import check_world

    cfg = load_config(config("tiny-vae.yaml", tmp_path / "d", objective=ADV))
    with pytest.raises(KinemaError, match="discriminator on one process"):
        check_world(cfg, World(rank=0, size=2))
    check_world(load_config(config("tiny-vae.yaml", tmp_path / "d")), World(rank=0, size=2))
