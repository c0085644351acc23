"""Training objectives as pure functions: randomness comes in through explicit generators.

Flow matching (the transformer), in kinema's sampling conventions (:mod:`kinema.sampling`):
``x_t = (1 - sigma) * x0 + sigma * noise``, the model sees ``timestep = sigma * 1000`` and is
trained to predict the velocity ``noise - x0`` with a mean squared error.

Sigma is drawn per item either uniformly in (0, 1), or logit-normally,
``sigma = sigmoid(N(mean, std))`` (Esser et al. 2024, "Scaling Rectified Flow Transformers",
SD3), which spends more steps on mid-range noise levels where the velocity is hardest to predict.

The VAE: ``l1 * |x - x_hat| + mse * (x - x_hat)^2`` (each averaged over pixels) plus
``kl * KL(q(z|x) || N(0, I))`` averaged over latent elements; the KL weight is small (1e-6 by
default, as the Stable Diffusion / Wan autoencoders) so it only keeps the posterior in range.

The VQ tokenizer: the same reconstruction terms plus the quantiser's commitment loss (its codebook
follows the encoder by EMA, :mod:`kinema.models.vq`).

The token model: next-token cross-entropy, averaged over every token of every clip (the model
shifts its input itself, so the logits at position p are scored against token p).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

NUM_TRAIN_TIMESTEPS = 1000  # timestep = sigma * 1000 (kinema.sampling's convention)


# ------------------------------------------------------------------------------------------------
# Flow matching
# ------------------------------------------------------------------------------------------------
def sample_sigma(generator: torch.Generator, kind: str = "logit_normal", mean: float = 0.0, std: float = 1.0) -> torch.Tensor:
    """One noise level () in (0, 1) drawn from ``generator``: "uniform" or "logit_normal"."""
    if kind == "uniform":
        return torch.rand((), generator=generator)
    if kind == "logit_normal":
        return torch.sigmoid(torch.randn((), generator=generator) * std + mean)
    raise ValueError(f"unknown sigma sampling {kind!r}; use 'uniform' or 'logit_normal'")


def flow_matching_pair(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy input and velocity target.

    Args:
        x0: (B, C, F, H, W) clean latents; noise: same shape; sigma: (B,) noise levels in [0, 1].
    Returns:
        x_t = (1 - sigma) x0 + sigma noise and target = noise - x0, each (B, C, F, H, W).
    """
    s = sigma.view(-1, *([1] * (x0.dim() - 1))).to(x0.dtype)  # (B, 1, 1, 1, 1)
    return (1 - s) * x0 + s * noise, noise - x0


def flow_matching_loss(
    velocity_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x0: torch.Tensor,
    noise: torch.Tensor,
    sigma: torch.Tensor,
) -> torch.Tensor:
    """MSE between ``velocity_fn(x_t, timestep)`` and ``noise - x0`` (a scalar, float32).

    Args:
        velocity_fn: (x_t (B, C, F, H, W), timestep (B,) in [0, 1000]) -> velocity, same shape as x_t.
        x0, noise: (B, C, F, H, W); sigma: (B,) in [0, 1].
    """
    x_t, target = flow_matching_pair(x0, noise, sigma)
    pred = velocity_fn(x_t, sigma * NUM_TRAIN_TIMESTEPS)  # (B, C, F, H, W)
    return F.mse_loss(pred.float(), target.float())


# ------------------------------------------------------------------------------------------------
# VAE
# ------------------------------------------------------------------------------------------------
def kl_to_standard_normal(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, 1)), averaged over all elements (a scalar)."""
    mean, logvar = mean.float(), logvar.float()
    return 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar).mean()


FOREGROUND_THRESHOLD = 0.1  # in [-1, 1] units: a pixel this far from its clip's typical colour is foreground


def foreground_weights(video: torch.Tensor, weight: float) -> torch.Tensor:
    """Per-pixel loss weights 1 + ``weight`` where a pixel differs from its clip's typical colour.

    The typical colour is the per-channel median of each clip, its background when, as in the
    shapes world, one object covers a few percent of a plain canvas. Such a VAE otherwise spends
    its first thousand steps painting the background alone: the best blurry guess under L1.

    Args:
        video: (B, 3, F, H, W) in [-1, 1].
    Returns:
        (B, 1, F, H, W) float32 weights.
    """
    typical = video.flatten(2).median(dim=2).values  # (B, 3)
    far = (video - typical[:, :, None, None, None]).abs().amax(dim=1, keepdim=True) > FOREGROUND_THRESHOLD  # (B, 1, F, H, W)
    return 1.0 + weight * far.float()


def vae_loss(
    video: torch.Tensor,
    recon: torch.Tensor,
    mean: torch.Tensor,
    logvar: torch.Tensor,
    l1_weight: float = 1.0,
    mse_weight: float = 1.0,
    kl_weight: float = 1e-6,
    foreground_weight: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Reconstruction (L1 + MSE) plus a small KL on the posterior.

    Args:
        video, recon: (B, 3, F, H, W) in [-1, 1]; mean, logvar: (B, z, F', h, w) of the posterior.
        foreground_weight: extra weight of pixels away from each clip's typical colour
            (:func:`foreground_weights`); the reconstruction terms are weighted means.
    Returns:
        the scalar loss and its parts as floats ("l1", "mse", "kl") for logging.
    """
    l1, mse = reconstruction_errors(video, recon, foreground_weight)
    kl = kl_to_standard_normal(mean, logvar)
    loss = l1_weight * l1 + mse_weight * mse + kl_weight * kl
    return loss, {"l1": l1.item(), "mse": mse.item(), "kl": kl.item()}


def reconstruction_errors(video: torch.Tensor, recon: torch.Tensor, foreground_weight: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean absolute and mean squared error of ``recon`` against ``video`` (each (B, 3, F, H, W)),
    float32 scalars; weighted means with :func:`foreground_weights` when ``foreground_weight`` > 0."""
    video, recon = video.float(), recon.float()
    err = recon - video  # (B, 3, F, H, W)
    if foreground_weight > 0:
        w = foreground_weights(video, foreground_weight).expand_as(err)  # (B, 3, F, H, W)
        return (w * err.abs()).sum() / w.sum(), (w * err.square()).sum() / w.sum()
    return err.abs().mean(), err.square().mean()


# ------------------------------------------------------------------------------------------------
# VQ tokenizer
# ------------------------------------------------------------------------------------------------
def vq_loss(
    video: torch.Tensor,
    recon: torch.Tensor,
    quantizer: dict[str, torch.Tensor],
    l1_weight: float = 1.0,
    mse_weight: float = 1.0,
    foreground_weight: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Reconstruction (L1 + MSE, as :func:`vae_loss`) plus the quantiser's own loss.

    Args:
        video, recon: (B, 3, F, H, W) in [-1, 1].
        quantizer: the quantiser's scalars (:meth:`kinema.models.vq.VectorQuantizer.forward`):
            ``loss`` (commitment, plus the codebook loss without EMA) is added as it is; its
            ``commitment``, ``perplexity`` and ``usage`` are logged.
    Returns:
        the scalar loss and its parts as floats ("l1", "mse", "commitment", "perplexity", "usage").
    """
    l1, mse = reconstruction_errors(video, recon, foreground_weight)
    loss = l1_weight * l1 + mse_weight * mse + quantizer["loss"]
    logs = {"l1": l1.item(), "mse": mse.item()}
    logs.update({k: float(quantizer[k]) for k in ("commitment", "perplexity", "usage")})
    return loss, logs


# ------------------------------------------------------------------------------------------------
# Token model
# ------------------------------------------------------------------------------------------------
def next_token_loss(logits: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Mean cross-entropy of the logits against the tokens they predict, and how many were argmax-right.

    Args:
        logits: (B, N, V) logits; position p predicts token p (:meth:`kinema.models.token_ar.TokenAR.forward`).
        tokens: (B, N) long token ids in [0, V).
    Returns:
        the scalar loss (float32, the mean over all B*N tokens) and the count of positions whose
        largest logit is the right token (for the token accuracy).
    """
    loss = F.cross_entropy(logits.flatten(0, 1).float(), tokens.flatten())  # mean over B*N
    with torch.no_grad():
        correct = int((logits.argmax(dim=-1) == tokens).sum())
    return loss, correct
