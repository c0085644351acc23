"""A training run on disk: atomic checkpoints and exact resume, starting weights, frozen
parameters, and the exported model.

Run directory (``out_dir``)::

    checkpoints/step-0000100/   model.safetensors, ema.safetensors, optimizer.pt, trainer.json (step,
                                config hash, the frozen VAE's or tokenizer's content hash, lr schedule),
                                objective.pt (a codec run's discriminator, with adversarial_weight > 0)
    checkpoints/step-0000100/   a run of N processes (torchrun): a distributed checkpoint instead,
                                .metadata + __R_0.distcp (torch.distributed.checkpoint: model, ema,
                                optim, each process writing its shards) and trainer.json
    checkpoints/latest          the name of the newest complete checkpoint
    latent_cache.safetensors    transformer runs with latent_cache: VAE posteriors of the data set
    token_cache.safetensors     token-ar runs with latent_cache: the tokenizer's ids of the data set
    metrics.jsonl               one line per step: step, loss, lr, a tokenizer's codebook use or a token model's accuracy
    model/                      the export: config.json + diffusion_pytorch_model.safetensors (EMA weights) + training.json

Checkpoints are written to a temporary directory and renamed into place, so a crash never leaves
a half-written checkpoint behind ``latest``. Resuming refuses a checkpoint written by another
config (its hash) or on a VAE or tokenizer whose files have changed since (their content hash).
Tensors are saved from the CPU whatever device the run trains on.

A distributed checkpoint is written the same way (rank 0 renames the temporary directory once every
process has written its part), and loads onto any number of processes, one included
(:func:`load_checkpoint`): torch.distributed.checkpoint re-cuts the saved tensors to the shape each
process holds. A run of N processes also resumes from a one-process checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from ..checkpoints.io import (
    atomic_path,
    component_dir,
    load_safetensors,
    read_json,
    save_safetensors,
)
from ..errors import CheckpointError, KinemaError
from .config import TrainConfig, training_kinds
from .ema import EMA

WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"  # the export's weights file (kinema's loaders read it)
CODEC_SUFFIXES = (".safetensors", ".pth", ".safetensors.index.json")  # a codec directory's weights files (codec_identity)
CODEC_KEY = "codec_sha256"  # trainer.json: the codec_identity of the frozen VAE or tokenizer (absent in older checkpoints)
SCHEDULE_KEY = "lr_schedule"  # trainer.json: the run's {"steps", "decay_steps"} (absent in older checkpoints: no decay)
PROCESSES_KEY = "processes"  # trainer.json of a distributed checkpoint: how many processes wrote it
OBJECTIVE_FILE = "objective.pt"  # a checkpoint's objective state (a codec's discriminator and its optimiser), when it has one
DCP_METADATA = ".metadata"  # the file that makes a checkpoint directory a distributed one (torch.distributed.checkpoint)


def on_cpu(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict's tensors on the CPU (checkpoints and exports are written from there)."""
    return {k: v.detach().cpu() for k, v in state.items()}


def decay_start(steps: int, decay_steps: int) -> float:
    """The first step of the learning-rate decay (infinity: none)."""
    return steps - decay_steps if decay_steps > 0 else float("inf")


def codec_identity(path: str | os.PathLike) -> str:
    """A content hash (sha256, hex) of a frozen VAE or tokenizer: its config.json and weights files
    (``*.safetensors``, ``*.pth``, a shard index), names and bytes, as :func:`load_vae` and
    :func:`load_tokenizer` read them. Retraining or editing the codec changes it; copying it (another
    machine, other modification times) does not. Checkpoints record it (:func:`save_checkpoint`)."""
    path = Path(path)
    if path.is_dir():
        path = component_dir(path, "vae")  # a model root: load_wan_vae reads its vae/ folder
        files = sorted(f for f in path.iterdir() if f.is_file() and (f.name == "config.json" or f.name.endswith(CODEC_SUFFIXES)))
    else:
        files = [path] + ([path.parent / "config.json"] if (path.parent / "config.json").is_file() else [])
    digest = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            digest.update(json.dumps([f.name, hashlib.file_digest(fh, "sha256").hexdigest()]).encode())
    return digest.hexdigest()


def save_checkpoint(
    out_dir: Path, step: int, model: nn.Module, ema: EMA | None, optimizer, chash: str, codec: str | None = None, schedule: dict | None = None,
    objective_state: dict | None = None,
) -> Path:
    """Write out_dir/checkpoints/step-XXXXXXX atomically (temp dir, then rename) and point ``latest`` at it.

    ``codec``: the :func:`codec_identity` of the frozen VAE or tokenizer the run trains on (None: none),
    recorded in trainer.json as ``codec_sha256`` for :func:`check_resumable`; ``schedule``, the
    run's ``{"steps", "decay_steps"}``, as ``lr_schedule``; ``objective_state``, what the objective
    keeps of its own (a codec's discriminator and its optimiser: ``Objective.state_dict``), as
    ``objective.pt``."""
    root = out_dir / "checkpoints"
    final = root / f"step-{step:07d}"
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_safetensors(on_cpu(model.state_dict()), tmp / "model.safetensors")
    if ema is not None:
        save_safetensors(on_cpu(ema.state_dict()), tmp / "ema.safetensors")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    if objective_state is not None:
        torch.save(objective_state, tmp / OBJECTIVE_FILE)
    return _publish(tmp, final, _trainer_info(step, chash, codec, schedule))


def _trainer_info(step: int, chash: str, codec: str | None, schedule: dict | None, **more) -> dict:
    info = {"step": step, "config_hash": chash, "time": time.time(), **({CODEC_KEY: codec} if codec is not None else {})}
    if schedule is not None:
        info[SCHEDULE_KEY] = schedule
    return {**info, **more}


def _publish(tmp: Path, final: Path, info: dict) -> Path:
    """Write trainer.json into the complete temporary directory, rename it to ``final`` and point
    ``latest`` at it."""
    (tmp / "trainer.json").write_text(json.dumps(info, indent=1))
    if final.exists():  # the same step saved again (a resumed run that had already finished)
        shutil.rmtree(final)
    os.rename(tmp, final)
    with atomic_path(final.parent / "latest") as p:
        p.write_text(final.name)
    return final


def save_distributed_checkpoint(
    out_dir: Path, step: int, model: nn.Module, ema: EMA | None, optimizer, chash: str, world, codec: str | None = None, schedule: dict | None = None
) -> Path:
    """:func:`save_checkpoint` for a run of ``world.size`` processes (every process calls it): a
    distributed checkpoint (torch.distributed.checkpoint) of ``model``, ``ema`` and ``optim``, each
    process writing the shards it holds (a tensor every process holds whole is written once), into
    a temporary directory that rank 0 renames into place after all have written. The optimiser
    state is keyed by parameter name (``get_optimizer_state_dict``), so it loads onto another
    process count or layout."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    from .distributed import barrier

    root = out_dir / "checkpoints"
    final = root / f"step-{step:07d}"
    tmp = root / f".tmp-{final.name}-dcp"  # one name every process agrees on
    if world.main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier(world)
    state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optimizer)}
    if ema is not None:
        state["ema"] = ema.state_dict()
    dcp.save(state, checkpoint_id=tmp)  # returns once every process has written and rank 0 the metadata
    if world.main:
        _publish(tmp, final, _trainer_info(step, chash, codec, schedule, **{PROCESSES_KEY: world.size}))
    barrier(world)
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
    else ``model.safetensors``), a safetensors file with the model's own keys, or an exported
    codec's folder in any layout kinema loads (a run's ``model/``, a shipped model's ``vae/`` in
    diffusers' names), strictly.

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
    checkpoint = path.is_dir() and any((path / f).is_file() for f in ("ema.safetensors", "model.safetensors"))
    if path.is_dir() and (path / "config.json").is_file() and not checkpoint:  # an exported codec, in any layout kinema loads
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
    """The state dict (kinema's names) of an exported codec directory (a Wan VAE's or a VQ tokenizer's)."""
    from ..checkpoints.layouts import load_codec

    return load_codec(path, what="init_from").state_dict()


def freeze_parameters(model: nn.Module, prefixes: list[str]) -> None:
    """Keep the parameters whose names start with one of ``prefixes`` (a module path such as
    ``encoder`` or ``blocks.0``) fixed: no gradients, no optimiser state, and the EMA keeps them
    exactly. A module whose state moves otherwise (a VQ codebook's EMA) and that has a ``freeze()``
    method is frozen by it too. Raises KinemaError for a prefix that names nothing to freeze, and
    when no parameter is left to train."""
    names = [n for n, _ in model.named_parameters()]
    tops = sorted({n.split(".")[0] for n, _ in model.named_children()} | {n.split(".")[0] for n in names})
    for prefix in prefixes:
        module = _submodule(model, prefix)
        if module is not None and callable(getattr(module, "freeze", None)):
            module.freeze()
        elif not any(n == prefix or n.startswith(prefix + ".") for n in names):
            raise KinemaError(f"freeze: {prefix!r} names no parameter of this model; its top-level modules are {tops}")
    for n, p in model.named_parameters():
        if any(n == prefix or n.startswith(prefix + ".") for prefix in prefixes):
            p.requires_grad_(False)
    if prefixes and not any(p.requires_grad for p in model.parameters()):
        raise KinemaError(f"freeze: {list(prefixes)} leaves no parameter to train (top-level modules: {tops}); freeze fewer modules")


def _submodule(model: nn.Module, path: str) -> nn.Module | None:
    """The module at ``path`` (``"quantizer"``, ``"blocks.0"``), or None where there is none."""
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


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
            "resume with the same config (only steps, threads, checkpoint_every, device, parallel, optim.decay_steps may change) or use a new out_dir"
        )
    saved = info.get(CODEC_KEY)
    if codec is not None and saved is not None and saved != codec:
        kind = training_kinds()[config.model]
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


def is_distributed_checkpoint(path: Path) -> bool:
    """Whether a checkpoint directory was written by a run of several processes (a DCP one)."""
    return (path / DCP_METADATA).is_file()


def load_checkpoint(path: Path, model: nn.Module, ema: EMA | None, optimizer, objective=None) -> int:
    """Restore model, EMA and optimiser from a checkpoint directory (checked by :func:`check_resumable`); returns its step.

    Any checkpoint loads onto any process count: a one-process one (safetensors and optimizer.pt)
    into one process as it is, into a distributed run (every process calls this) as whole tensors
    each process takes its part of; a distributed one through torch.distributed.checkpoint, which
    re-cuts the saved shards to what each process holds (one process: whole tensors, without a
    process group)."""
    info = read_json(path / "trainer.json")
    if is_distributed_checkpoint(path):
        _load_distributed(path, model, ema, optimizer)
    elif _distributed():
        _load_whole_into_distributed(path, model, ema, optimizer)
    else:
        model.load_state_dict(load_safetensors(path / "model.safetensors"), strict=True)
        if ema is not None:
            ema.load_state_dict(_ema_file(path))
        optimizer.load_state_dict(_optimizer_file(path))
    if objective is not None and objective.state_dict() is not None:
        objective.load_state_dict(_weights_only(path / OBJECTIVE_FILE, "the config trains a discriminator"))
    return int(info["step"])


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _ema_file(path: Path) -> dict[str, torch.Tensor]:
    if not (path / "ema.safetensors").is_file():
        raise CheckpointError(f"{path} has no ema.safetensors but the config has ema_decay > 0")
    return load_safetensors(path / "ema.safetensors")


def _optimizer_file(path: Path) -> dict:
    return _weights_only(path / "optimizer.pt")


def _weights_only(file: Path, why: str = "") -> dict:
    """A checkpoint's ``.pt`` file, loaded with ``weights_only=True`` (tensors and plain containers)."""
    if not file.is_file():
        raise CheckpointError(f"{file.parent} has no {file.name}" + (f" but {why}" if why else ""))
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure here means an unusable checkpoint
        raise CheckpointError(f"{file} could not be loaded (weights only): {' '.join(str(e).split())[:200]}") from None


def _load_whole_into_distributed(path: Path, model: nn.Module, ema: EMA | None, optimizer) -> None:
    """A one-process checkpoint into a distributed run: every process reads the whole tensors and
    keeps its part (all of them when the model is replicated). The optimiser's state, keyed there
    by position in its parameter list, is re-keyed by parameter name."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    from .distributed import distribute_like

    whole = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, load_safetensors(path / "model.safetensors"), options=whole)
    if ema is not None:
        saved, shadow = _ema_file(path), ema.state_dict()
        ema.load_state_dict({k: distribute_like(v, shadow[k]) for k, v in saved.items()} if set(saved) == set(shadow) else saved)
    raw = _optimizer_file(path)
    names = {id(p): n for n, p in model.named_parameters()}
    order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    try:
        by_name = {
            "state": {order[i]: v for i, v in raw["state"].items()},
            "param_groups": [{**g, "params": [order[i] for i in g["params"]]} for g in raw["param_groups"]],
        }
    except (KeyError, IndexError, TypeError):
        raise CheckpointError(f"{path / 'optimizer.pt'} does not match this model's parameters") from None
    set_optimizer_state_dict(model, optimizer, by_name, options=whole)


def _load_distributed(path: Path, model: nn.Module, ema: EMA | None, optimizer) -> None:
    """A distributed checkpoint into this process (every process of a distributed run calls it;
    one process loads whole tensors with no process group)."""
    import warnings

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict, set_model_state_dict, set_optimizer_state_dict

    try:
        saved = dcp.FileSystemReader(path).read_metadata().state_dict_metadata
    except Exception as e:  # noqa: BLE001 - any failure here means an unusable checkpoint
        raise CheckpointError(f"{path} is not a readable distributed checkpoint: {' '.join(str(e).split())[:200]}") from None
    if ema is not None and not any(k.startswith("ema.") for k in saved):
        raise CheckpointError(f"{path} has no EMA weights but the config has ema_decay > 0")
    # The optimiser's state must exist for DCP to load into it: get_optimizer_state_dict makes it
    # with one step of zero gradients at learning rate 0, which changes no weight.
    state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optimizer)}
    if ema is not None:
        state["ema"] = ema.state_dict()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process.*")
            dcp.load(state, checkpoint_id=path, no_dist=not _distributed())
    except Exception as e:  # noqa: BLE001 - DCP raises the same on every process (it gathers their errors)
        raise CheckpointError(f"{path} does not fit this model and optimiser: {' '.join(str(e).split())[:300]}") from None
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, optimizer, state["optim"])
    if ema is not None:
        ema.load_state_dict(state["ema"])


def export_model(out_dir: Path, config: TrainConfig, state: dict[str, torch.Tensor]) -> Path:
    """Write out_dir/model/: config.json (the diffusers form kinema's loaders read) + weights, atomically.

    A VAE's config gets ``latents_mean``/``latents_std`` measured on its training clips
    (:func:`measure_latent_stats`), replacing the config's placeholders.

    The VAE's weights are written with diffusers' names (``load_wan_vae`` reads a directory that
    way); the transformer's with the original Wan names, which ``load_wan_transformer`` reads with
    either config form (diffusers when text_len is 512, else the original Wan config).
    """
    raw_config, weights = training_kinds()[config.model].export(config, config.model_config(), on_cpu(state))
    final = out_dir / "model"
    tmp = out_dir / f".tmp-model-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_safetensors(weights, tmp / WEIGHTS_FILE)
    (tmp / "config.json").write_text(json.dumps(raw_config, indent=2))
    (tmp / "training.json").write_text(json.dumps(dataclasses.asdict(config), indent=2, default=str))
    for name in training_kinds()[config.model].files:  # e.g. a pixel-dit's tokenizer.json
        shutil.copy2(out_dir / name, tmp / name)
    old = out_dir / f".old-model-{os.getpid()}"
    if final.exists():
        os.rename(final, old)
    os.rename(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def truncate_metrics(path: Path, last_step: int) -> None:
    """Keep the metrics of steps up to ``last_step``: a resumed run logs the later ones again."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= last_step]
    if len(kept) != len(lines):
        with atomic_path(path) as tmp:
            tmp.write_text("".join(kept))
