"""Run a :class:`~kinema.request.GenerationRequest` from start to finish: what every front end
calls (the command line, and the coming web UI, HTTP server and replay).

The order is the point: everything that can be refused is refused first, in one line and reading
only small files: the request's values, the output path, the model's layout and rules (sizes,
options, memory), the input image or video. Only then are weights loaded, the video generated,
and the mp4 written, whole or not at all.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .checkpoints.io import check_output_path
from .errors import KinemaError, RequestError
from .request import GenerationRequest, frames_that_fit

DEFAULT_OUTPUT = "out.mp4"


@dataclass
class Generated:
    """What :func:`generate` made: the filled-in request, the pipeline's output, the files written."""

    request: GenerationRequest
    output: Any  # kinema.pipelines.output.VideoOutput
    paths: list[Path] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # seconds: load, text, denoise or tokens, decode, write
    memory: dict[str, Any] = field(default_factory=dict)  # the plan (when one was made) and the peak measured, in bytes
    metadata: list[dict[str, Any]] = field(default_factory=list)  # what each video file carries, by batch index (kinema.replay)


def output_paths(output: str | None, batch: int) -> list[Path]:
    """Where a request's videos go: ``output`` for one video, ``stem-0.mp4``, ``stem-1.mp4``... for several."""
    path = Path(output or DEFAULT_OUTPUT)
    if batch == 1:
        return [path]
    return [path.with_name(f"{path.stem}-{i}{path.suffix}") for i in range(batch)]


def generate(
    request: GenerationRequest,
    *,
    write: bool = True,
    progress_bar: bool = True,
    callback: Any = None,
    metadata: Mapping[str, Any] | None = None,
    pipelines: Any = None,
    parallel: Any = None,
) -> Generated:
    """Check ``request``, load its model, generate, and write the video(s) to ``request.output``.

    Args:
        request: what to make (see :class:`~kinema.request.GenerationRequest`).
        write: write the mp4 file(s) (False: return the frames only).
        progress_bar: show progress bars on stderr.
        callback: ``fn(Progress)`` at every stage and step (raising stops the call: nothing is written).
        metadata: the caller's own JSON-able values (a server's job id, the prompt before it was
            extended), kept under ``"extra"`` in the metadata each video carries.
        pipelines: a :class:`~kinema.pipelines.cache.PipelineCache` to take the loaded model from and
            keep it in (a server's worker); None loads it for this call only.
        parallel: a :class:`~kinema.parallel.ParallelPlan` for this call, in a process group of its
            size (torchrun; :func:`kinema.parallel.groups.init_from_env`): every process calls
            ``generate`` with the same request and gets the same frames; pass ``write`` True on one
            process only. The weights stay resident in every process (no memory plan), and the
            pipeline is loaded for this call (not kept in ``pipelines``).

    Raises:
        KinemaError: in one line, for anything the request, the model or the machine cannot do,
        before any weights load whenever the files tell.
    """
    import torch

    from .checkpoints.layouts import DEFAULT_MODEL
    from .pipelines.loading import (
        check_quantize,
        component_dtypes,
        load_pipeline,
        resolve_device,
        resolve_dtype,
        resolve_model,
    )
    from .pipelines.memory import current_rss, gib, parse_bytes, peak_bytes, reset_peak, wants_plan
    from .replay import check_extra, input_records, model_sha256, video_metadata, video_tags
    from .runtime import available_memory
    from .video import CONTAINER_FORMATS, write_video

    t0 = time.perf_counter()
    if not isinstance(request, GenerationRequest):
        raise KinemaError(f"generate takes a GenerationRequest; got {type(request).__name__}")
    request.checked_alone()
    extra = check_extra(metadata)
    if request.prompt_extend is not None:
        from .text.prompt_extend import check_extend_dir

        check_extend_dir(request.prompt_extend)  # its files, before anything loads
    paths: list[Path] = []
    if write:
        paths = output_paths(request.output, request.batch)
        for path in paths:
            if path.suffix.lower() not in CONTAINER_FORMATS:
                raise KinemaError(f"output must end in .mp4 (or .mkv, .mov); got {path.name!r}")
            check_output_path(path)
    device = resolve_device(request.device)
    dtype = resolve_dtype(request.dtype)
    layout = resolve_model(request.model)
    check_quantize(layout, request.quantize)
    picked = component_dtypes(dtype, device)["transformer"]
    element_bytes = picked.itemsize if picked is not None else 2
    rules = layout.rules(element_bytes)
    request.check_abilities(rules)  # before reading an input the model could not take
    media = read_media(request)
    inputs = input_records(request)  # their content hashes, for a replay to check
    if "image" in media and rules.image_size_rule and request.height is None and request.width is None:
        height, width = rules.size_for_image(*media["image"].shape[:2], request.max_area)  # (H, W, 3): the picture decides (Wan's rule)
        request = replace(request, height=height, width=width, max_area=None)
    if "extend" in media:
        request = continuing(request, rules, media["extend"])
    if "video" in media and request.num_frames is None:  # video-to-video: as much of the input as fits
        request = replace(request, num_frames=frames_that_fit(len(media["video"]), rules.defaults.num_frames, rules.temporal_multiple, rules.frames_offset))
    free = available_memory(device)
    key = (str(layout.root.resolve()), str(device), request.dtype, request.quantize)  # what a kept pipeline's loading depended on
    if free is not None and pipelines is not None:
        free += pipelines.bytes_of(key)  # a kept model's weights are there already: the estimate counts them once
    budget = parse_bytes(request.max_memory)
    planned = wants_plan(budget, request.offload)
    if parallel is not None:
        import torch.distributed as dist

        parallel.check_world(dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1)  # before loading
        if planned or request.offload not in (None, "auto", "none"):
            raise RequestError("{0} and {1} do not combine with several processes: each process keeps its weights resident", "max_memory", "offload")
        request = replace(request, offload="none")
    held = (current_rss() or 0) if device.type == "cpu" else 0  # a CPU budget counts the process itself
    filled = request.checked(rules, check_memory=False)
    plan = filled.long_plan(rules)  # None: one call
    if plan is not None and plan.window is not None:  # in windows: a window's worth at a time
        sizing = replace(filled, num_frames=plan.window)
    elif "extend" not in media:
        sizing = filled
    else:  # extending: the input and the new frames
        sizing = replace(filled, num_frames=len(media["extend"]) + filled.num_frames)
    floor = max(rules.stage_bytes(sizing, request.batch).values(), default=0)  # activations: no strategy avoids them
    if not planned and request.offload != "none" and free is not None:
        need = rules.needed_bytes(sizing, request.batch)
        if need is not None and need > free and floor <= free:  # all resident would not fit: the planner finds what does
            budget, planned = free + held, True
    if budget is not None and held + floor > budget:  # refused before loading
        raise KinemaError(
            f"this request's activations alone need about {gib(floor)} beside the {gib(held)} the process holds; "
            f"the budget is {gib(budget)}: raise --max-memory, or make a smaller or shorter video"
        )
    if not planned and free is not None:
        rules.check_memory(sizing, free, request.batch)  # all resident, as before: refused if it cannot fit
    request = filled
    if request.prompt_extend is not None:  # the request that is run and recorded holds the extended prompt; extra keeps the original
        request, extra["prompt_extend"] = extend_prompt(request, device, callback)
    model_hash = model_sha256(layout.root)  # every video carries it: a replay checks the weights are the same (cached per file)
    reset_peak(device)
    def load():
        return load_pipeline(layout, device=device, dtype=request.dtype, quantize=request.quantize,
                             max_memory=budget, offload=request.offload if planned else None, plan_for=request)  # fmt: skip

    if pipelines is not None and not planned and parallel is None:  # a plan is sized for one request: planned loads are not kept
        pipe = pipelines.get(key, load)
    else:
        pipe = load()
    if parallel is not None:
        from .parallel import parallelize

        applied = parallelize(pipe, parallel)  # this call's pipeline only: nothing keeps it
        ulysses = applied.mesh.ulysses if applied.mesh is not None else 1
        extra["parallel"] = {"processes": parallel.world_size, "sequence": parallel.sequence, "guidance": parallel.guidance, "ulysses": ulysses}
    timings = {"load": time.perf_counter() - t0}
    keywords = call_keywords(request, pipe.rules.sampling_options)
    if plan is not None:  # longer than a window, or its prompt changes: in windows
        keywords.pop("prompt")
        if request.prompt_schedule is not None:
            keywords.pop("num_frames")
        out = pipe.long_video(prompt=request.prompt if request.prompt_schedule is None else None, prompt_schedule=request.prompt_schedule,
                              window=request.window, overlap=request.overlap, video=media.get("extend"), fps=media.get("frame_rate"),
                              **keywords, callback=callback, progress_bar=progress_bar)  # fmt: skip
    elif "extend" in media:  # the input's frames, then the new ones, at the input's frame rate
        for name in ("height", "width"):
            keywords.pop(name)
        out = pipe.extend(media["extend"], overlap=request.overlap, fps=media.get("frame_rate"), **keywords, callback=callback, progress_bar=progress_bar)
    else:
        out = pipe(**keywords, **media, callback=callback, progress_bar=progress_bar)
    timings.update(out.timings)
    memory = {"peak_bytes": peak_bytes(device), "dtypes": pipe.dtypes}
    if pipe.memory_plan is not None:
        memory = {"plan": pipe.memory_plan.describe(), "estimate_bytes": pipe.memory_plan.peak, **memory}
    records = [
        video_metadata(
            request, model_name=request.model if request.model is not None else DEFAULT_MODEL, model_path=layout.root.resolve(),
            model_sha256=model_hash, device=device, dtypes=getattr(pipe, "dtypes", {}), threads=torch.get_num_threads(), fps=out.fps,
            batch=len(out.frames), index=i, inputs=inputs, extra=extra,
        )
        for i in range(len(out.frames))
    ]  # fmt: skip
    if write:
        t_write = time.perf_counter()
        for path, frames, record in zip(paths, out.frames, records):
            write_video(frames, path, fps=out.fps, metadata=video_tags(record))
        timings["write"] = time.perf_counter() - t_write
    return Generated(request, out, paths, timings, memory, records)


def extend_prompt(request: GenerationRequest, device: Any, callback: Any = None) -> tuple[GenerationRequest, dict[str, Any]]:
    """``request`` with its prompt(s) rewritten by its ``prompt_extend`` model (deterministic with
    the seed; the language model is let go before the video model loads), and the record of it:
    the language model's name, folder and content hash, and the original prompt."""
    from .pipelines.base import Progress
    from .replay import model_sha256
    from .text.prompt_extend import PromptExtender

    if callback is not None:
        callback(Progress("prompt", 0, 1))
    extender = PromptExtender(request.prompt_extend, device=device)
    if isinstance(request.prompt, str):
        extended: str | list[str] = extender.extend(request.prompt, request.seed)
    else:
        extended = extender.extend_prompts(list(request.prompt), request.seed)
    record = {"model": extender.name, "path": str(extender.path), "sha256": model_sha256(extender.path), "original": request.prompt}
    del extender
    if callback is not None:
        callback(Progress("prompt", 1, 1))
    return replace(request, prompt=extended, prompt_extend=None), record


def call_keywords(request: GenerationRequest, sampling_options: tuple[str, ...]) -> dict[str, Any]:
    """A checked request's values as a pipeline call's keywords."""
    keywords = {
        "prompt": request.prompt,
        "negative_prompt": request.negative_prompt,
        "height": request.height,
        "width": request.width,
        "num_frames": request.num_frames,
        "guidance_scale": request.guidance_scale,
        "seed": request.seed,
        "num_videos_per_prompt": request.num_videos_per_prompt,
    }
    keywords.update({name: getattr(request, name) for name in sampling_options if getattr(request, name) is not None})
    for name in ("strength", "frame_rate"):
        if getattr(request, name) is not None:
            keywords[name] = getattr(request, name)
    return keywords


def continuing(request: GenerationRequest, rules: Any, head: Any) -> GenerationRequest:
    """A request that continues ``head`` (F, H, W, 3) with its size and, unless it sets one, as much
    of the video's end as the model can see; one-line errors for a video or overlap that cannot be."""
    from .pipelines.inputs import check_video_to_continue

    if (request.height, request.width) not in ((None, None), tuple(head.shape[1:3])):
        raise RequestError(f"{{0}} and {{1}} come from the video to continue ({head.shape[2]}x{head.shape[1]}); leave them out", "height", "width")
    check_video_to_continue(rules, *head.shape[1:3])
    request = replace(request, height=head.shape[1], width=head.shape[2])
    if request.overlap is None:
        return replace(request, overlap=rules.default_overlap(len(head), request.window))
    if request.overlap > len(head):
        raise RequestError(f"{{0}} is {request.overlap} frames but the video has {len(head)}", "overlap")
    return request


def read_media(request: GenerationRequest) -> dict[str, Any]:
    """The pipeline arguments for ``image`` or ``video``, read from their files (one-line errors).
    A video's own frame rate becomes the request's unless it sets one. A video to continue
    (``extend``) comes back as ``{"extend": frames, "frame_rate": its rate}``."""
    from .video import read_image, read_video

    if request.image is not None:
        return {"image": read_image(request.image)}
    if request.extend is not None:
        frames, fps = read_video(request.extend)
        rate = request.frame_rate if request.frame_rate is not None else (fps if fps > 0 else None)
        return {"extend": frames, "frame_rate": rate}
    if request.video is not None:
        frames, fps = read_video(request.video)
        if request.frame_rate is None and fps > 0:
            return {"video": frames, "frame_rate": fps}  # keep the input's timing
        return {"video": frames}
    return {}
