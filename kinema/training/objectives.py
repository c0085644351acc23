"""Training objectives, one per kind of model, and their losses as pure functions: randomness
comes in through explicit generators (one per item, seeded from (seed, step, item)).

- A diffusion transformer (``wan-transformer``): the loss of its noise process
  (:class:`~kinema.sampling.noise.FlowMatching`: ``x_t = (1 - sigma) x0 + sigma noise``, the model
  told ``timestep = sigma * 1000`` and trained to predict the velocity ``noise - x0``) on the
  frozen VAE's normalised latents, with caption dropout; a DDPM-trained family plugs its process in
  (:class:`~kinema.sampling.noise.DDPM`) and nothing here changes.
- The VAE: ``l1 * |x - x_hat| + mse * (x - x_hat)^2`` (each averaged over pixels) plus
  ``kl * KL(q(z|x) || N(0, I))`` averaged over latent elements; the KL weight is small (1e-6 by
  default, as the Stable Diffusion / Wan autoencoders) so it only keeps the posterior in range.
- The VQ tokenizer: the same reconstruction terms plus the quantiser's commitment loss (its codebook
  follows the encoder by EMA, :mod:`kinema.models.vq`).
- Either codec may add an adversarial term (``objective.adversarial_weight``): a discriminator the
  objective holds and trains after each step (:mod:`.adversarial`), kept in the checkpoints.
- The token model: next-token cross-entropy, averaged over every token of every clip (the model
  shifts its input itself, so the logits at position p are scored against token p).

An objective is called with the model, a micro-batch of items and their generators and returns
``(loss, logs)``; ``after_step`` runs after each optimiser step and returns extra metrics.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import KinemaError
from ..sampling.noise import NoiseProcess
from ..seeds import make_generator


# ------------------------------------------------------------------------------------------------
# Diffusion
# ------------------------------------------------------------------------------------------------
def diffusion_loss(
    model_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    process: NoiseProcess,
    x0: torch.Tensor,
    noise: torch.Tensor,
    levels: torch.Tensor,
) -> torch.Tensor:
    """MSE between ``model_fn(x_t, timestep)`` and the process's target at ``levels`` (a scalar, float32).

    Args:
        model_fn: (x_t (B, C, F, H, W), timestep (B,)) -> prediction, same shape as x_t.
        process: the noise process (what x_t, the timestep and the target are).
        x0, noise: (B, C, F, H, W); levels: (B,) noise levels in the process's units.
    """
    x_t = process.add_noise(x0, noise, levels)
    pred = model_fn(x_t, process.model_timestep(levels))  # (B, C, F, H, W)
    return F.mse_loss(pred.float(), process.target(x0, noise, levels).float())


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
    first_frame_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Reconstruction (L1 + MSE) plus a small KL on the posterior.

    Args:
        video, recon: (B, 3, F, H, W) in [-1, 1]; mean, logvar: (B, z, F', h, w) of the posterior.
        foreground_weight: extra weight of pixels away from each clip's typical colour
            (:func:`foreground_weights`); the reconstruction terms are weighted means.
    Returns:
        the scalar loss and its parts as floats ("l1", "mse", "kl") for logging.
    """
    l1, mse = reconstruction_errors(video, recon, foreground_weight, first_frame_weight)
    kl = kl_to_standard_normal(mean, logvar)
    loss = l1_weight * l1 + mse_weight * mse + kl_weight * kl
    return loss, {"l1": l1.item(), "mse": mse.item(), "kl": kl.item()}


def reconstruction_errors(
    video: torch.Tensor, recon: torch.Tensor, foreground_weight: float = 0.0, first_frame_weight: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean absolute and mean squared error of ``recon`` against ``video`` (each (B, 3, F, H, W)),
    float32 scalars; weighted means with :func:`foreground_weights` when ``foreground_weight`` > 0,
    and the first frame's pixels weighted ``first_frame_weight`` times the others' (a causal codec
    codes it alone, in a latent frame of its own, so in a plain mean it counts 1/F of the loss)."""
    video, recon = video.float(), recon.float()
    err = recon - video  # (B, 3, F, H, W)
    if foreground_weight <= 0 and first_frame_weight == 1:
        return err.abs().mean(), err.square().mean()
    w = foreground_weights(video, foreground_weight) if foreground_weight > 0 else torch.ones_like(err[:, :1])  # (B, 1, F, H, W)
    if first_frame_weight != 1:
        w = w.clone()
        w[:, :, 0] *= first_frame_weight
    w = w.expand_as(err)  # (B, 3, F, H, W)
    return (w * err.abs()).sum() / w.sum(), (w * err.square()).sum() / w.sum()


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
    first_frame_weight: float = 1.0,
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
    l1, mse = reconstruction_errors(video, recon, foreground_weight, first_frame_weight)
    loss = l1_weight * l1 + mse_weight * mse + quantizer["loss"]
    logs = {"l1": l1.item(), "mse": mse.item()}
    logs.update({k: float(quantizer[k]) for k in ("commitment", "perplexity", "usage")})
    return loss, logs


# ------------------------------------------------------------------------------------------------
# Token model
# ------------------------------------------------------------------------------------------------
def next_token_loss(logits: torch.Tensor, tokens: torch.Tensor, scored: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """Mean cross-entropy of the logits against the tokens they predict, and how many were argmax-right.

    Args:
        logits: (B, N, V) logits; position p predicts token p (:meth:`kinema.models.token_ar.TokenAR.forward`).
        tokens: (B, N) long token ids in [0, V).
        scored: (B, N) bool, the positions that count (None: all); the others are read, not predicted.
    Returns:
        the scalar loss (float32, the mean over the scored tokens) and the count of scored positions
        whose largest logit is the right token (for the token accuracy).
    """
    if scored is None:
        loss = F.cross_entropy(logits.flatten(0, 1).float(), tokens.flatten())  # mean over B*N
        with torch.no_grad():
            correct = int((logits.argmax(dim=-1) == tokens).sum())
        return loss, correct
    per = F.cross_entropy(logits.flatten(0, 1).float(), tokens.flatten(), reduction="none").view_as(tokens)  # (B, N)
    loss = (per * scored).sum() / scored.sum().clamp(min=1)
    with torch.no_grad():
        correct = int(((logits.argmax(dim=-1) == tokens) & scored).sum())
    return loss, correct


# ------------------------------------------------------------------------------------------------
# The objectives
# ------------------------------------------------------------------------------------------------
def stack_randn(shape: Sequence[int], generators: Sequence[torch.Generator]) -> torch.Tensor:
    """One standard normal draw of ``shape`` per generator (CPU), stacked: (len(generators), *shape)."""
    return torch.stack([torch.randn(tuple(shape), generator=g) for g in generators])


def drop_captions(items: list[dict], gens: list[torch.Generator], p: float) -> tuple[list[str], int]:
    """Each item's caption, or "" with probability ``p`` (classifier-free guidance); the coin is
    the first draw of the item's generator. Returns the captions and how many were dropped."""
    captions, dropped = [], 0
    for it, g in zip(items, gens):
        drop = bool(torch.rand((), generator=g) < p)
        dropped += drop
        captions.append("" if drop else it["caption"])
    return captions, dropped


def _videos(items: list[dict], device: torch.device) -> torch.Tensor:
    return torch.stack([it["video"] for it in items]).to(device)  # (B, 3, F, H, W)


def _device(model: nn.Module) -> torch.device:
    """The device of the model's weights (the CPU for a model without any)."""
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


class Objective:
    """What the loop asks of an objective (``__call__`` per micro-batch, ``after_step`` per step)."""

    def __call__(self, model: nn.Module, items: list[dict], gens: list[torch.Generator]) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def after_step(self, model: nn.Module, step: int) -> dict[str, float]:
        """Work after an optimiser step (a codebook's update) and extra metrics; none by default."""
        return {}

    def begin_step(self, step: int) -> None:
        """Told the optimiser step (0-based) before its micro-batches; nothing by default."""

    def state_dict(self) -> dict[str, Any] | None:
        """What a checkpoint must keep of the objective itself (a discriminator), None: nothing."""
        return None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raise KinemaError(f"{type(self).__name__} keeps no state to load")


class CodecObjective(Objective):
    """What a codec's objectives share: with ``adversarial_weight`` > 0 an
    :class:`~kinema.training.adversarial.Adversary` (a discriminator, trained beside the codec and
    kept in its checkpoints) adds its term to the loss."""

    def __init__(self, objective: Any, seed: int, device: torch.device | str = "cpu") -> None:
        self.o, self.seed = objective, seed
        self.adversary = None
        if objective.adversarial_weight > 0:
            from .adversarial import Adversary

            self.adversary = Adversary(objective, seed, torch.device(device))

    def with_adversary(self, video: torch.Tensor, recon: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        """``loss`` plus the adversarial term, when there is one."""
        if self.adversary is None:
            return loss
        return loss + self.adversary.generator_term(video, recon, loss)

    def after_step(self, model: nn.Module, step: int) -> dict[str, float]:
        return self.adversary.update() if self.adversary is not None else {}

    def begin_step(self, step: int) -> None:
        if self.adversary is not None:
            self.adversary.begin_step(step)

    def state_dict(self) -> dict[str, Any] | None:
        return self.adversary.state_dict() if self.adversary is not None else None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.adversary is None:
            super().load_state_dict(state)
        self.adversary.load_state_dict(state)


class VAEObjective(CodecObjective):
    """Reconstruction + KL for the Wan VAE; the latent is a posterior sample drawn per item."""

    def __call__(self, model: nn.Module, items: list[dict], gens: list[torch.Generator]) -> tuple[torch.Tensor, dict]:
        video = _videos(items, _device(model))  # (B, 3, F, H, W)
        posterior = model.encode(video)  # each (B, z, F', h, w)
        eps = stack_randn(posterior.mean.shape[1:], gens).to(posterior.mean.device, posterior.mean.dtype)
        recon = model.decode(posterior.mean + posterior.std * eps)  # (B, 3, F, H, W)
        o = self.o
        loss, logs = vae_loss(video, recon, posterior.mean, posterior.logvar, o.l1_weight, o.mse_weight, o.kl_weight, o.foreground_weight, o.first_frame_weight)
        return self.with_adversary(video, recon, loss), logs


class VQObjective(CodecObjective):
    """Reconstruction (L1 + MSE, optionally foreground-weighted) + the quantiser's commitment loss
    for the VQ tokenizer. Draws nothing per item; after each optimiser step the codebook takes its
    EMA step and restarts dead codes with a generator from (seed, "codebook", step)."""

    def __init__(self, objective: Any, seed: int, device: torch.device | str = "cpu") -> None:
        super().__init__(objective, seed, device)
        self.assignments: list = []  # the quantiser's Assignments of this optimiser step's micro-batches so far

    def __call__(self, model: nn.Module, items: list[dict], gens: list[torch.Generator]) -> tuple[torch.Tensor, dict]:
        video = _videos(items, _device(model))  # (B, 3, F, H, W)
        recon, quantizer = model(video)  # (B, 3, F, H, W), scalars and the assignments
        self.assignments.append(quantizer["assignments"])
        loss, logs = vq_loss(video, recon, quantizer, self.o.l1_weight, self.o.mse_weight, self.o.foreground_weight, self.o.first_frame_weight)
        return self.with_adversary(video, recon, loss), logs

    def after_step(self, model: nn.Module, step: int) -> dict[str, float]:
        """Move the codebook by the step's assignments (then forget them); returns its use
        (perplexity, codes_used, codes_restarted), and the discriminator's step's metrics."""
        records, self.assignments = self.assignments, []
        use = model.quantizer.update_codebook(records, make_generator(self.seed, "codebook", step))
        return {**use, **super().after_step(model, step)}


def given_past_loss(
    model_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    process: NoiseProcess,
    x0: torch.Tensor,
    noise: torch.Tensor,
    levels: torch.Tensor,
    past: torch.Tensor,
    past_noise: torch.Tensor,
    past_levels: torch.Tensor,
) -> torch.Tensor:
    """:func:`diffusion_loss` with each item's first ``past[i]`` latent frames given: taken to
    ``past_levels[i]`` (with ``past_noise``) instead of ``levels[i]``, the model told a time per
    frame, and those frames left out of the mean (they are the condition, not the task).

    Args:
        model_fn: (x_t (B, C, F, H, W), timestep (B, F)) -> prediction, same shape as x_t.
        x0, noise, past_noise: (B, C, F, H, W); levels, past_levels: (B,); past: (B,) long, 0 to F - 1.
    """
    f = x0.shape[2]
    given = (torch.arange(f, device=x0.device)[None, :] < past[:, None].to(x0.device))  # (B, F) bool
    g5 = given[:, None, :, None, None]  # (B, 1, F, 1, 1)
    x_t = torch.where(g5, process.add_noise(x0, past_noise, past_levels), process.add_noise(x0, noise, levels))
    per_frame = torch.where(given, past_levels[:, None], levels[:, None])  # (B, F)
    pred = model_fn(x_t, process.model_timestep(per_frame))  # (B, C, F, H, W)
    err = (pred.float() - process.target(x0, noise, levels).float()).square()  # (B, C, F, H, W)
    keep = (~g5).float().expand_as(err)
    return (err * keep).sum() / keep.sum()


class DiffusionObjective(Objective):
    """A denoiser trained on a frozen VAE's normalised latents under a noise process, with caption dropout.

    Per item and in this order, its generator draws: the caption-dropout coin, the posterior
    sample's noise, the noise level, the diffusion noise; with ``past_share`` > 0 then the coin for
    a given past, its frame count, its noise level (with ``past_roundtrip`` > 0, the coin for its
    round trip) and its noise (:func:`given_past_loss`).

    With ``past_roundtrip``, that share of the given pasts are their round trip through the VAE
    (:func:`kinema.data.caches.codec_roundtrip`: decoded, rounded to 8-bit frames, encoded; from
    the latent cache where it holds them, else computed here), as a long video's later window
    reads the frames the model made before it; the frames to make stay the clip's own.
    """

    def __init__(self, process: NoiseProcess, vae: nn.Module, text_encoder: Any, caption_dropout: float,
                 past_share: float = 0.0, past_frames: Sequence[int] = (1,), past_sigma: float = 0.0,
                 past_from_data: bool = False, past_roundtrip: float = 0.0) -> None:  # fmt: skip
        self.process, self.vae, self.text_encoder, self.caption_dropout = process, vae, text_encoder, caption_dropout
        self.past_share, self.past_frames, self.past_sigma = past_share, tuple(past_frames), past_sigma
        self.past_from_data, self.past_roundtrip = past_from_data, past_roundtrip
        self.dropped = 0  # captions replaced by "" so far (for tests and logs)

    @property
    def gives_past(self) -> bool:
        return self.past_share > 0 or self.past_from_data

    def draw_past(self, items: list[dict], gens: list[torch.Generator], frames: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per item: how many of its first latent frames are given (its own past's with
        past_from_data, else with probability past_share a count from past_frames, else 0), their
        noise level and whether they are given as their round trip, (B,) long, float32 and bool."""
        counts, levels, trips = [], [], []
        for it, g in zip(items, gens):
            given = bool(torch.rand((), generator=g) < self.past_share)
            k = self.past_frames[int(torch.randint(len(self.past_frames), (), generator=g))]
            level = float(torch.rand((), generator=g)) * self.past_sigma
            trips.append(self.past_roundtrip > 0 and bool(torch.rand((), generator=g) < self.past_roundtrip))  # drawn only when asked: earlier runs resume
            own = int(it.get("past", 0)) if self.past_from_data else 0  # pixel frames of an earlier clip
            if own:
                given, k = True, min(self.vae.latent_frames(own), frames - 1)  # the latent frames that hold them
            if given and not 1 <= k < frames:
                raise KinemaError(f"objective.past_frames must be from 1 to {frames - 1} (fewer than the clip's {frames} latent frames); got {k}")
            counts.append(k if given else 0)
            levels.append(level)
        counts_ = torch.tensor(counts)
        return counts_, torch.tensor(levels), torch.tensor(trips, dtype=torch.bool) & (counts_ > 0)

    def __call__(self, model: nn.Module, items: list[dict], gens: list[torch.Generator]) -> tuple[torch.Tensor, dict]:
        device = _device(model)
        captions, dropped = drop_captions(items, gens, self.caption_dropout)
        self.dropped += dropped
        with torch.no_grad():
            if "mean" in items[0]:  # from the latent cache
                mean = torch.stack([it["mean"] for it in items]).float().to(device)  # (B, z, F', h, w)
                logvar = torch.stack([it["logvar"] for it in items]).float().to(device)
            else:
                with torch.autocast(device.type, enabled=False):
                    posterior = self.vae.encode(_videos(items, device))
                mean, logvar = posterior.mean.float(), posterior.logvar.float()
            eps = stack_randn(mean.shape[1:], gens).to(device)  # (B, z, F', h, w)
            z = mean + torch.exp(0.5 * logvar) * eps
            x0 = self.vae.normalize_latents(z)  # (B, z, F', h, w)
            levels = self.process.training_levels(gens).to(device)  # (B,)
            noise = stack_randn(x0.shape[1:], gens).to(device)  # (B, z, F', h, w)
            context = self.text_encoder(captions).float().to(device)  # (B, L, text_dim)
            past = None
            if self.gives_past:
                past, past_levels, trips = self.draw_past(items, gens, x0.shape[2])
                past_noise = stack_randn(x0.shape[1:], gens).to(device)  # (B, z, F', h, w)
                if bool(trips.any()):
                    x0 = self.roundtrip_past(items, x0, mean, eps, past, trips)
        if past is not None and bool(past.any()):
            loss = given_past_loss(lambda x, t: model(x, t, context), self.process, x0, noise, levels, past, past_noise, past_levels.to(device))
        else:
            loss = diffusion_loss(lambda x, t: model(x, t, context), self.process, x0, noise, levels)
        return loss, {}

    def roundtrip_past(self, items: list[dict], x0: torch.Tensor, mean: torch.Tensor, eps: torch.Tensor, past: torch.Tensor,
                       trips: torch.Tensor) -> torch.Tensor:  # fmt: skip
        """``x0`` (B, z, F', h, w) with the given past of the rows in ``trips`` replaced by its round
        trip (the cache's, else computed from ``mean``), sampled with the rows' own posterior noise."""
        rows = trips.nonzero().flatten().tolist()
        k = int(past[rows].max())
        if all("roundtrip_mean" in items[i] and items[i]["roundtrip_mean"].shape[1] >= k for i in rows):
            rt_mean = torch.stack([items[i]["roundtrip_mean"][:, :k] for i in rows]).float().to(x0.device)
            rt_logvar = torch.stack([items[i]["roundtrip_logvar"][:, :k] for i in rows]).float().to(x0.device)
        else:
            from ..data.caches import codec_roundtrip

            with torch.autocast(x0.device.type, enabled=False):
                rt_mean, rt_logvar = (t.to(x0.device) for t in codec_roundtrip(self.vae, mean[rows], k))
        given = self.vae.normalize_latents(rt_mean + torch.exp(0.5 * rt_logvar) * eps[rows, :, :k])  # (R, z, k, h, w)
        x0 = x0.clone()
        for j, i in enumerate(rows):
            n = int(past[i])
            x0[i, :, :n] = given[j, :, :n]
        return x0


class PixelDiffusionObjective(Objective):
    """A pixel-space denoiser and its own text encoder trained together under a noise process (DDPM),
    with caption dropout: the clips themselves are x0, and the captions' token ids go through the
    model's text tower inside the graph, so the tower learns from the denoising loss.

    Per item and in this order, its generator draws: the caption-dropout coin, the noise level, the
    noise. A dropped caption is "" (its only token is the tokenizer's end-of-text), which is what
    generation's unconditional branch encodes.
    """

    def __init__(self, process: NoiseProcess, tokenizer: Any, max_length: int, caption_dropout: float) -> None:
        self.process, self.tokenizer, self.max_length, self.caption_dropout = process, tokenizer, max_length, caption_dropout
        self.dropped = 0  # captions replaced by "" so far (for tests and logs)

    def __call__(self, model: nn.Module, items: list[dict], gens: list[torch.Generator]) -> tuple[torch.Tensor, dict]:
        from ..text.bpe import tokenize

        device = _device(model)
        captions, dropped = drop_captions(items, gens, self.caption_dropout)
        self.dropped += dropped
        with torch.no_grad():
            x0 = _videos(items, device).float()  # (B, 3, F, H, W) in [-1, 1]
            levels = self.process.training_levels(gens).to(device)  # (B,)
            noise = stack_randn(x0.shape[1:], gens).to(device)  # (B, 3, F, H, W)
        ids, mask = tokenize(self.tokenizer, captions, self.max_length)  # (B, L) each
        ids, mask = ids.to(device), mask.to(device)
        states = model.encode_text(ids, mask)  # (B, L, text_dim), with gradients
        loss = diffusion_loss(lambda x, t: model(x, t, states, mask), self.process, x0, noise, levels)
        return loss, {}


def corrupt_tokens(tokens: torch.Tensor, gens: Sequence[torch.Generator], share: float, vocab_size: int) -> torch.Tensor:
    """tokens (B, N) with about ``share`` of each row replaced by ids drawn uniformly from the
    codebook; row i's coins and ids come from ``gens[i]`` (on the CPU, so any device draws alike)."""
    rows = []
    for row, g in zip(tokens, gens):
        hit = torch.rand(row.shape, generator=g) < share
        ids = torch.randint(0, vocab_size, row.shape, generator=g)
        rows.append(torch.where(hit.to(row.device), ids.to(row.device), row))
    return torch.stack(rows)


class TokenObjective(Objective):
    """Next-token cross-entropy for the token model on a frozen VQ tokenizer's ids, with caption dropout.

    A clip's ids (F', h, w) flatten frame-major, raster order inside a frame (the model's layout),
    and the loss is the mean over every token of the micro-batch. Per item its generator draws the
    caption-dropout coin only. The text states go in zero-padded with no mask (as for the Wan
    transformer), and a dropped caption is the text encoder's states of "" (all zero for the toy
    encoder, but not for MiniLM, which encodes "" as its [CLS] and [SEP] tokens), so generation's
    unconditional branch must encode "" with the same encoder. The token accuracy of the step's
    micro-batches is returned by :meth:`after_step` for the metrics. With ``past_from_data``, an
    item that starts with an earlier clip's frames (``past``) is scored only after the latent
    frames that hold them: the model reads that past, as it reads a video it extends. With
    ``token_noise`` > 0 that share of the tokens the model reads is replaced by random ids (drawn
    by each item's generator after its caption coin), while the targets stay the clip's own: the
    model learns to predict a token from a past that holds mistakes, as a sampled video's does.
    """

    def __init__(self, tokenizer: nn.Module, text_encoder: Any, caption_dropout: float, past_from_data: bool = False,
                 token_noise: float = 0.0) -> None:  # fmt: skip
        self.tokenizer, self.text_encoder, self.caption_dropout = tokenizer, text_encoder, caption_dropout
        self.past_from_data = past_from_data  # an item's past (a continuation's earlier frames) is read, not scored
        self.token_noise = token_noise  # share of the read tokens replaced by random ids
        self.dropped = 0  # captions replaced by "" so far (for tests and logs)
        self._correct, self._count = 0, 0  # argmax-right tokens and tokens of this step's micro-batches so far

    def __call__(self, model: nn.Module, items: list[dict], gens: list[torch.Generator]) -> tuple[torch.Tensor, dict]:
        device = _device(model)
        captions, dropped = drop_captions(items, gens, self.caption_dropout)
        self.dropped += dropped
        with torch.no_grad():
            if "tokens" in items[0]:  # from the token cache
                tokens = torch.stack([it["tokens"] for it in items]).to(device)  # (B, F', h, w)
            else:
                with torch.autocast(device.type, enabled=False):
                    tokens = self.tokenizer.encode_tokens(_videos(items, device))  # (B, F', h, w)
            context = self.text_encoder(captions).float().to(device)  # (B, L, text_dim)
        scored = None
        if self.past_from_data and any(it.get("past", 0) for it in items):
            f, per_frame = tokens.shape[1], tokens.shape[2] * tokens.shape[3]
            given = torch.tensor([self.tokenizer.latent_frames(int(it["past"])) if it.get("past", 0) else 0 for it in items])  # latent frames holding each past
            scored = (torch.arange(f)[None, :] >= given[:, None]).repeat_interleave(per_frame, dim=1).to(device)  # (B, N)
        tokens = tokens.flatten(1).long()  # (B, N): frame-major, raster order in a frame
        read = corrupt_tokens(tokens, gens, self.token_noise, model.config.vocab_size) if self.token_noise > 0 else tokens
        logits = model(read, context)  # (B, N, V) float32; position p reads token p-1 and predicts token p
        loss, correct = next_token_loss(logits, tokens, scored)
        counted = tokens.numel() if scored is None else int(scored.sum())
        self._correct, self._count = self._correct + correct, self._count + counted
        return loss, {"accuracy": correct / max(1, counted)}

    def after_step(self, model: nn.Module, step: int) -> dict[str, float]:
        """The token accuracy (argmax = target) over the step's micro-batches; starts the next step's count."""
        accuracy = self._correct / max(1, self._count)
        self._correct, self._count = 0, 0
        return {"accuracy": accuracy}
