"""Training configuration: one YAML file -> :class:`TrainConfig` (dataclasses, unknown keys raise).

A config names the model to train (``wan-vae``, ``wan-transformer``, ``vq-tokenizer`` or
``token-ar``) with its architecture fields (those of :class:`~kinema.models.vae.wan_vae.WanVAEConfig`,
:class:`~kinema.models.wan.WanTransformerConfig`, :class:`~kinema.models.vae.vq_video.VQVideoConfig`
or :class:`~kinema.models.token_ar.TokenARConfig`), the data, the optimiser, the objective and
the run's bookkeeping. See ``configs/tiny-vae.yaml``, ``configs/tiny-transformer.yaml``,
``configs/tiny-vq.yaml`` and ``configs/tiny-ar.yaml``.
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

if TYPE_CHECKING:
    from .loop import TrainingKind

DATA_KINDS = ("shapes", "video_folder", "synthetic")
PRECISIONS = ("fp32", "bf16")
SIGMA_SAMPLINGS = ("uniform", "logit_normal")


@dataclass
class DataConfig:
    kind: str = "shapes"  # "shapes" (procedural world), "video_folder" (videos + captions) or "synthetic" (moving squares, tests)
    size: int = 64  # clip side in pixels (square)
    frames: int = 33  # frames per clip (4k+1 for the Wan VAE)
    seed: int = 0  # seed of the procedural data sets (shapes, synthetic)
    split: str = "train"  # shapes split ("train" or "held_out")
    length: int = 10_000  # items per epoch for procedural data (shapes, synthetic); the latent cache encodes them all
    path: str | None = None  # video_folder: the directory of video files
    captions: str | None = None  # video_folder: a jsonl file of {"file": "a.mp4", "caption": "..."} (default PATH/captions.jsonl)


@dataclass
class OptimConfig:
    lr: float = 1e-4  # AdamW peak learning rate
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW betas
    weight_decay: float = 0.01  # AdamW decoupled weight decay
    eps: float = 1e-8  # AdamW epsilon
    warmup_steps: int = 0  # linear warm-up from 0 to lr over this many optimiser steps, then constant
    decay_steps: int = 0  # linear decay from lr to 0 over the last decay_steps of `steps` (warmup-stable-decay); 0: constant to the end
    grad_clip: float = 1.0  # clip the global gradient norm to this (0 disables)


@dataclass
class ObjectiveConfig:
    sigma_sampling: str = "logit_normal"  # transformer: "uniform" sigma ~ U(0,1) or "logit_normal" sigma = sigmoid(N(mean, std)) (SD3)
    logit_mean: float = 0.0  # mean of the logit-normal sigma distribution
    logit_std: float = 1.0  # std of the logit-normal sigma distribution
    l1_weight: float = 1.0  # VAE and VQ: weight of the L1 reconstruction term
    mse_weight: float = 1.0  # VAE and VQ: weight of the MSE reconstruction term
    kl_weight: float = 1e-6  # VAE: weight of KL(posterior || N(0, 1)), averaged per latent element
    foreground_weight: float = 0.0  # VAE and VQ: extra loss weight of pixels away from each clip's typical (median) colour
    init_logvar: float | None = None  # VAE: start every posterior log-variance at this value (None: PyTorch's init, about 0)


@dataclass
class TrainConfig:
    model: str  # "wan-vae", "wan-transformer", "vq-tokenizer" or "token-ar"
    architecture: dict[str, Any]  # fields of WanVAEConfig, WanTransformerConfig, VQVideoConfig or TokenARConfig
    out_dir: str  # run directory: checkpoints/, model/ (the export), latent_cache.safetensors or token_cache.safetensors
    vae: str | None = None  # transformer: a VAE directory (e.g. a VAE run's model/) or a safetensors file (+ config.json beside it)
    text_encoder: str = "minilm"  # transformer and token-ar: "minilm" (all-MiniLM-L6-v2, text_dim 384) or "toy" (hashed word vectors, tests)
    text_max_length: int = 32  # transformer and token-ar: text token positions per caption
    data: DataConfig = field(default_factory=DataConfig)  # the clips
    optim: OptimConfig = field(default_factory=OptimConfig)  # the optimiser
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)  # loss settings
    batch_size: int = 1  # clips per micro-batch
    grad_accum: int = 1  # micro-batches per optimiser step (effective batch = batch_size * grad_accum)
    steps: int = 1000  # optimiser steps in all (a resumed run continues up to this)
    ema_decay: float = 0.999  # EMA of the weights: ema = decay * ema + (1 - decay) * weights; 0 disables
    caption_dropout: float = 0.1  # transformer and token-ar: probability of replacing a caption by "" (classifier-free guidance)
    precision: str = "fp32"  # "fp32" or "bf16" (autocast of the forward pass; weights and optimiser stay fp32)
    grad_checkpointing: bool = False  # transformer and token-ar: recompute each block in the backward pass (less memory, ~30% slower)
    latent_cache: bool = False  # the precomputed-encoding cache: encode the data set once (transformer: VAE posteriors to OUT_DIR/latent_cache.safetensors; token-ar: token ids to OUT_DIR/token_cache.safetensors) and train from it
    checkpoint_every: int = 100  # save a resumable checkpoint every this many steps (and at the end)
    seed: int = 0  # seeds model init, data order, noise, sigmas and caption dropout (all from (seed, step))
    init_from: str | None = None  # start from these weights instead of a random init: a run's checkpoint folder (its EMA weights) or a weights file keyed like the model; vq-tokenizer: also a wan-vae's (or a run's model/ export), whose encoder, conv1, conv2 and decoder load whole while the codebook and its projections start fresh
    freeze: list[str] = field(default_factory=list)  # parameter-name prefixes kept fixed (e.g. ["encoder", "conv1"]: train a VAE's decoder only, so latents already encoded stay valid)
    threads: int | None = None  # torch intra-op threads; None: the cores no other process is busy on, at least 1
    tokenizer: str | None = None  # token-ar: a VQ tokenizer directory (a vq-tokenizer run's model/), frozen; the model learns its token ids

    def model_config(self):
        """The architecture as WanVAEConfig, WanTransformerConfig, VQVideoConfig or TokenARConfig
        (the kind's config class); bad fields raise a one-line KinemaError."""
        cls = training_kinds()[self.model].config_class()
        if not isinstance(self.architecture, Mapping):
            raise KinemaError(f"architecture must be a mapping of {cls.__name__} fields; got {self.architecture!r}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(self.architecture) - set(fields))
        if unknown:
            raise KinemaError(f"unknown architecture field(s) {unknown} for {self.model}; known: {sorted(fields)}")
        missing = [n for n, f in fields.items() if n not in self.architecture and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if missing:
            raise KinemaError(f"the architecture of a {self.model} needs the field(s) {missing}")
        try:
            return cls(**self.architecture)
        except KinemaError:
            raise
        except (TypeError, ValueError, ZeroDivisionError) as e:  # a value of the wrong type or size, found deeper down
            raise KinemaError(f"bad architecture for {self.model}: {' '.join(str(e).split())}") from None


def training_kinds() -> Mapping[str, "TrainingKind"]:
    """The registry of model kinds, ``model`` -> :class:`~kinema.training.loop.TrainingKind` (it lives
    beside the builders, objectives and exporters its rows name; imported when first asked)."""
    from .loop import TRAINING_KINDS

    return TRAINING_KINDS


# Fields left out of the hash: a resumed run may change them. out_dir, threads and checkpoint_every
# do not change the weights; steps and optim.decay_steps place the learning-rate decay, which
# check_resumable compares against the schedule the checkpoint recorded (a stable-phase checkpoint
# may take on a decay; one already inside its decay must keep it).
_RUN_ONLY_FIELDS = ("out_dir", "steps", "threads", "checkpoint_every")
_RUN_ONLY_OPTIM_FIELDS = ("decay_steps",)
# Fields added after runs already existed: hashed only when set, so that a checkpoint written
# before the field existed still resumes (its config means the field's default).
_HASHED_WHEN_SET = ("freeze", "tokenizer")


def config_hash(config: TrainConfig) -> str:
    """A short hash of everything that determines the weights but the learning-rate schedule's
    placement (not out_dir, steps, threads, checkpoint_every, optim.decay_steps)."""
    d = dataclasses.asdict(config)
    for k in _RUN_ONLY_FIELDS:
        d.pop(k)
    for k in _RUN_ONLY_OPTIM_FIELDS:
        d["optim"].pop(k)
    defaults = TrainConfig(model=config.model, architecture={}, out_dir="")
    for k in _HASHED_WHEN_SET:
        if d[k] == getattr(defaults, k):
            d.pop(k)
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def default_threads() -> int:
    """Free cores now (see :func:`kinema.runtime.free_cores`): two threads on a core another
    process holds are much slower than one."""
    from ..runtime import free_cores

    return free_cores()


# ------------------------------------------------------------------------------------------------
# Parsing
# ------------------------------------------------------------------------------------------------
def load_config(source: str | os.PathLike | Mapping[str, Any] | TrainConfig) -> TrainConfig:
    """Read a YAML file (or a dict, or pass a TrainConfig through) into a checked TrainConfig."""
    if isinstance(source, TrainConfig):
        return _check(source)
    if isinstance(source, Mapping):
        raw = dict(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise KinemaError(f"training config not found: {path}")
        import yaml

        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise KinemaError(f"{path} is not valid YAML: {' '.join(str(e).split())}") from None
        if not isinstance(raw, dict):
            raise KinemaError(f"{path} must hold a mapping of config fields; got {type(raw).__name__}")
    nested = {"data": DataConfig, "optim": OptimConfig, "objective": ObjectiveConfig}
    raw = dict(raw)
    for key, cls in nested.items():
        if key in raw:
            raw[key] = _build(cls, raw[key] or {}, key)
    if "architecture" not in raw:
        raise KinemaError("training config needs an 'architecture' mapping (the model's config fields)")
    return _check(_build(TrainConfig, raw, "training config"))


def _build(cls, raw: Any, where: str):
    if not isinstance(raw, Mapping):
        raise KinemaError(f"{where} must be a mapping; got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise KinemaError(f"unknown key(s) {unknown} in {where}; known keys: {sorted(fields)}")
    missing = [n for n, f in fields.items() if n not in raw and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise KinemaError(f"{where} is missing required key(s) {missing}")
    values = dict(raw)
    if cls is OptimConfig and "betas" in values:
        values["betas"] = tuple(float(b) for b in values["betas"])
    return cls(**values)


def _check(c: TrainConfig) -> TrainConfig:
    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise KinemaError(msg)

    kinds = training_kinds()
    need(c.model in kinds, f"model must be one of {list(kinds)}; got {c.model!r}")
    kind = kinds[c.model]
    need(c.data.kind in DATA_KINDS, f"data.kind must be one of {list(DATA_KINDS)}; got {c.data.kind!r}")
    need(c.precision in PRECISIONS, f"precision must be one of {list(PRECISIONS)}; got {c.precision!r}")
    need(c.objective.sigma_sampling in SIGMA_SAMPLINGS, f"objective.sigma_sampling must be one of {list(SIGMA_SAMPLINGS)}; got {c.objective.sigma_sampling!r}")
    need(c.batch_size >= 1 and c.grad_accum >= 1, f"batch_size and grad_accum must be >= 1; got {c.batch_size}, {c.grad_accum}")
    need(c.steps >= 0 and c.checkpoint_every >= 1, f"steps must be >= 0 and checkpoint_every >= 1; got {c.steps}, {c.checkpoint_every}")
    need(0 <= c.optim.decay_steps <= c.steps, f"optim.decay_steps must be in [0, steps={c.steps}]; got {c.optim.decay_steps}")
    need(0.0 <= c.ema_decay < 1.0, f"ema_decay must be in [0, 1); got {c.ema_decay}")
    need(0.0 <= c.caption_dropout <= 1.0, f"caption_dropout must be in [0, 1]; got {c.caption_dropout}")
    need(c.threads is None or c.threads >= 1, f"threads must be >= 1 (or left out); got {c.threads}")
    need(c.data.kind != "video_folder" or c.data.path is not None, "data.kind video_folder needs data.path (a directory of videos)")
    need(
        isinstance(c.freeze, (list, tuple)) and all(isinstance(p, str) and p for p in c.freeze),
        f"freeze must be a list of parameter-name prefixes such as [encoder, conv1] (leave it out to train everything); got {c.freeze!r}",
    )
    c.freeze = list(c.freeze)
    if kind.codec is not None:
        need(getattr(c, kind.codec) is not None, f"a {c.model} config needs '{kind.codec}': {kind.codec_help}")
    readers = [name for name, k in kinds.items() if k.codec == "tokenizer"]
    need(c.tokenizer is None or kind.codec == "tokenizer", f"tokenizer is for {' and '.join(readers)} runs (a {c.model} does not read tokens); remove it")
    if kind.text:
        from ..families import TEXT_ENCODERS

        need(c.text_encoder in TEXT_ENCODERS, f"text_encoder must be one of {list(TEXT_ENCODERS)}; got {c.text_encoder!r}")
    if kind.codec is None:
        encoded = [name for name, k in kinds.items() if k.codec is not None]
        need(not c.latent_cache, f"latent_cache is for {' and '.join(encoded)} runs (a {c.model} trains on pixels); remove it")
    if not kind.grad_checkpointing:
        able = [name for name, k in kinds.items() if k.grad_checkpointing]
        need(not c.grad_checkpointing, f"grad_checkpointing is supported for {' and '.join(able)} only (a {c.model}'s causal "
             "cache mutates during forward, so recomputation is unsafe); remove it")
    if not kind.init_logvar:
        need(c.objective.init_logvar is None, f"objective.init_logvar is for wan-vae runs (a {c.model} has no posterior variance); remove it")
    c.model_config()  # architecture fields are checked here
    return c
