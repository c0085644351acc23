"""The one training loop: the Wan VAE (reconstruction + KL), the Wan transformer (flow matching),
the VQ video tokenizer (reconstruction + commitment; its codebook moves after each optimiser step)
or the autoregressive token model (next-token cross-entropy on a frozen tokenizer's ids).

Exact resume: every random draw comes from a ``torch.Generator`` seeded from (seed, step, item),
and the data order is a pure function of (seed, step); nothing depends on how many steps ran in
this process. A checkpoint (model, EMA, optimiser state, step) is therefore all that resuming
needs, and a run interrupted at step k and resumed ends bit-identical to an uninterrupted one (in
the same precision and thread count).

Run directory (``out_dir``)::

    checkpoints/step-0000100/   model.safetensors, ema.safetensors, optimizer.pt, trainer.json (step,
                                config hash, the frozen VAE's or tokenizer's content hash)
    checkpoints/latest          the name of the newest complete checkpoint
    latent_cache.safetensors    transformer runs with latent_cache: VAE posteriors of the data set
    token_cache.safetensors     token-ar runs with latent_cache: the tokenizer's ids of the data set
    metrics.jsonl               one line per step: step, loss, lr, a tokenizer's codebook use or a token model's accuracy (appended; a resumed run repeats steps after the checkpoint)
    model/                      the export: config.json + diffusion_pytorch_model.safetensors (EMA weights)

Checkpoints are written to a temporary directory and renamed into place, so a crash never leaves
a half-written checkpoint behind ``latest``. Resuming refuses a checkpoint written by another
config (its hash) or on a VAE or tokenizer whose files have changed since (their content hash).

What differs between the kinds of model (config class, builder, objective, exporter, flags) is one
row of :data:`TRAINING_KINDS` each.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import json
import math
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..checkpoints.io import (
    atomic_path,
    load_safetensors,
    read_json,
    safetensors_metadata,
    save_safetensors,
)
from ..errors import CheckpointError, KinemaError
from ..seeds import derive_seed, make_generator
from .config import DataConfig, TrainConfig, config_hash, default_threads, load_config
from .ema import EMA
from .objectives import (
    flow_matching_loss,
    next_token_loss,
    sample_sigma,
    vae_loss,
    vq_loss,
)

KILL_AFTER_STEP_ENV = "KINEMA_TRAIN_KILL_AFTER_STEP"  # tests: SIGKILL the process right after saving this step
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"  # the export's weights file (kinema's loaders read it)
CACHE_FILE = "latent_cache.safetensors"  # the transformer's latent cache, under out_dir
TOKEN_CACHE_FILE = "token_cache.safetensors"  # the token model's token cache, under out_dir
CACHE_BATCH = 16  # clips encoded together when building the cache (one at a time is ~5x slower on a CPU)
CODEC_SUFFIXES = (".safetensors", ".pth", ".safetensors.index.json")  # a codec directory's weights files (codec_identity)
CODEC_KEY = "codec_sha256"  # trainer.json: the codec_identity of the frozen VAE or tokenizer (absent in older checkpoints)
SCHEDULE_KEY = "lr_schedule"  # trainer.json: the run's {"steps", "decay_steps"} (absent in older checkpoints: no decay)
METRICS_FILE = "metrics.jsonl"  # one line per optimiser step, under out_dir: "step", "loss", "lr", plus a vq-tokenizer's "perplexity", "codes_used", "codes_restarted" or a token-ar's "accuracy"


# ------------------------------------------------------------------------------------------------
# Randomness: everything derives from explicit (seed, ...) tuples
# ------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def _epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    return torch.randperm(n, generator=make_generator(seed, "epoch", epoch))


def step_indices(seed: int, step: int, batch_total: int, n: int) -> list[int]:
    """Data set indices of the ``batch_total`` items of optimiser step ``step`` (0-based).

    Item k of step s sits at position g = s * batch_total + k of an endless stream made of one
    seeded permutation of the data set per epoch.
    """
    out = []
    for g in range(step * batch_total, (step + 1) * batch_total):
        out.append(int(_epoch_order(seed, g // n, n)[g % n]))
    return out


def lr_at(step: int, lr: float, warmup_steps: int, steps: int = 0, decay_steps: int = 0) -> float:
    """Learning rate of optimiser step ``step`` (0-based): linear warm-up, constant, then (when
    ``decay_steps`` > 0) a linear decay over the last ``decay_steps`` of ``steps``, towards 0 at
    step ``steps`` (warmup-stable-decay: the stable phase does not depend on where the decay falls,
    so a stable-phase checkpoint can take on a decay)."""
    scale = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    if decay_steps > 0 and step >= steps - decay_steps:
        scale = min(scale, (steps - step) / decay_steps)
    return lr * scale


def decay_start(steps: int, decay_steps: int) -> float:
    """The first step of the learning-rate decay (infinity: none)."""
    return steps - decay_steps if decay_steps > 0 else math.inf


# ------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------
SYNTHETIC_COLOURS = {"red": (1.0, -1.0, -1.0), "green": (-1.0, 1.0, -1.0), "blue": (-1.0, -1.0, 1.0), "yellow": (1.0, 1.0, -1.0)}


class SyntheticClips(torch.utils.data.Dataset):
    """Tiny procedural clips for tests: a coloured square moving left or right on black.

    Item i is a pure function of (seed, i): ``video`` float32 (3, frames, size, size) in [-1, 1],
    ``caption`` like "a red square moving right".
    """

    def __init__(self, size: int = 16, frames: int = 5, seed: int = 0, length: int = 8) -> None:
        self.size, self.frames, self.seed, self.length = size, frames, seed, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        g = make_generator(self.seed, "synthetic", index)
        names = list(SYNTHETIC_COLOURS)
        colour = names[int(torch.randint(len(names), (), generator=g))]
        right = bool(torch.randint(2, (), generator=g))
        side = max(2, self.size // 4)
        top = int(torch.randint(self.size - side + 1, (), generator=g))
        video = torch.full((3, self.frames, self.size, self.size), -1.0)
        for f in range(self.frames):
            x = round(f * (self.size - side) / max(1, self.frames - 1))
            x = x if right else self.size - side - x
            video[:, f, top : top + side, x : x + side] = torch.tensor(SYNTHETIC_COLOURS[colour]).view(3, 1, 1)
        return {"video": video, "caption": f"a {colour} square moving {'right' if right else 'left'}"}


class LatentCacheDataset(torch.utils.data.Dataset):
    """Items of a latent cache: ``mean`` and ``logvar`` (z, F', h, w) of the VAE posterior, ``caption``."""

    def __init__(self, mean: torch.Tensor, logvar: torch.Tensor, captions: list[str]) -> None:
        self.mean, self.logvar, self.captions = mean, logvar, captions

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, index: int) -> dict:
        return {"mean": self.mean[index], "logvar": self.logvar[index], "caption": self.captions[index]}


class TokenCacheDataset(torch.utils.data.Dataset):
    """Items of a token cache: ``tokens`` (F', h, w) long ids of the tokenizer, ``caption``."""

    def __init__(self, tokens: torch.Tensor, captions: list[str]) -> None:
        self.tokens, self.captions = tokens, captions  # tokens (n, F', h, w), int16 or int32 as stored

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, index: int) -> dict:
        return {"tokens": self.tokens[index].long(), "caption": self.captions[index]}


def make_dataset(data: DataConfig) -> torch.utils.data.Dataset:
    """The clip data set a config names (items: ``video`` (3, F, H, W) in [-1, 1], ``caption``)."""
    if data.kind == "synthetic":
        return SyntheticClips(size=data.size, frames=data.frames, seed=data.seed, length=data.length)
    if data.kind == "shapes":
        from ..data.shapes import (
            ShapesDataset,  # imported here so training does not need the shapes module otherwise
        )

        return ShapesDataset(split=data.split, size=data.size, frames=data.frames, seed=data.seed, length=data.length)
    from ..data.video_folder import VideoFolderDataset

    return VideoFolderDataset(data.path, data.captions, size=data.size, frames=data.frames)


# ------------------------------------------------------------------------------------------------
# Text encoders
# ------------------------------------------------------------------------------------------------
class CachedTextEncoder:
    """A frozen text encoder that encodes each distinct caption once, alone.

    Training data repeats captions (templates x combinations), and encoding a batch of 32 captions
    with MiniLM costs about as much as the 4 M-parameter transformer's forward pass. Each caption
    is encoded as a batch of one, so its states never depend on which captions shared its batch:
    a resumed run sees exactly the states an uninterrupted one did. At most ``max_entries`` are kept
    (least recently used dropped).
    """

    def __init__(self, encoder, max_entries: int = 16384) -> None:
        self.encoder, self.max_entries = encoder, max_entries
        self._cache: collections.OrderedDict[str, torch.Tensor] = collections.OrderedDict()

    def __call__(self, prompts: Sequence[str]) -> torch.Tensor:
        out = []
        for p in prompts:
            if p in self._cache:
                self._cache.move_to_end(p)
            else:
                self._cache[p] = self.encoder([p])[0].float()
                if len(self._cache) > self.max_entries:
                    self._cache.popitem(last=False)
            out.append(self._cache[p])
        return torch.stack(out)


def make_text_encoder(name: str, text_dim: int, max_length: int):
    """The frozen text encoder a config names (:data:`kinema.families.TEXT_ENCODERS`); its width
    must equal the model's text_dim."""
    from ..families import text_encoder_kind
    from ..pipelines.loading import load_text_encoder

    kind = text_encoder_kind(name)
    if kind.dim is None:
        return load_text_encoder(name, max_length, dim=text_dim)
    if text_dim != kind.dim:
        raise KinemaError(f"text_encoder {name} gives {kind.dim}-d states; set architecture.text_dim: {kind.dim} (got {text_dim})")
    return CachedTextEncoder(load_text_encoder(name, max_length))


# ------------------------------------------------------------------------------------------------
# Models and their losses
# ------------------------------------------------------------------------------------------------
def _stack_randn(shape: Sequence[int], generators: Sequence[torch.Generator]) -> torch.Tensor:
    """One standard normal draw of ``shape`` per generator, stacked: (len(generators), *shape)."""
    return torch.stack([torch.randn(tuple(shape), generator=g) for g in generators])


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


def build_model(config: TrainConfig) -> nn.Module:
    """The model to train, freshly initialised from (seed, "init") without touching the global RNG."""
    arch = config.model_config()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(config.seed, "init"))
        return TRAINING_KINDS[config.model].build(config, arch).train()


def enable_grad_checkpointing(model: nn.Module) -> None:
    """Recompute each transformer block in the backward pass (``torch.utils.checkpoint``), from
    outside the model: the block's ``forward`` is wrapped on the instance; weights and keys do not change.
    Any model whose ``blocks`` are pure functions of their inputs (the Wan transformer, the token model)."""
    from torch.utils.checkpoint import checkpoint

    for block in model.blocks:
        inner = block.forward
        block.forward = functools.partial(checkpoint, inner, use_reentrant=False)


def load_vae(path: str | os.PathLike):
    """A frozen Wan VAE from a directory (a VAE run's ``model/``) or a weights file (+ config.json beside it)."""
    from ..checkpoints.wan_vae import from_diffusers, load_wan_vae

    path = Path(path)
    if path.is_file() and (path.parent / "config.json").is_file():
        return load_wan_vae(path, config=from_diffusers(read_json(path.parent / "config.json")))
    if not path.exists():
        raise KinemaError(f"vae not found: {path}; point 'vae' at a VAE run's model/ directory or a weights file")
    return load_wan_vae(path)


def load_tokenizer(path: str | os.PathLike):
    """A frozen VQ video tokenizer from a directory (a vq-tokenizer run's ``model/``)."""
    from ..checkpoints.vq_video import is_vq_tokenizer_dir, load_vq_tokenizer

    path = Path(path)
    if not path.is_dir():
        raise KinemaError(f"tokenizer not found: {path}; point 'tokenizer' at a vq-tokenizer run's model/ directory")
    if not is_vq_tokenizer_dir(path):
        raise KinemaError(f"tokenizer {path} is not a VQ tokenizer export (its config.json must name VQVideoTokenizer); "
                          "point 'tokenizer' at a vq-tokenizer run's model/ directory")
    return load_vq_tokenizer(path)


def check_token_model_fits(arch, tokenizer, data: DataConfig) -> None:
    """Raise KinemaError unless the token model reads the ids this tokenizer gives on the data:
    ``vocab_size`` = codebook size and ``grid`` = the token grid of a ``data.size`` frame."""
    if arch.vocab_size != tokenizer.codebook_size:
        raise KinemaError(f"architecture.vocab_size ({arch.vocab_size}) must equal the tokenizer's codebook size "
                          f"({tokenizer.codebook_size}); set vocab_size: {tokenizer.codebook_size}")
    _, h, w = tokenizer.grid(data.frames, data.size, data.size)
    if tuple(arch.grid) != (h, w):
        raise KinemaError(f"architecture.grid {list(arch.grid)} must equal the tokenizer's token grid at data.size {data.size} "
                          f"({data.size}/{tokenizer.spatial_compression} per side); set grid: [{h}, {w}]")


def drop_captions(items: list[dict], gens: list[torch.Generator], p: float) -> tuple[list[str], int]:
    """Each item's caption, or "" with probability ``p`` (classifier-free guidance); the coin is
    the first draw of the item's generator. Returns the captions and how many were dropped."""
    captions, dropped = [], 0
    for it, g in zip(items, gens):
        drop = bool(torch.rand((), generator=g) < p)
        dropped += drop
        captions.append("" if drop else it["caption"])
    return captions, dropped


class VAEObjective:
    """Reconstruction + KL for the Wan VAE; the latent is a posterior sample drawn per item."""

    def __init__(self, config: TrainConfig) -> None:
        self.o = config.objective

    def __call__(self, model: nn.Module, items: list[dict], gens: list[torch.Generator]) -> tuple[torch.Tensor, dict]:
        video = torch.stack([it["video"] for it in items])  # (B, 3, F, H, W)
        posterior = model.encode(video)  # each (B, z, F', h, w)
        z = posterior.mean + posterior.std * _stack_randn(posterior.mean.shape[1:], gens).to(posterior.mean.dtype)
        recon = model.decode(z)  # (B, 3, F, H, W)
        o = self.o
        return vae_loss(video, recon, posterior.mean, posterior.logvar, o.l1_weight, o.mse_weight, o.kl_weight, o.foreground_weight)

    def after_step(self, model: nn.Module, step: int) -> dict[str, float]:
        """Nothing to do after an optimiser step; no extra metrics."""
        return {}


class VQObjective:
    """Reconstruction (L1 + MSE, optionally foreground-weighted) + the quantiser's commitment loss
    for the VQ tokenizer. Draws nothing per item; after each optimiser step the codebook takes its
    EMA step and restarts dead codes with a generator from (seed, "codebook", step)."""

    def __init__(self, config: TrainConfig) -> None:
        self.o, self.seed = config.objective, config.seed
        self.assignments: list = []  # the quantiser's Assignments of this optimiser step's micro-batches so far

    def __call__(self, model: nn.Module, items: list[dict], gens: list[torch.Generator]) -> tuple[torch.Tensor, dict]:
        video = torch.stack([it["video"] for it in items])  # (B, 3, F, H, W)
        recon, quantizer = model(video)  # (B, 3, F, H, W), scalars and the assignments
        self.assignments.append(quantizer["assignments"])
        return vq_loss(video, recon, quantizer, self.o.l1_weight, self.o.mse_weight, self.o.foreground_weight)

    def after_step(self, model: nn.Module, step: int) -> dict[str, float]:
        """Move the codebook by the step's assignments (then forget them); returns its use
        (perplexity, codes_used, codes_restarted)."""
        records, self.assignments = self.assignments, []
        return model.quantizer.update_codebook(records, make_generator(self.seed, "codebook", step))


class FlowObjective:
    """Flow matching for the Wan transformer on normalised VAE latents, with caption dropout.

    Per item and in this order, its generator draws: the caption-dropout coin, the posterior
    sample's noise, sigma, the flow noise.
    """

    def __init__(self, config: TrainConfig, vae, text_encoder) -> None:
        self.config, self.vae, self.text_encoder = config, vae, text_encoder
        self.dropped = 0  # captions replaced by "" so far (for tests and logs)

    def __call__(self, model: nn.Module, items: list[dict], gens: list[torch.Generator]) -> tuple[torch.Tensor, dict]:
        c, o = self.config, self.config.objective
        captions, dropped = drop_captions(items, gens, c.caption_dropout)
        self.dropped += dropped
        with torch.no_grad():
            if "mean" in items[0]:  # from the latent cache
                mean = torch.stack([it["mean"] for it in items]).float()  # (B, z, F', h, w)
                logvar = torch.stack([it["logvar"] for it in items]).float()
            else:
                with torch.autocast("cpu", enabled=False):
                    posterior = self.vae.encode(torch.stack([it["video"] for it in items]))
                mean, logvar = posterior.mean.float(), posterior.logvar.float()
            z = mean + torch.exp(0.5 * logvar) * _stack_randn(mean.shape[1:], gens)  # (B, z, F', h, w)
            x0 = self.vae.normalize_latents(z)  # (B, z, F', h, w)
            sigma = torch.stack([sample_sigma(g, o.sigma_sampling, o.logit_mean, o.logit_std) for g in gens])  # (B,)
            noise = _stack_randn(x0.shape[1:], gens)  # (B, z, F', h, w)
            context = self.text_encoder(captions).float()  # (B, L, text_dim)
        loss = flow_matching_loss(lambda x, t: model(x, t, context), x0, noise, sigma)
        return loss, {}

    def after_step(self, model: nn.Module, step: int) -> dict[str, float]:
        """Nothing to do after an optimiser step; no extra metrics."""
        return {}


class TokenObjective:
    """Next-token cross-entropy for the token model on a frozen VQ tokenizer's ids, with caption dropout.

    A clip's ids (F', h, w) flatten frame-major, raster order inside a frame (the model's layout),
    and the loss is the mean over every token of the micro-batch. Per item its generator draws the
    caption-dropout coin only. The text states go in zero-padded with no mask (as for the Wan
    transformer), and a dropped caption is the text encoder's states of "" (all zero for the toy
    encoder, but not for MiniLM, which encodes "" as its [CLS] and [SEP] tokens), so generation's
    unconditional branch must encode "" with the same encoder. The token accuracy of the step's
    micro-batches is returned by :meth:`after_step` for the metrics.
    """

    def __init__(self, config: TrainConfig, tokenizer, text_encoder) -> None:
        self.config, self.tokenizer, self.text_encoder = config, tokenizer, text_encoder
        self.dropped = 0  # captions replaced by "" so far (for tests and logs)
        self._correct, self._count = 0, 0  # argmax-right tokens and tokens of this step's micro-batches so far

    def __call__(self, model: nn.Module, items: list[dict], gens: list[torch.Generator]) -> tuple[torch.Tensor, dict]:
        captions, dropped = drop_captions(items, gens, self.config.caption_dropout)
        self.dropped += dropped
        with torch.no_grad():
            if "tokens" in items[0]:  # from the token cache
                tokens = torch.stack([it["tokens"] for it in items])  # (B, F', h, w)
            else:
                with torch.autocast("cpu", enabled=False):
                    tokens = self.tokenizer.encode_tokens(torch.stack([it["video"] for it in items]))  # (B, F', h, w)
            context = self.text_encoder(captions).float()  # (B, L, text_dim)
        tokens = tokens.flatten(1).long()  # (B, N): frame-major, raster order in a frame
        logits = model(tokens, context)  # (B, N, V) float32; position p predicts token p
        loss, correct = next_token_loss(logits, tokens)
        self._correct, self._count = self._correct + correct, self._count + tokens.numel()
        return loss, {"accuracy": correct / tokens.numel()}

    def after_step(self, model: nn.Module, step: int) -> dict[str, float]:
        """The token accuracy (argmax = target) over the step's micro-batches; starts the next step's count."""
        accuracy = self._correct / max(1, self._count)
        self._correct, self._count = 0, 0
        return {"accuracy": accuracy}


# ------------------------------------------------------------------------------------------------
# Precomputed encodings: the latent cache (transformer) and the token cache (token model)
# ------------------------------------------------------------------------------------------------
def encoding_cache_key(data: DataConfig, encoder_path: str | os.PathLike) -> str:
    """What a cache depends on: the data config and the frozen encoder (its path, and the size and
    modification time of its weights files, so retraining the encoder invalidates the cache)."""
    encoder = Path(encoder_path).resolve()
    files = sorted(encoder.glob("*.safetensors")) + sorted(encoder.glob("*.pth")) if encoder.is_dir() else [encoder]
    stamps = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file()]
    return hashlib.sha256(json.dumps([dataclasses.asdict(data), str(encoder), stamps], default=str).encode()).hexdigest()[:16]


def latent_cache_key(config: TrainConfig) -> str:
    """The latent cache's key: the data config and the VAE (:func:`encoding_cache_key`)."""
    return encoding_cache_key(config.data, config.vae)


def token_cache_key(config: TrainConfig) -> str:
    """The token cache's key: the data config and the tokenizer (:func:`encoding_cache_key`)."""
    return encoding_cache_key(config.data, config.tokenizer)


def codec_identity(path: str | os.PathLike) -> str:
    """A content hash (sha256, hex) of a frozen VAE or tokenizer: its config.json and weights files
    (``*.safetensors``, ``*.pth``, a shard index), names and bytes, as :func:`load_vae` and
    :func:`load_tokenizer` read them. Retraining or editing the codec changes it; copying it (another
    machine, other modification times) does not. Checkpoints record it (:func:`save_checkpoint`)."""
    path = Path(path)
    if path.is_dir():
        if not (path / "config.json").is_file() and (path / "vae" / "config.json").is_file():
            path = path / "vae"  # a model root: load_wan_vae reads its vae/ folder
        files = sorted(f for f in path.iterdir() if f.is_file() and (f.name == "config.json" or f.name.endswith(CODEC_SUFFIXES)))
    else:
        files = [path] + ([path.parent / "config.json"] if (path.parent / "config.json").is_file() else [])
    digest = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            digest.update(json.dumps([f.name, hashlib.file_digest(fh, "sha256").hexdigest()]).encode())
    return digest.hexdigest()


def _cached(path: Path, key: str) -> tuple[dict[str, torch.Tensor], list[str]] | None:
    """A cache file's tensors and captions if it exists and was built for ``key``, else None."""
    if path.is_file() and safetensors_metadata(path).get("key") == key:
        return load_safetensors(path), json.loads(safetensors_metadata(path)["captions"])
    return None


def _encode_all(dataset, encode, desc: str) -> tuple[list[dict[str, torch.Tensor]], list[str]]:
    """Run ``encode`` (a batch of videos (n, 3, F, H, W) -> a dict of (n, ...) tensors) over the
    whole data set in batches of CACHE_BATCH, without gradients; returns the outputs and captions."""
    outs, captions = [], []
    from tqdm import tqdm

    with torch.no_grad():
        for start in tqdm(range(0, len(dataset), CACHE_BATCH), desc=desc, leave=False):
            items = [dataset[i] for i in range(start, min(start + CACHE_BATCH, len(dataset)))]
            outs.append(encode(torch.stack([item["video"] for item in items])))
            captions += [item["caption"] for item in items]
    return outs, captions


def latent_cache(path: Path, key: str, dataset, vae) -> LatentCacheDataset:
    """Load the cache at ``path`` if its key matches; otherwise encode every item once and write it.

    Stores the posterior's mean and log-variance (not a sample), so training still draws a fresh
    latent per step from the step's generator.
    """
    found = _cached(path, key)
    if found is not None:
        return LatentCacheDataset(found[0]["mean"], found[0]["logvar"], found[1])

    def encode(video: torch.Tensor) -> dict[str, torch.Tensor]:
        posterior = vae.encode(video)  # (n, z, F', h, w)
        return {"mean": posterior.mean.float(), "logvar": posterior.logvar.float()}

    outs, captions = _encode_all(dataset, encode, "latent cache")
    mean, logvar = torch.cat([o["mean"] for o in outs]), torch.cat([o["logvar"] for o in outs])
    save_safetensors({"mean": mean, "logvar": logvar}, path, metadata={"key": key, "captions": json.dumps(captions)})
    return LatentCacheDataset(mean, logvar, captions)


def token_cache(path: Path, key: str, dataset, tokenizer) -> TokenCacheDataset:
    """Load the token cache at ``path`` if its key matches; otherwise encode every item once through
    the frozen tokenizer and write it. Ids are stored as int16 when the codebook fits (32,768 codes
    or fewer), else int32: (n, F', h, w) under "tokens", the captions in the metadata."""
    found = _cached(path, key)
    if found is not None:
        return TokenCacheDataset(found[0]["tokens"], found[1])
    dtype = torch.int16 if tokenizer.codebook_size <= torch.iinfo(torch.int16).max + 1 else torch.int32
    outs, captions = _encode_all(dataset, lambda video: {"tokens": tokenizer.encode_tokens(video).to(dtype)}, "token cache")
    tokens = torch.cat([o["tokens"] for o in outs])  # (n, F', h, w)
    save_safetensors({"tokens": tokens}, path, metadata={"key": key, "captions": json.dumps(captions)})
    return TokenCacheDataset(tokens, captions)


# ------------------------------------------------------------------------------------------------
# Checkpoints and export
# ------------------------------------------------------------------------------------------------
def save_checkpoint(
    out_dir: Path, step: int, model: nn.Module, ema: EMA | None, optimizer, chash: str, codec: str | None = None, schedule: dict | None = None
) -> Path:
    """Write out_dir/checkpoints/step-XXXXXXX atomically (temp dir, then rename) and point ``latest`` at it.

    ``codec``: the :func:`codec_identity` of the frozen VAE or tokenizer the run trains on (None: none),
    recorded in trainer.json as ``codec_sha256`` for :func:`check_resumable`; ``schedule``, the
    run's ``{"steps", "decay_steps"}``, as ``lr_schedule``."""
    root = out_dir / "checkpoints"
    final = root / f"step-{step:07d}"
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_safetensors(model.state_dict(), tmp / "model.safetensors")
    if ema is not None:
        save_safetensors(ema.state_dict(), tmp / "ema.safetensors")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    info = {"step": step, "config_hash": chash, "time": time.time(), **({CODEC_KEY: codec} if codec is not None else {})}
    if schedule is not None:
        info[SCHEDULE_KEY] = schedule
    (tmp / "trainer.json").write_text(json.dumps(info, indent=1))
    if final.exists():  # the same step saved again (a resumed run that had already finished)
        shutil.rmtree(final)
    os.rename(tmp, final)
    with atomic_path(root / "latest") as p:
        p.write_text(final.name)
    return final


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The checkpoint ``latest`` names (or the highest complete step-* directory), or None."""
    root = out_dir / "checkpoints"
    pointer = root / "latest"
    if pointer.is_file() and (root / pointer.read_text().strip() / "trainer.json").is_file():
        return root / pointer.read_text().strip()
    done = sorted(p for p in root.glob("step-*") if (p / "trainer.json").is_file())
    return done[-1] if done else None


def init_weights_from(model: nn.Module, source: str | os.PathLike, partial: bool = False) -> list[str]:
    """Load a fresh run's starting weights: a checkpoint folder (its ``ema.safetensors`` if there,
    else ``model.safetensors``) or a safetensors file with the model's own keys, strictly.

    For fine-tuning, e.g. a VAE trained on short clips continued on longer ones (a new config,
    so a new run, not a resume).

    ``partial`` (the VQ tokenizer): load the top-level modules the source has, each whole, and
    leave the rest as initialised. So a trained wan-vae's ``encoder``, ``conv1``, ``conv2`` and
    ``decoder`` start a tokenizer whose ``quant_proj``, ``quantizer`` and ``post_quant_proj`` start
    fresh. A module the source has with other tensor names or shapes (another width, another
    temporal_downsample) raises rather than loading in part, and so does a source that shares no
    module. The source may also be an export directory (a run's ``model/``: a Wan VAE's or a
    tokenizer's).

    Returns:
        the names of the model's tensors that were loaded.
    """
    path = Path(source)
    if partial and path.is_dir() and (path / "config.json").is_file():
        state, where = _export_state(path), path
    else:
        if path.is_dir():
            path = next((path / f for f in ("ema.safetensors", "model.safetensors") if (path / f).is_file()), path / "ema.safetensors")
        if not path.is_file():
            raise KinemaError(f"init_from: no weights at {path}; give a checkpoint folder (checkpoints/step-N) or a .safetensors file")
        state, where = load_safetensors(path), path
    if not partial:
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise KinemaError(f"init_from {where}: the weights do not fit this model's architecture: {str(e).splitlines()[0]}") from None
        return list(state)
    own = model.state_dict()
    loaded, mismatched = [], []
    for module in sorted({_top_module(k) for k in own}):
        mine = {k: tuple(v.shape) for k, v in own.items() if _top_module(k) == module}
        theirs = {k: tuple(v.shape) for k, v in state.items() if _top_module(k) == module}
        if not theirs:
            continue  # not in the source: starts fresh
        differ = sorted(set(mine) ^ set(theirs)) + [f"{k} {theirs[k]} vs {mine[k]}" for k in sorted(mine) if k in theirs and theirs[k] != mine[k]]
        if differ:
            mismatched.append(f"{module} ({differ[0]})")
        else:
            loaded.extend(mine)
    if mismatched:
        raise KinemaError(
            f"init_from {where}: {', '.join(mismatched)} do not match this model; the source needs the same "
            "base_dim, z_dim, dim_mult, num_res_blocks and temporal_downsample"
        )
    if not loaded:
        raise KinemaError(
            f"init_from {where}: no module of this model is in the source (it has {sorted({_top_module(k) for k in state})[:6]}); "
            "give a checkpoint of a wan-vae or vq-tokenizer run"
        )
    model.load_state_dict({k: state[k] for k in loaded}, strict=False)
    return sorted(loaded)


def _top_module(key: str) -> str:
    """The top-level module of a state-dict key: ``encoder.conv1.weight`` -> ``encoder``."""
    return key.split(".")[0]


def _export_state(path: Path) -> dict[str, torch.Tensor]:
    """The state dict (kinema's names) of an exported Wan VAE or VQ tokenizer directory."""
    from ..checkpoints.vq_video import is_vq_tokenizer_dir, load_vq_tokenizer

    if is_vq_tokenizer_dir(path):
        return load_vq_tokenizer(path).state_dict()
    return load_vae(path).state_dict()


def freeze_parameters(model: nn.Module, prefixes: list[str]) -> None:
    """Keep the parameters whose names start with one of ``prefixes`` (a module path such as
    ``encoder`` or ``blocks.0``) fixed: no gradients, no optimiser state, and the EMA keeps them
    exactly. Raises KinemaError for a prefix that names no parameter, and when no parameter is
    left to train."""
    names = [n for n, _ in model.named_parameters()]
    tops = sorted({n.split(".")[0] for n in names})
    for prefix in prefixes:
        if not any(n == prefix or n.startswith(prefix + ".") for n in names):
            raise KinemaError(f"freeze: {prefix!r} names no parameter of this model; its top-level modules are {tops}")
    for n, p in model.named_parameters():
        if any(n == prefix or n.startswith(prefix + ".") for prefix in prefixes):
            p.requires_grad_(False)
    if prefixes and not any(p.requires_grad for p in model.parameters()):
        raise KinemaError(f"freeze: {list(prefixes)} leaves no parameter to train (top-level modules: {tops}); freeze fewer modules")


def check_resumable(path: Path, config: TrainConfig, chash: str, codec: str | None) -> None:
    """Raise KinemaError unless the checkpoint at ``path`` was written by this config (``chash``)
    on the same frozen VAE or tokenizer (``codec``, its :func:`codec_identity`), and the steps it
    has done had the learning rates this config's schedule gives them: a checkpoint from before
    any decay began may take on a decay (or move one that has not begun); one inside its decay
    resumes only with the same ``steps`` and ``optim.decay_steps``. Checkpoints from before the
    codec was recorded skip that check; those from before the schedule was recorded count as
    trained without a decay."""
    info = read_json(path / "trainer.json")
    if info.get("config_hash") != chash:
        raise KinemaError(
            f"{path} was written by a different training config (hash {info.get('config_hash')} vs {chash}); "
            "resume with the same config (only steps, threads, checkpoint_every, optim.decay_steps may change) or use a new out_dir"
        )
    saved = info.get(CODEC_KEY)
    if codec is not None and saved is not None and saved != codec:
        kind = TRAINING_KINDS[config.model]
        raise KinemaError(
            f"the {kind.codec_noun} at {getattr(config, kind.codec)} changed since step {info.get('step')} was saved; "
            "use a new out_dir or restore it"
        )
    step = int(info.get("step", 0))
    saved_schedule = info.get(SCHEDULE_KEY, {"steps": None, "decay_steps": 0})
    old, new = decay_start(saved_schedule["steps"] or 0, saved_schedule["decay_steps"]), decay_start(config.steps, config.optim.decay_steps)
    same = saved_schedule == {"steps": config.steps, "decay_steps": config.optim.decay_steps}
    if not same and old < step:
        raise KinemaError(
            f"{path} is at step {step}, inside a learning-rate decay that began at step {old}; resume with steps "
            f"{saved_schedule['steps']} and optim.decay_steps {saved_schedule['decay_steps']}, or from a checkpoint at or before step {old}"
        )
    if not same and new < step:
        raise KinemaError(
            f"{path} is at step {step} but the learning-rate decay would begin at step {new}, and the steps between were trained "
            f"at the constant rate; resume from a checkpoint at or before step {new} (delete the later ones), or let the decay begin later"
        )


def load_checkpoint(path: Path, model: nn.Module, ema: EMA | None, optimizer) -> int:
    """Restore model, EMA and optimiser from a checkpoint directory (checked by :func:`check_resumable`); returns its step."""
    info = read_json(path / "trainer.json")
    model.load_state_dict(load_safetensors(path / "model.safetensors"), strict=True)
    if ema is not None:
        if not (path / "ema.safetensors").is_file():
            raise CheckpointError(f"{path} has no ema.safetensors but the config has ema_decay > 0")
        ema.load_state_dict(load_safetensors(path / "ema.safetensors"))
    try:
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
    except Exception as e:  # noqa: BLE001 - any failure here means an unusable checkpoint
        raise CheckpointError(f"{path / 'optimizer.pt'} could not be loaded (weights only): {' '.join(str(e).split())[:200]}") from None
    return int(info["step"])


LATENT_STATS_CLIPS = 64  # training clips whose latents set an exported VAE's normalisation


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


def export_model(out_dir: Path, config: TrainConfig, state: dict[str, torch.Tensor]) -> Path:
    """Write out_dir/model/: config.json (the diffusers form kinema's loaders read) + weights, atomically.

    A VAE's config gets ``latents_mean``/``latents_std`` measured on its training clips
    (:func:`measure_latent_stats`), replacing the config's placeholders.

    The VAE's weights are written with diffusers' names (``load_wan_vae`` reads a directory that
    way); the transformer's with the original Wan names, which ``load_wan_transformer`` reads with
    either config form (diffusers when text_len is 512, else the original Wan config).
    """
    raw_config, weights = TRAINING_KINDS[config.model].export(config, config.model_config(), state)
    final = out_dir / "model"
    tmp = out_dir / f".tmp-model-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_safetensors(weights, tmp / WEIGHTS_FILE)
    (tmp / "config.json").write_text(json.dumps(raw_config, indent=2))
    (tmp / "training.json").write_text(json.dumps(dataclasses.asdict(config), indent=2, default=str))
    old = out_dir / f".old-model-{os.getpid()}"
    if final.exists():
        os.rename(final, old)
    os.rename(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


# ------------------------------------------------------------------------------------------------
# The kinds of model: one registry
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TrainingKind:
    """One kind of model the loop trains (a config's ``model``): a row of :data:`TRAINING_KINDS`."""

    config_class: Callable[[], type]  # () -> the architecture's config dataclass (imported when called)
    build: Callable[[TrainConfig, Any], nn.Module]  # (config, architecture) -> a fresh model (build_model seeds the RNG)
    objective: Callable[[TrainConfig, Any, Path], tuple[Any, Any]]  # (config, architecture, out_dir) -> (objective, data set)
    export: Callable[[TrainConfig, Any, dict], tuple[dict, dict]]  # (config, architecture, weights) -> (config.json content, weights to write)
    codec: str | None = None  # the TrainConfig field naming the frozen codec it trains on (latent_cache applies); None: trains on pixels
    codec_noun: str = ""  # that codec in messages ("the VAE at PATH changed ...")
    codec_help: str = ""  # what the codec field must name (the message when it is missing)
    text: bool = False  # conditioned on captions: text_encoder, text_max_length and caption_dropout apply
    grad_checkpointing: bool = False  # its blocks may be recomputed in the backward pass (pure functions, no causal cache)
    init_logvar: bool = True  # objective.init_logvar accepted (the wan-vae's posterior; a wan-transformer ignores it)
    partial_init: bool = False  # init_from loads the top-level modules the source has (a wan-vae's encoder, decoder)


def _wan_vae_config() -> type:
    from ..models.vae.wan_vae import WanVAEConfig

    return WanVAEConfig


def _wan_transformer_config() -> type:
    from ..models.wan import WanTransformerConfig

    return WanTransformerConfig


def _vq_tokenizer_config() -> type:
    from ..models.vae.vq_video import VQVideoConfig

    return VQVideoConfig


def _token_ar_config() -> type:
    from ..models.token_ar import TokenARConfig

    return TokenARConfig


def _build_wan_vae(config: TrainConfig, arch) -> nn.Module:
    from ..models.vae.wan_vae import WanVAE

    model = WanVAE(arch)
    if config.objective.init_logvar is not None:
        init_posterior_logvar(model, config.objective.init_logvar)
    return model


def _build_wan_transformer(config: TrainConfig, arch) -> nn.Module:
    from ..models.wan import WanTransformer

    model = WanTransformer(arch)
    model.init_weights()
    return model


def _build_vq_tokenizer(config: TrainConfig, arch) -> nn.Module:
    from ..models.vae.vq_video import VQVideoTokenizer

    return VQVideoTokenizer(arch)


def _build_token_ar(config: TrainConfig, arch) -> nn.Module:
    from ..models.token_ar import TokenAR

    model = TokenAR(arch)
    model.init_weights()
    return model


def _vae_objective(config: TrainConfig, arch, out_dir: Path):
    return VAEObjective(config), make_dataset(config.data)


def _vq_objective(config: TrainConfig, arch, out_dir: Path):
    return VQObjective(config), make_dataset(config.data)


def _flow_objective(config: TrainConfig, arch, out_dir: Path):
    vae = load_vae(config.vae)
    if vae.config.z_dim != arch.in_dim or arch.out_dim != arch.in_dim:
        raise KinemaError(f"the transformer's in_dim/out_dim ({arch.in_dim}/{arch.out_dim}) must equal the VAE's z_dim ({vae.config.z_dim})")
    text = make_text_encoder(config.text_encoder, arch.text_dim, config.text_max_length)
    if config.latent_cache:
        dataset = latent_cache(out_dir / CACHE_FILE, latent_cache_key(config), make_dataset(config.data), vae)
    else:
        dataset = make_dataset(config.data)
    return FlowObjective(config, vae, text), dataset


def _token_objective(config: TrainConfig, arch, out_dir: Path):
    tokenizer = load_tokenizer(config.tokenizer)
    check_token_model_fits(arch, tokenizer, config.data)
    text = make_text_encoder(config.text_encoder, arch.text_dim, config.text_max_length)
    if config.latent_cache:
        dataset = token_cache(out_dir / TOKEN_CACHE_FILE, token_cache_key(config), make_dataset(config.data), tokenizer)
    else:
        dataset = make_dataset(config.data)
    return TokenObjective(config, tokenizer, text), dataset


def _export_wan_vae(config: TrainConfig, arch, state: dict) -> tuple[dict, dict]:
    """diffusers' config (with latents_mean/latents_std measured on the training clips) and names."""
    from ..checkpoints.wan_vae import diffusers_keys, to_diffusers

    mean, std = measure_latent_stats(config, state)
    arch = dataclasses.replace(arch, latents_mean=mean, latents_std=std)
    return to_diffusers(arch), diffusers_keys(arch).to_theirs(state)


def _export_wan_transformer(config: TrainConfig, arch, state: dict) -> tuple[dict, dict]:
    """The original Wan names; diffusers' config form when text_len is 512, else the original Wan config."""
    from ..checkpoints.wan import to_diffusers, to_original

    return (to_diffusers(arch) if arch.text_len == 512 else to_original(arch)), dict(state)


def _export_own(config: TrainConfig, arch, state: dict) -> tuple[dict, dict]:
    """kinema's own config.json and names: load_vq_tokenizer / load_token_ar read them."""
    from ..checkpoints import token_ar, vq_video

    return (token_ar.to_json(arch) if config.model == "token-ar" else vq_video.to_json(arch)), dict(state)


TRAINING_KINDS: dict[str, TrainingKind] = {
    "wan-vae": TrainingKind(_wan_vae_config, _build_wan_vae, _vae_objective, _export_wan_vae),
    "wan-transformer": TrainingKind(
        _wan_transformer_config, _build_wan_transformer, _flow_objective, _export_wan_transformer,
        codec="vae", codec_noun="VAE", codec_help="a VAE directory (a VAE run's model/) or safetensors file",
        text=True, grad_checkpointing=True,
    ),
    "vq-tokenizer": TrainingKind(_vq_tokenizer_config, _build_vq_tokenizer, _vq_objective, _export_own, init_logvar=False, partial_init=True),
    "token-ar": TrainingKind(
        _token_ar_config, _build_token_ar, _token_objective, _export_own,
        codec="tokenizer", codec_noun="tokenizer", codec_help="a VQ tokenizer directory (a vq-tokenizer run's model/)",
        text=True, grad_checkpointing=True, init_logvar=False,
    ),
}  # fmt: skip


def run_codec_identity(config: TrainConfig) -> str | None:
    """The :func:`codec_identity` of the frozen VAE or tokenizer a run trains on; None when its kind
    has none, or when the path does not exist (loading it then says so)."""
    field = TRAINING_KINDS[config.model].codec
    path = getattr(config, field) if field else None
    return codec_identity(path) if path is not None and Path(path).exists() else None


# ------------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------------
def _trainable(config: TrainConfig, out_dir: Path):
    """(model, objective, dataset) for a config."""
    model = build_model(config)
    if config.grad_checkpointing:  # only kinds that allow it (checked with the config)
        enable_grad_checkpointing(model)
    objective, dataset = TRAINING_KINDS[config.model].objective(config, config.model_config(), out_dir)
    return model, objective, dataset


def accumulate_gradients(model: nn.Module, objective, dataset, config: TrainConfig, step: int) -> float:
    """Forward and backward the ``grad_accum`` micro-batches of optimiser step ``step`` (0-based),
    adding into the parameters' ``.grad``; returns the step's mean loss.

    Item k of the step (k < batch_size * grad_accum) is the same data and the same random draws
    however the step is split into micro-batches, so 2 x batch 1 matches 1 x batch 2.
    """
    indices = step_indices(config.seed, step, config.batch_size * config.grad_accum, len(dataset))
    step_loss = 0.0
    for micro in range(config.grad_accum):
        ks = range(micro * config.batch_size, (micro + 1) * config.batch_size)  # positions within the step
        items = [dataset[indices[k]] for k in ks]
        gens = [make_generator(config.seed, "item", step, k) for k in ks]
        torch.manual_seed(derive_seed(config.seed, "global", step, micro))  # any hidden global draw (dropout) is seeded too
        loss, _logs = objective(model, items, gens)
        if not torch.isfinite(loss):
            raise KinemaError(f"loss is {loss.item()} at step {step}; lower optim.lr or use precision fp32")
        (loss / config.grad_accum).backward()
        step_loss += loss.item() / config.grad_accum
    return step_loss


def _truncate_metrics(path: Path, last_step: int) -> None:
    """Keep the metrics of steps up to ``last_step``: a resumed run logs the later ones again."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= last_step]
    if len(kept) != len(lines):
        with atomic_path(path) as tmp:
            tmp.write_text("".join(kept))


def train(config: str | os.PathLike | dict | TrainConfig, *, resume: bool = False, steps: int | None = None, progress: bool = True) -> Path:
    """Train (or continue training) the model a config describes; returns the export directory.

    Args:
        config: a YAML path, a dict of the same fields, or a :class:`TrainConfig`.
        resume: continue from out_dir's latest checkpoint (a fresh start when there is none).
        steps: override the config's total number of optimiser steps.
        progress: show a tqdm bar with the loss and throughput.
    Returns:
        ``out_dir/model``: config.json + diffusion_pytorch_model.safetensors (EMA weights when
        ema_decay > 0).
    """
    config = load_config(config)
    if steps is not None:
        config = dataclasses.replace(config, steps=steps)
    torch.set_num_threads(config.threads or default_threads())
    out_dir = Path(config.out_dir)
    chash = config_hash(config)
    found = latest_checkpoint(out_dir)
    if found is not None and not resume:
        raise KinemaError(f"{out_dir} already holds checkpoints (latest {found.name}); pass --resume to continue, or choose a new out_dir")
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in (out_dir / "checkpoints").glob(".tmp-step-*"):  # half-written by a killed run: never referenced
        shutil.rmtree(stale, ignore_errors=True)
    codec = run_codec_identity(config)
    if found is not None:  # before _trainable, which may encode the whole data set into a cache
        check_resumable(found, config, chash, codec)

    model, objective, dataset = _trainable(config, out_dir)
    if found is None and config.init_from:
        init_weights_from(model, config.init_from, partial=TRAINING_KINDS[config.model].partial_init)  # a resumed run has them in its checkpoint already
    freeze_parameters(model, config.freeze)
    params = [p for p in model.parameters() if p.requires_grad]
    o = config.optim
    optimizer = torch.optim.AdamW(params, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
    ema = EMA(model, config.ema_decay) if config.ema_decay > 0 else None
    start = load_checkpoint(found, model, ema, optimizer) if found is not None else 0
    _truncate_metrics(out_dir / METRICS_FILE, start)  # steps a killed run logged past its checkpoint

    batch_total = config.batch_size * config.grad_accum
    kill_after = int(os.environ.get(KILL_AFTER_STEP_ENV, "-1"))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.precision == "bf16")
    from tqdm import tqdm

    bar = tqdm(total=config.steps, initial=min(start, config.steps), desc=f"train {config.model}", disable=not progress, dynamic_ncols=True)
    t0, done = time.perf_counter(), 0
    for step in range(start, config.steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, o.lr, o.warmup_steps, config.steps, o.decay_steps)
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            step_loss = accumulate_gradients(model, objective, dataset, config, step)
        if o.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, o.grad_clip)
        optimizer.step()
        extra = objective.after_step(model, step)  # a tokenizer's codebook update and use
        if ema is not None:
            ema.update(model, step)
        completed, done = step + 1, done + 1
        bar.update(1)
        with open(out_dir / METRICS_FILE, "a") as f:
            f.write(json.dumps({"step": completed, "loss": step_loss, "lr": optimizer.param_groups[0]["lr"], **extra}) + "\n")
        shown = {k: f"{extra[k]:.2f}" for k in ("codes_used", "accuracy") if k in extra}
        bar.set_postfix(loss=f"{step_loss:.4f}", samples_s=f"{done * batch_total / (time.perf_counter() - t0):.2f}", **shown)
        if completed % config.checkpoint_every == 0 or completed == config.steps:
            save_checkpoint(out_dir, completed, model, ema, optimizer, chash, codec, {"steps": config.steps, "decay_steps": o.decay_steps})
            if completed == kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
    bar.close()
    state = ema.state_dict() if ema is not None else model.state_dict()
    return export_model(out_dir, config, state)
