"""An adversarial term for training a codec (a VAE or a VQ tokenizer), VQGAN's recipe as most
video tokenizers and LTX-Video's VAE train with it.

Under L1 and MSE a decoder draws, where its code leaves the exact picture open, the average of what
it could be: on the shapes world a triangle's tip drawn from a few codes comes back rounded, and the
judge reads a circle. A discriminator that tells real clips from the decoder's reconstructions
pushes the decoder to commit to one sharp picture instead.

- :class:`PatchDiscriminator`: a small 3D convolutional patch discriminator (space-time patches,
  per-sample group norm, so it is deterministic and does not depend on the batch).
- Hinge losses (:func:`hinge_d_loss`, :func:`hinge_g_loss`).
- The codec's term is balanced at the decoder's output (:func:`balanced_weight`): its gradient with
  respect to the reconstruction is scaled to ``adversarial_weight`` times the norm of the
  reconstruction loss's, as VQGAN balances the two at the decoder's last layer. At the output it
  needs no knowledge of the model's layers.
- :class:`Adversary`: the discriminator, its optimiser and the schedule; the codec's objective holds
  it. It is training machinery only: the export holds the codec alone, and a checkpoint holds the
  discriminator's weights and optimiser state (``objective.pt``) so a resumed run is exact.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..seeds import derive_seed
from .checkpointing import on_cpu

DISCRIMINATOR_BETAS = (0.5, 0.9)  # VQGAN's Adam betas for the discriminator
MAX_BALANCE = 1e4  # cap on the balanced weight (VQGAN's), for a discriminator whose gradient vanishes
DISCRIMINATOR_LAYERS = 3  # strided layers of the discriminator: each halves a frame's side


class PatchDiscriminator(nn.Module):
    """(B, 3, F, H, W) in [-1, 1] -> (B, 1, F, H / 2**layers, W / 2**layers) real-or-made logits.

    ``layers`` convolutions of kernel (3, 4, 4) and stride (1, 2, 2), ``channels`` doubling each
    time, group norm (a quarter of the width in groups, at most 32) after all but the first and LeakyReLU(0.2), then one 3x3x3 convolution to a
    logit per space-time patch (PatchGAN's design, in 3D so that flicker is seen too)."""

    def __init__(self, channels: int = 32, layers: int = DISCRIMINATOR_LAYERS) -> None:
        super().__init__()
        mods: list[nn.Module] = []
        c_in = 3
        for i in range(layers):
            c_out = channels * 2**i
            mods.append(nn.Conv3d(c_in, c_out, (3, 4, 4), stride=(1, 2, 2), padding=(1, 1, 1)))
            if i > 0:
                groups = min(32, c_out // 4) or 1
                mods.append(nn.GroupNorm(math.gcd(c_out, groups), c_out))  # a count that divides the width (16 for 64)
            mods.append(nn.LeakyReLU(0.2))
            c_in = c_out
        mods.append(nn.Conv3d(c_in, 1, 3, padding=1))
        self.net = nn.Sequential(*mods)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.net(video)


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """The discriminator's hinge loss: real patches pushed above +1, made ones below -1 (a scalar)."""
    return F.relu(1.0 - real_logits.float()).mean() + F.relu(1.0 + fake_logits.float()).mean()


def hinge_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """The codec's adversarial loss: minus the discriminator's mean logit on its reconstruction."""
    return -fake_logits.float().mean()


def balanced_weight(rec_loss: torch.Tensor, adv_loss: torch.Tensor, output: torch.Tensor, weight: float) -> torch.Tensor:
    """``weight * |d rec_loss / d output| / |d adv_loss / d output|`` (norms over the whole tensor),
    detached and capped at :data:`MAX_BALANCE`: the factor that gives the adversarial term's
    gradient at ``output`` (the reconstruction) ``weight`` times the norm of the reconstruction
    loss's."""
    g_rec = torch.autograd.grad(rec_loss, output, retain_graph=True)[0]
    g_adv = torch.autograd.grad(adv_loss, output, retain_graph=True)[0]
    ratio = g_rec.float().norm() / (g_adv.float().norm() + 1e-8)
    return (weight * ratio.clamp(max=MAX_BALANCE)).detach()


class Adversary:
    """The discriminator of a codec's run and when its term counts.

    The discriminator learns from the first optimiser step, one Adam step per codec step on that
    step's real clips and reconstructions (:meth:`update`, from the objective's ``after_step``); the
    codec's adversarial term counts from step ``adversarial_start`` on (:meth:`generator_term`), so
    that a fine-tune's decoder is judged by a discriminator that has learnt something first.
    Built from (seed, "discriminator") on the CPU, so every device starts from the same weights."""

    def __init__(self, objective: Any, seed: int, device: torch.device) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, "discriminator"))
            net = PatchDiscriminator(objective.discriminator_channels)
        self.net = net.to(device)
        self.optimizer = torch.optim.AdamW(self.net.parameters(), lr=objective.discriminator_lr, betas=DISCRIMINATOR_BETAS, weight_decay=0.0)
        self.weight, self.start = objective.adversarial_weight, objective.adversarial_start
        self.step = 0
        self.pairs: list[tuple[torch.Tensor, torch.Tensor]] = []  # (real, reconstruction) of this step's micro-batches
        self.logs: list[dict[str, float]] = []

    def begin_step(self, step: int) -> None:
        self.step = step

    def generator_term(self, video: torch.Tensor, recon: torch.Tensor, rec_loss: torch.Tensor) -> torch.Tensor:
        """The codec's adversarial loss for this micro-batch (0 before ``adversarial_start``), balanced
        against ``rec_loss`` at ``recon`` (:func:`balanced_weight`); keeps the pair for :meth:`update`."""
        self.pairs.append((video.detach(), recon.detach()))
        if self.step < self.start:
            return rec_loss.new_zeros(())
        self.net.requires_grad_(False)  # the codec's gradient flows through the discriminator, not into it
        try:
            adv = hinge_g_loss(self.net(recon))
        finally:
            self.net.requires_grad_(True)
        factor = balanced_weight(rec_loss, adv, recon, self.weight)
        self.logs.append({"g_adv": adv.item(), "adv_weight": factor.item()})
        return factor * adv

    def update(self) -> dict[str, float]:
        """One discriminator step on this optimiser step's pairs (then forgets them); returns its
        loss, and the codec's adversarial loss and balanced weight averaged over the step."""
        pairs, self.pairs = self.pairs, []
        logs, self.logs = self.logs, []
        if not pairs:
            return {}
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for real, fake in pairs:
            loss = hinge_d_loss(self.net(real.float()), self.net(fake.float())) / len(pairs)
            loss.backward()
            total += loss.item()
        self.optimizer.step()
        out = {"d_loss": total}
        for key in ("g_adv", "adv_weight"):
            if logs:
                out[key] = sum(x[key] for x in logs) / len(logs)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"discriminator": on_cpu(self.net.state_dict()), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["discriminator"], strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
