"""The web page of ``kinema serve`` (Gradio): everything Wan's demo offers and more, on the same
queue as the HTTP API.

A press of *Generate* builds the same request the API builds (:meth:`ServerState.build_request`,
so the same checks and the same one-line errors), queues it, and follows the job with a progress
bar; *Cancel* cancels it. The gallery lists finished jobs with their settings; *Use these
settings* puts one's settings back in the form. The page loads no model, except the prompt
extension model when its button is pressed (a server started with ``--prompt-extend``).
"""

# No `from __future__ import annotations` here: gradio reads its event handlers' annotations
# (gr.SelectData) as objects.
import os
import re
import secrets
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from ..errors import KinemaError
from .api import ApiError, ServerState

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing leaves the machine

POLL_SECONDS = 0.5
MAX_WAIT_SECONDS = 7 * 24 * 3600  # a page follows one job at most this long
GALLERY_ROWS = 50
TASKS = {"text-to-video": "text", "image-to-video": "image", "video-to-video": "video", "continue a video": "extend"}
# The form's fields, in the order the handlers take them (each a request field, or a page control).
FORM = ("model", "task", "image", "video", "prompt", "negative_prompt", "width", "height", "num_frames", "num_inference_steps",
        "guidance_scale", "shift", "sampler", "seed", "random_seed", "strength", "cache_threshold", "temperature", "top_k",
        "top_p", "typical_p", "max_memory", "overlap", "schedule", "prompt_frames", "prompt_extend")  # fmt: skip
# Settings whose default lives in the model's card (shift, token sampling) or means "off": text boxes, empty for the model's own.
TEXT_NUMBERS = ("shift", "strength", "cache_threshold", "temperature", "top_k", "top_p", "typical_p", "overlap")
WHOLE_NUMBERS = ("top_k", "overlap")
GALLERY_COLUMNS = ["id", "status", "model", "prompt", "seed", "size", "frames", "steps", "error"]


def form_request(state: ServerState, values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Path], str]:
    """The page's form as the API's raw fields, the uploads to store, and the task."""
    task = TASKS.get(values.get("task") or "text-to-video", "text")
    raw: dict[str, Any] = {}
    for name in FORM:
        value = values.get(name)
        if name in ("model", "task", "image", "video", "random_seed", "schedule", "prompt_frames") or value is None:
            continue
        if name == "prompt_extend":
            raw[name] = bool(value)
            continue
        if isinstance(value, str):
            value = value.strip()
            if not value:
                continue  # empty: the model's own
            if name in TEXT_NUMBERS:
                value = _number(name, value)
        if name in ("width", "height", "num_frames", "num_inference_steps", "top_k", "seed") and isinstance(value, float) and value.is_integer():
            value = int(value)
        raw[name] = value
    if values.get("schedule"):
        raw.pop("prompt", None)
        raw["prompt_schedule"] = prompt_schedule(values.get("prompt"), values.get("prompt_frames"))
        if all(n is not None for _, n in raw["prompt_schedule"]):
            raw.pop("num_frames", None)  # the prompts' frames are the video's
    raw["model"] = values.get("model") or state.default_model
    served = state.models.get(raw["model"])
    if served is not None:  # the controls a model does not take are hidden on the page: their values are not sent
        from ..request import SAMPLING_OPTIONS

        for name in SAMPLING_OPTIONS:
            if name not in served.rules.sampling_options:
                raw.pop(name, None)
    if values.get("random_seed"):
        raw["seed"] = "random"
    if task != "video":
        raw.pop("strength", None)
    if task == "extend":  # the video's own size
        raw.pop("width", None)
        raw.pop("height", None)
    else:
        raw.pop("overlap", None)
    files: dict[str, Path] = {}
    if task in ("image", "video", "extend"):
        given = values.get("image" if task == "image" else "video")
        if not given:
            what = {"image": "image-to-video needs an input image", "video": "video-to-video needs an input video", "extend": "continuing a video needs one"}
            raise ApiError(400, f"{what[task]}: upload one")
        files[task] = Path(given)
    return raw, files, task


def prompt_schedule(text: Any, frames: Any) -> list[list[Any]]:
    """The form's prompts, one a line, and their frames ("33, 32"; empty: shared out) as the API's
    ``prompt_schedule``; ApiError(400) where the counts do not match the lines."""
    lines = [line.strip() for line in str(text or "").splitlines() if line.strip()]
    if not lines:
        raise ApiError(400, "a prompt for each part of the video, one a line: none given", param="prompt")
    counts: list[int | None] = [None] * len(lines)
    if str(frames or "").strip():
        parts = re.split(r"[\s,;]+", str(frames).strip(" \t\n,;"))  # "33, 32", "33 32", "33;32"
        try:
            given = [int(p) for p in parts]
        except ValueError:
            raise ApiError(400, f"frames per prompt must be whole numbers, e.g. 33, 32; got {str(frames)[:80]!r}", param="prompt_schedule") from None
        if len(given) != len(lines):
            raise ApiError(400, f"frames per prompt gives {len(given)} count(s) for {len(lines)} prompt line(s); give one per line or none", param="prompt_schedule")
        counts = list(given)
    return [[line, n] for line, n in zip(lines, counts)]


def _number(name: str, text: str) -> float | int:
    try:
        return int(text) if name in WHOLE_NUMBERS else float(text)
    except ValueError:
        kind = "a whole number" if name in WHOLE_NUMBERS else "a number"
        raise ApiError(400, f"{name} must be {kind} (or empty for the model's own); got {text!r}", param=name) from None


def submit_form(state: ServerState, values: dict[str, Any]) -> str:
    """Queue the form's request; returns the job id (ApiError: a one-line refusal)."""
    raw, files, _ = form_request(state, values)
    job_id = state.queue.new_id()
    uploads: dict[str, Path] = {}
    try:
        for kind, src in files.items():
            folder = state.queue.upload_dir(job_id)
            folder.mkdir(parents=True, exist_ok=True)
            uploads[kind] = Path(shutil.copyfile(src, folder / f"{kind}{src.suffix.lower()}"))
        model, fields = state.build_request(raw, uploads)
        return state.queue.submit(model.name, fields, job_id=job_id, max_queued=state.max_queued).id
    except BaseException:
        shutil.rmtree(state.queue.upload_dir(job_id), ignore_errors=True)
        raise


def job_line(state: ServerState, job) -> str:
    """One line about a job for the page's status."""
    if job.status == "completed":
        s = job.settings or {}
        return (f"done: {job.id}, {s.get('num_frames')} frames of {s.get('width')}x{s.get('height')}, "
                f"seed {job.request.get('seed', 0)}")  # fmt: skip
    if job.status == "failed":
        return f"error: {job.error}"
    if job.status == "cancelled":
        return f"cancelled: {job.id}"
    return f"{job.status.replace('_', ' ')}: {job.id}" + (f" ({job.stage}, {job.progress:.0f}%)" if job.stage else "")


def gallery_rows(state: ServerState) -> list[list[Any]]:
    rows = []
    for job in state.queue.list(limit=GALLERY_ROWS):
        s = job.settings or {}
        width, height = s.get("width", job.request.get("width")), s.get("height", job.request.get("height"))
        sched = job.request.get("prompt_schedule")
        prompt = [p for p, _ in sched] if sched else job.request.get("prompt")
        rows.append([
            job.id, job.status, job.model, prompt if isinstance(prompt, str) else " | ".join(prompt or []), job.request.get("seed", 0),
            f"{width}x{height}" if width and height else "", s.get("num_frames", job.request.get("num_frames")) or "",
            s.get("num_inference_steps", job.request.get("num_inference_steps")) or "", job.error or "",
        ])  # fmt: skip
    return rows


def gallery_update(state: ServerState, shown: list[list[Any]] | None) -> tuple[Any, list[list[Any]]]:
    """The gallery's rows now, and the table's update: the rows where they differ from ``shown``
    (what the page last got), else no change. The page's timer asks every few seconds, and
    re-rendering an unchanged table would replace its cells under a click that picks a job."""
    import gradio as gr

    rows = gallery_rows(state)
    return (gr.update() if rows == shown else rows), rows


def model_controls(state: ServerState, name: str) -> dict[str, Any]:
    """What the form shows for a model: its tasks, samplers, and whether token options apply."""
    model = state.models.get(name) or state.models[state.default_model]
    r = model.rules
    tasks = [t for t, ok in (("text-to-video", not r.requires_image), ("image-to-video", r.supports_image), ("video-to-video", r.supports_video),
                             ("continue a video", r.supports_extend)) if ok]  # fmt: skip
    d = r.defaults
    return {
        "tasks": tasks,
        "samplers": list(r.samplers),
        "diffusion": "num_inference_steps" in r.sampling_options,
        "tokens": "top_k" in r.sampling_options,
        "shift": "shift" in r.sampling_options,
        "defaults": {k: getattr(d, k, None) for k in ("height", "width", "num_frames", "num_inference_steps", "guidance_scale")},
        "fps": getattr(d, "fps", None),
    }


class Extender:
    """The prompt extension model, loaded on the first press of its button, one call at a time."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self._model = None
        self._lock = threading.Lock()

    def extend(self, prompt: str, seed: int) -> str:
        if self.path is None:
            raise KinemaError("this server has no prompt extension model (start it with --prompt-extend MODEL_DIR)")
        with self._lock:
            if self._model is None:
                from ..text.prompt_extend import PromptExtender

                self._model = PromptExtender(self.path)
            return self._model.extend(prompt, seed)


def build_ui(state: ServerState):
    """The page (a gradio Blocks) over ``state``'s queue."""
    import gradio as gr

    first = model_controls(state, state.default_model)
    d0 = first["defaults"]
    extender = Extender(state.prompt_extend)
    with gr.Blocks(title="kinema", analytics_enabled=False) as page:
        gr.Markdown("# kinema\nText, image and video to video. Jobs run one at a time per device, in order; the queue survives restarts.")
        job_id = gr.State(None)
        enhanced = gr.State(None)  # the Enhance button's last rewrite: original, extended, seed
        with gr.Row():
            with gr.Column(scale=3):
                with gr.Row():
                    model = gr.Dropdown(list(state.models), value=state.default_model, label="model", elem_id="model")
                    task = gr.Radio(first["tasks"], value=first["tasks"][0], label="task", elem_id="task")
                image = gr.Image(type="filepath", label="first frame (image-to-video)", visible=first["tasks"][0] == "image-to-video", elem_id="image")
                video = gr.Video(label="input video", visible=False, elem_id="input-video")
                prompt = gr.Textbox(label="prompt", lines=3, placeholder="a red circle moving left", elem_id="prompt")
                with gr.Row():
                    schedule = gr.Checkbox(label="one prompt a line: the video changes prompt as it goes", value=False, elem_id="schedule")
                    prompt_frames = gr.Textbox(label="frames per prompt (e.g. 33, 32; empty: the frames field shared out)", visible=False, elem_id="prompt-frames")
                with gr.Row():
                    enhance = gr.Button("Enhance prompt", visible=state.prompt_extend is not None, elem_id="enhance")
                negative = gr.Textbox(label="negative prompt", lines=1, elem_id="negative")
                with gr.Accordion("settings", open=True):
                    with gr.Row():
                        width = gr.Number(label="width", value=d0["width"], precision=0, elem_id="width")
                        height = gr.Number(label="height", value=d0["height"], precision=0, elem_id="height")
                        frames = gr.Number(label="frames", value=d0["num_frames"], precision=0, elem_id="frames")
                    with gr.Row():
                        steps = gr.Number(label="steps", value=d0["num_inference_steps"], precision=0, visible=first["diffusion"], elem_id="steps")
                        guidance = gr.Number(label="guidance scale", value=d0["guidance_scale"], elem_id="guidance")
                        shift = gr.Textbox(label="shift", placeholder="model's own", visible=first["shift"], elem_id="shift")
                        sampler = gr.Dropdown([""] + first["samplers"], value="", label="sampler", visible=bool(first["samplers"]), elem_id="sampler")
                    with gr.Row():
                        seed = gr.Number(label="seed", value=0, precision=0, elem_id="seed")
                        random_seed = gr.Checkbox(label="random seed", value=False, elem_id="random-seed")
                        strength = gr.Textbox(label="strength (video-to-video)", placeholder="0.8", visible=False, elem_id="strength")
                        overlap = gr.Textbox(label="past frames the model sees", placeholder="model's own", visible=False, elem_id="overlap")
                        cache = gr.Textbox(label="step cache threshold", placeholder="off", visible=first["diffusion"], elem_id="cache")
                    with gr.Row(visible=first["tokens"]) as token_row:
                        temperature = gr.Textbox(label="temperature", placeholder="model's own", elem_id="temperature")
                        top_k = gr.Textbox(label="top-k", placeholder="model's own", elem_id="top-k")
                        top_p = gr.Textbox(label="top-p", placeholder="model's own", elem_id="top-p")
                        typical_p = gr.Textbox(label="typical-p", placeholder="model's own", elem_id="typical-p")
                    max_memory = gr.Textbox(label="memory budget (e.g. 8GiB; empty: what is free)", value="", elem_id="max-memory")
                defaults = gr.Markdown(_defaults_line(first), elem_id="defaults")
                with gr.Row():
                    generate = gr.Button("Generate", variant="primary", elem_id="generate")
                    cancel = gr.Button("Cancel", variant="stop", elem_id="cancel")
            with gr.Column(scale=2):
                status = gr.Markdown("", elem_id="status")
                result = gr.Video(label="video", interactive=False, elem_id="result")
        gr.Markdown("## Gallery")
        with gr.Row():
            refresh = gr.Button("Refresh", size="sm", elem_id="refresh")
        first_rows = gallery_rows(state)
        table = gr.Dataframe(headers=GALLERY_COLUMNS, value=first_rows, interactive=False, wrap=True, elem_id="gallery")
        shown = gr.State(first_rows)  # the rows this page's table shows (gallery_update)

        def refresh_gallery(rows):
            return gallery_update(state, rows)
        with gr.Row():
            with gr.Column(scale=2):
                picked_video = gr.Video(label="picked", interactive=False, elem_id="picked-video")
            with gr.Column(scale=3):
                picked_settings = gr.JSON(label="its settings", elem_id="picked-settings")
                picked_id = gr.State(None)
                with gr.Row():
                    rerun = gr.Button("Run again", elem_id="rerun")
                    reuse = gr.Button("Use these settings", elem_id="reuse")
        timer = gr.Timer(3.0)

        inputs = [model, task, image, video, prompt, negative, width, height, frames, steps, guidance, shift, sampler, seed,
                  random_seed, strength, cache, temperature, top_k, top_p, typical_p, max_memory, overlap, schedule, prompt_frames]  # fmt: skip

        def values_of(args: tuple) -> dict[str, Any]:
            return dict(zip(FORM, args))

        def on_model(name: str):
            c = model_controls(state, name)
            d = c["defaults"]
            return (
                gr.update(choices=c["tasks"], value=c["tasks"][0]),
                gr.update(visible=c["diffusion"], value=d["num_inference_steps"]), gr.update(visible=c["shift"], value=""),
                gr.update(choices=[""] + c["samplers"], value="", visible=bool(c["samplers"])),
                gr.update(visible=c["diffusion"], value=""), gr.update(visible=c["tokens"]), _defaults_line(c),
                d["width"], d["height"], d["num_frames"], d["guidance_scale"],
            )  # fmt: skip

        model.input(on_model, model, [task, steps, shift, sampler, cache, token_row, defaults, width, height, frames, guidance])

        def on_task(name: str):
            extending = name == "continue a video"
            return (gr.update(visible=name == "image-to-video"), gr.update(visible=name in ("video-to-video", "continue a video")),
                    gr.update(visible=name == "video-to-video"), gr.update(visible=extending), gr.update(interactive=not extending),
                    gr.update(interactive=not extending), gr.update(label="new frames" if extending else "frames"))  # fmt: skip

        task.change(on_task, task, [image, video, strength, overlap, width, height, frames])
        schedule.change(lambda on: gr.update(visible=bool(on)), schedule, prompt_frames)

        def on_submit(*args):
            *form, enhanced_by = args
            values = values_of(form)
            try:
                if enhanced_by and values.get("prompt") == enhanced_by["extended"] and not values.get("random_seed") and values.get("seed") == enhanced_by["seed"]:
                    # the text the Enhance button wrote: the worker extends the original again (the same text,
                    # the same seed), so that the video's metadata keeps both prompts
                    values = {**values, "prompt": enhanced_by["original"], "prompt_extend": True}
                new = submit_form(state, values)
            except ApiError as e:
                return None, f"error: {e.message}"
            except Exception as e:  # noqa: BLE001 - the page never breaks: one line
                return None, f"error: {' '.join(str(e).split()) or type(e).__name__}"
            return new, f"queued: {new}"

        def on_wait(current: str | None, progress=gr.Progress()):
            if current is None:
                return gr.update(), gr.update()
            deadline = time.monotonic() + MAX_WAIT_SECONDS
            job = state.queue.get(current)
            while job is not None and not job.finished and time.monotonic() < deadline:
                ahead = len(state.queue.list(limit=1_000, status="queued", newest_first=False))
                desc = f"{job.stage or 'starting'}" if job.status == "in_progress" else f"queued ({ahead} waiting)"
                progress(job.progress / 100, desc=desc)
                time.sleep(POLL_SECONDS)
                job = state.queue.get(current)
            if job is None:
                return None, f"error: job {current} is gone"
            path = state.queue.folder / job.output if job.status == "completed" and job.output else None
            return (str(path) if path else None), job_line(state, job)

        # Following a job only reads the queue: any number of pages follow theirs at once (gradio's
        # default would make the second page's progress wait for the first page's job to end).
        submitted = generate.click(on_submit, [*inputs, enhanced], [job_id, status], concurrency_limit=None)
        waiting = submitted.then(on_wait, job_id, [result, status], concurrency_limit=None)
        waiting.then(refresh_gallery, shown, [table, shown])

        def on_cancel(current: str | None):
            if current is None:
                return "nothing to cancel"
            job = state.queue.cancel(current)
            return f"cancelled: {current}" if job is not None else f"error: no job {current}"

        cancel.click(on_cancel, job_id, status, cancels=[waiting])

        def on_enhance(text: str, seed_value, random_value: bool):
            keep = gr.update()
            try:
                s = secrets.randbelow(2**63) if random_value else int(seed_value or 0)  # a random seed is drawn now and shown
                extended = extender.extend(text, s)
            except KinemaError as e:
                return keep, f"error: {' '.join(str(e).split())}", keep, keep, keep
            except Exception as e:  # noqa: BLE001 - the page never breaks: one line
                return keep, f"error: {type(e).__name__}: {' '.join(str(e).split())}", keep, keep, keep
            return extended, "prompt extended: Generate keeps the original in the video's metadata", s, False, {"original": text, "extended": extended, "seed": s}

        enhance.click(on_enhance, [prompt, seed, random_seed], [prompt, status, seed, random_seed, enhanced])

        refresh.click(refresh_gallery, shown, [table, shown])
        timer.tick(refresh_gallery, shown, [table, shown])

        def on_pick(evt: gr.SelectData, rows):
            try:
                row = evt.index[0]
                picked = rows.iloc[row, 0] if hasattr(rows, "iloc") else rows[row][0]
            except (IndexError, KeyError, TypeError):
                return None, None, None
            job = state.queue.get(str(picked))
            if job is None:
                return None, None, None
            path = str(state.queue.folder / job.output) if job.status == "completed" and job.output else None
            return path, state.video_object(job), job.id

        table.select(on_pick, table, [picked_video, picked_settings, picked_id])

        def on_reuse(picked: str | None):
            job = state.queue.get(picked) if picked else None
            if job is None:
                return [gr.update()] * (len(REUSED) + 3) + ["pick a job in the gallery first"]
            r = {**job.request, **(job.settings or {})}  # what it ran with, the model's defaults filled in
            name = job.model if job.model in state.models else state.default_model
            values = [name]
            sched = job.request.get("prompt_schedule")
            for k in REUSED[1:]:
                v = r.get(k)
                if k == "prompt" and sched:
                    v = "\n".join(p for p, _ in sched)
                v = v[0] if isinstance(v, list) else v
                if k in TEXT_NUMBERS or k in ("sampler", "max_memory", "negative_prompt"):
                    v = "" if v is None else str(v)
                values.append(v)
            frames_each = ", ".join(str(n) for _, n in sched) if sched and all(n is not None for _, n in sched) else ""
            values += [bool(sched), gr.update(value=frames_each, visible=bool(sched))]
            return values + [False, f"settings of {job.id} loaded: press Generate to run it again"]

        def on_rerun(picked: str | None):
            job = state.queue.get(picked) if picked else None
            if job is None:
                return None, "pick a job in the gallery first"
            if job.model not in state.models:
                return None, f"error: this server does not serve {job.model} any more"
            try:
                again = state.queue.submit(job.model, job.request, max_queued=state.max_queued)
            except KinemaError as e:
                return None, f"error: {' '.join(str(e).split())}"
            return again.id, f"queued: {again.id} (the settings of {job.id})"

        rerun_wait = rerun.click(on_rerun, picked_id, [job_id, status], concurrency_limit=None).then(on_wait, job_id, [result, status], concurrency_limit=None)
        rerun_wait.then(refresh_gallery, shown, [table, shown])
        cancel.click(on_cancel, job_id, status, cancels=[rerun_wait])

        REUSED = ["model", "prompt", "negative_prompt", "width", "height", "num_frames", "num_inference_steps", "guidance_scale",
                  "shift", "sampler", "seed", "strength", "cache_threshold", "temperature", "top_k", "top_p", "typical_p", "max_memory", "overlap"]  # fmt: skip
        reuse.click(on_reuse, picked_id, [model, prompt, negative, width, height, frames, steps, guidance, shift, sampler, seed, strength, cache,
                                          temperature, top_k, top_p, typical_p, max_memory, overlap, schedule, prompt_frames, random_seed, status])  # fmt: skip
    return page


def _defaults_line(c: dict[str, Any]) -> str:
    d = c["defaults"]
    parts = [f"{d['width']}x{d['height']}" if d.get("width") else None, f"{d['num_frames']} frames" if d.get("num_frames") else None,
             f"{d['num_inference_steps']} steps" if d.get("num_inference_steps") else None,
             f"guidance {d['guidance_scale']:g}" if d.get("guidance_scale") is not None else None, f"{c['fps']:g} fps" if c.get("fps") else None]  # fmt: skip
    return "model defaults: " + ", ".join(p for p in parts if p)


def mount_ui(app, state: ServerState):
    """``app`` with the page at ``/`` (behind a login with the API key as password, when one is set)."""
    import gradio as gr

    page = build_ui(state)
    auth = None
    if state.api_key is not None:
        key = state.api_key
        auth = lambda user, password: secrets.compare_digest(str(password).encode(), key.encode())  # noqa: E731
    theme = gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["monospace"])  # no web fonts: works offline
    return gr.mount_gradio_app(
        app, page, path="/", auth=auth, auth_message="Any user name; the password is the server's API key.",
        allowed_paths=[str(state.queue.folder / "outputs")], max_file_size=state.max_upload_bytes, theme=theme,
        footer_links=[], ssr_mode=False,
    )  # fmt: skip
