"""The HTTP API of ``kinema serve``, shaped after OpenAI's video API so that existing clients fit.

========================  ========================================================================
``POST /v1/videos``       queue a video: JSON (the request's fields) or multipart/form-data (the
                          same fields as form fields, a picture or video as a file: ``image``,
                          ``video`` or OpenAI's ``input_reference``). Answers the job, ``queued``.
``GET /v1/videos``        the jobs, newest first (``limit``, ``after``, ``status``)
``GET /v1/videos/{id}``   a job: status, progress, its settings, the error line
``GET .../{id}/content``  the mp4 of a completed job
``DELETE /v1/videos/{id}`` cancel a queued or running job
``GET /v1/models``        the models this server serves
========================  ========================================================================

Fields are :class:`~kinema.request.GenerationRequest`'s (diffusers' names) plus OpenAI's ``size``
("WIDTHxHEIGHT") and ``seconds``, ``seed: "random"``, and ``prompt_extend: true`` where the server
has a prompt extension model. A server path is never taken from a client: ``model`` is one of the
served models' names, pictures and videos come as uploads, and ``output`` and ``device`` are the
server's. Every refusal is a 4xx with one line in OpenAI's error shape.
"""

from __future__ import annotations

import json
import math
import re
import secrets
from dataclasses import dataclass, field, fields as dataclass_fields
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import KinemaError, RequestError
from .queue import FINISHED, Job, JobQueue, QueueFull

MAX_JSON_BYTES = 1 << 20  # a JSON request body (a prompt is at most 100,000 characters)
MAX_FIELDS = 64  # fields of a form
MAX_LIST = 1_000  # videos listed at once
SERVER_FIELDS = ("output", "device")  # the server decides these
UPLOAD_FIELDS = ("image", "video", "extend", "input_reference")  # extend: a video to continue
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"}
VIDEO_SUFFIXES = {".mp4", ".mkv", ".mov", ".webm", ".avi"}


class ApiError(Exception):
    """A refusal: HTTP ``status`` and one line."""

    def __init__(self, status: int, message: str, *, param: str | None = None, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, " ".join(message.split()), param, kind

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": None}}


@dataclass
class ServedModel:
    """A model the server offers: its name (what clients say) and where it lives."""

    name: str
    path: str  # a directory, or a shipped model's name
    rules: Any = None  # its ModelRules, read once

    def describe(self) -> dict[str, Any]:
        r = self.rules
        out = {"id": self.name, "object": "model", "owned_by": "kinema", "family": r.family}
        d = r.defaults
        out["defaults"] = {k: getattr(d, k) for k in ("height", "width", "num_frames", "num_inference_steps", "guidance_scale", "fps") if getattr(d, k, None) is not None}
        out["tasks"] = [t for t, ok in (("text-to-video", not r.requires_image), ("image-to-video", r.supports_image), ("video-to-video", r.supports_video)) if ok]
        out["sampling_options"] = list(r.sampling_options)
        out["samplers"] = list(r.samplers)
        return out


@dataclass
class ServerState:
    """What the API and the page share: the queue, the models, the limits."""

    queue: JobQueue
    models: dict[str, ServedModel]
    api_key: str | None = None
    max_upload_bytes: int = 64 << 20
    max_queued: int = 1_000
    prompt_extend: str | None = None  # a local causal LM directory, or None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def default_model(self) -> str:
        return next(iter(self.models))

    # -- requests ------------------------------------------------------------------------------------
    def build_request(self, raw: dict[str, Any], uploads: dict[str, Path] | None = None) -> tuple[ServedModel, dict[str, Any]]:
        """A client's fields (and stored uploads) as a checked request's JSON; ApiError(400) if bad."""
        from ..generation import continuing
        from ..request import GenerationRequest
        from ..video import read_image, read_video

        uploads = uploads or {}
        raw = dict(raw)
        for name in SERVER_FIELDS:
            if name in raw:
                raise ApiError(400, f"{name} is chosen by the server; leave it out", param=name)
        for name in ("image", "video", "extend"):
            if name in raw and raw[name] is not None:
                raise ApiError(400, f"{name} must be uploaded as a file (multipart/form-data, field {name} or input_reference), never a path on the server", param=name)
        raw.pop("input_reference", None)
        name = raw.pop("model", None) or self.default_model
        if not isinstance(name, str) or name not in self.models:
            raise ApiError(400, f"model must be one of {', '.join(self.models)}; got {json.dumps(name)[:80]}", param="model")
        model = self.models[name]
        if "size" in raw:
            size = raw.pop("size")
            m = re.fullmatch(r"\s*(\d{1,5})\s*[xX]\s*(\d{1,5})\s*", size) if isinstance(size, str) else None
            if m is None:
                raise ApiError(400, f"size must look like WIDTHxHEIGHT, e.g. 832x480; got {json.dumps(size)[:80]}", param="size")
            if "width" in raw or "height" in raw:
                raise ApiError(400, "give size or width and height, not both", param="size")
            raw["width"], raw["height"] = int(m.group(1)), int(m.group(2))
        if "seconds" in raw:
            raw["num_frames"] = self._frames_for(model, raw.pop("seconds"), raw, extending="extend" in uploads)
        if raw.get("seed") == "random":
            raw["seed"] = secrets.randbelow(2**63)
        extend = raw.pop("prompt_extend", None)
        if extend not in (None, True, False):
            raise ApiError(400, f"prompt_extend must be true or false; got {json.dumps(extend)[:80]}", param="prompt_extend")
        if extend:
            if self.prompt_extend is None:
                raise ApiError(400, "this server has no prompt extension model (start it with --prompt-extend MODEL_DIR)", param="prompt_extend")
            raw["prompt_extend"] = self.prompt_extend
        for key, path in uploads.items():
            raw[key] = str(path)
        raw["model"] = model.path
        try:
            request = GenerationRequest.from_json(raw)
            if request.batch != 1:
                raise ApiError(400, f"a job makes one video; this request makes {request.batch} (a list of prompts or num_videos_per_prompt): "
                               "submit one job per video", param="prompt" if isinstance(request.prompt, list) else "num_videos_per_prompt")  # fmt: skip
            request.checked(model.rules, check_memory=False)
            if request.image is not None:
                read_image(request.image)
            if request.video is not None:
                read_video(request.video)
            if request.extend is not None:  # its size and length against the model's, as the worker will
                continuing(request, model.rules, read_video(request.extend)[0]).checked(model.rules, check_memory=False)
        except RequestError as e:
            raise ApiError(400, str(e), param=e.fields[0] if e.fields else None) from None
        except KinemaError as e:
            message = str(e)
            for path in uploads.values():  # the server's own folders are not the client's business
                message = message.replace(str(path), f"the uploaded {path.stem}")
            raise ApiError(400, message) from None
        return model, json.loads(request.to_json())

    def _frames_for(self, model: ServedModel, seconds: Any, raw: dict[str, Any], extending: bool = False) -> int:
        """OpenAI's ``seconds`` as this model's nearest valid frame count at its frame rate (extending
        a video: the new frames, whole groups of the model's time stride)."""
        try:
            s = float(seconds)
        except (TypeError, ValueError):
            s = math.nan
        if not math.isfinite(s) or s <= 0 or s > 600:
            raise ApiError(400, f"seconds must be a number in (0, 600]; got {json.dumps(seconds)[:80]}", param="seconds")
        if "num_frames" in raw:
            raise ApiError(400, "give seconds or num_frames, not both", param="seconds")
        r = model.rules
        fps = float(raw.get("frame_rate") or r.defaults.fps)
        t, o = r.temporal_multiple, (0 if extending else r.frames_offset)
        k = max(0 if o else 1, round((s * fps - o) / t))
        return k * t + o

    # -- answers -------------------------------------------------------------------------------------
    def video_object(self, job: Job) -> dict[str, Any]:
        """A job in OpenAI's video object shape, with kinema's settings."""
        model = self.models.get(job.model)
        settings = job.settings or {}
        request = {k: v for k, v in job.request.items() if v is not None and k not in ("model", "output", "device", "image", "video", "extend")}
        for key in ("image", "video", "extend"):
            if job.request.get(key):
                request[key] = Path(job.request[key]).name
        if job.request.get("prompt_extend"):
            request["prompt_extend"] = True  # the server's language model: its folder is the server's own
        width, height = settings.get("width", job.request.get("width")), settings.get("height", job.request.get("height"))
        frames = settings.get("num_frames", job.request.get("num_frames"))
        fps = settings.get("frame_rate") or (model.rules.defaults.fps if model else None)
        out = {
            "id": job.id,
            "object": "video",
            "model": job.model,
            "status": job.status,
            "progress": int(job.progress),
            "stage": job.stage,
            "created_at": int(job.created_at),
            "completed_at": int(job.completed_at) if job.completed_at else None,
            "size": f"{width}x{height}" if width and height else None,
            "seconds": f"{frames / fps:g}" if frames and fps else None,
            "prompt": job.request.get("prompt"),
            "seed": job.request.get("seed", 0),
            "tries": job.tries,
            "request": request,
            "settings": {k: v for k, v in settings.items() if k not in ("model", "output", "device", "image", "video", "extend")} or None,
            "error": {"code": "generation_failed" if job.status == "failed" else None, "message": job.error} if job.error else None,
        }
        if job.status == "completed":
            out["url"] = f"/v1/videos/{job.id}/content"
        if job.cancel_requested and not job.finished:
            out["cancel_requested"] = True
        return out


def coerce_form(values: dict[str, str]) -> dict[str, Any]:
    """Form fields (text) as the request's types: whole numbers, numbers, true/false, text."""
    from ..request import GenerationRequest

    kinds = {f.name: str(f.type) for f in dataclass_fields(GenerationRequest)}
    out: dict[str, Any] = {}
    for name, text in values.items():
        kind = kinds.get(name, "")
        if text == "" and name != "negative_prompt":
            continue  # an empty form field: the default
        if name == "seed" and text == "random":
            out[name] = text
        elif name == "prompt_extend":
            out[name] = text.strip().lower() in ("1", "true", "yes", "on")
        elif kind.startswith("int") or name == "seed":
            try:
                out[name] = int(text)
            except ValueError:
                raise ApiError(400, f"{name} must be a whole number; got {json.dumps(text)[:80]}", param=name) from None
        elif kind.startswith("float"):
            try:
                out[name] = float(text)
            except ValueError:
                raise ApiError(400, f"{name} must be a number; got {json.dumps(text)[:80]}", param=name) from None
        else:
            out[name] = text
    return out


def build_api(state: ServerState):
    """The FastAPI app with the ``/v1`` routes, its auth and its limits."""
    app = FastAPI(title="kinema", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException):
        message = {404: f"no such route: {request.method} {request.url.path}", 405: f"{request.method} is not allowed on {request.url.path}"}.get(e.status_code, str(e.detail))
        return JSONResponse(ApiError(e.status_code, message).body(), status_code=e.status_code)

    @app.middleware("http")
    async def _guard(request: Request, call_next):
        if request.url.path.startswith("/v1"):
            if state.api_key is not None:
                given = request.headers.get("authorization", "")
                token = given[7:].strip() if given[:7].lower() == "bearer " else ""
                if not secrets.compare_digest(token.encode(), state.api_key.encode()):
                    e = ApiError(401, "missing or wrong API key: send the header Authorization: Bearer <key>", kind="authentication_error")
                    return JSONResponse(e.body(), status_code=401)
            length = request.headers.get("content-length")
            limit = state.max_upload_bytes + MAX_JSON_BYTES
            if length is None and request.method in ("POST", "PUT", "PATCH") and request.headers.get("transfer-encoding"):
                e = ApiError(411, "send the body with a Content-Length (this server takes no chunked uploads)")
                return JSONResponse(e.body(), status_code=411)
            if length is not None and (not length.isdigit() or int(length) > limit):
                e = ApiError(413, f"the request is larger than this server takes ({limit >> 20} MiB)")
                return JSONResponse(e.body(), status_code=413)
        return await call_next(request)

    def _job(job_id: str) -> Job:
        job = state.queue.get(job_id)
        if job is None:
            raise ApiError(404, f"no video {job_id!r}", param="id")
        return job

    @app.post("/v1/videos")
    async def create_video(request: Request):
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        job_id = JobQueue.new_id()
        uploads: dict[str, Path] = {}
        if ctype == "application/json":
            body = bytearray()
            async for chunk in request.stream():
                body += chunk
                if len(body) > MAX_JSON_BYTES:
                    raise ApiError(413, f"a JSON request must be at most {MAX_JSON_BYTES >> 20} MiB; upload pictures and videos as files")
            try:
                raw = json.loads(body)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ApiError(400, f"the body is not valid JSON: {e}") from None
            if not isinstance(raw, dict):
                raise ApiError(400, "the body must be a JSON object of the request's fields, e.g. {\"prompt\": \"a red circle moving left\"}")
        elif ctype == "multipart/form-data":
            raw, uploads = await _read_form(request, state, job_id)
        else:
            raise ApiError(415, f"send application/json or multipart/form-data; got {ctype or 'no content type'}")
        try:
            model, fields = state.build_request(raw, uploads)
            job = state.queue.submit(model.name, fields, job_id=job_id, max_queued=state.max_queued)
        except QueueFull as e:
            _drop_uploads(state, job_id)
            raise ApiError(429, str(e), kind="rate_limit_error") from None
        except ApiError:
            _drop_uploads(state, job_id)
            raise
        return JSONResponse(state.video_object(job), status_code=200)

    @app.get("/v1/videos")
    async def list_videos(limit: str = "20", after: str | None = None, status: str | None = None, order: str = "desc"):
        if not limit.isdigit() or not 1 <= int(limit) <= MAX_LIST:
            raise ApiError(400, f"limit must be a whole number from 1 to {MAX_LIST}; got {limit!r}", param="limit")
        if status is not None and status not in ("queued", "in_progress", *FINISHED):
            raise ApiError(400, f"status must be one of queued, in_progress, {', '.join(FINISHED)}; got {status!r}", param="status")
        if order not in ("asc", "desc"):
            raise ApiError(400, f"order must be asc or desc; got {order!r}", param="order")
        try:
            jobs = state.queue.list(limit=int(limit) + 1, after=after, status=status, newest_first=order == "desc")
        except KinemaError as e:
            raise ApiError(400, str(e), param="after") from None
        data = [state.video_object(j) for j in jobs[: int(limit)]]
        return {"object": "list", "data": data, "has_more": len(jobs) > int(limit),
                "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None}  # fmt: skip

    @app.get("/v1/videos/{job_id}")
    async def get_video(job_id: str):
        return state.video_object(_job(job_id))

    @app.get("/v1/videos/{job_id}/content")
    async def video_content(job_id: str, variant: str = "video"):
        job = _job(job_id)
        if variant != "video":
            raise ApiError(400, f"variant must be video (kinema makes no thumbnails or sprite sheets); got {variant!r}", param="variant")
        if job.status != "completed":
            raise ApiError(409, f"video {job_id} is {job.status}; its content is there once it is completed")
        path = state.queue.folder / job.output
        if not path.is_file():
            raise ApiError(410, f"the file of video {job_id} is gone from the server's queue folder")
        return FileResponse(path, media_type="video/mp4", filename=f"{job_id}.mp4")

    @app.delete("/v1/videos/{job_id}")
    async def cancel_video(job_id: str):
        job = _job(job_id)
        if job.finished:
            raise ApiError(409, f"video {job_id} is {job.status} already; only a queued or running video can be cancelled")
        return state.video_object(state.queue.cancel(job_id))

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [m.describe() for m in state.models.values()]}

    @app.get("/v1/models/{name}")
    async def get_model(name: str):
        if name not in state.models:
            raise ApiError(404, f"no model {name!r}; this server serves {', '.join(state.models)}", param="model")
        return state.models[name].describe()

    return app


async def _read_form(request, state: ServerState, job_id: str) -> tuple[dict[str, Any], dict[str, Path]]:
    """A multipart form: its text fields (typed) and its files, stored in the job's upload folder."""
    from starlette.datastructures import UploadFile

    try:
        form = await request.form(max_files=2, max_fields=MAX_FIELDS, max_part_size=MAX_JSON_BYTES)
    except Exception as e:  # noqa: BLE001 - starlette's multipart errors: one line
        raise ApiError(400, f"the form could not be read: {e}") from None
    texts: dict[str, str] = {}
    uploads: dict[str, Path] = {}
    try:
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                if name not in UPLOAD_FIELDS:
                    raise ApiError(400, f"a file can come as image, video, extend (a video to continue) or input_reference; got a file in {name!r}", param=name)
                suffix = Path(value.filename or "").suffix.lower()
                if name == "input_reference":
                    kind = "image" if (value.content_type or "").startswith("image/") or suffix in IMAGE_SUFFIXES else "video"
                else:
                    kind = name
                if kind in uploads:
                    raise ApiError(400, f"give one {kind} file", param=name)
                allowed = IMAGE_SUFFIXES if kind == "image" else VIDEO_SUFFIXES  # video and extend: videos
                folder = state.queue.upload_dir(job_id)
                folder.mkdir(parents=True, exist_ok=True)
                path = folder / f"{kind}{suffix if suffix in allowed else ('.png' if kind == 'image' else '.mp4')}"
                size = 0
                with open(path, "wb") as fh:
                    while chunk := await value.read(1 << 20):
                        size += len(chunk)
                        if size > state.max_upload_bytes:
                            raise ApiError(413, f"{name} is larger than this server takes ({state.max_upload_bytes >> 20} MiB)", param=name)
                        fh.write(chunk)
                if size == 0:
                    raise ApiError(400, f"{name} is an empty file", param=name)
                uploads[kind] = path
            else:
                if name in texts:
                    raise ApiError(400, f"{name} is given twice", param=name)
                texts[name] = value
        return coerce_form(texts), uploads
    except ApiError:
        _drop_uploads(state, job_id)
        raise
    finally:
        await form.close()


def _drop_uploads(state: ServerState, job_id: str) -> None:
    import shutil

    shutil.rmtree(state.queue.upload_dir(job_id), ignore_errors=True)
