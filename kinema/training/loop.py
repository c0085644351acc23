"""The one training loop, for every kind of model (:data:`kinema.training.kinds.TRAINING_KINDS`):
AdamW with warm-up and an optional linear decay, gradient accumulation, clipping, an EMA of the
weights, autocast, atomic checkpoints and exact resume, on the CPU or a CUDA device.

Exact resume: every random draw comes from a ``torch.Generator`` seeded from (seed, step, item),
and the data order is a pure function of (seed, step); nothing depends on how many steps ran in
this process. A checkpoint (model, EMA, optimiser state, step) is therefore all that resuming
needs, and a run interrupted at step k and resumed ends bit-identical to an uninterrupted one (in
the same precision, thread count and device; promised and tested on the CPU). The draws are made
on the CPU and moved to the run's device, so a CUDA run sees the same noise as a CPU one.

Started by torchrun (``torchrun --nproc-per-node N -m kinema train CONFIG.yaml``), the same loop runs
in each of N processes, each computing its share of every micro-batch's items with the same
generators, and the gradients are averaged (:mod:`.distributed`): N processes train as one does, up
to the order of floating-point sums. Rank 0 alone writes the metrics, shows the progress bar and
exports the model; checkpoints are distributed ones that resume on any process count.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import signal
import time
from pathlib import Path

import torch
from torch import nn

from ..errors import KinemaError
from ..parallel.groups import World, cores_per_process
from ..seeds import derive_seed, make_generator
from . import distributed
from .checkpointing import (
    check_resumable,
    codec_identity,
    export_model,
    freeze_parameters,
    init_weights_from,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    save_distributed_checkpoint,
    truncate_metrics,
)
from .config import TrainConfig, config_hash, default_threads, load_config
from .ema import EMA
from .kinds import TRAINING_KINDS

KILL_AFTER_STEP_ENV = "KINEMA_TRAIN_KILL_AFTER_STEP"  # tests: SIGKILL the process right after saving this step
METRICS_FILE = "metrics.jsonl"  # one line per optimiser step, under out_dir: "step", "loss", "lr", plus a vq-tokenizer's "perplexity", "codes_used", "codes_restarted", a token-ar's "accuracy", a codec's discriminator's "d_loss", "g_adv", "adv_weight"


# ------------------------------------------------------------------------------------------------
# Data order and learning rate: pure functions of (seed, step)
# ------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def _epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    return torch.randperm(n, generator=make_generator(seed, "epoch", epoch))


def step_indices(seed: int, step: int, batch_total: int, n: int) -> list[int]:
    """Data set indices of the ``batch_total`` items of optimiser step ``step`` (0-based).

    Item k of step s sits at position g = s * batch_total + k of an endless stream made of one
    seeded permutation of the data set per epoch.
    """
    return [int(_epoch_order(seed, g // n, n)[g % n]) for g in range(step * batch_total, (step + 1) * batch_total)]


def lr_at(step: int, lr: float, warmup_steps: int, steps: int = 0, decay_steps: int = 0) -> float:
    """Learning rate of optimiser step ``step`` (0-based): linear warm-up, constant, then (when
    ``decay_steps`` > 0) a linear decay over the last ``decay_steps`` of ``steps``, towards 0 at
    step ``steps`` (warmup-stable-decay: the stable phase does not depend on where the decay falls,
    so a stable-phase checkpoint can take on a decay)."""
    scale = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    if decay_steps > 0 and step >= steps - decay_steps:
        scale = min(scale, (steps - step) / decay_steps)
    return lr * scale


# ------------------------------------------------------------------------------------------------
# The model and its step
# ------------------------------------------------------------------------------------------------
def build_model(config: TrainConfig) -> nn.Module:
    """The model to train, freshly initialised from (seed, "init") without touching the global RNG
    (built on the CPU, so the same seed gives the same weights on every device)."""
    arch = config.model_config()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(config.seed, "init"))
        return TRAINING_KINDS[config.model].build(config, arch).train()


def enable_grad_checkpointing(model: nn.Module) -> None:
    """Recompute each of the model's ``blocks`` in the backward pass, applied from outside the model
    by PyTorch's composable activation checkpointing (hooks on each block): the modules, their
    ``forward`` and their parameter names do not change. Any model whose blocks are pure functions
    of their inputs (the Wan transformer, the token model)."""
    from torch.distributed._composable import checkpoint

    for block in model.blocks:
        checkpoint(block)


def _trainable(config: TrainConfig, out_dir: Path, device: torch.device | str = "cpu"):
    """(model, objective, dataset) for a config, on ``device``."""
    device = torch.device(device)
    model = build_model(config).to(device)
    if config.grad_checkpointing:  # only kinds that allow it (checked with the config)
        enable_grad_checkpointing(model)
    objective, dataset = TRAINING_KINDS[config.model].objective(config, config.model_config(), out_dir, device)
    return model, objective, dataset


def accumulate_gradients(model: nn.Module, objective, dataset, config: TrainConfig, step: int, world: World | None = None) -> float:
    """Forward and backward the ``grad_accum`` micro-batches of optimiser step ``step`` (0-based),
    adding into the parameters' ``.grad``; returns the step's mean loss (over this process's items).

    Item k of the step (k < batch_size * grad_accum) is the same data and the same random draws
    however the step is split into micro-batches, so 2 x batch 1 matches 1 x batch 2; in a
    distributed ``world`` this process computes its ``batch_size / N`` items of each micro-batch
    (:func:`.distributed.item_positions`).
    """
    world = world or World()
    indices = step_indices(config.seed, step, config.batch_size * config.grad_accum, len(dataset))
    step_loss = 0.0
    for micro in range(config.grad_accum):
        ks = distributed.item_positions(config.batch_size, micro, world)  # positions within the step
        items = [dataset[indices[k]] for k in ks]
        gens = [make_generator(config.seed, "item", step, k) for k in ks]
        torch.manual_seed(derive_seed(config.seed, "global", step, micro))  # any hidden global draw (dropout) is seeded too
        loss, _logs = objective(model, items, gens)
        if not distributed.all_finite(loss, world):
            said = str(loss.item()) if not torch.isfinite(loss) else "not finite on another process"
            raise KinemaError(f"loss is {said} at step {step}; lower optim.lr or use precision fp32")
        (loss / config.grad_accum).backward()
        step_loss += loss.item() / config.grad_accum
    return step_loss


def _run_device(config: TrainConfig, device: str | torch.device | None) -> torch.device:
    from ..pipelines.loading import resolve_device

    return resolve_device(device if device is not None else config.device)


# ------------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------------
def train(
    config: str | os.PathLike | dict | TrainConfig,
    *,
    resume: bool = False,
    steps: int | None = None,
    progress: bool = True,
    device: str | torch.device | None = None,
) -> Path:
    """Train (or continue training) the model a config describes; returns the export directory.

    Args:
        config: a YAML path, a dict of the same fields, or a :class:`TrainConfig`.
        resume: continue from out_dir's latest checkpoint (a fresh start when there is none).
        steps: override the config's total number of optimiser steps.
        progress: show a tqdm bar with the loss and throughput.
        device: where to train (overrides the config's ``device``); None: CUDA when there is one.
    Returns:
        ``out_dir/model``: config.json + diffusion_pytorch_model.safetensors (EMA weights when
        ema_decay > 0).

    Started by torchrun with several processes, every process calls this: it joins the process
    group (and leaves it at the end if it joined it here), refuses a ``batch_size`` the process
    count does not divide, and trains its share of each step (see the module's docstring).
    """
    config = load_config(config)
    if steps is not None:
        config = load_config(dataclasses.replace(config, steps=steps))
    world, device, owned = distributed.join(_run_device(config, device))
    try:
        distributed.check_world(config, world)
        return _train(config, resume, progress and world.main, device, world)
    finally:
        distributed.leave(owned)


def _train(config: TrainConfig, resume: bool, progress: bool, device: torch.device, world: World) -> Path:
    from ..runtime import check_threads

    threads = default_threads() if not world.distributed else cores_per_process(default_threads())
    torch.set_num_threads(check_threads(config.threads) if config.threads else threads)
    out_dir = Path(config.out_dir)
    chash = config_hash(config)
    found = latest_checkpoint(out_dir)
    if found is not None and not resume:
        raise KinemaError(f"{out_dir} already holds checkpoints (latest {found.name}); pass --resume to continue, or choose a new out_dir")
    codec_field = TRAINING_KINDS[config.model].codec
    codec_path = getattr(config, codec_field) if codec_field else None
    codec = codec_identity(codec_path) if codec_path is not None and Path(codec_path).exists() else None
    if found is not None:  # before _trainable, which may encode the whole data set into a cache
        check_resumable(found, config, chash, codec)
    created = not out_dir.exists()
    try:
        if world.main:
            out_dir.mkdir(parents=True, exist_ok=True)
        return _run(config, out_dir, device, found, chash, codec, progress, world)
    except BaseException:
        if world.main and created and out_dir.is_dir() and not any(out_dir.iterdir()):  # a run that failed before writing anything leaves no folder
            shutil.rmtree(out_dir, ignore_errors=True)
        raise


def _run(
    config: TrainConfig, out_dir: Path, device: torch.device, found: Path | None, chash: str, codec: str | None, progress: bool, world: World = World()
) -> Path:
    """The loop itself, in ``out_dir`` (existing), from ``found`` (a checkpoint to resume) or step 0."""
    def prepare():
        if world.main:
            for stale in (out_dir / "checkpoints").glob(".tmp-step-*"):  # half-written by a killed run: never referenced
                shutil.rmtree(stale, ignore_errors=True)
        return _trainable(config, out_dir, device)

    # Rank 0 first: it writes any cache or tokenizer the others then read.
    model, objective, dataset = distributed.main_first(world, device, prepare)
    if found is None and config.init_from:  # a resumed run has them in its checkpoint already
        init_weights_from(model, config.init_from, partial=TRAINING_KINDS[config.model].partial_init)
    freeze_parameters(model, config.freeze)
    fsdp = world.distributed and config.parallel.fsdp
    if fsdp:
        distributed.shard_model(model)
    else:
        distributed.broadcast_model(model, world)
    params = [p for p in model.parameters() if p.requires_grad]
    o = config.optim
    optimizer = torch.optim.AdamW(params, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
    ema = EMA(model, config.ema_decay) if config.ema_decay > 0 else None
    start = load_checkpoint(found, model, ema, optimizer, objective) if found is not None else 0
    if world.main:
        truncate_metrics(out_dir / METRICS_FILE, start)  # steps a killed run logged past its checkpoint

    batch_total = config.batch_size * config.grad_accum
    kill_after = int(os.environ.get(KILL_AFTER_STEP_ENV, "-1"))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16")
    schedule = {"steps": config.steps, "decay_steps": o.decay_steps}
    from tqdm import tqdm

    bar = tqdm(total=config.steps, initial=min(start, config.steps), desc=f"train {config.model}", disable=not progress, dynamic_ncols=True)
    t0, done = time.perf_counter(), 0
    for step in range(start, config.steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, o.lr, o.warmup_steps, config.steps, o.decay_steps)
        optimizer.zero_grad(set_to_none=True)
        objective.begin_step(step)
        with autocast:
            step_loss = accumulate_gradients(model, objective, dataset, config, step, world)
        if world.distributed and not fsdp:  # FSDP averaged them in its backward hooks already
            distributed.average_gradients(params, world)
        if o.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, o.grad_clip)
        optimizer.step()
        extra = objective.after_step(model, step)  # a tokenizer's codebook update and use
        if ema is not None:
            ema.update(model, step)
        if world.distributed:  # the metrics of all the step's items
            step_loss, extra = _split(distributed.mean_over_ranks({"loss": step_loss, **extra}, world, device))
        completed, done = step + 1, done + 1
        bar.update(1)
        if world.main:
            with open(out_dir / METRICS_FILE, "a") as f:
                f.write(json.dumps({"step": completed, "loss": step_loss, "lr": optimizer.param_groups[0]["lr"], **extra}) + "\n")
        shown = {k: f"{extra[k]:.2f}" for k in ("codes_used", "accuracy", "d_loss") if k in extra}
        bar.set_postfix(loss=f"{step_loss:.4f}", samples_s=f"{done * batch_total / (time.perf_counter() - t0):.2f}", **shown)
        if completed % config.checkpoint_every == 0 or completed == config.steps:
            if world.distributed:
                save_distributed_checkpoint(out_dir, completed, model, ema, optimizer, chash, world, codec, schedule)
            else:
                save_checkpoint(out_dir, completed, model, ema, optimizer, chash, codec, schedule, objective.state_dict())
            if completed == kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
    bar.close()
    state = ema.state_dict() if ema is not None else model.state_dict()
    if not world.distributed:
        return export_model(out_dir, config, state)
    state = distributed.gather_full(state, world)  # whole tensors on rank 0: the export is plain safetensors
    if world.main:
        export_model(out_dir, config, state)
    distributed.barrier(world)
    return out_dir / "model"


def _split(values: dict[str, float]) -> tuple[float, dict[str, float]]:
    """(the loss, the other metrics) of :func:`.distributed.mean_over_ranks`'s dict."""
    values = dict(values)
    return values.pop("loss"), values
