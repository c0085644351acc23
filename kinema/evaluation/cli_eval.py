"""Judge a folder of clips against their prompts, and write reference folders to check the judge.

A clips folder holds video files and ``prompts.jsonl``, one JSON object per clip:
``{"file": "clip_000.mp4", "colour": "red", "shape": "circle", "motion": "left", "prompt": "..."}``
(``file`` relative to the folder). Functions take plain values so an argparse command can call them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..data.records import read_records
from ..data.shapes import (
    COLOURS,
    DEFAULT_FPS,
    DEFAULT_FRAMES,
    DEFAULT_SIZE,
    MOTIONS,
    SHAPES,
    render_clip,
    sample_spec,
)
from ..errors import KinemaError
from ..video import read_video, write_video
from .judge import eval_prompts, format_table, judge_clip, score

PROMPTS_FILE = "prompts.jsonl"
EVAL_BATCH = 8  # prompts generated (or clips round-tripped) together
PROMPT_KEYS = ("file", "colour", "shape", "motion", "prompt")


def read_prompts(clips_dir: Path) -> list[dict]:
    """The entries of ``clips_dir/prompts.jsonl``, checked for the keys every line needs and for
    labels the shapes world has (a clip labelled "magenta" could only ever score 0%)."""
    path = Path(clips_dir) / PROMPTS_FILE
    example = '{"file": "clip_000.mp4", "colour": "red", "shape": "circle", "motion": "left", "prompt": "..."}'
    entries = read_records(path, PROMPT_KEYS, example=example)
    for n, entry in enumerate(entries, 1):
        for key, known in (("colour", COLOURS), ("shape", SHAPES), ("motion", MOTIONS)):
            if entry[key] not in known:
                raise KinemaError(f"{path}: entry {n} has {key} {entry[key]!r}, which the shapes world does not have; use one of {', '.join(known)}")
        if not isinstance(entry["file"], str) or not entry["file"] or Path(entry["file"]).is_absolute() or ".." in Path(entry["file"]).parts:
            raise KinemaError(f"{path}: entry {n} has file {entry['file']!r}; give a file name inside the clips folder")
    return entries


def run_eval(
    clips_dir: str | Path,
    *,
    out_json: str | Path | None = None,
    print_table: bool = True,
) -> dict:
    """Judge every clip listed in ``clips_dir/prompts.jsonl``; return (and optionally save) the report.

    The report is :func:`~kinema.evaluation.judge.score`'s dict plus ``clips``: per clip its entry,
    what the judge read and whether each attribute matched.
    """
    if clips_dir is None:
        raise KinemaError("no clips folder given; generate_set or render_reference_set writes one")
    clips_dir = Path(clips_dir)
    if not clips_dir.is_dir():
        raise KinemaError(f"clips folder not found: {clips_dir}")
    entries = read_prompts(clips_dir)
    results, prompts, clips = [], [], []
    for entry in entries:
        frames, _ = read_video(clips_dir / entry["file"])  # (F, H, W, 3) uint8
        result = judge_clip(frames)
        prompt = (entry["colour"], entry["shape"], entry["motion"], entry["prompt"])
        results.append(result)
        prompts.append(prompt)
        clips.append({**entry, "judged": result.to_dict(), "match": result.matches(*prompt[:3])})
    report = score(results, prompts)
    report["clips"] = clips
    if print_table:
        print(format_table(report))
    if out_json is not None:
        Path(out_json).write_text(json.dumps(report, indent=2) + "\n")
    return report


def render_reference_set(
    out_dir: str | Path,
    split: str = "all",
    size: int = DEFAULT_SIZE,
    frames: int = DEFAULT_FRAMES,
    seed: int = 0,
    *,
    style: str = "canonical",
    fps: float = DEFAULT_FPS,
    limit: int | None = None,
    per_prompt: int = 1,
) -> Path:
    """Write ``per_prompt`` ground-truth clips per evaluation prompt of ``split`` plus ``prompts.jsonl``.

    Clip i uses ``np.random.default_rng([seed, i])`` for its size and path. ``limit`` keeps only the
    first prompts (for quick checks). Returns ``out_dir``; :func:`run_eval` on it should score 100%.
    """
    return _write_reference_set(out_dir, _prompt_list(split, style, limit, per_prompt), size, frames, seed, fps, through=None)


def reconstruct_reference_set(
    pipe,
    out_dir: str | Path,
    split: str = "all",
    size: int = DEFAULT_SIZE,
    frames: int = DEFAULT_FRAMES,
    seed: int = 0,
    *,
    style: str = "canonical",
    limit: int | None = None,
    per_prompt: int = 1,
    batch_size: int = EVAL_BATCH,
) -> Path:
    """:func:`render_reference_set`'s clips after a round trip through ``pipe``'s codec.

    Each ground-truth clip is encoded and decoded by the model's VAE or tokenizer
    (``pipe.reconstruct``), so :func:`run_eval` on the folder scores what the decoder keeps of
    real clips, apart from the transformer. (Not a bound on generations: a transformer can learn to
    make latents that decode more crisply than those the encoder makes of real clips.)
    """
    prompts = _prompt_list(split, style, limit, per_prompt)
    return _write_reference_set(out_dir, prompts, size, frames, seed, pipe.fps, through=pipe, batch_size=batch_size)


class CodecOnly:
    """A bare codec for :func:`reconstruct_reference_set`: a codec's own directory (``config.json``
    + weights, as a training run exports to ``OUT/model``; any codec of the registry), so that a
    codec can be judged while it trains, before any transformer uses it."""

    fps = DEFAULT_FPS

    def __init__(self, path: str | Path, size: int, frames: int, device: str | None = None) -> None:
        """Checks ``size`` x ``size`` and ``frames`` against the codec's strides (reading only its
        config.json), then loads it."""
        from ..checkpoints.layouts import codec_kind_of
        from ..pipelines.loading import resolve_device
        from ..request import ModelRules

        path = Path(path)
        kind = codec_kind_of(path, what="--reconstruct")
        formats = kind.formats()
        arch = formats.codec_config(path)
        codec_rules = ModelRules(kind.name, None, arch.temporal_compression, arch.spatial_compression)
        codec_rules.check_size(size, size, frames)
        self.codec = formats.load_codec(path, device=resolve_device(device))

    def reconstruct(self, frames: np.ndarray) -> np.ndarray:
        """uint8 frames (B, F, H, W, 3) encoded and decoded -> the same."""
        from ..pipelines.inputs import reconstruct_frames

        return reconstruct_frames(frames, self.codec)


def is_codec_dir(path: str | Path) -> bool:
    """Whether ``path`` is a directory whose config.json names a codec of the registry."""
    from ..checkpoints.io import config_class_name
    from ..families import codec_for_class

    return Path(path).is_dir() and codec_for_class(config_class_name(path)) is not None


def _write_reference_set(
    out_dir: str | Path, prompts: list[tuple], size: int, frames: int, seed: int, fps: float, *, through, batch_size: int = EVAL_BATCH
) -> Path:
    """Clip i rendered with ``np.random.default_rng([seed, i])``, passed through ``through.reconstruct``
    (batches of ``batch_size``) unless it is None, and written with ``prompts.jsonl``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        clips = [render_clip(sample_spec(*p[:3], np.random.default_rng([seed, start + j])), size, frames) for j, p in enumerate(chunk)]
        if through is not None:
            clips = list(through.reconstruct(np.stack(clips)))  # (B, F, H, W, 3) uint8
        for j, ((colour, shape, motion, prompt), clip) in enumerate(zip(chunk, clips)):
            name = f"clip_{start + j:03d}.mp4"
            write_video(clip, out_dir / name, fps)
            lines.append({"file": name, "colour": colour, "shape": shape, "motion": motion, "prompt": prompt})
    _write_prompts(out_dir, lines)
    return out_dir


def _prompt_list(split: str, style: str, limit: int | None, per_prompt: int) -> list[tuple[str, str, str, str]]:
    """The evaluation prompts of ``split`` (first ``limit``), each repeated ``per_prompt`` times in a row."""
    if per_prompt < 1:
        raise KinemaError(f"per_prompt must be a positive integer; got {per_prompt}")
    return [p for p in eval_prompts(split, style)[:limit] for _ in range(per_prompt)]


def _write_prompts(out_dir: Path, lines: list[dict]) -> None:
    (out_dir / PROMPTS_FILE).write_text("".join(json.dumps(line) + "\n" for line in lines))


def generate_set(
    pipe,
    out_dir: str | Path,
    split: str = "all",
    size: int = DEFAULT_SIZE,
    frames: int = DEFAULT_FRAMES,
    seed: int = 0,
    *,
    style: str = "canonical",
    guidance_scale: float | None = None,
    options: Mapping[str, Any] | None = None,
    batch_size: int = EVAL_BATCH,
    limit: int | None = None,
    per_prompt: int = 1,
) -> Path:
    """Generate ``per_prompt`` clips per evaluation prompt of ``split`` with ``pipe`` and write ``prompts.jsonl``.

    Prompts go through the pipeline in batches of ``batch_size``; clip i's random draws (noise, or
    sampled tokens) come from seed ``seed + i``, so a clip does not depend on the batch it was
    generated in. ``options``: the pipeline's sampling options (``num_inference_steps`` for a
    diffusion model, ``temperature``, ``top_k`` ... for a token model; the pipeline's
    ``sampling_options`` lists them, others raise); None: the model's defaults.
    """
    import torch

    options = dict(options or {})
    other = sorted(set(options) - set(pipe.rules.sampling_options))
    if other:
        raise KinemaError(f"{', '.join(other)} does not apply to this model; its sampling options are {', '.join(pipe.rules.sampling_options)}")
    prompts = _prompt_list(split, style, limit, per_prompt)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        generators = [torch.Generator("cpu").manual_seed(seed + start + j) for j in range(len(chunk))]
        out = pipe(
            prompt=[p[3] for p in chunk],
            height=size,
            width=size,
            num_frames=frames,
            guidance_scale=guidance_scale,
            generator=generators,
            **options,
        )
        for j, (colour, shape, motion, prompt) in enumerate(chunk):
            name = f"clip_{start + j:03d}.mp4"
            write_video(out.frames[j], out_dir / name, out.fps)
            lines.append({"file": name, "colour": colour, "shape": shape, "motion": motion, "prompt": prompt})
    _write_prompts(out_dir, lines)
    return out_dir
