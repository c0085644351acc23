"""``kinema.load_pipeline``: a model directory (any supported layout) or a name -> a pipeline.

Layouts are detected from the files, never from the directory's name:
- diffusers: ``model_index.json`` naming the pipeline class (``WanPipeline``, ``LTXPipeline``,
  ``LTXImageToVideoPipeline``), and one folder per component;
- original Wan 2.1: ``config.json`` with ``model_type`` beside ``diffusion_pytorch_model*.safetensors``,
  ``Wan2.1_VAE.pth``, ``models_t5_umt5-xxl-enc-bf16.pth`` and ``google/umt5-xxl/``;
- kinema: ``kinema.json`` (a model card, :mod:`kinema.pipelines.package`) beside ``transformer/`` and
  ``vae/`` (``wan-t2v``) or ``tokenizer/`` (``token-ar``, the autoregressive token model);
- original LTX-Video: one single-file checkpoint (``ltx-video-2b-v0.9*.safetensors``: transformer
  keys under ``model.diffusion_model.``, VAE keys under ``vae.``, the configs in its metadata),
  recognised by its keys whatever its name, beside the T5 folders ``text_encoder/`` and
  ``tokenizer/`` of ``PixArt-alpha/PixArt-XL-2-1024-MS`` that LTX-Video's inference.py loads (also
  accepted under ``PixArt-alpha/PixArt-XL-2-1024-MS/``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple

import torch

from ..checkpoints.io import read_json, safetensors_metadata, safetensors_shapes
from ..errors import CheckpointError, KinemaError
from ..models.fp8 import quantize_linears_fp8
from ..checkpoints import ltx as ltx_ckpt
from ..checkpoints import ltx_vae as ltx_vae_ckpt
from ..checkpoints import token_ar as token_ar_ckpt
from ..checkpoints import vq_video as vq_ckpt
from ..checkpoints import wan as wan_ckpt
from ..checkpoints import wan_vae as wan_vae_ckpt
from ..checkpoints.ltx import SINGLE_FILE_PREFIX, load_ltx_transformer
from ..checkpoints.ltx_vae import load_ltx_vae
from ..checkpoints.token_ar import load_token_ar
from ..checkpoints.vq_video import load_vq_tokenizer
from ..checkpoints.wan import load_wan_transformer
from ..checkpoints.wan_vae import load_wan_vae
from ..models.ltx import LTX_PRESETS, LTXTransformerConfig
from ..models.token_ar import TOKEN_AR_PRESETS, TokenARConfig
from ..models.vae.ltx_vae import LTXVAEConfig
from ..models.vae.wan_vae import WanVAEConfig
from ..models.wan import WAN_PRESETS, WanTransformerConfig
from ..sampling import ResolutionShift, SamplerSpec
from ..sampling.tokens import TokenSampling
from ..text.minilm import MINILM_DIM, load_minilm
from ..text.t5 import T5TextEncoder
from .ltx import LTX_TEXT_LEN, LTXDefaults, LTXPipeline
from .package import CARD_RULES, KINEMA_MODEL_FILE, read_kinema_card
from .token_ar import TokenARDefaults, TokenARPipeline
from .wan import WanDefaults, WanPipeline

# text encoders a kinema-format model may name in its card (all load from local files only), and
# the width of their states
TEXT_ENCODERS: dict[str, Callable] = {"minilm": load_minilm}
TEXT_ENCODER_DIMS: dict[str, int] = {"minilm": MINILM_DIM}



class PresetFamily(NamedTuple):
    """Architecture presets (configs without weights) of one family: `kinema info NAME` describes
    them; `--model NAME` explains that they need a checkpoint, in one of ``layouts``."""

    presets: dict[str, Callable]  # name -> config factory
    layouts: str  # where a checkpoint of the family comes from, for the error message


PRESET_FAMILIES = (
    PresetFamily(WAN_PRESETS, "diffusers or original Wan layout"),
    PresetFamily(LTX_PRESETS, "diffusers or original LTX-Video layout"),
    PresetFamily(TOKEN_AR_PRESETS, "a kinema-format token-ar model, from kinema package"),
)

# Weight storage schemes load_pipeline(quantize=...) knows; a pipeline kind lists those it takes.
QUANTIZE_SCHEMES = ("fp8",)
FP8_COMPUTE_DTYPE = torch.bfloat16  # FP8Linear's default: what an FP8 model computes in unless dtype= says otherwise

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

# Original LTX-Video: the T5 folders inference.py loads (from the PixArt-alpha repository), and the
# schedule of its RectifiedFlowScheduler ("SD3" shifting: ltx_video/schedulers/rf.py get_normal_shift;
# the same numbers as the published diffusers scheduler_config.json), terminal from the metadata.
LTX_ORIGINAL_TEXT_REPO = "PixArt-alpha/PixArt-XL-2-1024-MS"
LTX_RESOLUTION_SHIFT = ResolutionShift(base_seq_len=1024, max_seq_len=4096, base_shift=0.95, max_shift=2.05)
LTX_SHIFT_TERMINAL = 0.1


@dataclass
class ModelLayout:
    """What was found at a path: which format, which pipeline, which component files."""

    format: str  # "kinema", "diffusers", "wan-original" or "ltx-original"
    pipeline: str  # kinema pipeline name, e.g. "wan-t2v", "ltx-video"
    root: Path
    components: dict[str, Path] = field(default_factory=dict)  # component name -> file or folder
    card: dict = field(default_factory=dict)  # kinema.json of a kinema-format model (else empty)

    def transformer_config(self) -> WanTransformerConfig | LTXTransformerConfig | TokenARConfig:
        """The denoiser's (or token model's) architecture, read from config files or headers (no weights are read)."""
        return PIPELINES[self.pipeline].transformer_config(self)

    def request_rules(self) -> dict[str, Any]:
        """The size rules of the pipeline's ``check_request``, as its keyword arguments: for a
        diffusion model ``temporal_multiple`` and ``spatial_multiple`` (frames are ``k t + 1``,
        sizes multiples of ``s``), for a token model ``temporal_multiple``, ``frame_size`` and ``grid``."""
        return PIPELINES[self.pipeline].request_rules(self)

    def defaults(self) -> Any:
        """Size, frames and sampling defaults (the model card's, else the architecture's)."""
        return PIPELINES[self.pipeline].defaults(self)


def _wan_transformer_config(layout: ModelLayout) -> WanTransformerConfig:
    path = layout.components["transformer"]
    raw = read_json((path if path.is_dir() else path.parent) / "config.json")
    return wan_ckpt.from_config_json(raw)


def _wan_request_rules(layout: ModelLayout) -> dict[str, int]:
    vae = layout.components["vae"]
    config = wan_vae_ckpt.from_diffusers(read_json(vae / "config.json")) if vae.is_dir() else WanVAEConfig()
    patch = max(_wan_transformer_config(layout).patch_size[1:])
    return {"temporal_multiple": config.temporal_compression, "spatial_multiple": config.spatial_compression * patch}


def _wan_defaults(layout: ModelLayout) -> WanDefaults:
    return WanDefaults(**layout.card.get("defaults", {}))


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
    single_files = [f for f in sorted(root.glob("*.safetensors")) if _is_ltx_single_file(f)]
    if len(single_files) > 1:
        names = ", ".join(f.name for f in single_files)
        raise CheckpointError(f"{root} holds {len(single_files)} LTX-Video checkpoints ({names}); keep one per model directory")
    if single_files:
        return _ltx_original_layout(root, single_files[0])
    raise CheckpointError(
        f"{root} is not a model directory kinema knows: expected {KINEMA_MODEL_FILE} (kinema), "
        "model_index.json (diffusers), a Wan 2.1 config.json with its weight files, or an "
        "LTX-Video single-file checkpoint (.safetensors)"
    )


def _kinema_layout(root: Path) -> ModelLayout:
    card = read_kinema_card(root)
    components = {}
    for name in CARD_RULES[card["pipeline"]].components:
        if not (root / name / "config.json").is_file():
            raise CheckpointError(f"{root}: missing component {name!r} (no {name}/config.json)")
        components[name] = root / name
    return ModelLayout("kinema", card["pipeline"], root, components, card)


# diffusers pipeline class -> (kinema pipeline, the components it needs)
DIFFUSERS_PIPELINES = {
    "WanPipeline": ("wan-t2v", ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")),
    # one kinema pipeline does LTX-Video's text-, image- and video-to-video
    "LTXPipeline": ("ltx-video", ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")),
    "LTXImageToVideoPipeline": ("ltx-video", ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")),
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


def _is_ltx_single_file(path: Path) -> bool:
    """An original LTX-Video checkpoint: transformer keys under ``model.diffusion_model.`` and VAE
    keys under ``vae.`` in one safetensors file (only the header is read)."""
    keys = safetensors_shapes(path)
    return any(k.startswith(SINGLE_FILE_PREFIX) for k in keys) and any(k.startswith("vae.") for k in keys)


def _ltx_original_layout(root: Path, checkpoint: Path) -> ModelLayout:
    for base in (root, root / LTX_ORIGINAL_TEXT_REPO):
        if (base / "text_encoder").is_dir() and (base / "tokenizer").is_dir():
            text = {"text_encoder": base / "text_encoder", "tokenizer": base / "tokenizer"}
            break
    else:
        missing = [n for n in ("text_encoder", "tokenizer") if not (root / n).is_dir()]
        raise CheckpointError(
            f"{root}: missing component {missing[0]!r} (expected the folders text_encoder/ and tokenizer/ of "
            f"{LTX_ORIGINAL_TEXT_REPO} beside {checkpoint.name}, as LTX-Video's inference.py loads them)"
        )
    return ModelLayout("ltx-original", "ltx-video", root, {"transformer": checkpoint, "vae": checkpoint, **text})


def _single_file_config(path: Path) -> dict:
    """The JSON under "config" in an original LTX-Video file's metadata ({} when absent)."""
    raw = safetensors_metadata(path).get("config")
    if raw is None:
        return {}
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: the 'config' metadata is not valid JSON: {e}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: the 'config' metadata is not a JSON object")
    return config


def _ltx_transformer_config(layout: ModelLayout) -> LTXTransformerConfig:
    path = layout.components["transformer"]
    if path.is_dir():
        return ltx_ckpt.from_diffusers(read_json(path / "config.json"))
    config = ltx_ckpt.stored_config(path)
    if config is not None:
        return config
    # no config stored: infer it from the tensor shapes in the header, as the loader does
    shapes = {k[len(SINGLE_FILE_PREFIX) :]: v for k, v in safetensors_shapes(path).items() if k.startswith(SINGLE_FILE_PREFIX)}
    return ltx_ckpt.from_weights(ltx_ckpt.ORIGINAL_KEYS.to_ours({k: torch.empty(v, device="meta") for k, v in shapes.items()}))


def _ltx_vae_config(layout: ModelLayout) -> LTXVAEConfig:
    path = layout.components["vae"]
    if path.is_dir():
        return ltx_vae_ckpt.from_diffusers(read_json(path / "config.json"))
    stored = _single_file_config(path).get("vae")
    return ltx_vae_ckpt.from_original(stored) if stored else LTXVAEConfig()  # every release compresses 8 x 32 x 32


def _ltx_request_rules(layout: ModelLayout) -> dict[str, int]:
    vae = _ltx_vae_config(layout)
    return {"temporal_multiple": vae.temporal_compression, "spatial_multiple": vae.spatial_compression}  # the patch is 1


def _ltx_defaults(layout: ModelLayout) -> LTXDefaults:
    return LTXDefaults()


def ltx_original_sampler(config: dict | None) -> SamplerSpec:
    """The sampler of an original LTX-Video ``RectifiedFlowScheduler`` config (a single file's
    metadata; None or {}: LTX-Video's defaults). Settings kinema does not implement raise."""
    c = dict(config or {})
    cls = c.get("_class_name", "RectifiedFlowScheduler")
    shifting, sampler = c.get("shifting", "SD3"), c.get("sampler", "Uniform")
    if cls != "RectifiedFlowScheduler" or shifting not in ("SD3", None) or sampler not in ("Uniform", None) or c.get("shift") is not None:
        raise CheckpointError(
            f"LTX-Video scheduler {cls} with shifting={shifting!r}, sampler={sampler!r}, shift={c.get('shift')!r} is not "
            "supported; kinema implements RectifiedFlowScheduler with SD3 shifting and uniform timesteps"
        )
    terminal = c.get("target_shift_terminal", LTX_SHIFT_TERMINAL if not config else None)
    resolution = LTX_RESOLUTION_SHIFT if shifting == "SD3" else ResolutionShift.fixed(1.0)
    return SamplerSpec("euler", 1.0, int(c.get("num_train_timesteps", 1000)), resolution_shift=resolution, shift_terminal=terminal or None)


# Models shipped inside the package (kinema/assets/<folder>), by name: they need no download.
ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets"
SHIPPED_MODELS = {"shapes": "shapes", "shapes-ar": "shapes-ar"}
DEFAULT_MODEL = "shapes"  # what `kinema generate` uses without --model


def shipped_model_path(name: str) -> Path:
    """The folder of a shipped model; a one-line error if this install lacks its files."""
    path = ASSETS_DIR / SHIPPED_MODELS[name]
    if not (path / KINEMA_MODEL_FILE).is_file():
        raise CheckpointError(f"the shipped model {name!r} is not in this install (no {path / KINEMA_MODEL_FILE}); pass --model PATH")
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
        for family in PRESET_FAMILIES:
            if name in family.presets:
                raise KinemaError(
                    f"{name!r} is an architecture preset without weights; pass the directory of a "
                    f"{name} checkpoint ({family.layouts}) with --model"
                )
        presets = sorted(n for family in PRESET_FAMILIES for n in family.presets)
        raise KinemaError(
            f"{name!r} is neither a model directory nor a shipped model ({', '.join(sorted(SHIPPED_MODELS))}); "
            f"architecture presets without weights: {', '.join(presets)}"
        )
    return detect_layout(path)


def check_before_loading(
    layout: ModelLayout, height: int | None = None, width: int | None = None, num_frames: int | None = None, **options: Any
) -> None:
    """Check a request against the model's size rules and defaults, reading only config files.

    ``options``: sampling options of the pipeline's call (``num_inference_steps``, ``shift``,
    ``sampler`` for diffusion; ``temperature``, ``top_k``, ``top_p``, ``typical_p`` for a token
    model); one the pipeline does not take is a one-line KinemaError.
    """
    PIPELINES[layout.pipeline].cls.check_request(
        height, width, num_frames, defaults=layout.defaults(), **layout.request_rules(), **options
    )


def check_quantize(layout: ModelLayout, quantize: str | None) -> None:
    """Raise a one-line KinemaError unless the model's pipeline can store its weights as ``quantize``."""
    if quantize is None:
        return
    if quantize not in QUANTIZE_SCHEMES:
        raise KinemaError(f"unknown quantize {quantize!r}; use one of {', '.join(QUANTIZE_SCHEMES)} (or none)")
    kind = PIPELINES[layout.pipeline]
    if quantize not in kind.quantize:
        takes = [name for name, k in PIPELINES.items() if quantize in k.quantize]
        raise KinemaError(f"{quantize} quantisation is available for {', '.join(takes)} models; {layout.root} is a {layout.pipeline} model")


class Quantize(NamedTuple):
    """How a loader stores weights: the scheme ("fp8") and the dtype the quantised layers compute in."""

    scheme: str
    compute_dtype: torch.dtype


def load_pipeline(
    path_or_name: str | os.PathLike | ModelLayout,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    quantize: str | None = None,
):
    """Load a pipeline from a model directory, any supported layout.

    Args:
        path_or_name: a model directory (kinema, diffusers or original layout), a shipped model's
            name, or a resolved layout.
        device: where to run ("cpu", "cuda", ...); None picks CUDA when available, else CPU.
        dtype: weights dtype (torch dtype or "bfloat16"/"float32"); None: float32 on CPU (where
            bf16 matrix products are slow on most processors), the files' own dtype elsewhere.
        quantize: "fp8" (token models): store the token model's linear layers in float8_e4m3fn
            with one scale per output channel, computing in ``dtype`` if given, else bfloat16;
            the output head, the token embedding and the norms keep that dtype (float32 norms),
            and the tokenizer and text encoder load as ``dtype`` says. None: no quantisation.
    """
    device = resolve_device(device)
    requested = resolve_dtype(dtype)
    dtype = torch.float32 if requested is None and device.type == "cpu" else requested
    layout = path_or_name if isinstance(path_or_name, ModelLayout) else resolve_model(path_or_name)
    check_quantize(layout, quantize)
    if quantize is None:
        return PIPELINES[layout.pipeline].load(layout, device, dtype)
    return PIPELINES[layout.pipeline].load(layout, device, dtype, Quantize(quantize, requested or FP8_COMPUTE_DTYPE))


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


def _load_ltx(layout: ModelLayout, device: torch.device, dtype: torch.dtype | None):
    c = layout.components
    transformer = load_ltx_transformer(c["transformer"], dtype=dtype, device=device)
    vae = load_ltx_vae(c["vae"], dtype=dtype, device=device)
    # T5 as diffusers' LTXPipeline runs it, for both layouts (see T5TextEncoder.encode_padded)
    text_encoder = T5TextEncoder.from_diffusers(c["text_encoder"], c["tokenizer"], dtype=dtype, device=device, max_length=LTX_TEXT_LEN)
    if layout.format == "diffusers":
        sampler = SamplerSpec.from_diffusers(read_json(c["scheduler"] / "scheduler_config.json"))
    else:
        sampler = ltx_original_sampler(_single_file_config(c["transformer"]).get("scheduler"))
    return LTXPipeline(transformer, vae, text_encoder, sampler, defaults=layout.defaults(), device=device)


# ------------------------------------------------------------------------------------------------
# Token models (kinema layout only): transformer/ (TokenAR) + tokenizer/ (VQ video tokenizer)
# ------------------------------------------------------------------------------------------------
def _token_ar_transformer_config(layout: ModelLayout) -> TokenARConfig:
    return token_ar_ckpt.from_json(read_json(layout.components["transformer"] / "config.json"))


def _token_ar_request_rules(layout: ModelLayout) -> dict[str, Any]:
    """The tokenizer's time stride and the one frame size (token grid x stride), after checking
    that the components fit together (codebook size, text width)."""
    ar = _token_ar_transformer_config(layout)
    vq = vq_ckpt.from_json(read_json(layout.components["tokenizer"] / "config.json"))
    if ar.vocab_size != vq.codebook_size:
        raise CheckpointError(
            f"{layout.root}: the token model predicts {ar.vocab_size} ids but the tokenizer has {vq.codebook_size} codes; "
            "package the model with the tokenizer it was trained on"
        )
    text = layout.card.get("text_encoder", {}).get("kind")
    if text in TEXT_ENCODER_DIMS and TEXT_ENCODER_DIMS[text] != ar.text_dim:
        raise CheckpointError(
            f"{layout.root}: the token model takes {ar.text_dim}-d text states but the card's text encoder {text} gives "
            f"{TEXT_ENCODER_DIMS[text]}-d ones; package it with the text encoder it was trained with"
        )
    s = vq.spatial_compression
    return {"temporal_multiple": vq.temporal_compression, "frame_size": (ar.grid[0] * s, ar.grid[1] * s), "grid": ar.grid}


def _token_ar_defaults(layout: ModelLayout) -> TokenARDefaults:
    """The card's defaults; height and width, when given, must be the model's frame size."""
    height, width = _token_ar_request_rules(layout)["frame_size"]
    defaults = TokenARDefaults(**layout.card.get("defaults", {}))
    given = (height if defaults.height is None else defaults.height, width if defaults.width is None else defaults.width)
    if given != (height, width):
        raise CheckpointError(
            f"{layout.root / KINEMA_MODEL_FILE}: defaults height x width {defaults.height}x{defaults.width} is not this model's "
            f"frame size {height}x{width} (its token grid times the tokenizer's stride); fix or drop them"
        )
    return dataclasses.replace(defaults, height=height, width=width)


def _load_token_ar(layout: ModelLayout, device: torch.device, dtype: torch.dtype | None, quantize: Quantize | None = None):
    c = layout.components
    if quantize is None:
        transformer = load_token_ar(c["transformer"], dtype=dtype, device=device)
    else:
        # bf16 (or dtype) first, then each block's linears to FP8 one block at a time (the peak is
        # the unquantised model plus one block). The head stays: its logits are sampled directly,
        # and it is a small share of the weights (0.8% of AR-8B). The token embedding is a lookup
        # table, not a linear, and its dtype is the model's compute dtype.
        transformer = load_token_ar(c["transformer"], dtype=quantize.compute_dtype, device=device)
        for block in transformer.blocks:
            quantize_linears_fp8(block, compute_dtype=quantize.compute_dtype)
    tokenizer = load_vq_tokenizer(c["tokenizer"], dtype=dtype, device=device)
    text = layout.card["text_encoder"]
    text_encoder = TEXT_ENCODERS[text["kind"]](max_length=text["max_length"], dtype=dtype, device=device)
    sampler = TokenSampling(**layout.card["sampler"])
    return TokenARPipeline(transformer, tokenizer, text_encoder, sampler, defaults=layout.defaults(), device=device)


class PipelineKind(NamedTuple):
    """A registered pipeline: its class, its loader, and what it reads from a layout before loading."""

    cls: type  # the pipeline class (check_request, sampling_options, supports_image, supports_video)
    load: Callable[..., Any]  # (layout, device, dtype[, Quantize]) -> pipeline
    transformer_config: Callable[[ModelLayout], Any]
    request_rules: Callable[[ModelLayout], dict[str, Any]]  # size-rule keyword arguments of cls.check_request
    defaults: Callable[[ModelLayout], Any]
    quantize: tuple[str, ...] = ()  # weight storage schemes the loader takes (load_pipeline(quantize=...))


# kinema pipeline name -> how to check and load it
PIPELINES: dict[str, PipelineKind] = {
    "wan-t2v": PipelineKind(WanPipeline, _load_wan_t2v, _wan_transformer_config, _wan_request_rules, _wan_defaults),
    "ltx-video": PipelineKind(LTXPipeline, _load_ltx, _ltx_transformer_config, _ltx_request_rules, _ltx_defaults),
    "token-ar": PipelineKind(
        TokenARPipeline, _load_token_ar, _token_ar_transformer_config, _token_ar_request_rules, _token_ar_defaults, ("fp8",)
    ),
}
