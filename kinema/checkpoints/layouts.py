"""What a model directory is: its layout, found from its files (never from its name).

- kinema: ``kinema.json`` (a model card: the family, its text encoder, sampler and defaults)
  beside the family's component folders (``transformer/`` and ``vae/`` or ``tokenizer/``);
- diffusers: ``model_index.json`` naming a pipeline class a family reads (:mod:`kinema.families`),
  and one folder per component;
- a family's original release layout, which the family's checkpoints module recognises
  (``detect(root)``: Wan 2.1's ``config.json`` with ``model_type``, LTX-Video's single file).

:func:`resolve_model` also takes the name of a model shipped inside the package. Everything here
reads config files, JSON and safetensors headers only: no weights.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, KinemaError
from ..families import (
    FAMILIES,
    TEXT_ENCODERS,
    Family,
    diffusers_pipelines,
    family,
    family_for_diffusers,
    presets,
    text_encoder_kind,
)
from ..request import GenerationRequest
from .io import read_json, safetensors_shapes

KINEMA_MODEL_FILE = "kinema.json"
CARD_KEYS = ("format", "pipeline", "text_encoder", "sampler", "defaults")
CARD_REQUIRED = ("format", "pipeline", "text_encoder", "sampler")

# Models shipped inside the package (kinema/assets/<folder>), by name: they need no download.
ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets"
SHIPPED_MODELS = {"shapes": "shapes", "shapes-ar": "shapes-ar"}
DEFAULT_MODEL = "shapes"  # what `kinema generate` uses without --model


@dataclass
class ModelLayout:
    """What was found at a path: which format, which family, which component files."""

    format: str  # "kinema", "diffusers", or a family's original layout ("wan-original", "ltx-original")
    pipeline: str  # the family's name (its pipeline), e.g. "wan-t2v", "ltx-video"
    root: Path
    components: dict[str, Path] = field(default_factory=dict)  # component name -> file or folder
    card: dict = field(default_factory=dict)  # kinema.json of a kinema-format model (else empty)

    @property
    def family(self) -> Family:
        return family(self.pipeline)

    @property
    def codec_path(self) -> Path | None:
        """The codec's folder (or the file holding it); None for a model on pixels."""
        folder = self.family.codec_folder
        return self.components[folder] if folder is not None else None

    def transformer_config(self) -> Any:
        """The generator's architecture (denoiser or token model), from config files or headers."""
        return self.family.formats().generator_config(self)

    def codec_config(self) -> Any:
        """The codec's architecture, from config files or headers."""
        return self.family.codec_kind().formats().codec_config(self.codec_path)

    def text_dim(self) -> int | None:
        """Width of the states of the text encoder a card names (None: the checkpoint's own encoder)."""
        text = self.card.get("text_encoder")
        return text_encoder_kind(text["kind"], card=True).dim if text else None

    def sampler(self) -> Any:
        """The model's default sampler (a card's, or the checkpoint's scheduler config)."""
        cls = self.family.pipeline_class()
        if self.format == "kinema":
            return cls.sampler_from_card(self.card["sampler"])
        return self.family.formats().sampler(self)

    def weight_elements(self) -> int:
        """Parameters in the component files (safetensors headers; a pickle's size at 2 bytes each)."""
        files: set[Path] = set()
        for path in self.components.values():
            if path.is_file():
                files.add(path)
            elif path.is_dir():
                files.update(f for f in path.rglob("*") if f.is_file() and f.suffix in (".safetensors", ".pth", ".pt", ".bin", ".gguf"))
        total = 0
        for f in files:
            if f.suffix == ".safetensors":
                total += sum(math.prod(shape) for shape in safetensors_shapes(f).values())
            else:  # a pickle (or a GGUF file): its size at 2 bytes a value
                total += f.stat().st_size // 2
        return total

    def rules(self, element_bytes: int = 4) -> Any:
        """The model's :class:`~kinema.request.ModelRules`, read off its config files (no weights):
        size rules, defaults, sampling options, and what its weights weigh in ``element_bytes`` each."""
        cls = self.family.pipeline_class()
        try:
            rules = cls.model_rules(
                self.transformer_config(), self.codec_config(), text_dim=self.text_dim(), card_defaults=self.card_defaults(),
                sampler=self.sampler(), weights=self.weight_elements(), element_bytes=element_bytes,
            )  # fmt: skip
            return dataclasses.replace(rules, quantize=self.family.quantize)
        except CheckpointError as e:
            raise CheckpointError(f"{self.root}: {e}") from None
        except (TypeError, ValueError) as e:  # a card's defaults of the wrong kind
            where = self.root / KINEMA_MODEL_FILE if self.card else self.root
            raise CheckpointError(f"{where}: {' '.join(str(e).split())}") from None

    def card_defaults(self) -> dict:
        """Defaults the files set: a model card's ``defaults``, or for a published layout what its
        family's checkpoints module says (``layout_defaults(layout)``; Wan's original release: its
        default negative prompt)."""
        if self.format == "kinema":
            return dict(self.card.get("defaults", {}))
        hook = getattr(self.family.formats(), "layout_defaults", None)
        return hook(self) if hook is not None else {}

    def defaults(self) -> Any:
        """Size, frames and sampling defaults (the model card's, else the architecture's)."""
        return self.rules().defaults


# ------------------------------------------------------------------------------------------------
# kinema.json
# ------------------------------------------------------------------------------------------------
def read_kinema_card(root: str | os.PathLike) -> dict[str, Any]:
    """Read and check ``kinema.json``; every problem is a one-line CheckpointError."""
    path = Path(root) / KINEMA_MODEL_FILE
    return check_card(read_json(path), path)


def check_card(card: dict[str, Any], path: str | os.PathLike) -> dict[str, Any]:
    """Check a model card's keys, family, text encoder and sampler (``path`` names it in messages)."""
    unknown = sorted(set(card) - set(CARD_KEYS))
    missing = sorted(set(CARD_REQUIRED) - set(card))
    if unknown or missing:
        raise CheckpointError(f"{path}: unknown keys {unknown}, missing keys {missing}")
    with_cards = [name for name, f in FAMILIES.items() if f.cards]
    if card["format"] != "kinema" or card["pipeline"] not in with_cards:
        raise CheckpointError(f"{path}: expected format 'kinema' and a pipeline in {with_cards}; got {card['format']!r}, {card['pipeline']!r}")
    cls = family(card["pipeline"]).pipeline_class()
    text = card["text_encoder"]
    card_encoders = [name for name, kind in TEXT_ENCODERS.items() if kind.in_cards]
    if (
        not isinstance(text, dict)
        or set(text) != {"kind", "max_length"}
        or not _in_cards(text.get("kind"))
        or isinstance(text.get("max_length"), bool)
        or not isinstance(text.get("max_length"), int)
        or text["max_length"] < 1
    ):
        raise CheckpointError(f"{path}: text_encoder must be {{'kind': one of {card_encoders}, 'max_length': a positive int}}; got {text!r}")
    allowed = {"sampler": set(cls.card_sampler_keys), "defaults": {f.name for f in dataclasses.fields(cls.defaults_type)}}
    for key, keys in allowed.items():
        section = card.get(key, {})
        if not isinstance(section, dict):
            raise CheckpointError(f"{path}: {key} must be a JSON object; got {section!r}")
        extra = set(section) - keys
        if extra:
            raise CheckpointError(f"{path}: unknown {key} keys {sorted(extra)} for a {card['pipeline']} model; allowed {sorted(keys)}")
    fam, kind = family(card["pipeline"]), text_encoder_kind(text["kind"], card=True)
    if fam.own_text != (kind.folder is not None):
        own = [name for name, k in TEXT_ENCODERS.items() if k.folder is not None]
        frozen = [name for name, k in TEXT_ENCODERS.items() if k.folder is None and k.in_cards]
        need = own if fam.own_text else frozen
        raise CheckpointError(f"{path}: a {card['pipeline']} model's text encoder is {' or '.join(need)}; got {text['kind']!r}")
    try:
        cls.sampler_from_card(card["sampler"])
    except KinemaError as e:
        raise CheckpointError(f"{path}: sampler: {e}") from None
    defaults = dict(card.get("defaults", {}))
    fields = {f.name for f in dataclasses.fields(GenerationRequest)}
    values = {k: v for k, v in defaults.items() if k in fields}  # those a request also takes (fps is its frame_rate)
    try:  # the request's own checks (types, bounds, finite numbers)
        GenerationRequest(prompt="-", frame_rate=defaults.get("fps"), **values).checked_alone()
    except KinemaError as e:
        raise CheckpointError(f"{path}: defaults: {e}") from None
    return card


def _in_cards(name: Any) -> bool:
    try:
        text_encoder_kind(name, card=True)
    except KinemaError:
        return False
    return True


# ------------------------------------------------------------------------------------------------
# Detection
# ------------------------------------------------------------------------------------------------
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
    for fam in FAMILIES.values():
        detect = getattr(fam.formats(), "detect", None)
        layout = detect(root) if detect is not None else None
        if layout is not None:
            return layout
    raise CheckpointError(
        f"{root} is not a model directory kinema knows: expected {KINEMA_MODEL_FILE} (kinema), "
        "model_index.json (diffusers), a Wan 2.1 config.json with its weight files, or an "
        "LTX-Video single-file checkpoint (.safetensors)"
    )


def _kinema_layout(root: Path) -> ModelLayout:
    card = read_kinema_card(root)
    components = {}
    for name in family(card["pipeline"]).components:
        if not (root / name / "config.json").is_file():
            raise CheckpointError(f"{root}: missing component {name!r} (no {name}/config.json)")
        components[name] = root / name
    folder = text_encoder_kind(card["text_encoder"]["kind"], card=True).folder
    if folder is not None:  # a text encoder trained with the model: its tokenizer is the model's
        from ..text.bpe import TOKENIZER_FILE

        if not (root / folder / TOKENIZER_FILE).is_file():
            raise CheckpointError(f"{root}: missing component {folder!r} (no {folder}/{TOKENIZER_FILE})")
        components[folder] = root / folder
    return ModelLayout("kinema", card["pipeline"], root, components, card)


def _diffusers_layout(root: Path) -> ModelLayout:
    index = read_json(root / "model_index.json")
    cls = index.get("_class_name")
    fam = family_for_diffusers(cls)
    if fam is None:
        raise CheckpointError(f"{root}: pipeline {cls!r} is not supported; kinema reads {diffusers_pipelines()}")
    second = index.get("transformer_2")
    if (isinstance(second, list) and second and second[0] is not None) or index.get("boundary_ratio") is not None:
        raise CheckpointError(f"{root}: two-expert (Wan 2.2) pipelines are not supported yet")
    components = {}
    for name in fam.diffusers_components:
        folder = root / name
        if name not in index or not folder.is_dir():
            raise CheckpointError(f"{root}: missing component {name!r} (no {name}/ folder or no entry in model_index.json)")
        components[name] = folder
    return ModelLayout("diffusers", fam.name, root, components)


# ------------------------------------------------------------------------------------------------
# Names
# ------------------------------------------------------------------------------------------------
def shipped_model_path(name: str) -> Path:
    """The folder of a shipped model; a one-line error if this install lacks its files."""
    path = ASSETS_DIR / SHIPPED_MODELS[name]
    if not (path / KINEMA_MODEL_FILE).is_file():
        raise CheckpointError(f"the shipped model {name!r} is not in this install (no {path / KINEMA_MODEL_FILE}); pass --model PATH")
    return path


def resolve_model(path_or_name: str | os.PathLike | None) -> ModelLayout:
    """Find what ``path_or_name`` is, reading only small files; one-line errors for anything else.

    A path that exists wins; otherwise a shipped model's name (``shapes``) resolves to its folder
    inside the package. None is the default shipped model.
    """
    if path_or_name is None:
        path_or_name = DEFAULT_MODEL
    if not isinstance(path_or_name, (str, os.PathLike)):
        raise KinemaError(f"model must be a path or a shipped model's name; got {type(path_or_name).__name__}")
    name = os.fspath(path_or_name)
    if not name or "\0" in name:
        raise KinemaError(f"model must be a path or a shipped model's name; got {name!r}")
    path = Path(name)
    try:
        exists = path.exists()
    except (OSError, ValueError) as e:  # a name too long, a path through a file
        raise KinemaError(f"cannot read {name!r}: {e.strerror if isinstance(e, OSError) else e}") from None
    if not exists:
        if name in SHIPPED_MODELS:
            return detect_layout(shipped_model_path(name))
        known = presets()
        if name in known:
            raise KinemaError(
                f"{name!r} is an architecture preset without weights; pass the directory of a "
                f"{name} checkpoint ({known[name][0].sources}) with --model"
            )
        raise KinemaError(
            f"{name!r} is neither a model directory nor a shipped model ({', '.join(sorted(SHIPPED_MODELS))}); "
            f"architecture presets without weights: {', '.join(sorted(known))}"
        )
    return detect_layout(path)


# ------------------------------------------------------------------------------------------------
# Codec folders
# ------------------------------------------------------------------------------------------------
def codec_kind_of(path: str | os.PathLike, expected: str | None = None, *, what: str = "codec") -> Any:
    """The registered codec (:data:`kinema.families.CODECS`) that ``path`` holds: a folder whose
    config.json names its class, or a weights file with such a config.json beside it (or, with
    ``expected``, a bare weights file of that codec). One-line errors say what was found instead."""
    from ..families import CODECS, codec_class_names, codec_for_class
    from .io import config_class_name

    path = Path(path)
    if not path.exists():
        raise KinemaError(f"{what} not found: {path}")
    folder = path if path.is_dir() else path.parent
    name = config_class_name(folder)
    kind = codec_for_class(name)
    if kind is None and path.is_dir() and expected is not None:
        nested = folder / expected_folder(expected)
        if config_class_name(nested) is not None:  # a model root: its codec folder
            return codec_kind_of(nested, expected, what=what)
    if kind is None and path.is_file() and expected is not None:
        return CODECS[expected]
    if kind is None or (expected is not None and kind.name != expected):
        want = f"a {CODECS[expected].name} ({', '.join(CODECS[expected].class_names)})" if expected else f"one of {codec_class_names()}"
        raise KinemaError(f"{what} {path} is not {want}: its config.json names {name!r}")
    return kind


def expected_folder(codec: str) -> str:
    """The folder name a model root keeps a codec in ("vae" or "tokenizer")."""
    return next(f.codec_folder for f in FAMILIES.values() if f.codec == codec)


def load_codec(path: str | os.PathLike, expected: str | None = None, *, what: str = "codec", dtype: Any = None, device: Any = None) -> Any:
    """Load the codec at ``path`` (see :func:`codec_kind_of`) in eval mode, without gradients."""
    kind = codec_kind_of(path, expected, what=what)
    return kind.formats().load_codec(path, dtype=dtype, device=device)
