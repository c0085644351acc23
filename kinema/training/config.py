"""Training configuration: one YAML file -> :class:`TrainConfig`, every value checked.

A config names the kind of model to train (``wan-vae``, ``wan-transformer``, ``vq-tokenizer`` or
``token-ar``: :data:`kinema.training.kinds.TRAINING_KINDS`) with its architecture fields (those of
the kind's config class), the data, the optimiser, the kind's own objective settings and the run's
bookkeeping. See ``configs/tiny-vae.yaml``, ``configs/tiny-transformer.yaml``,
``configs/tiny-vq.yaml`` and ``configs/tiny-ar.yaml``.

Every section is read by :func:`kinema.schema.read_dataclass`: an unknown key, a value of the
wrong type (a string for a number, a one-element ``betas``), a non-finite number or one out of its
range (a negative learning rate or dimension) is a one-line :class:`~kinema.errors.KinemaError`
naming it, before anything is written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from ..errors import KinemaError
from ..schema import (
    AT_LEAST_ONE,
    NON_NEGATIVE,
    OPEN_UNIT,
    POSITIVE,
    UNIT,
    UNIT_BELOW_ONE,
    Range,
    check,
    read_dataclass,
)

if TYPE_CHECKING:
    from .kinds import TrainingKind

DATA_KINDS = ("shapes", "video_folder", "synthetic")
PRECISIONS = ("fp32", "bf16")
SPLITS = ("train", "held_out")
WORDINGS = ("templates", "wide")  # kinema.data.shapes.WORDINGS


FREEZE_WORDS = {
    "range": Range("non-empty prefixes", bool),
    "words": "a list of parameter-name prefixes such as [encoder, conv1] (leave it out to train everything)",
}


def one_of(choices: tuple[str, ...]) -> dict[str, Any]:
    """Field metadata: the value is one of ``choices``."""
    return {"range": Range(f"one of {list(choices)}", lambda v: v in choices)}


@dataclass
class DataConfig:
    kind: str = field(default="shapes", metadata=one_of(DATA_KINDS))  # "shapes" (procedural world), "video_folder" (videos + captions) or "synthetic" (moving squares, tests)
    size: int = field(default=64, metadata=check(AT_LEAST_ONE))  # clip side in pixels (square)
    frames: int = field(default=33, metadata=check(AT_LEAST_ONE))  # frames per clip (4k+1 for the Wan VAE)
    seed: int = field(default=0, metadata=check(NON_NEGATIVE))  # seed of the procedural data sets (shapes, synthetic)
    split: str = field(default="train", metadata=one_of(SPLITS))  # shapes split ("train" or "held_out")
    length: int = field(default=10_000, metadata=check(AT_LEAST_ONE))  # items per epoch for procedural data (shapes, synthetic); the latent cache encodes them all
    path: str | None = None  # video_folder: the directory of video files
    captions: str | None = None  # video_folder: a jsonl file of {"file": "a.mp4", "caption": "..."} (default PATH/captions.jsonl)
    wording: str = field(default="templates", metadata=one_of(WORDINGS))  # shapes captions: "templates" (15 sentence patterns, a few synonyms) or "wide" (kinema.data.wording's many synonyms, frames and fillers, a quarter still templates)
    continue_share: float = field(default=0.0, metadata=check(UNIT))  # shapes: the share of items that continue an earlier clip (its last continue_past frames, then a new motion, captioned): teaches extension and long videos' later windows
    continue_past: tuple[int, ...] = (17,)  # shapes: the earlier clip's frames such an item starts with (one drawn per item; each 4k+1 and fewer than frames for the Wan VAE)
    clip_frames: int | None = field(default=None, metadata=check(AT_LEAST_ONE))  # shapes: frames of one clip of the world (its speeds' unit; default: frames). Fewer than frames: items longer than a clip, as a long video is: a continuation is an earlier clip's last continue_past frames, then a new motion at a clip's speed; a plain item one motion at a clip's speed throughout


@dataclass
class OptimConfig:
    lr: float = field(default=1e-4, metadata=check(POSITIVE))  # AdamW peak learning rate
    betas: tuple[float, float] = field(default=(0.9, 0.999), metadata=check(UNIT_BELOW_ONE))  # AdamW betas
    weight_decay: float = field(default=0.01, metadata=check(NON_NEGATIVE))  # AdamW decoupled weight decay
    eps: float = field(default=1e-8, metadata=check(POSITIVE))  # AdamW epsilon
    warmup_steps: int = field(default=0, metadata=check(NON_NEGATIVE))  # linear warm-up from 0 to lr over this many optimiser steps, then constant
    decay_steps: int = field(default=0, metadata=check(NON_NEGATIVE))  # linear decay from lr to 0 over the last decay_steps of `steps` (warmup-stable-decay); 0: constant to the end
    grad_clip: float = field(default=1.0, metadata=check(NON_NEGATIVE))  # clip the global gradient norm to this (0 disables)


@dataclass
class ParallelConfig:
    """How a run launched by torchrun (``torchrun --nproc-per-node N -m kinema train``) spreads over
    its processes; a single process ignores it. Each process computes ``batch_size / N`` of every
    micro-batch's items and the gradients are averaged, so N processes train as one would."""

    fsdp: bool = False  # shard parameters, gradients and optimiser state over the processes (FSDP2: each of the model's blocks, then the rest); False: every process holds the whole model and the gradients are all-reduced


# -- each kind's objective (TrainingKind.objective_config) ------------------------------------------
@dataclass
class ReconstructionObjective:
    """A codec's reconstruction loss: ``l1 |x - x_hat| + mse (x - x_hat)^2``, pixels away from each
    clip's typical colour weighted ``1 + foreground_weight``."""

    l1_weight: float = field(default=1.0, metadata=check(NON_NEGATIVE))  # weight of the L1 reconstruction term
    mse_weight: float = field(default=1.0, metadata=check(NON_NEGATIVE))  # weight of the MSE reconstruction term
    foreground_weight: float = field(default=0.0, metadata=check(NON_NEGATIVE))  # extra weight of pixels away from each clip's typical (median) colour
    first_frame_weight: float = field(default=1.0, metadata=check(POSITIVE))  # weight of the first frame's pixels against the others' (a causal codec codes it alone)
    # An adversarial term (kinema.training.adversarial, VQGAN's hinge loss): a patch discriminator learns
    # real clips from reconstructions, and the codec is pushed toward what it cannot tell from real.
    adversarial_weight: float = field(default=0.0, metadata=check(NON_NEGATIVE))  # the term's gradient at the reconstruction, as a multiple of the reconstruction loss's; 0: no discriminator
    adversarial_start: int = field(default=0, metadata=check(NON_NEGATIVE))  # optimiser step from which the codec's adversarial term counts (the discriminator learns from the first)
    discriminator_lr: float = field(default=1e-4, metadata=check(POSITIVE))  # the discriminator's Adam rate (betas 0.5, 0.9), constant
    discriminator_channels: int = field(default=32, metadata=check(AT_LEAST_ONE))  # the discriminator's first width (doubling over its 3 layers)


@dataclass
class VAEObjectiveConfig(ReconstructionObjective):
    """wan-vae: reconstruction plus a small KL."""

    kl_weight: float = field(default=1e-6, metadata=check(NON_NEGATIVE))  # weight of KL(posterior || N(0, 1)), averaged per latent element
    init_logvar: float | None = None  # start every posterior log-variance at this value (None: PyTorch's init, about 0)


@dataclass
class VQObjectiveConfig(ReconstructionObjective):
    """vq-tokenizer: reconstruction plus the quantiser's commitment loss."""


@dataclass
class DiffusionObjectiveConfig:
    """wan-transformer: flow matching, with its training noise levels drawn as ``sigma_sampling`` says."""

    sigma_sampling: str = field(default="logit_normal", metadata=one_of(("uniform", "logit_normal")))  # sigma ~ U(0, 1), or sigmoid(N(mean, std)) (SD3)
    logit_mean: float = 0.0  # mean of the logit-normal sigma distribution
    logit_std: float = field(default=1.0, metadata=check(POSITIVE))  # std of the logit-normal sigma distribution
    # Conditioning on the past (what extending a video and a long video's later windows ask): that
    # share of items is given its first latent frames (a count drawn from past_frames), clean but for
    # a noise level drawn from [0, past_sigma], told by a time per frame and left out of the loss;
    # with past_from_data, an item that continues an earlier clip is always given that clip's frames.
    past_share: float = field(default=0.0, metadata=check(UNIT))  # share of items whose first latent frames are given
    past_frames: tuple[int, ...] = field(default=(1,), metadata=check(AT_LEAST_ONE))  # how many latent frames such an item is given (one drawn per item; each >= 1, fewer than the clip's)
    past_from_data: bool = False  # items that start with an earlier clip (shapes' data.continue_share) are given that past (its latent frames) always
    past_sigma: float = field(default=0.0, metadata=check(UNIT_BELOW_ONE))  # the given frames' noise level is drawn from [0, past_sigma]; a packaged model holds them at past_sigma when extending
    past_roundtrip: float = field(default=0.0, metadata=check(UNIT))  # share of given pasts taken through the VAE first (decoded, rounded to 8-bit frames, encoded), as a generated past is before a later window reads it


@dataclass
class DDPMObjectiveConfig:
    """pixel-dit: the DDPM process (linear betas over 1,000 steps by default), MSE on its target."""

    num_train_timesteps: int = field(default=1000, metadata=check(lambda v: v >= 2, ">= 2"))  # diffusion steps of the process
    beta_start: float = field(default=1e-4, metadata=check(OPEN_UNIT))  # first beta
    beta_end: float = field(default=0.02, metadata=check(OPEN_UNIT))  # last beta
    beta_schedule: str = field(default="linear", metadata=one_of(("linear", "scaled_linear")))  # betas linear, or linear in sqrt(beta)
    prediction_type: str = field(default="epsilon", metadata=one_of(("epsilon", "v_prediction", "sample")))  # what the model predicts


@dataclass
class TokenObjectiveConfig:
    """token-ar: next-token cross-entropy."""

    past_from_data: bool = False  # an item that starts with an earlier clip (shapes' data.continue_share) is not scored on that past's tokens: the model reads them, as it reads a video it extends, and learns what follows
    token_noise: float = field(default=0.0, metadata=check(UNIT_BELOW_ONE))  # share of the tokens the model reads replaced by random codebook ids (the targets stay the clip's own): a sampled video's past holds tokens no clip has, and a model that only ever read clean ones copies each such token on, frame after frame


@dataclass
class TrainConfig:
    model: str  # the kind: "wan-vae", "wan-transformer", "vq-tokenizer" or "token-ar"
    architecture: dict[str, Any]  # fields of the kind's config class (WanVAEConfig, WanTransformerConfig, VQVideoConfig, TokenARConfig)
    out_dir: str  # run directory: checkpoints/, model/ (the export), latent_cache.safetensors or token_cache.safetensors
    vae: str | None = None  # transformer: a VAE directory (e.g. a VAE run's model/) or a safetensors file (+ config.json beside it)
    text_encoder: str = "minilm"  # transformer and token-ar: a registered text encoder (kinema.families.TEXT_ENCODERS: minilm, toy)
    text_max_length: int = field(default=32, metadata=check(AT_LEAST_ONE))  # transformer and token-ar: text token positions per caption
    data: DataConfig = field(default_factory=DataConfig)  # the clips
    optim: OptimConfig = field(default_factory=OptimConfig)  # the optimiser
    objective: Any = None  # the kind's objective settings (TrainingKind.objective_config); None: its defaults
    batch_size: int = field(default=1, metadata=check(AT_LEAST_ONE))  # clips per micro-batch
    grad_accum: int = field(default=1, metadata=check(AT_LEAST_ONE))  # micro-batches per optimiser step (effective batch = batch_size * grad_accum)
    steps: int = field(default=1000, metadata=check(NON_NEGATIVE))  # optimiser steps in all (a resumed run continues up to this)
    ema_decay: float = field(default=0.999, metadata=check(UNIT_BELOW_ONE))  # EMA of the weights: ema = decay * ema + (1 - decay) * weights; 0 disables
    caption_dropout: float = field(default=0.1, metadata=check(UNIT))  # transformer and token-ar: probability of replacing a caption by "" (classifier-free guidance)
    precision: str = field(default="fp32", metadata=one_of(PRECISIONS))  # "fp32" or "bf16" (autocast of the forward pass on the run's device; weights and optimiser stay fp32)
    grad_checkpointing: bool = False  # transformer and token-ar: recompute each block in the backward pass (less memory, ~30% slower)
    latent_cache: bool = False  # the precomputed-encoding cache: encode the data set once (transformer: VAE posteriors to OUT_DIR/latent_cache.safetensors; token-ar: token ids to OUT_DIR/token_cache.safetensors) and train from it
    checkpoint_every: int = field(default=100, metadata=check(AT_LEAST_ONE))  # save a resumable checkpoint every this many steps (and at the end)
    seed: int = field(default=0, metadata=check(NON_NEGATIVE))  # seeds model init, data order, noise, sigmas and caption dropout (all from (seed, step))
    init_from: str | None = None  # start from these weights instead of a random init: a run's checkpoint folder (its EMA weights) or a weights file keyed like the model; vq-tokenizer: also a wan-vae's (or a run's model/ export), whose encoder, conv1, conv2 and decoder load whole while the codebook and its projections start fresh
    freeze: list[str] = field(default_factory=list, metadata=FREEZE_WORDS)  # parameter-name prefixes kept fixed (e.g. ["encoder", "conv1"]: train a VAE's decoder only, so latents already encoded stay valid; a VQ tokenizer's "quantizer" keeps its codebook, so its ids do too)
    threads: int | None = field(default=None, metadata=check(AT_LEAST_ONE))  # torch intra-op threads; None: every core this process may use
    tokenizer: str | None = None  # token-ar: a VQ tokenizer directory (a vq-tokenizer run's model/), frozen; the model learns its token ids
    device: str | None = None  # "cpu", "cuda", "cuda:1" ...; None: CUDA when there is one, else the CPU (exact resume is promised on the CPU)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)  # runs started by torchrun: data parallel, or sharded with fsdp: true

    def model_config(self):
        """The architecture as the kind's config class; bad fields raise a one-line KinemaError."""
        cls = training_kinds()[self.model].config_class()
        return read_dataclass(cls, self.architecture, what=f"architecture of a {self.model}", error=KinemaError, check_types=False)


def training_kinds() -> Mapping[str, "TrainingKind"]:
    """The registry of model kinds, ``model`` -> :class:`~kinema.training.kinds.TrainingKind`."""
    from .kinds import TRAINING_KINDS

    return TRAINING_KINDS


# Fields left out of the hash: a resumed run may change them. out_dir, threads, checkpoint_every,
# device and parallel do not change the weights (on one device; N processes compute the gradient of
# the same items as one, and a distributed checkpoint loads onto any process count); steps and optim.decay_steps place the
# learning-rate decay, which check_resumable compares against the schedule the checkpoint recorded
# (a stable-phase checkpoint may take on a decay; one already inside its decay must keep it).
_RUN_ONLY_FIELDS = ("out_dir", "steps", "threads", "checkpoint_every", "device", "parallel")
_RUN_ONLY_OPTIM_FIELDS = ("decay_steps",)
# Fields added after runs already existed: hashed only when set, so that a checkpoint written
# before the field existed still resumes (its config means the field's default).
_HASHED_WHEN_SET = ("freeze", "tokenizer")
# ... and such fields inside a section, with the value that means "as before the field existed".
_HASHED_WHEN_SET_IN = {"data": {"wording": "templates", "continue_share": 0.0, "continue_past": (17,), "clip_frames": None}, "objective": {"first_frame_weight": 1.0, "past_share": 0.0, "past_frames": (1,), "past_from_data": False, "past_sigma": 0.0, "past_roundtrip": 0.0, "token_noise": 0.0,
                                    "adversarial_weight": 0.0, "adversarial_start": 0, "discriminator_lr": 1e-4, "discriminator_channels": 32}}
# Before objectives were split per kind, one section held every kind's settings with these
# defaults; the hash still sees that union, so runs begun then resume.
_HASHED_OBJECTIVE = {
    "sigma_sampling": "logit_normal", "logit_mean": 0.0, "logit_std": 1.0, "l1_weight": 1.0, "mse_weight": 1.0,
    "kl_weight": 1e-6, "foreground_weight": 0.0, "init_logvar": None,
}  # fmt: skip


def config_hash(config: TrainConfig) -> str:
    """A short hash of everything that determines the weights but the learning-rate schedule's
    placement (not out_dir, steps, threads, checkpoint_every, device, parallel, optim.decay_steps)."""
    d = dataclasses.asdict(config)
    for k in _RUN_ONLY_FIELDS:
        d.pop(k)
    for k in _RUN_ONLY_OPTIM_FIELDS:
        d["optim"].pop(k)
    d["objective"] = {**_HASHED_OBJECTIVE, **(d["objective"] or {})}
    defaults = TrainConfig(model=config.model, architecture={}, out_dir="")
    for k in _HASHED_WHEN_SET:
        if d[k] == getattr(defaults, k):
            d.pop(k)
    for section, fields in _HASHED_WHEN_SET_IN.items():
        for k, before in fields.items():
            if d[section].get(k, before) == before:
                d[section].pop(k, None)
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def default_threads() -> int:
    """Every core this process may use (see :func:`kinema.runtime.configure_threads`): a fixed
    count, so that a resumed run computes with the threads it started with on the same machine."""
    from ..runtime import usable_cores

    return usable_cores()


# ------------------------------------------------------------------------------------------------
# Parsing
# ------------------------------------------------------------------------------------------------
def load_config(source: str | os.PathLike | Mapping[str, Any] | TrainConfig) -> TrainConfig:
    """Read a YAML file (or a dict, or pass a TrainConfig through) into a checked TrainConfig."""
    if isinstance(source, TrainConfig):
        source = dataclasses.asdict(source)
    if isinstance(source, Mapping):
        raw = dict(source)
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise KinemaError(f"training config not found: {path}")
        import yaml

        try:
            raw = yaml.safe_load(path.read_text())
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise KinemaError(f"{path} is not valid YAML: {' '.join(str(e).split())}") from None
        if not isinstance(raw, dict):
            raise KinemaError(f"{path} must hold a mapping of config fields; got {type(raw).__name__}")
    else:
        raise KinemaError(f"a training config is a YAML path, a mapping or a TrainConfig; got {type(source).__name__}")
    if "architecture" not in raw:
        raise KinemaError("training config needs an 'architecture' mapping (the model's config fields)")
    kinds = training_kinds()
    if raw.get("model") not in kinds:
        raise KinemaError(f"model must be one of {list(kinds)}; got {raw.get('model')!r}")
    objective = raw.pop("objective", None)
    config = read_dataclass(TrainConfig, raw, what="training config", error=KinemaError)
    kind = kinds[config.model]
    config.objective = read_dataclass(kind.objective_config, objective or {}, what=f"objective (of a {config.model})", error=KinemaError, prefix="objective.")
    return _check(config)


def _check(c: TrainConfig) -> TrainConfig:
    """The checks across fields (each field's own type and range was read with it)."""
    from ..families import TEXT_ENCODERS

    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise KinemaError(msg)

    kinds = training_kinds()
    kind = kinds[c.model]
    need(c.optim.decay_steps <= c.steps, f"optim.decay_steps must be in [0, steps={c.steps}]; got {c.optim.decay_steps}")
    need(c.data.kind != "video_folder" or c.data.path is not None, "data.kind video_folder needs data.path (a directory of videos)")
    if kind.codec is not None:
        need(getattr(c, kind.codec) is not None, f"a {c.model} config needs '{kind.codec}': {kind.codec_help}")
    readers = [name for name, k in kinds.items() if k.codec == "tokenizer"]
    need(c.tokenizer is None or kind.codec == "tokenizer", f"tokenizer is for {' and '.join(readers)} runs (a {c.model} does not read tokens); remove it")
    if kind.text:
        need(c.text_encoder in TEXT_ENCODERS, f"text_encoder must be one of {list(TEXT_ENCODERS)}; got {c.text_encoder!r}")
        own = [name for name, k in TEXT_ENCODERS.items() if k.folder is not None]  # encoders trained with the model
        if kind.own_text:
            need(c.text_encoder in own, f"a {c.model} trains its own text encoder: set text_encoder: {' or '.join(own)}; got {c.text_encoder!r}")
        else:
            frozen = [name for name in TEXT_ENCODERS if name not in own]
            need(c.text_encoder not in own, f"text_encoder {c.text_encoder} trains with a pixel-dit model; a {c.model} uses a frozen one: {', '.join(frozen)}")
    if kind.codec is None:
        encoded = [name for name, k in kinds.items() if k.codec is not None]
        need(not c.latent_cache, f"latent_cache is for {' and '.join(encoded)} runs (a {c.model} trains on pixels); remove it")
    if not kind.grad_checkpointing:
        able = [name for name, k in kinds.items() if k.grad_checkpointing]
        need(not c.grad_checkpointing, f"grad_checkpointing is supported for {' and '.join(able)} only (a {c.model}'s causal "
             "cache mutates during forward, so recomputation is unsafe); remove it")  # fmt: skip
    if c.device is not None:
        from ..pipelines.loading import resolve_device

        resolve_device(c.device)
    c.model_config()  # architecture fields are checked here
    return c
