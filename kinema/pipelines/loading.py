"""``kinema.load_pipeline``: a model directory (any supported layout) or a name -> a pipeline.

What a directory is comes from :mod:`kinema.checkpoints.layouts` (its files, never its name); what
a family is made of comes from the registry (:mod:`kinema.families`). Loading is the same for
every family: the generator from the family's checkpoints module, the codec from the codec's, the
text encoder and sampler from a kinema model card or, for a published checkpoint, from the
family's checkpoints module; then the family's pipeline holds them.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import torch

from ..checkpoints.layouts import (  # noqa: F401  (re-exported: where kinema's front ends look them up)
    ASSETS_DIR,
    DEFAULT_MODEL,
    KINEMA_MODEL_FILE,
    SHIPPED_MODELS,
    ModelLayout,
    detect_layout,
    resolve_model,
    shipped_model_path,
)
from ..errors import KinemaError
from ..families import FAMILIES, QUANTIZE_SCHEMES, resolve, text_encoder_kind

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The device to run on (None: CUDA when there is one, else the CPU); a one-line error for a
    device that is unknown, absent from this machine, or not one to compute on (``meta``)."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(device, (str, torch.device)):
        raise KinemaError(f"device must be a name such as 'cpu' or 'cuda:0'; got {type(device).__name__}")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise KinemaError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise KinemaError(f"device {str(device)!r} asked for, but this PyTorch sees no CUDA GPU; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise KinemaError(f"device {str(device)!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise KinemaError(f"device {str(device)!r} asked for, but this PyTorch has no MPS (Apple GPU) backend here; use --device cpu")
    elif dev.type != "cpu":
        raise KinemaError(f"device {str(device)!r} is not one kinema runs on; use cpu, cuda or cuda:N")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """A weights dtype by name (None or "auto": None, for :func:`component_dtypes` to pick)."""
    if dtype is None:
        return None
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise KinemaError(f"dtype {dtype} is not one kinema loads weights in; use float32, bfloat16 or float16")
        return dtype
    if dtype in ("auto", "none"):
        return None
    if dtype not in DTYPES:
        raise KinemaError(f"unknown dtype {dtype!r}; use one of float32, bfloat16, float16 or auto")
    return DTYPES[dtype]


COMPONENTS = ("transformer", "text_encoder", "image_encoder", "codec")


def component_dtypes(requested: torch.dtype | None, device: torch.device) -> dict[str, torch.dtype | None]:
    """Each component's compute dtype: ``requested`` for all, or with none ("auto") what the device
    does fast (:func:`kinema.runtime.fast_dtype`) for the transformer and the encoders, and float32
    for the codec (a VAE decodes the pixels: diffusers' Wan examples keep it float32 too). Modules
    a model marks ``_keep_in_fp32`` stay float32 in any case."""
    if requested is not None:
        return dict.fromkeys(COMPONENTS, requested)
    from ..runtime import fast_dtype

    fast = fast_dtype(device)
    return {"transformer": fast, "text_encoder": fast, "image_encoder": fast, "codec": torch.float32 if fast is not None else None}


def load_text_encoder(kind: str, max_length: int, dtype: torch.dtype | None = None, device: Any = None, dim: int | None = None) -> Any:
    """A registered text encoder (:data:`kinema.families.TEXT_ENCODERS`) by name."""
    record = text_encoder_kind(kind)
    if record.dim is None:
        return resolve(record.load)(dim, max_length)
    return resolve(record.load)(max_length=max_length, dtype=dtype, device=device)


def check_before_loading(
    layout: ModelLayout, height: int | None = None, width: int | None = None, num_frames: int | None = None, **options: Any
) -> Any:
    """Check a request's size and sampling options against the model, reading only config files;
    returns the request with the model's defaults filled in.

    ``options``: sampling options of the pipeline's call (``num_inference_steps``, ``shift``,
    ``sampler`` for diffusion; ``temperature``, ``top_k``, ``top_p``, ``typical_p`` for a token
    model); one the pipeline does not take is a one-line KinemaError.
    """
    from ..request import GenerationRequest

    request = GenerationRequest(height=height, width=width, num_frames=num_frames, **options)
    return request.checked(layout.rules(), batch=1)


def check_quantize(layout: ModelLayout, quantize: str | None) -> None:
    """Raise a one-line KinemaError unless the model's family can store its weights as ``quantize``."""
    if quantize is None:
        return
    if quantize not in QUANTIZE_SCHEMES:
        raise KinemaError(f"unknown quantize {quantize!r}; use one of {', '.join(QUANTIZE_SCHEMES)} (or none)")
    if quantize not in layout.family.quantize:
        takes = [name for name, f in FAMILIES.items() if quantize in f.quantize]
        raise KinemaError(f"{quantize} quantisation is available for {', '.join(takes)} models; {layout.root} is a {layout.pipeline} model")


class Quantize(NamedTuple):
    """How a loader stores weights: the scheme ("fp8") and the dtype the quantised layers compute in."""

    scheme: str
    compute_dtype: torch.dtype


def load_pipeline(
    path_or_name: str | os.PathLike | ModelLayout | None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    quantize: str | None = None,
    max_memory: str | int | None = None,
    offload: str | None = None,
    plan_for: Any = None,
):
    """Load a pipeline from a model directory, any supported layout.

    Args:
        path_or_name: a model directory (kinema, diffusers or original layout), a shipped model's
            name (``"shapes"``, the default of the command line), or a resolved layout.
        device: where to run ("cpu", "cuda", ...); None picks CUDA when available, else CPU.
        dtype: weights dtype (torch dtype or "bfloat16"/"float32"); None: float32 on CPU (where
            bf16 matrix products are slow on most processors), the files' own dtype elsewhere.
        quantize: "fp8" (token models): store the token model's linear layers in float8_e4m3fn
            with one scale per output channel, computing in ``dtype`` if given, else bfloat16;
            the output head, the token embedding and the norms keep that dtype (float32 norms),
            and the tokenizer and text encoder load as ``dtype`` says. None: no quantisation.
        max_memory: a memory budget on ``device`` ("12GiB", "8GB" or bytes): the planner
            (:mod:`kinema.pipelines.memory`) picks how the weights move so that the run fits, and
            the pipeline's ``memory_plan`` says what it picked. None: no budget.
        offload: "none", "model" or "block" forces a strategy; "auto" or None lets the planner
            pick (with neither this nor ``max_memory``, everything stays resident as before).
        plan_for: the :class:`~kinema.request.GenerationRequest` the plan is sized for (its size,
            frames, videos and guidance; default: the model's default clip, one video).
    """
    if path_or_name is None:
        raise KinemaError('load_pipeline needs a model: a directory or a shipped model\'s name, e.g. load_pipeline("shapes")')
    device = resolve_device(device)
    requested = resolve_dtype(dtype)
    dtypes = component_dtypes(requested, device)
    layout = path_or_name if isinstance(path_or_name, ModelLayout) else resolve_model(path_or_name)
    check_quantize(layout, quantize)
    from .memory import check_offload, parse_bytes, wants_plan

    budget, offload = parse_bytes(max_memory), check_offload(offload)
    planned = wants_plan(budget, offload)
    fam = layout.family
    cls = fam.pipeline_class()
    defaults = layout.defaults()  # reads config files only: a card or parts that do not fit fail before any weights
    formats = fam.formats()
    target, load = device, dict(dtypes)
    if planned:  # the weights load where they wait (file-mapped, the file's dtype, on the CPU); the plan places them
        load, device = dict.fromkeys(COMPONENTS, None), torch.device("cpu")
    if quantize is None:
        generator = formats.load_generator(layout, dtype=load["transformer"], device=device)
    else:
        generator = formats.load_generator(layout, dtype=requested, device=device, quantize=quantize)
    codec = fam.codec_kind().formats().load_codec(layout.codec_path, dtype=load["codec"], device=device)
    dtype = load["text_encoder"]
    if layout.format == "kinema":
        text = layout.card["text_encoder"]
        kind = text_encoder_kind(text["kind"])
        if kind.folder is not None:  # trained with the model: its tokenizer in the model's folder, its weights in the generator
            text_encoder = resolve(kind.load)(layout.components[kind.folder], generator, text["max_length"])
        else:
            text_encoder = load_text_encoder(text["kind"], text["max_length"], dtype=dtype, device=device)
        sampler = cls.sampler_from_card(layout.card["sampler"])
    else:
        text_encoder = formats.text_encoder(layout, dtype=dtype, device=device)
        sampler = formats.sampler(layout)
    extra = {}
    if fam.image_encoder is not None:  # image-to-video: the layout's picture encoder
        extra["image_encoder"] = formats.image_encoder(layout, dtype=load["image_encoder"], device=device)
    pipe = cls(generator, codec, text_encoder, sampler, defaults=defaults, device=target, **extra)
    pipe.memory_plan = None
    if quantize is not None:  # the token model's linears stay FP8; the rest computes in the loader's choice
        dtypes["transformer"] = None
    if planned:
        from .memory import place

        place(pipe, budget, offload, dtypes, target, plan_for)
    pipe.dtypes = picked_dtypes(pipe)
    return pipe


def picked_dtypes(pipe: Any) -> dict[str, str]:
    """What each loaded component computes in (its first floating weight's dtype, or the
    generator's ``compute_dtype``), as names: what ``--timings`` reports."""
    from .memory import pipeline_modules

    out = {}
    for name, module in pipeline_modules(pipe).items():
        dtype = getattr(module, "compute_dtype", None)
        if not isinstance(dtype, torch.dtype):
            dtype = next((p.dtype for p in module.parameters() if p.is_floating_point()), None)
        if dtype is not None:
            out[name] = str(dtype).replace("torch.", "")
    return out
