"""The one request value: what a user asks for, checked against the model before any work.

Every front end builds a :class:`GenerationRequest`: the command line from its flags, the Python
API from a pipeline call's keywords, a web UI or HTTP server from a form or a JSON body, a replay
from a saved request. :meth:`GenerationRequest.checked` is the one validation they share: types,
ranges and finiteness of every value, then the model's own rules (:class:`ModelRules`: frame and
size multiples, which sampling options apply, image / video inputs, quantisation) and an estimate
of the memory the request needs against what the machine has free. Every problem is one line of
:class:`~kinema.errors.KinemaError`, raised before a single weight is read.

A request round-trips through JSON (:meth:`~GenerationRequest.to_json`,
:meth:`~GenerationRequest.from_json`); inputs that are not JSON (a torch generator, precomputed
text states, image arrays, a progress callback) are a pipeline call's own keywords.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from .errors import KinemaError, RequestError
from .schema import (
    braces,
    dataclass_to_dict,
    is_finite_number,
    is_int,
    quoted,
    read_dataclass,
)

MAX_STEPS = 10_000  # sampling steps; Wan and LTX-Video train on 1,000 levels, so more cannot change the result
MAX_AREA = 7680 * 4320  # pixels of a frame a size rule may aim at (8K)
MAX_FRAMES = 10_000  # frames in one call: about 7 minutes at 24 fps (Wan makes 81, LTX-Video up to 257); more is hours of work
MAX_GUIDANCE = 1_000.0  # classifier-free guidance scale (Wan uses 5, LTX-Video 3)
MAX_SHIFT = 1_000.0  # flow-matching shift (Wan: 3 to 5)
MAX_FRAME_RATE = 1_000.0
MAX_SEGMENTS = 1_000  # prompts in one prompt schedule
MAX_SEED = 2**64 - 1  # torch generators take 64-bit seeds
MAX_VIDEOS = 1_024  # prompts times videos per prompt in one call
MAX_PROMPT_CHARS = 100_000  # a prompt longer than this is a mistake (encoders keep the first 128-512 tokens)
SAMPLING_OPTIONS = ("num_inference_steps", "shift", "sampler", "cache_threshold", "temperature", "top_k", "top_p", "typical_p")


@dataclass(frozen=True)
class GenerationRequest:
    """A request for a video, JSON-able. None means "the model's default".

    Names are diffusers' (and transformers' for token sampling); ``image`` and ``video`` are file
    paths here (a pipeline call also takes arrays), ``output`` the mp4 to write.
    """

    prompt: str | list[str] | None = None  # None only where precomputed text states come instead (a pipeline call)
    model: str | None = None  # a model directory or a shipped model's name (None: the default, shapes)
    negative_prompt: str | list[str] | None = None
    height: int | None = None
    width: int | None = None
    num_frames: int | None = None
    num_inference_steps: int | None = None  # diffusion models
    guidance_scale: float | None = None
    shift: float | None = None  # diffusion models
    sampler: str | None = None  # diffusion models: "unipc" or "euler"
    cache_threshold: float | None = None  # diffusion models: step caching (first-block cache); None or 0: off
    seed: int = 0
    num_videos_per_prompt: int = 1
    temperature: float | None = None  # token models
    top_k: int | None = None
    top_p: float | None = None
    typical_p: float | None = None
    image: str | None = None  # image-to-video: a picture's path
    max_area: int | None = None  # image-to-video without a size: the pixels Wan's rule aims at (None: the model's)
    video: str | None = None  # video-to-video: a video's path
    strength: float | None = None  # video-to-video: the noise level the input is taken to, in (0, 1]
    frame_rate: float | None = None  # frames per second the video is made for and written at
    output: str | None = None  # where the mp4 goes (front ends that write one)
    device: str | None = None
    dtype: str | None = None
    quantize: str | None = None
    max_memory: str | int | None = None  # a memory budget ("12GiB", "8GB" or bytes): the planner fits the run in it
    offload: str | None = None  # "none", "model", "block" or "auto" (the default): how weights move to fit
    prompt_extend: str | None = None  # a local instruction-tuned causal LM's folder: the prompt is rewritten in detail first (Wan's prompt extension)
    extend: str | None = None  # a video to continue (its path): the output is its frames, then num_frames new ones
    overlap: int | None = None  # extending, or a long video's later windows: the frames before each window the model sees as the past (None: what its window takes)
    prompt_schedule: list[tuple[str, int | None]] | None = None  # a video whose prompt changes as it goes: (prompt, frames) in order; frames None: an even share of num_frames; prompt is then the first's
    window: int | None = None  # frames per window of a long video (num_frames beyond it, or a prompt schedule); None: the model's clip

    # -- JSON --------------------------------------------------------------------------------------
    def to_json(self) -> str:
        """The request as a JSON object (every field; lists for batches)."""
        return json.dumps(dataclass_to_dict(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, source: str | bytes | Mapping[str, Any]) -> "GenerationRequest":
        """A request from JSON text or a mapping; unknown fields and values of the wrong type are
        one-line KinemaErrors."""
        if isinstance(source, (str, bytes)):
            try:
                source = json.loads(source)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise KinemaError(f"request is not valid JSON: {e}") from None
        request = read_dataclass(cls, source, what="request", error=KinemaError)
        return request.checked_alone()

    # -- checks ------------------------------------------------------------------------------------
    def checked_alone(self, *, has_embeds: bool = False) -> "GenerationRequest":
        """The checks that need no model: types, finiteness, ranges, prompts (a prompt is needed
        unless the caller has precomputed text states, ``has_embeds``). Returns self."""
        if self.prompt_schedule is not None:
            self._check_schedule()
        elif self.prompt is not None or not has_embeds:
            if self.prompt is None:
                raise RequestError('no {0}: describe the video, e.g. "a red circle moving left"', "prompt")
            check_prompts(self.prompt, "prompt")
        if self.negative_prompt is not None:
            check_prompts(self.negative_prompt, "negative_prompt", allow_empty=True)
        for name in ("height", "width", "num_frames", "num_inference_steps", "top_k", "max_area", "overlap", "window"):
            value = getattr(self, name)
            if value is not None and not is_int(value):
                raise RequestError(f"{{0}} must be a whole number; got {quoted(value)}", name)
        for name in ("height", "width", "num_frames", "num_inference_steps", "max_area", "overlap", "window"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise RequestError(f"{{0}} must be a positive integer; got {value}", name)
        if self.max_area is not None and self.max_area > MAX_AREA:
            raise RequestError(f"{{0}} must be at most {MAX_AREA:,} pixels (8K); got {self.max_area:,}", "max_area")
        if self.max_area is not None and (self.height is not None or self.width is not None):
            raise RequestError("give {0} (the size from the picture) or {1} and {2}, not both", "max_area", "height", "width")
        if self.num_frames is not None and self.num_frames > MAX_FRAMES:
            raise RequestError(f"{{0}} must be at most {MAX_FRAMES:,} (about 7 minutes at 24 fps); got {self.num_frames:,}", "num_frames")
        if self.num_inference_steps is not None and self.num_inference_steps > MAX_STEPS:
            raise RequestError(f"{{0}} must be at most {MAX_STEPS:,}; got {self.num_inference_steps:,}", "num_inference_steps")
        check_number("guidance_scale", self.guidance_scale, 0, MAX_GUIDANCE, "1 means no guidance")
        check_number("shift", self.shift, 0, MAX_SHIFT, "Wan 2.1 uses 3 at 480p, 5 at 720p", low_open=True)
        check_number("strength", self.strength, 0, 1, "1 ignores the input video", low_open=True)
        check_number("cache_threshold", self.cache_threshold, 0, 1, "0 is off")
        check_number("frame_rate", self.frame_rate, 0, MAX_FRAME_RATE, "", low_open=True)
        check_seed(self.seed)
        if not is_int(self.num_videos_per_prompt) or not 1 <= self.num_videos_per_prompt <= MAX_VIDEOS:
            raise RequestError(f"{{0}} must be a whole number from 1 to {MAX_VIDEOS}; got {quoted(self.num_videos_per_prompt)}", "num_videos_per_prompt")
        for name in ("model", "sampler", "image", "video", "output", "device", "dtype", "quantize", "prompt_extend", "extend"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value or "\0" in value):
                raise RequestError(f"{{0}} must be a non-empty string; got {quoted(value)}", name)
            if isinstance(value, str) and not _is_utf8(value):
                raise RequestError(f"{{0}} is not valid UTF-8 text: {braces(repr(value.encode('utf-8', 'backslashreplace').decode()[:80]))}", name)
        if self.max_memory is not None:
            from .pipelines.memory import parse_bytes

            try:
                parse_bytes(self.max_memory)
            except KinemaError as e:
                raise RequestError(braces(str(e)).replace("max_memory", "{0}", 1), "max_memory") from None
        if self.offload is not None:
            from .pipelines.memory import OFFLOAD_STRATEGIES

            if self.offload not in OFFLOAD_STRATEGIES:
                raise RequestError(f"{{0}} must be one of {', '.join(OFFLOAD_STRATEGIES)}; got {quoted(self.offload)}", "offload")
        if self.image is not None and self.video is not None:
            raise RequestError("give {0} (image-to-video) or {1} (video-to-video), not both", "image", "video")
        if self.extend is not None and (self.image is not None or self.video is not None):
            other = "image" if self.image is not None else "video"
            raise RequestError("give {0} (continue a video) or {1}, not both", "extend", other)
        if self.window is not None and self.window > MAX_FRAMES:
            raise RequestError(f"{{0}} must be at most {MAX_FRAMES:,} frames; got {self.window:,}", "window")
        if self.strength is not None and self.video is None:
            raise RequestError("{0} applies to video-to-video: give {1} too", "strength", "video")
        token_options = {"temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p, "typical_p": self.typical_p}
        if any(v is not None for v in token_options.values()):
            from .sampling.tokens import TokenSampling

            TokenSampling(**{k: v for k, v in token_options.items() if v is not None})  # raises a one-line KinemaError
        return self

    def _check_schedule(self) -> None:
        """A prompt schedule: a non-empty list of (prompt, frames) for one video (one-line errors)."""
        sched = self.prompt_schedule
        shape = 'a list of [prompt, frames] pairs, e.g. [["a red circle moving left", 33], ["a red circle moving right", 32]]'
        if not isinstance(sched, (list, tuple)) or not sched:
            raise RequestError(f"{{0}} must be {shape}; got {quoted(sched)}", "prompt_schedule")
        if len(sched) > MAX_SEGMENTS:
            raise RequestError(f"{{0}} has {len(sched):,} prompts; at most {MAX_SEGMENTS:,}", "prompt_schedule")
        for i, entry in enumerate(sched):
            if not isinstance(entry, (list, tuple)) or len(entry) != 2:
                raise RequestError(f"{{0}} must be {shape}; item {i} is {quoted(entry)}", "prompt_schedule")
            text, frames = entry
            check_prompts(text, f"prompt_schedule[{i}]")
            if not isinstance(text, str):
                raise RequestError(f"{{0}} item {i} must name one prompt; got {quoted(text)}", "prompt_schedule")
            if frames is not None and (not is_int(frames) or frames < 1 or frames > MAX_FRAMES):
                raise RequestError(f"{{0}} item {i}: frames must be a whole number from 1 to {MAX_FRAMES:,} (or null: a share of num_frames); got {quoted(frames)}", "prompt_schedule")
        if self.prompt is not None and self.prompt != sched[0][0]:
            raise RequestError("give {0} or {1} (whose first prompt starts the video), not both", "prompt", "prompt_schedule")
        if self.num_videos_per_prompt != 1:
            raise RequestError("{0} makes one video; {1} must be 1", "prompt_schedule", "num_videos_per_prompt")
        if self.image is not None or self.video is not None:
            raise RequestError("{0} applies to text-to-video and to continuing a video; leave out {1}", "prompt_schedule", "image" if self.image is not None else "video")
        given = [f for _, f in sched if f is not None]
        if sum(given) > MAX_FRAMES:
            raise RequestError(f"{{0}} adds up to {sum(given):,} frames; at most {MAX_FRAMES:,} in one video", "prompt_schedule")
        if self.num_frames is not None and len(given) == len(sched) and sum(given) != self.num_frames:
            raise RequestError(f"{{0}} is {self.num_frames:,} but the prompt schedule's frames add up to {sum(given):,}; leave {{0}} out", "num_frames")

    def long_plan(self, rules: "ModelRules") -> "WindowPlan | None":
        """How a filled-in request runs in windows (None: in one call, as a clip or one extension)."""
        schedule = self.prompt_schedule or [(self.prompt, self.num_frames)]
        frames = [f for _, f in schedule]
        window = self.window if self.window is not None else rules.window_frames
        head = self.extend is not None
        if len(schedule) == 1:
            past = self.overlap if self.overlap is not None else (rules.context_frames or 0)
            if window is None or (past + frames[0] if head else frames[0]) <= window:
                if self.overlap is not None and not head:
                    raise RequestError(
                        f"{{0}} applies to continuing a video ({{1}}), to a video longer than the model's window "
                        f"({window if window is not None else 'none: it slides its own'} frames; {{2}}) or to one whose prompt changes",
                        "overlap", "extend", "window",
                    )  # fmt: skip
                return None
        return plan_windows(rules, frames, window, self.overlap, head=head)

    def check_abilities(self, rules: "ModelRules") -> None:
        """The options and inputs the model must take: its sampling options, image or video input,
        quantisation and samplers (one-line RequestErrors naming the fields)."""
        given = [name for name in SAMPLING_OPTIONS if getattr(self, name) is not None and name not in rules.sampling_options]
        if given:
            takes = rules.sampling_options
            names = ", ".join(f"{{{i}}}" for i in range(len(given)))
            options = ", ".join(f"{{{len(given) + i}}}" for i in range(len(takes))) or "none"
            raise RequestError(f"{names} does not apply to a {rules.family} model; its sampling options are {options}", *given, *takes)
        if self.image is None and rules.requires_image:
            raise RequestError(f"a {rules.family} model makes a clip from a picture: give {{0}} (the first frame)", "image")
        if self.max_area is not None and not rules.image_size_rule:
            raise RequestError(f"{{0}} sizes a clip from its picture (Wan image-to-video); a {rules.family} model takes height and width", "max_area")
        if self.image is not None and not rules.supports_image:
            raise RequestError(f"{{0}} needs a model that does image-to-video; this is a {rules.family} model (text-to-video only)", "image")
        if self.video is not None and not rules.supports_video:
            raise RequestError(f"{{0}} needs a model that does video-to-video; this is a {rules.family} model (text-to-video only)", "video")
        if self.extend is not None and not rules.supports_extend:
            raise KinemaError(f"a {rules.family} model cannot continue a video yet (token-ar, wan-t2v, ltx-video and pixel-dit models can)")
        if self.quantize is not None and self.quantize not in rules.quantize:
            raise KinemaError(
                f"{self.quantize} quantisation is not available for a {rules.family} model"
                + (f" (it takes {', '.join(rules.quantize)})" if rules.quantize else "")
            )
        if self.sampler is not None and self.sampler not in rules.samplers:
            how = " (its schedule's shift follows the resolution: the euler sampler only)" if rules.samplers == ("euler",) else ""
            raise RequestError(f"{{0}} must be one of {', '.join(rules.samplers)} for a {rules.family} model{how}; got {self.sampler!r}", "sampler")

    def checked(
        self, rules: "ModelRules", *, free_bytes: int | None = None, batch: int | None = None, check_memory: bool = True
    ) -> "GenerationRequest":
        """This request with the model's defaults filled in, checked against its rules (see
        :class:`ModelRules`); raises a one-line KinemaError for anything the model cannot do.

        ``free_bytes``: memory free where it will run (None: not checked); ``batch``: the number of
        videos when precomputed text states stand for the prompt.
        """
        self.checked_alone(has_embeds=batch is not None)
        self.check_abilities(rules)
        d = rules.defaults
        frames = d.num_frames if self.extend is None else d.num_frames - rules.frames_offset  # extending: whole groups of new frames
        filled = {
            "height": self.height if self.height is not None else _default(d, "height", rules),
            "width": self.width if self.width is not None else _default(d, "width", rules),
            "num_frames": self.num_frames if self.num_frames is not None else frames,
            "guidance_scale": self.guidance_scale if self.guidance_scale is not None else d.guidance_scale,
        }
        if "num_inference_steps" in rules.sampling_options:
            filled["num_inference_steps"] = self.num_inference_steps if self.num_inference_steps is not None else d.num_inference_steps
        if self.prompt_schedule is not None:
            schedule = share_frames(self.prompt_schedule, self.num_frames, rules, head=self.extend is not None)
            if sum(f for _, f in schedule) > MAX_FRAMES:
                raise RequestError(f"{{0}} adds up to {sum(f for _, f in schedule):,} frames (a window for each prompt without frames); at most {MAX_FRAMES:,}", "prompt_schedule")
            filled.update(prompt=schedule[0][0], prompt_schedule=schedule, num_frames=sum(f for _, f in schedule))
        request = dataclasses.replace(self, **filled)
        for name in ("height", "width", "num_frames", "num_inference_steps"):
            value = getattr(request, name)
            if value is not None and (not is_int(value) or value < 1):
                raise RequestError(f"{{0}} must be a positive integer; got {quoted(value)} (the model's default)", name)
        if rules.max_steps is not None and request.num_inference_steps is not None and request.num_inference_steps > rules.max_steps:
            raise RequestError(f"{{0}} must be at most {rules.max_steps:,} for this model (its training steps); got {request.num_inference_steps:,}", "num_inference_steps")
        plan = request.long_plan(rules)
        if plan is not None:  # in windows: each must be a clip (or an extension) the model can make
            if plan.first:
                rules.check_size(request.height, request.width, plan.first)
            for new_frames in sorted({n for _, n in plan.steps}):
                rules.check_extension(request.height, request.width, new_frames, plan.overlap)
            request = dataclasses.replace(request, window=plan.window, overlap=plan.overlap)
        elif request.extend is None:
            rules.check_size(request.height, request.width, request.num_frames)
        else:
            rules.check_extension(request.height, request.width, request.num_frames, request.overlap)
        if check_memory and free_bytes is not None:
            rules.check_memory(request, free_bytes, batch if batch is not None else request.batch)
        return request

    @property
    def batch(self) -> int:
        """Videos the request makes: prompts times videos per prompt."""
        n = len(self.prompt) if isinstance(self.prompt, (list, tuple)) else 1
        return n * self.num_videos_per_prompt


def _default(defaults: Any, name: str, rules: "ModelRules") -> int:
    value = getattr(defaults, name)
    if value is None and rules.frame_size is not None:  # a token model: its one frame size
        return rules.frame_size[0 if name == "height" else 1]
    return value


# ------------------------------------------------------------------------------------------------
# Single values
# ------------------------------------------------------------------------------------------------
def _is_utf8(text: str) -> bool:
    """Whether ``text`` encodes as UTF-8 (bytes that were not UTF-8 arrive from the command line
    as lone surrogates, which no tokenizer takes)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _is_schedule_entry(item: Any) -> bool:
    """``(prompt, frames)``: what a prompt schedule holds (frames a whole number or None)."""
    return (isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], str)
            and (item[1] is None or (isinstance(item[1], int) and not isinstance(item[1], bool))))  # fmt: skip


def is_prompt_schedule(value: Any) -> bool:
    """A non-empty list of ``(prompt, frames)`` pairs (not a list of prompts)."""
    return isinstance(value, (list, tuple)) and bool(value) and all(_is_schedule_entry(item) for item in value)


def check_prompts(prompt: Any, name: str = "prompt", *, allow_empty: bool = False) -> list[str]:
    """A prompt or a non-empty list of them, each text (valid UTF-8, at most
    :data:`MAX_PROMPT_CHARS` characters; with words unless ``allow_empty``). Returns the list."""
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise RequestError(f"{{0}} must be a string or a non-empty list of strings; got {quoted(prompt)}", name)
    for p in prompts:
        if not isinstance(p, str):
            hint = "; a list of (prompt, frames) pairs is a prompt schedule: give it as prompt_schedule= (long_video, GenerationRequest)" if _is_schedule_entry(p) else ""
            raise RequestError(f"{{0}} must be a string or a non-empty list of strings; got an item {quoted(p)}{hint}", name)
        if not _is_utf8(p):
            shown = p.encode("utf-8", "backslashreplace").decode()[:60]
            raise RequestError(f"{{0}} is not valid UTF-8 text: {braces(repr(shown))}", name)
        if not allow_empty and not p.strip():
            raise RequestError('{0} is empty; describe the video, e.g. "a red circle moving left"', name)
        if len(p) > MAX_PROMPT_CHARS:
            raise RequestError(f"{{0}} has {len(p):,} characters; at most {MAX_PROMPT_CHARS:,} (the text encoder reads only its first tokens)", name)
    return list(prompts)


def check_number(name: str, value: Any, low: float, high: float, hint: str = "", *, low_open: bool = False) -> None:
    """None, or a finite number in ``[low, high]`` (``(low, high]`` with ``low_open``)."""
    if value is None:
        return
    below = value <= low if (low_open and is_finite_number(value)) else (is_finite_number(value) and value < low)
    if not is_finite_number(value) or below or value > high:
        span = f"({low:g}, {high:g}]" if low_open else f"[{low:g}, {high:g}]"
        tail = f" ({hint})" if hint else ""
        raise RequestError(f"{{0}} must be a finite number in {span}{tail}; got {quoted(value)}", name)


def check_seed(seed: Any) -> None:
    """A whole number from 0 to 2**64 - 1 (a torch generator's seed)."""
    if not is_int(seed) or not 0 <= seed <= MAX_SEED:
        raise RequestError(f"{{0}} must be a whole number from 0 to 2**64 - 1; got {quoted(seed)}", "seed")


# ------------------------------------------------------------------------------------------------
# The model's rules
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MemoryModel:
    """What a model needs, to estimate a request's peak memory before it runs (see :meth:`bytes`).

    All sizes in elements; ``element_bytes`` for the load dtype. The estimate counts the weights,
    the latents and the sampler's copies of them, the generator's activations for its tokens (twice
    with guidance), the codec's activations for the frames it decodes at once, and the decoded video
    (float32 in [-1, 1], then uint8).
    """

    weights: int  # parameters of the generator, the codec and the text encoder
    latent_channels: int  # channels of a latent voxel (1 for a token model: ids)
    temporal_compression: int
    spatial_compression: int
    tokens_per_latent_voxel: float  # 1 / patch volume (diffusion), 1 (token model: one token per voxel)
    activation_per_token: int  # elements per token the generator holds at its peak (a block's intermediates)
    codec_activation_per_pixel: int  # elements per output pixel the decoder holds at its peak
    codec_frames_at_once: int  # pixel frames the decoder produces per step (its chunk)
    fixed: int = 0  # elements held whatever the request (a token model's KV cache, text states)
    context_per_stream: int = 0  # elements of conditioning held per video and guidance branch (Wan: every block's text keys and values)
    element_bytes: int = 4

    def bytes(self, height: int, width: int, frames: int, batch: int, guided: bool) -> int:
        """Peak bytes of a request for ``batch`` videos of ``frames`` x ``height`` x ``width``."""
        return self.weights * self.element_bytes + sum(self._parts(height, width, frames, batch, guided))

    def stage_bytes(self, height: int, width: int, frames: int, batch: int, guided: bool) -> dict[str, int]:
        """The activations alone (no weights) of the two big stages: ``denoise`` (latents, the
        generator's activations, its fixed state) and ``decode`` (latents, the decoder, the video)."""
        fixed, latents, generator, decoder, video = self._parts(height, width, frames, batch, guided)
        return {"denoise": fixed + latents + generator, "decode": latents + decoder + video}

    def _parts(self, height: int, width: int, frames: int, batch: int, guided: bool) -> tuple[int, int, int, int, int]:
        lf = (frames - 1) // self.temporal_compression + 1
        voxels = lf * (height // self.spatial_compression) * (width // self.spatial_compression)
        latents = 6 * batch * voxels * self.latent_channels * 4  # float32: the sample, noise, model outputs, sampler history
        streams = batch * (2 if guided else 1)
        generator = streams * (int(voxels * self.tokens_per_latent_voxel) * self.activation_per_token + self.context_per_stream) * self.element_bytes
        pixels = height * width
        decoder = batch * min(frames, self.codec_frames_at_once) * pixels * self.codec_activation_per_pixel * self.element_bytes
        video = batch * frames * pixels * 3 * (4 * 3 + 1)  # float32 decode, clamp and scale copies, uint8 frames
        return self.fixed * self.element_bytes, latents, generator, decoder, video


@dataclass(frozen=True)
class ModelRules:
    """What a model can do, read off its configs before loading (or off a loaded pipeline)."""

    family: str
    defaults: Any  # the family's defaults (height, width, num_frames, guidance_scale, [num_inference_steps], fps)
    temporal_multiple: int  # frames are temporal_multiple * k + frames_offset
    spatial_multiple: int = 1  # height and width are multiples of this
    frame_size: tuple[int, int] | None = None  # token models: the one (height, width) they make
    grid: tuple[int, int] | None = None  # token models: their token grid, for messages
    sampling_options: tuple[str, ...] = ()
    samplers: tuple[str, ...] = ()
    supports_image: bool = False
    supports_video: bool = False
    requires_image: bool = False  # image-to-video only (Wan 2.1 I2V): no clip without a picture
    image_size_rule: bool = False  # a size left out comes from the picture: :meth:`size_for_image`
    quantize: tuple[str, ...] = ()
    max_latent_frames: int | None = None  # positions the generator can tell apart along time
    max_latent_side: int | None = None  # ... along height and width
    memory: MemoryModel | None = None
    max_steps: int | None = None  # the most sampling steps (a discrete process: its training steps)
    frames_offset: int = 1  # 1: a causal codec's first frame alone, then groups (t k + 1); 0: whole groups (t k, k >= 1)
    supports_extend: bool = False  # continues a video (kinema extend)
    context_frames: int | None = None  # extending: the most input frames the model can see as the past (None: any)
    slides: bool = False  # makes any length in one call, its own window sliding (a token model's KV cache): no windows of kinema's

    @property
    def window_frames(self) -> int | None:
        """The frames one window makes, beyond which a video is made in windows: the model's clip
        (None: the model slides its own window)."""
        return None if self.slides else self.defaults.num_frames

    def size_for_image(self, image_height: int, image_width: int, max_area: int | None = None) -> tuple[int, int]:
        """Wan's image-to-video size rule (``WanI2V.generate``): the clip keeps the picture's aspect
        ratio within ``max_area`` pixels (None: the default size's area), each side rounded down to
        ``spatial_multiple`` (at least one multiple). A square picture at 480 x 832: 624 x 624."""
        area = max_area if max_area is not None else self.defaults.height * self.defaults.width
        s = self.spatial_multiple
        aspect = image_height / image_width
        h = int(math.sqrt(area * aspect) // s) * s
        w = int(math.sqrt(area / aspect) // s) * s
        return max(s, h), max(s, w)

    def check_frames(self, num_frames: int) -> None:
        """Frames ``t k + offset`` (a causal codec's lone first frame, then whole groups); one line
        naming the nearest counts that are."""
        t, o = self.temporal_multiple, self.frames_offset
        if num_frames < max(1, o) or (num_frames - o) % t:
            lo = max(t if o == 0 else o, (num_frames - o) // t * t + o)
            codec = "tokenizer" if self.frame_size is not None else ("VAE" if o == 1 else "model's time patch")
            first = ", ".join(str(k * t + o) for k in range(0 if o else 1, 3 if o else 4))
            raise KinemaError(
                f"num_frames must be {t}k{'+' + str(o) if o else ''} for this {codec} ({first}, ...); got {num_frames}, try {lo} or {lo + t}"
            )

    def check_size(self, height: int, width: int, num_frames: int) -> None:
        """Frames ``t k + 1``, sizes multiples of the stride (or a token model's one size), within
        the positions the generator knows; one-line KinemaErrors naming the nearest valid values."""
        t, s, o = self.temporal_multiple, self.spatial_multiple, self.frames_offset
        self.check_frames(num_frames)
        if self.frame_size is not None:
            if (height, width) != tuple(self.frame_size):
                h, w = self.frame_size
                how = f" (its {self.grid[0]}x{self.grid[1]} token grid at {h // self.grid[0]} pixels per token)" if self.grid else ""
                raise KinemaError(f"height and width must be {h} and {w} for this model{how}; got {height} and {width}")
        else:
            for name, v in (("height", height), ("width", width)):
                if v % s:
                    lo = max(s, v // s * s)
                    raise KinemaError(f"{name} must be a positive multiple of {s} for this model; got {v}, try {lo} or {lo + s}")
        latent_frames = (num_frames - o) // t + o
        if self.max_latent_frames is not None and latent_frames > self.max_latent_frames:
            most = (self.max_latent_frames - o) * t + o
            raise KinemaError(f"num_frames {num_frames:,} is more than this model's positions cover; at most {most:,} frames")
        if self.max_latent_side is not None and self.frame_size is None:
            stride = self.memory.spatial_compression if self.memory else s
            most = self.max_latent_side * stride
            if max(height, width) > most:
                raise KinemaError(f"height and width must be at most {most:,} for this model (its positions); got {height}x{width}")

    def default_overlap(self, available: int, window: int | None = None) -> int:
        """Extending a clip of ``available`` frames: the most of its last frames the model takes as
        the past (``t j + offset``, within :attr:`context_frames`), leaving a group of new frames in
        each ``window`` when one is given."""
        limit = min(available, self.context_frames or available)
        if window is not None and window - self.temporal_multiple >= max(1, self.frames_offset):  # a smaller window: its own error, later
            limit = min(limit, window - self.temporal_multiple)
        return frames_that_fit(limit, limit, self.temporal_multiple, self.frames_offset)

    def check_overlap_form(self, overlap: int) -> None:
        """The past a window sees is ``t j + offset`` frames, like a clip (one line naming the nearest)."""
        t, o = self.temporal_multiple, self.frames_offset
        if overlap < max(1, o) or (overlap - o) % t:
            lo = max(o or t, (overlap - o) // t * t + o)
            raise RequestError(f"{{0}} must be {t}k{'+' + str(o) if o else ''} frames for this model; got {overlap}, try {lo} or {lo + t}", "overlap")

    def check_extension(self, height: int, width: int, num_frames: int, overlap: int | None) -> None:
        """New frames come in whole groups of ``temporal_multiple``; the past the model sees is
        ``t j + offset`` frames; together they must be a clip the model can make (one-line errors)."""
        t, o = self.temporal_multiple, self.frames_offset
        if num_frames % t:
            lo = max(t, num_frames // t * t)
            raise RequestError(f"{{0}} (new frames) must be a multiple of {t} for this model when extending; got {num_frames}, try {lo} or {lo + t}", "num_frames")
        if overlap is not None:
            self.check_overlap_form(overlap)
            if self.context_frames is not None and overlap > self.context_frames:
                raise RequestError(f"{{0}} must be at most {self.context_frames} frames for this model (what it can see of the past); got {overlap}", "overlap")
        self.check_size(height, width, (overlap if overlap is not None else o or t) + num_frames)

    def needed_bytes(self, request: GenerationRequest, batch: int) -> int | None:
        """The estimate of :class:`MemoryModel` for a filled-in request (None: no model of it)."""
        if self.memory is None:
            return None
        guided = request.guidance_scale is not None and request.guidance_scale != 1
        return self.memory.bytes(request.height, request.width, request.num_frames, batch, guided)

    def stage_bytes(self, request: GenerationRequest, batch: int) -> dict[str, int]:
        """:meth:`MemoryModel.stage_bytes` for a filled-in request (empty: no model of it)."""
        if self.memory is None:
            return {}
        guided = request.guidance_scale is not None and request.guidance_scale != 1
        return self.memory.stage_bytes(request.height, request.width, request.num_frames, batch, guided)

    def check_memory(self, request: GenerationRequest, free: int, batch: int) -> None:
        """Refuse, in one line, a request whose estimate exceeds ``free`` bytes, saying what would fit."""
        need = self.needed_bytes(request, batch)
        if need is None or need <= free:
            return
        hint = self._what_fits(request, free, batch)
        raise KinemaError(
            f"this request needs about {_gib(need)} of memory ({batch} x {request.num_frames} frames of "
            f"{request.width}x{request.height}) but {_gib(free)} is free{hint}"
        )

    def _what_fits(self, request: GenerationRequest, free: int, batch: int) -> str:
        fits = lambda **over: self.needed_bytes(dataclasses.replace(request, **over), batch) <= free  # noqa: E731
        t, o = self.temporal_multiple, self.frames_offset
        if not fits(num_frames=max(1, o) if o else t):
            if self.frame_size is None:
                least = o if o else t
                side = _largest(lambda k: fits(height=k * self.spatial_multiple, width=k * self.spatial_multiple, num_frames=least), 1, max(request.height, request.width) // self.spatial_multiple)
                if side:
                    return f"; at most about {side * self.spatial_multiple}x{side * self.spatial_multiple} fits ({least} frame{'s' if least > 1 else ''})"
            return "; not even one frame of this size fits: use a smaller size, fewer videos, or a machine with more memory"
        k = _largest(lambda k: fits(num_frames=k * t + o), 0 if o else 1, (request.num_frames - o) // t)
        return f"; at most {k * t + o:,} frames of {request.width}x{request.height} fit"


def _largest(ok: Callable[[int], bool], lo: int, hi: int) -> int:
    """The largest k in [lo, hi] with ok(k) (ok is monotone: true then false); lo - 1 if none."""
    if hi < lo or not ok(lo):
        return lo - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid - 1)
    return lo


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**27 else f"{n / 2**20:.0f} MiB"


def half_window(frames: int, t: int) -> int:
    """The most input frames a window takes as its past when extending a video: half the model's
    clip, ``t k + 1`` (Wan 2.1's 81 frames: 41; the shipped shapes model's 33: 17; LTX-Video's 121:
    57), so that at least as many new frames follow in a window of the length it was trained on."""
    return max(1, (frames - 1) // 2 // t * t + 1)


def frames_that_fit(available: int, limit: int, temporal: int, offset: int = 1) -> int:
    """The most frames of the form ``temporal * k + offset`` that are at most ``available`` and ``limit``
    (video-to-video: as much of the input as the model's default length allows)."""
    n = max(1, min(available, limit))
    return max((n - offset) // temporal, 0 if offset else 1) * temporal + offset


@dataclass(frozen=True)
class WindowPlan:
    """How a long video is made: a first window (``first`` frames with the first prompt; 0 when
    continuing a given video), then windows that each see the ``overlap`` frames before them and add
    ``steps[i] = (segment, new_frames)`` with the prompt of schedule entry ``segment``."""

    first: int
    steps: tuple[tuple[int, int], ...]
    overlap: int | None  # None: each extension sees what the model can (a model that slides its own window)
    window: int | None  # frames per window (None: the model slides its own)

    @property
    def windows(self) -> int:
        return (1 if self.first else 0) + len(self.steps)


def plan_windows(rules: ModelRules, frames: list[int], window: int | None, overlap: int | None, *, head: bool = False) -> WindowPlan:
    """Cut a video of ``frames[i]`` frames per prompt into windows the model can make (one-line
    RequestErrors for counts that do not fit its frame rule).

    A window makes at most ``window`` frames: the first makes up to that many from the first prompt
    (unless ``head``: a given video comes first), each later one sees the ``overlap`` frames before
    it (default: as many as the model can see, leaving a whole group of new frames) and adds at
    most ``window - overlap`` new ones, never across a change of prompt. A model that slides its own
    window (``window`` None) makes each prompt's frames in one call.
    """
    t, o = rules.temporal_multiple, rules.frames_offset
    if window is not None:
        if window < max(1, o) + t or (window - o) % t:
            lo = max(o + t, (window - o) // t * t + o)
            raise RequestError(f"{{0}} must be {t}k{'+' + str(o) if o else ''} frames and hold at least one group of new frames after the past; got {window}, try {lo} or {lo + t}", "window")
        if overlap is None:
            overlap = rules.default_overlap(window - t)
        rules.check_overlap_form(overlap)
        if overlap >= window - t + 1:
            raise RequestError(f"{{0}} ({overlap}) must leave room in each {{1}} ({window} frames) for {t} new frames or more", "overlap", "window")
    if len(frames) > 1:
        check_schedule_frames(rules, frames, head=head)
    elif not head:
        rules.check_frames(frames[0])  # the whole video: the model's own frame rule, said as for one clip
    elif frames[0] % t:
        lo = max(t, frames[0] // t * t)
        raise RequestError(f"{{0}} (new frames) must be a multiple of {t} for this model; got {frames[0]}, try {lo} or {lo + t}", "num_frames")
    steps: list[tuple[int, int]] = []

    def add(segment: int, n: int) -> None:
        while n > 0:
            k = n if window is None else min(n, window - overlap)
            steps.append((segment, k))
            n -= k

    if head:
        first = 0
        add(0, frames[0])
    else:
        first = frames[0] if window is None else min(frames[0], window)
        add(0, frames[0] - first)
    for i, n in enumerate(frames[1:], 1):
        add(i, n)
    return WindowPlan(first, tuple(steps), overlap, window)


def share_frames(schedule: Any, num_frames: int | None, rules: ModelRules, *, head: bool = False) -> list[tuple[str, int]]:
    """A prompt schedule with every entry's frames decided: entries without frames share what
    ``num_frames`` leaves, in whole groups of the model's time stride (the first entry, unless
    continuing a given video, also takes the codec's lone first frame). Without ``num_frames``, an
    entry without frames gets a window: the model's clip first, then the clip less its first frame.
    Frame counts that do not fit the model's rule are one-line RequestErrors."""
    t, o = rules.temporal_multiple, rules.frames_offset
    lead = 0 if head else o  # the first entry's extra frame(s) of a causal codec
    out = [(str(p), f) for p, f in schedule]
    missing = [i for i, (_, f) in enumerate(out) if f is None]
    if missing:
        clip = rules.defaults.num_frames
        if num_frames is None:
            out = [(p, f if f is not None else (clip if i == 0 and not head else clip - o)) for i, (p, f) in enumerate(out)]
        else:
            rest = num_frames - sum(f for _, f in out if f is not None) - (lead if 0 in missing else 0)
            if rest < t * len(missing) or rest % t:
                raise RequestError(
                    f"{{0}} ({num_frames:,}) cannot be shared among the {len(missing)} prompt(s) of {{1}} without frames in whole groups "
                    f"of {t}{f' (plus {lead} for the first)' if 0 in missing and lead else ''}", "num_frames", "prompt_schedule",
                )  # fmt: skip
            groups, extra = divmod(rest // t, len(missing))
            share = {i: (groups + (1 if k < extra else 0)) * t + (lead if i == 0 else 0) for k, i in enumerate(missing)}
            out = [(p, f if f is not None else share[i]) for i, (p, f) in enumerate(out)]
    check_schedule_frames(rules, [f for _, f in out], head=head)
    return out


def check_schedule_frames(rules: ModelRules, frames: list[int], *, head: bool = False) -> None:
    """A prompt schedule's frame counts against the model's rule: the first ``t k + offset`` (unless
    continuing a given video), the others whole groups of ``t`` (one-line RequestErrors)."""
    t, o = rules.temporal_multiple, rules.frames_offset
    for i, f in enumerate(frames):
        first = i == 0 and not head
        if first and (f < max(1, o) or (f - o) % t):
            lo = max(o or t, (f - o) // t * t + o)
            raise RequestError(f"{{0}} item 0 has {f} frames; the first must be {t}k{'+' + str(o) if o else ''} for this model, try {lo} or {lo + t}", "prompt_schedule")
        if not first and f % t:
            lo = max(t, f // t * t)
            raise RequestError(f"{{0}} item {i} has {f} frames; after the first, a prompt's frames must be a multiple of {t} for this model, try {lo} or {lo + t}", "prompt_schedule")
