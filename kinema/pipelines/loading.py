"""``kinema.load_pipeline``: a model directory (any supported layout) or a name -> a pipeline.

Layouts are detected from the files, never from the directory's name:
- diffusers: ``model_index.json`` naming the pipeline class, and one folder per component;
- original Wan 2.1: ``config.json`` with ``model_type`` beside ``diffusion_pytorch_model*.safetensors``,
  ``Wan2.1_VAE.pth``, ``models_t5_umt5-xxl-enc-bf16.pth`` and ``google/umt5-xxl/``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..checkpoints.io import read_json
from ..errors import CheckpointError, KinemaError
from ..models.vae.wan_vae import WanVAEConfig, load_wan_vae
from ..models.wan import WAN_PRESETS, WanTransformerConfig, load_wan_transformer
from ..sampling import SamplerSpec
from ..text.minilm import load_minilm
from ..text.t5 import T5TextEncoder
from .package import KINEMA_MODEL_FILE, read_kinema_card
from .wan import WanDefaults, WanPipeline

# text encoders a kinema-format model may name in its card (all load from local files only)
TEXT_ENCODERS: dict[str, Callable] = {"minilm": load_minilm}

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}

# Files of the original Wan 2.1 release (Wan-Video/Wan2.1, wan/configs/wan_t2v_*.py).
WAN_ORIGINAL_VAE = ("Wan2.1_VAE.pth", "Wan2.1_VAE.safetensors")
WAN_ORIGINAL_T5 = ("models_t5_umt5-xxl-enc-bf16.pth", "models_t5_umt5-xxl-enc-bf16.safetensors")
WAN_ORIGINAL_TOKENIZER = "google/umt5-xxl"
# wan/configs: sample_shift per task.
WAN_ORIGINAL_SHIFT = {"t2v": 5.0}


@dataclass
class ModelLayout:
    """What was found at a path: which format, which pipeline, which component files."""

    format: str  # "kinema", "diffusers" or "wan-original"
    pipeline: str  # kinema pipeline name, e.g. "wan-t2v"
    root: Path
    components: dict[str, Path] = field(default_factory=dict)  # component name -> file or folder
    card: dict = field(default_factory=dict)  # kinema.json of a kinema-format model (else empty)

    def transformer_config(self) -> WanTransformerConfig:
        """The denoiser's architecture, read from its config.json (no weights are read)."""
        path = self.components["transformer"]
        raw = read_json((path if path.is_dir() else path.parent) / "config.json")
        if raw.get("_class_name") == "WanTransformer3DModel":
            return WanTransformerConfig.from_diffusers(raw)
        return WanTransformerConfig.from_original(raw)

    def size_rules(self) -> tuple[int, int]:
        """(frames multiple, size multiple): frames are ``k * first + 1``, sizes multiples of the second."""
        vae = self.components["vae"]
        config = WanVAEConfig.from_diffusers(read_json(vae / "config.json")) if vae.is_dir() else WanVAEConfig()
        patch = max(self.transformer_config().patch_size[1:])
        return config.temporal_compression, config.spatial_compression * patch

    def defaults(self) -> WanDefaults:
        """Size, frames and sampling defaults: the model card's, else Wan 2.1's."""
        return WanDefaults(**self.card.get("defaults", {}))


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise KinemaError(f"unknown device {device!r}; use cpu, cuda, cuda:0, mps ...") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise KinemaError(f"device {device!r} asked for, but this PyTorch sees no CUDA GPU; use --device cpu")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype in ("auto", "none"):
        return None
    if dtype not in DTYPES:
        raise KinemaError(f"unknown dtype {dtype!r}; use one of float32, bfloat16, float16 or auto")
    return DTYPES[dtype]


def detect_layout(path: str | os.PathLike) -> ModelLayout:
    """Identify a model directory's format and components, or raise a one-line CheckpointError."""
    root = Path(path)
    if not root.exists():
        raise CheckpointError(f"no such file or directory: {root}")
    if not root.is_dir():
        raise CheckpointError(f"{root} is a file; pass the model directory that contains it")
    if (root / KINEMA_MODEL_FILE).is_file():
        return _kinema_layout(root)
    if (root / "model_index.json").is_file():
        return _diffusers_layout(root)
    if (root / "config.json").is_file():
        config = read_json(root / "config.json")
        if config.get("model_type") in WAN_ORIGINAL_SHIFT:
            return _wan_original_layout(root, config)
        if config.get("model_type") == "i2v":
            raise KinemaError(f"{root} is a Wan image-to-video model; the image-to-video pipeline is not available yet")
    raise CheckpointError(
        f"{root} is not a model directory kinema knows: expected {KINEMA_MODEL_FILE} (kinema), "
        "model_index.json (diffusers) or a Wan 2.1 config.json with its weight files"
    )


def _kinema_layout(root: Path) -> ModelLayout:
    card = read_kinema_card(root)
    components = {}
    for name in ("transformer", "vae"):
        if not (root / name / "config.json").is_file():
            raise CheckpointError(f"{root}: missing component {name!r} (no {name}/config.json)")
        components[name] = root / name
    return ModelLayout("kinema", card["pipeline"], root, components, card)


# diffusers pipeline class -> (kinema pipeline, the components it needs)
DIFFUSERS_PIPELINES = {
    "WanPipeline": ("wan-t2v", ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")),
}


def _diffusers_layout(root: Path) -> ModelLayout:
    index = read_json(root / "model_index.json")
    cls = index.get("_class_name")
    if cls not in DIFFUSERS_PIPELINES:
        raise CheckpointError(f"{root}: pipeline {cls!r} is not supported; kinema reads {sorted(DIFFUSERS_PIPELINES)}")
    pipeline, needed = DIFFUSERS_PIPELINES[cls]
    if (index.get("transformer_2") or [None])[0] is not None or index.get("boundary_ratio") is not None:
        raise CheckpointError(f"{root}: two-expert (Wan 2.2) pipelines are not supported yet")
    components = {}
    for name in needed:
        folder = root / name
        if name not in index or not folder.is_dir():
            raise CheckpointError(f"{root}: missing component {name!r} (no {name}/ folder or no entry in model_index.json)")
        components[name] = folder
    return ModelLayout("diffusers", pipeline, root, components)


def _wan_original_layout(root: Path, config: dict) -> ModelLayout:
    def first(names: tuple[str, ...], what: str) -> Path:
        for n in names:
            if (root / n).is_file():
                return root / n
        raise CheckpointError(f"{root}: missing component {what!r} (expected {' or '.join(names)})")

    tokenizer = root / WAN_ORIGINAL_TOKENIZER
    if not tokenizer.is_dir():
        raise CheckpointError(f"{root}: missing component 'tokenizer' (expected the folder {WAN_ORIGINAL_TOKENIZER}/)")
    return ModelLayout(
        "wan-original",
        f"wan-{config['model_type']}",
        root,
        {
            # one file, or the directory when the weights are sharded (an index beside the shards)
            "transformer": single if (single := root / "diffusion_pytorch_model.safetensors").is_file() else root,
            "vae": first(WAN_ORIGINAL_VAE, "vae"),
            "text_encoder": first(WAN_ORIGINAL_T5, "text_encoder"),
            "tokenizer": tokenizer,
        },
    )


# Models shipped inside the package (kinema/assets/<folder>), by name: they need no download.
ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets"
SHIPPED_MODELS = {"shapes": "shapes"}
DEFAULT_MODEL = "shapes"  # what `kinema generate` uses without --model


def shipped_model_path(name: str) -> Path:
    """The folder of a shipped model; a one-line error if this install lacks its files."""
    path = ASSETS_DIR / SHIPPED_MODELS[name]
    if not (path / KINEMA_MODEL_FILE).is_file():
        raise CheckpointError(f"the shipped model {name!r} is missing from this install (no {path / KINEMA_MODEL_FILE}); reinstall kinema")
    return path


def resolve_model(path_or_name: str | os.PathLike) -> ModelLayout:
    """Find what ``path_or_name`` is, reading only small files; one-line errors for anything else.

    A path that exists wins; otherwise a shipped model's name (``shapes``) resolves to its folder
    inside the package.
    """
    path = Path(path_or_name)
    if not path.exists():
        name = str(path_or_name)
        if name in SHIPPED_MODELS:
            return detect_layout(shipped_model_path(name))
        if name in WAN_PRESETS:
            raise KinemaError(
                f"{name!r} is an architecture preset without weights; pass the directory of a downloaded "
                f"{name} checkpoint (diffusers or original Wan layout) with --model"
            )
        raise KinemaError(
            f"{name!r} is neither a model directory nor a shipped model ({', '.join(sorted(SHIPPED_MODELS))}); "
            f"architecture presets without weights: {', '.join(sorted(WAN_PRESETS))}"
        )
    return detect_layout(path)


def check_before_loading(layout: ModelLayout, height, width, num_frames, num_inference_steps) -> None:
    """Check a request against the model's size rules and defaults, reading only config files."""
    temporal, spatial = layout.size_rules()
    PIPELINES[layout.pipeline][0].check_request(
        height, width, num_frames, num_inference_steps, layout.defaults(), temporal, spatial
    )


def load_pipeline(
    path_or_name: str | os.PathLike | ModelLayout,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
):
    """Load a pipeline from a model directory, any supported layout.

    Args:
        path_or_name: a diffusers-format or original-layout model directory (or a resolved layout).
        device: where to run ("cpu", "cuda", ...); None picks CUDA when available, else CPU.
        dtype: weights dtype (torch dtype or "bfloat16"/"float32"); None: float32 on CPU (where
            bf16 matrix products are slow on most processors), the files' own dtype elsewhere.
    """
    device = resolve_device(device)
    dtype = resolve_dtype(dtype)
    if dtype is None and device.type == "cpu":
        dtype = torch.float32
    layout = path_or_name if isinstance(path_or_name, ModelLayout) else resolve_model(path_or_name)
    return PIPELINES[layout.pipeline][1](layout, device, dtype)


def _load_wan_t2v(layout: ModelLayout, device: torch.device, dtype: torch.dtype | None):
    c = layout.components
    transformer = load_wan_transformer(c["transformer"], dtype=dtype, device=device)
    vae = load_wan_vae(c["vae"], dtype=dtype, device=device)
    if layout.format == "kinema":
        text = layout.card["text_encoder"]
        text_encoder = TEXT_ENCODERS[text["kind"]](max_length=text["max_length"], dtype=dtype, device=device)
        sampler = SamplerSpec(**layout.card["sampler"])
    elif layout.format == "diffusers":
        text_encoder = T5TextEncoder.from_diffusers(c["text_encoder"], c["tokenizer"], dtype=dtype, device=device)
        sampler = SamplerSpec.from_diffusers(read_json(c["scheduler"] / "scheduler_config.json"))
    else:
        text_encoder = T5TextEncoder.from_wan_original(c["text_encoder"], c["tokenizer"], dtype=dtype, device=device)
        sampler = SamplerSpec(name="unipc", shift=WAN_ORIGINAL_SHIFT["t2v"])
    return WanPipeline(transformer, vae, text_encoder, sampler, defaults=layout.defaults(), device=device)


# kinema pipeline name -> (pipeline class, loader)
PIPELINES: dict[str, tuple[type, Callable]] = {"wan-t2v": (WanPipeline, _load_wan_t2v)}
