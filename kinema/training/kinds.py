"""The kinds of model the training loop trains: one record each, :data:`TRAINING_KINDS`.

A kind names its architecture's config class, its objective's config (the ``objective`` section of
a training config), how to build a fresh model, its objective and data set, and how to export the
trained weights in the format kinema's loaders read. The model families (:mod:`kinema.families`)
and codecs name the kind that trains their generator or codec; adding a kind is one record here
and its builder, objective and exporter functions.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..data import make_dataset
from ..data.caches import CACHE_BATCH, encoding_cache_key, latent_cache, token_cache
from ..errors import KinemaError
from .config import (
    DataConfig,
    DDPMObjectiveConfig,
    DiffusionObjectiveConfig,
    TokenObjectiveConfig,
    TrainConfig,
    VAEObjectiveConfig,
    VQObjectiveConfig,
)
from .objectives import DiffusionObjective, TokenObjective, VAEObjective, VQObjective

CACHE_FILE = "latent_cache.safetensors"  # the transformer's latent cache, under out_dir
TOKEN_CACHE_FILE = "token_cache.safetensors"  # the token model's token cache, under out_dir
LATENT_STATS_CLIPS = 64  # training clips whose latents set an exported VAE's normalisation


@dataclasses.dataclass(frozen=True)
class TrainingKind:
    """One kind of model the loop trains (a config's ``model``)."""

    config_class: Callable[[], type]  # () -> the architecture's config dataclass (imported when called)
    objective_config: type  # the dataclass of the config's `objective` section
    build: Callable[[TrainConfig, Any], nn.Module]  # (config, architecture) -> a fresh model (build_model seeds the RNG)
    objective: Callable[[TrainConfig, Any, Path, torch.device], tuple[Any, Any]]  # (config, architecture, out_dir, device) -> (objective, data set)
    export: Callable[[TrainConfig, Any, dict], tuple[dict, dict]]  # (config, architecture, weights) -> (config.json content, weights to write)
    codec: str | None = None  # the TrainConfig field naming the frozen codec it trains on (latent_cache applies); None: trains on pixels
    codec_kind: str | None = None  # that codec's registry name (kinema.families.CODECS)
    codec_noun: str = ""  # that codec in messages ("the VAE at PATH changed ...")
    codec_help: str = ""  # what the codec field must name (the message when it is missing)
    text: bool = False  # conditioned on captions: text_encoder, text_max_length and caption_dropout apply
    grad_checkpointing: bool = False  # its blocks may be recomputed in the backward pass (pure functions, no causal cache)
    partial_init: bool = False  # init_from loads the top-level modules the source has (a wan-vae's encoder, decoder)
    own_text: bool = False  # trains its own text encoder (a TEXT_ENCODERS kind with a folder): its tokenizer is made from the captions
    files: tuple[str, ...] = ()  # files of out_dir the export carries into model/ beside config.json and the weights


# ------------------------------------------------------------------------------------------------
# Frozen parts: codecs and text encoders
# ------------------------------------------------------------------------------------------------
def load_frozen_codec(config: TrainConfig, device: torch.device) -> nn.Module:
    """The frozen VAE or tokenizer a run trains on (its kind's ``codec`` field), on ``device``."""
    from ..checkpoints.layouts import load_codec

    kind = TRAINING_KINDS[config.model]
    path = getattr(config, kind.codec)
    if not Path(path).exists():
        raise KinemaError(f"{kind.codec} not found: {path}; point '{kind.codec}' at {kind.codec_help}")
    return load_codec(path, kind.codec_kind, what=kind.codec, device=device)


def make_text_encoder(name: str, text_dim: int, max_length: int, device: torch.device | None = None):
    """The frozen text encoder a config names (:data:`kinema.families.TEXT_ENCODERS`); its width
    must equal the model's text_dim."""
    from ..families import text_encoder_kind
    from ..pipelines.loading import load_text_encoder
    from ..text.cached import CachedTextEncoder

    kind = text_encoder_kind(name)
    if kind.dim is None:
        return load_text_encoder(name, max_length, dim=text_dim)
    if text_dim != kind.dim:
        raise KinemaError(f"text_encoder {name} gives {kind.dim}-d states; set architecture.text_dim: {kind.dim} (got {text_dim})")
    return CachedTextEncoder(load_text_encoder(name, max_length, device=device))


def check_token_model_fits(arch, tokenizer, data: DataConfig) -> None:
    """Raise KinemaError unless the token model reads the ids this tokenizer gives on the data:
    ``vocab_size`` = codebook size and ``grid`` = the token grid of a ``data.size`` frame."""
    if arch.vocab_size != tokenizer.codebook_size:
        raise KinemaError(f"architecture.vocab_size ({arch.vocab_size}) must equal the tokenizer's codebook size "
                          f"({tokenizer.codebook_size}); set vocab_size: {tokenizer.codebook_size}")  # fmt: skip
    _, h, w = tokenizer.grid(data.frames, data.size, data.size)
    if tuple(arch.grid) != (h, w):
        raise KinemaError(f"architecture.grid {list(arch.grid)} must equal the tokenizer's token grid at data.size {data.size} "
                          f"({data.size}/{tokenizer.spatial_compression} per side); set grid: [{h}, {w}]")  # fmt: skip


# ------------------------------------------------------------------------------------------------
# Builders
# ------------------------------------------------------------------------------------------------
@torch.no_grad()
def init_posterior_logvar(vae: nn.Module, logvar: float) -> None:
    """Make the VAE's posterior log-variance start at ``logvar`` for every input.

    With PyTorch's default init it starts near 0 (std 1, as large as the means), so the decoder
    first sees mostly noise and the tiny KL weight leaves the encoder to shrink it slowly: on the
    shapes world, 1,400 steps still reconstructed colours as grey. The log-variance half of the
    1x1 output convolution gets zero weights and this bias; it trains from there as usual.
    """
    z = vae.config.z_dim
    vae.conv1.weight[z:].zero_()  # (2z, 2z, 1, 1, 1): rows z.. give the log-variance
    vae.conv1.bias[z:].fill_(logvar)


def _build_wan_vae(config: TrainConfig, arch) -> nn.Module:
    from ..models.vae.wan_vae import WanVAE

    model = WanVAE(arch)
    if config.objective.init_logvar is not None:
        init_posterior_logvar(model, config.objective.init_logvar)
    return model


def _build_with_init(model_class: str) -> Callable[[TrainConfig, Any], nn.Module]:
    """A builder that constructs ``model_class`` and runs its ``init_weights`` (training from scratch)."""
    from ..families import resolve

    def build(config: TrainConfig, arch) -> nn.Module:
        model = resolve(model_class)(arch)
        model.init_weights()
        return model

    return build


def _build_vq_tokenizer(config: TrainConfig, arch) -> nn.Module:
    from ..models.vae.vq_video import VQVideoTokenizer

    return VQVideoTokenizer(arch)


# ------------------------------------------------------------------------------------------------
# Objectives and data
# ------------------------------------------------------------------------------------------------
def check_adversarial(config: TrainConfig) -> None:
    """Refuse, in one line, clips too small for the discriminator of ``objective.adversarial_weight``
    (each of its layers halves the frame's side)."""
    from .adversarial import DISCRIMINATOR_LAYERS

    size, least = getattr(config.data, "size", None), 2**DISCRIMINATOR_LAYERS
    if config.objective.adversarial_weight > 0 and size is not None and size < least:
        raise KinemaError(f"objective.adversarial_weight needs data.size of at least {least} (the discriminator halves a frame's side "
                          f"{DISCRIMINATOR_LAYERS} times); got {size}")  # fmt: skip


def _vae_objective(config: TrainConfig, arch, out_dir: Path, device: torch.device):
    check_adversarial(config)
    return VAEObjective(config.objective, config.seed, device), make_dataset(config.data)


def _vq_objective(config: TrainConfig, arch, out_dir: Path, device: torch.device):
    check_adversarial(config)
    return VQObjective(config.objective, config.seed, device), make_dataset(config.data)


def _diffusion_objective(config: TrainConfig, arch, out_dir: Path, device: torch.device):
    from ..sampling.noise import FlowMatching

    vae = load_frozen_codec(config, device)
    if vae.config.z_dim != arch.in_dim or arch.out_dim != arch.in_dim:
        raise KinemaError(f"the transformer's in_dim/out_dim ({arch.in_dim}/{arch.out_dim}) must equal the VAE's z_dim ({vae.config.z_dim})")
    text = make_text_encoder(config.text_encoder, arch.text_dim, config.text_max_length)
    dataset = make_dataset(config.data)
    o = config.objective
    process = FlowMatching(sigma_sampling=o.sigma_sampling, logit_mean=o.logit_mean, logit_std=o.logit_std)
    latent_frames = vae.latent_frames(config.data.frames) if getattr(config.data, "frames", None) else None
    if o.past_share > 0 and not o.past_frames:
        raise KinemaError("objective.past_frames must list at least one latent-frame count when past_share > 0")
    if o.past_share > 0 and latent_frames is not None and any(not 1 <= k < latent_frames for k in o.past_frames):
        raise KinemaError(f"objective.past_frames must list latent-frame counts from 1 to {latent_frames - 1} (a clip of "
                          f"{config.data.frames} frames has {latent_frames}); got {list(o.past_frames)}")  # fmt: skip
    if o.past_roundtrip > 0 and not (o.past_share > 0 or o.past_from_data):
        raise KinemaError("objective.past_roundtrip takes given pasts through the VAE: set objective.past_share or objective.past_from_data too")
    if config.latent_cache:
        trip = roundtrip_frames(o, config.data, vae, latent_frames) if o.past_roundtrip > 0 else 0
        dataset = latent_cache(out_dir / CACHE_FILE, encoding_cache_key(config.data, config.vae), dataset, vae, trip)
    return DiffusionObjective(process, vae, text, config.caption_dropout, o.past_share, o.past_frames, o.past_sigma, o.past_from_data,
                              o.past_roundtrip), dataset  # fmt: skip


def roundtrip_frames(objective: Any, data: Any, vae: Any, latent_frames: int | None) -> int:
    """The most latent frames a run's given pasts hold (past_frames, and with past_from_data those
    that hold data.continue_past's longest), fewer than a clip's: what the round-trip cache keeps."""
    counts = list(objective.past_frames) if objective.past_share > 0 else []
    if objective.past_from_data and getattr(data, "continue_share", 0) > 0:
        counts.append(vae.latent_frames(max(data.continue_past)))
    most = max(counts, default=1)
    return min(most, latent_frames - 1) if latent_frames else most


TOKENIZER_FILE = "tokenizer.json"  # a pixel-dit run's BPE tokenizer, under out_dir (trained once, reused on resume)


def run_tokenizer(config: TrainConfig, arch, out_dir: Path, dataset) -> Any:
    """The run's byte-level BPE: read from out_dir if the run made it already (resume), else trained on
    the captions of one pass over the data set, in order, and written atomically."""
    from ..checkpoints.io import atomic_path
    from ..text.bpe import load_bpe, train_bpe

    path = out_dir / TOKENIZER_FILE
    if path.is_file():
        return load_bpe(path)
    caption_of = getattr(dataset, "caption", None)  # a cheap caption lookup, where the data set has one
    texts = [caption_of(i) if caption_of is not None else dataset[i]["caption"] for i in range(len(dataset))]
    tokenizer = train_bpe(texts, arch.vocab_size)
    with atomic_path(path) as tmp:
        tmp.write_text(tokenizer.to_str())
    return load_bpe(path)


def _pixel_objective(config: TrainConfig, arch, out_dir: Path, device: torch.device):
    from ..sampling.noise import DDPM
    from .objectives import PixelDiffusionObjective

    if config.text_max_length > arch.text_len:
        raise KinemaError(f"text_max_length ({config.text_max_length}) exceeds architecture.text_len ({arch.text_len})")
    dataset = make_dataset(config.data)
    pt, ph, pw = arch.patch_size
    if config.data.frames % pt or config.data.size % ph or config.data.size % pw:
        raise KinemaError(f"data.frames ({config.data.frames}) must be a multiple of {pt} and data.size ({config.data.size}) of "
                          f"{ph} and {pw}: the model's patch is {list(arch.patch_size)}")  # fmt: skip
    tokenizer = run_tokenizer(config, arch, out_dir, dataset)
    o = config.objective
    process = DDPM(o.num_train_timesteps, o.beta_start, o.beta_end, o.beta_schedule, o.prediction_type)
    return PixelDiffusionObjective(process, tokenizer, config.text_max_length, config.caption_dropout), dataset


def _token_objective(config: TrainConfig, arch, out_dir: Path, device: torch.device):
    tokenizer = load_frozen_codec(config, device)
    check_token_model_fits(arch, tokenizer, config.data)
    text = make_text_encoder(config.text_encoder, arch.text_dim, config.text_max_length)
    dataset = make_dataset(config.data)
    if config.latent_cache:
        dataset = token_cache(out_dir / TOKEN_CACHE_FILE, encoding_cache_key(config.data, config.tokenizer), dataset, tokenizer)
    return TokenObjective(tokenizer, text, config.caption_dropout, config.objective.past_from_data, config.objective.token_noise), dataset


# ------------------------------------------------------------------------------------------------
# Exporters: the formats kinema's loaders read
# ------------------------------------------------------------------------------------------------
@torch.no_grad()
def measure_latent_stats(config: TrainConfig, state: dict[str, torch.Tensor]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of the latents a trained VAE gives on its first training clips.

    The std is that of a posterior sample (spread of the means plus the posterior's own variance),
    so ``normalize_latents`` hands the transformer latents of about unit variance, as Wan's
    published ``latents_mean``/``latents_std`` do for its VAE.
    """
    from ..models.vae.wan_vae import WanVAE

    vae = WanVAE(config.model_config()).eval()
    vae.load_state_dict(state)
    dataset = make_dataset(config.data)
    n = min(LATENT_STATS_CLIPS, len(dataset))
    means, variances = [], []
    for start in range(0, n, CACHE_BATCH):
        video = torch.stack([dataset[i]["video"] for i in range(start, min(start + CACHE_BATCH, n))])
        posterior = vae.encode(video)
        means.append(posterior.mean.float().transpose(0, 1).flatten(1))  # (z, n*F'*h*w)
        variances.append(posterior.logvar.float().exp().transpose(0, 1).flatten(1))
    mu, var = torch.cat(means, 1), torch.cat(variances, 1)
    std = (mu.var(dim=1, unbiased=False) + var.mean(dim=1)).sqrt().clamp_min(1e-6)
    return tuple(mu.mean(dim=1).tolist()), tuple(std.tolist())


def _export_wan_vae(config: TrainConfig, arch, state: dict) -> tuple[dict, dict]:
    """diffusers' config (with latents_mean/latents_std measured on the training clips) and names."""
    from ..checkpoints.wan_vae import diffusers_keys, to_diffusers

    mean, std = measure_latent_stats(config, state)
    arch = dataclasses.replace(arch, latents_mean=mean, latents_std=std)
    return to_diffusers(arch), diffusers_keys(arch).to_theirs(state)


def _export_wan_transformer(config: TrainConfig, arch, state: dict) -> tuple[dict, dict]:
    """The original Wan names; diffusers' config form when text_len is 512, else the original Wan config."""
    from ..checkpoints.wan import ORIGINAL_TEXT_LEN, to_diffusers, to_original

    return (to_diffusers(arch) if arch.text_len == ORIGINAL_TEXT_LEN else to_original(arch)), dict(state)


def _export_own(to_json: str) -> Callable[[TrainConfig, Any, dict], tuple[dict, dict]]:
    """kinema's own config.json (``to_json`` of the checkpoints module) and names."""
    from ..families import resolve

    return lambda config, arch, state: (resolve(to_json)(arch), dict(state))


def _config_class(ref: str) -> Callable[[], type]:
    from ..families import resolve

    return lambda: resolve(ref)


# ------------------------------------------------------------------------------------------------
# The registry
# ------------------------------------------------------------------------------------------------
TRAINING_KINDS: dict[str, TrainingKind] = {
    "wan-vae": TrainingKind(
        _config_class("kinema.models.vae.wan_vae:WanVAEConfig"), VAEObjectiveConfig, _build_wan_vae, _vae_objective, _export_wan_vae,
    ),
    "wan-transformer": TrainingKind(
        _config_class("kinema.models.wan:WanTransformerConfig"), DiffusionObjectiveConfig,
        _build_with_init("kinema.models.wan:WanTransformer"), _diffusion_objective, _export_wan_transformer,
        codec="vae", codec_kind="wan-vae", codec_noun="VAE", codec_help="a VAE directory (a VAE run's model/) or safetensors file",
        text=True, grad_checkpointing=True,
    ),
    "vq-tokenizer": TrainingKind(
        _config_class("kinema.models.vae.vq_video:VQVideoConfig"), VQObjectiveConfig, _build_vq_tokenizer, _vq_objective,
        _export_own("kinema.checkpoints.vq_video:to_json"), partial_init=True,
    ),
    "token-ar": TrainingKind(
        _config_class("kinema.models.token_ar:TokenARConfig"), TokenObjectiveConfig,
        _build_with_init("kinema.models.token_ar:TokenAR"), _token_objective, _export_own("kinema.checkpoints.token_ar:to_json"),
        codec="tokenizer", codec_kind="vq-video", codec_noun="tokenizer",
        codec_help="a VQ tokenizer directory (a vq-tokenizer run's model/)", text=True, grad_checkpointing=True,
    ),
    "pixel-dit": TrainingKind(
        _config_class("kinema.models.pixel_dit:PixelDiTConfig"), DDPMObjectiveConfig,
        _build_with_init("kinema.models.pixel_dit:PixelDiT"), _pixel_objective, _export_own("kinema.checkpoints.pixel_dit:to_json"),
        text=True, grad_checkpointing=True, own_text=True, files=(TOKENIZER_FILE,),
    ),
}  # fmt: skip
