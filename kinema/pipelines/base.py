"""What every pipeline shares: the request check, prompts, seeds, progress and cancellation, and the
output.

A pipeline call is diffusers-shaped (``pipe(prompt=..., height=..., generator=...)``); its plain
values are checked as a :class:`~kinema.request.GenerationRequest` against the pipeline's
:class:`~kinema.request.ModelRules`, the same check every other front end runs, and its non-JSON
inputs (generators, latents, precomputed text states, callbacks) here. Options that change how a
call runs, not what it makes (the progress bar, a progress callback, LTX's batched guidance), are
per call: a pipeline holds no mutable state and serves concurrent requests alike.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import numpy as np
import torch

from ..errors import KinemaError
from ..request import SAMPLING_OPTIONS, GenerationRequest, ModelRules, is_prompt_schedule
from ..video import to_uint8
from .inputs import check_video_to_continue, reconstruct_frames
from .output import VideoOutput


# ------------------------------------------------------------------------------------------------
# Progress and cancellation
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Progress:
    """Where a call is: ``step`` of ``total`` units of ``stage`` done.

    Stages: ``"prompt"`` (:func:`kinema.generation.generate` only: the prompt extended by a
    language model, when the request asks), ``"text"`` (prompts encoded), ``"image"`` (image-to-video's picture: its features, then
    its latents), ``"denoise"`` (sampling steps, diffusion), ``"tokens"``
    (frames of tokens, token models), ``"decode"`` (the codec). A callback gets step 0 when a stage
    begins and each step as it ends; raising :class:`~kinema.errors.Cancelled` (or anything) from it
    stops the call there, with nothing written.
    """

    stage: str
    step: int
    total: int


ProgressCallback = Callable[[Progress], Any]


class Reporter:
    """One call's progress: a tqdm bar (when ``bar``) and the caller's callback, driven together."""

    def __init__(self, callback: ProgressCallback | None = None, bar: bool = True) -> None:
        if callback is not None and not callable(callback):
            raise KinemaError(f"callback must be callable (it gets a Progress); got {type(callback).__name__}")
        if not isinstance(bar, bool):
            raise KinemaError(f"progress_bar must be true or false; got {bar!r}")
        self.callback, self.bar = callback, bar

    @contextlib.contextmanager
    def stage(self, name: str, total: int, desc: str | None = None, unit: str = "it") -> Iterator[Callable[[int], None]]:
        """``with reporter.stage("denoise", 20) as step: ... step(1)``."""
        from tqdm.auto import tqdm

        done = 0
        bar = tqdm(total=total, desc=desc or name, unit=unit, leave=False, disable=not self.bar)

        def step(n: int = 1) -> None:
            nonlocal done
            done += n
            bar.update(n)
            self.report(name, done, total)

        try:
            self.report(name, 0, total)
            yield step
        finally:
            bar.close()

    def report(self, stage: str, step: int, total: int) -> None:
        if self.callback is not None:
            self.callback(Progress(stage, step, total))


# ------------------------------------------------------------------------------------------------
# Seeds, noise and non-JSON inputs
# ------------------------------------------------------------------------------------------------
def make_generators(
    generator: torch.Generator | list[torch.Generator] | None, seed: int | None, batch: int
) -> torch.Generator | list[torch.Generator] | None:
    """Resolve ``generator=`` / ``seed=`` (diffusers takes the first, Wan's scripts the second)."""
    if generator is not None and seed is not None:
        raise KinemaError("pass either generator= or seed=, not both")
    if seed is not None:
        return torch.Generator("cpu").manual_seed(seed)
    if isinstance(generator, list):
        if len(generator) != batch:
            raise KinemaError(f"got {len(generator)} generators for a batch of {batch} videos; pass one per video")
        if not all(isinstance(g, torch.Generator) for g in generator):
            raise KinemaError("generator must be a torch.Generator or a list of them (one per video)")
    elif generator is not None and not isinstance(generator, torch.Generator):
        raise KinemaError(f"generator must be a torch.Generator or a list of them; got {type(generator).__name__} (or pass seed=)")
    return generator


def initial_noise(
    shape: tuple[int, ...],
    generator: torch.Generator | list[torch.Generator] | None,
    device: torch.device,
) -> torch.Tensor:
    """Standard normal float32 noise, drawn on the generator's device (per sample for a list).

    This is diffusers' ``randn_tensor`` rule, so the same generator gives the same noise in both.
    """
    if isinstance(generator, list):
        parts = [torch.randn((1, *shape[1:]), generator=g, device=g.device, dtype=torch.float32) for g in generator]
        return torch.cat(parts).to(device)
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gen_device, dtype=torch.float32).to(device)


def check_tensor(value: Any, name: str, shape: tuple[int | None, ...], floating: bool = True) -> torch.Tensor:
    """``value`` if it is a tensor of ``shape`` (None: any size on that axis) with finite values."""
    if not isinstance(value, torch.Tensor):
        raise KinemaError(f"{name} must be a torch tensor of shape {_shape_words(shape)}; got {type(value).__name__}")
    if value.dim() != len(shape) or any(w is not None and w != g for w, g in zip(shape, value.shape)):
        raise KinemaError(f"{name} must have shape {_shape_words(shape)}; got {tuple(value.shape)}")
    if floating:
        if not value.is_floating_point():
            raise KinemaError(f"{name} must be a float tensor; got {value.dtype}")
        if not bool(torch.isfinite(value).all()):
            raise KinemaError(f"{name} holds NaN or infinite values")
    return value


def _shape_words(shape: tuple[int | None, ...]) -> str:
    return "(" + ", ".join("any" if s is None else str(s) for s in shape) + ")"


def check_latents(latents: Any, expected: tuple[int, ...]) -> None:
    check_tensor(latents, "latents (batch, channels, frames, height, width)", tuple(expected))


def check_output_type(output_type: Any) -> None:
    if output_type not in ("np", "pt", "latent"):
        raise KinemaError(f"output_type must be 'np', 'pt' or 'latent'; got {output_type!r}")


def check_finite(latents: torch.Tensor) -> None:
    """Refuse to decode NaN or infinite latents (a black video that says nothing of why)."""
    if latents.is_floating_point() and not bool(torch.isfinite(latents).all()):
        raise KinemaError(
            "the model produced NaN or infinite values: its weights may be corrupt, or the guidance or "
            "shift too extreme; try float32 (--dtype float32) or milder settings"
        )


class PromptStates(NamedTuple):
    """Text encoder output for a batch: token states and, where padding must be masked, the mask."""

    states: torch.Tensor  # (B, L, text_dim)
    mask: torch.Tensor | None = None  # (B, L): 1 for tokens, 0 for padding; None: every position counts

    @property
    def batch_size(self) -> int:
        return self.states.shape[0]

    def repeat_videos(self, n: int) -> "PromptStates":
        """Each prompt's states ``n`` times in a row (one per video of that prompt)."""
        mask = self.mask.repeat_interleave(n, dim=0) if self.mask is not None else None
        return PromptStates(self.states.repeat_interleave(n, dim=0), mask)


# ------------------------------------------------------------------------------------------------
# The pipeline
# ------------------------------------------------------------------------------------------------
class VideoPipeline:
    """What every text-to-video pipeline shares.

    A subclass sets ``defaults_type`` and ``sampling_options``, implements :meth:`model_rules` (its
    rules from its components' configs) and :meth:`encode_text`, and names its generator and codec
    (``transformer`` and ``codec``; ``vae`` or ``tokenizer`` as properties).
    """

    defaults_type: type
    supports_image: bool = False  # takes image= (image-to-video)
    supports_video: bool = False  # takes video= and strength= (video-to-video)
    sampling_options: tuple[str, ...] = ()  # the call's keywords that steer its sampler
    samplers: tuple[str, ...] = ()  # sampler names it takes (diffusion)

    @classmethod
    def trained_sampler(cls, objective: dict[str, Any]) -> dict[str, Any]:
        """The card's ``sampler`` entries a training run's ``objective`` fixes (what ``kinema
        package`` copies from ``training.json``): the fields named like ``card_sampler_keys``, the
        process the model learned (DDPM's betas)."""
        return {k: v for k, v in objective.items() if k in getattr(cls, "card_sampler_keys", ())}

    @classmethod
    def trained_defaults(cls, training: dict[str, Any], model_dir: Path, codec_dir: Path | None) -> dict[str, Any]:
        """The card's ``defaults`` entries a training run fixes beyond its clip size (its
        ``training.json``, its exported ``model_dir`` and its codec's folder): none, unless a family
        says (the token model's ``slide``)."""
        return {}

    def __init__(
        self,
        transformer: torch.nn.Module,
        codec: torch.nn.Module,
        text_encoder: Any,
        sampler: Any,
        defaults: Any = None,
        device: torch.device | str = "cpu",
    ):
        self.transformer = transformer.eval().requires_grad_(False)
        self.codec = codec.eval().requires_grad_(False)
        self.text_encoder = text_encoder
        self.sampler = sampler
        self.defaults = defaults or self.defaults_type()
        self.device = torch.device(device)

    # -- facts derived from the components ---------------------------------------------------------
    @classmethod
    def model_rules(cls, generator: Any, codec: Any, *, text_dim: int | None = None, card_defaults: dict | None = None,
                    defaults: Any = None, sampler: Any = None, weights: int = 0, element_bytes: int = 4) -> ModelRules:  # fmt: skip
        """The rules of a model with these generator and codec configs (read before loading), its
        defaults (given, or a card's over the family's) and its sampler; ``weights`` parameters in
        ``element_bytes`` each count towards the memory estimate. Raises CheckpointError when the
        parts do not fit together."""
        raise NotImplementedError

    @functools.cached_property
    def rules(self) -> ModelRules:
        """This pipeline's rules (its weights are loaded: the memory estimate leaves them out)."""
        return self.model_rules(self.transformer.config, self.codec.config, defaults=self.defaults, sampler=self.sampler)

    @property
    def vae_scale_factor_temporal(self) -> int:
        """Pixel frames per latent (or token) frame after the first: diffusers' name for the codec's time stride."""
        return self.codec.temporal_compression

    @property
    def vae_scale_factor_spatial(self) -> int:
        """Pixels per latent (or token) along height and width."""
        return self.codec.spatial_compression

    @property
    def fps(self) -> float:
        return self.defaults.fps

    # -- the request -------------------------------------------------------------------------------
    def check_call(self, *, prompt: Any, prompt_embeds: Any, negative_prompt: Any, num_videos_per_prompt: Any,
                   output_type: Any, unknown: dict | None = None, step_callback: Any = None,
                   step_tensor_inputs: Any = ("latents",), **values: Any) -> GenerationRequest:  # fmt: skip
        """The call's plain values as a request, checked against :attr:`rules` (defaults filled).

        ``unknown`` holds keywords the call does not take (refused with the nearest name it does
        take), ``step_callback`` diffusers' ``callback_on_step_end`` (it must be callable)."""
        fields = {f.name for f in dataclasses.fields(GenerationRequest)} - {"model", "output", "device", "dtype", "quantize", "max_memory", "offload"}
        for name, value in (unknown or {}).items():
            if name not in fields:
                raise KinemaError(unknown_keyword(name, type(self).__call__))
            if name in ("image", "video") and value is not None:
                value = f"({name} given)"  # an array or a picture: what matters is that one was given
            values.setdefault(name, value)  # another family's option: the rules say it does not apply
        if step_callback is not None and not callable(step_callback):
            raise KinemaError(f"callback_on_step_end must be callable (fn(pipe, step, timestep, tensors)); got {type(step_callback).__name__}")
        if isinstance(step_tensor_inputs, str) or not isinstance(step_tensor_inputs, (list, tuple)) or not set(step_tensor_inputs) <= {"latents"}:
            raise KinemaError(f"callback_on_step_end_tensor_inputs may name only 'latents' (what the callback gets); got {step_tensor_inputs!r}")
        if (prompt is None) == (prompt_embeds is None):
            raise KinemaError("pass exactly one of prompt= and prompt_embeds=")
        check_output_type(output_type)
        given = {k: v for k, v in values.items() if v is not None}
        request = GenerationRequest(
            prompt=list(prompt) if isinstance(prompt, tuple) else prompt,
            negative_prompt=list(negative_prompt) if isinstance(negative_prompt, tuple) else negative_prompt,
            num_videos_per_prompt=num_videos_per_prompt,
            **given,
        )
        batch = None
        if prompt_embeds is not None:
            check_tensor(prompt_embeds, "prompt_embeds (batch, length, text_dim)", (None, None, None))
            batch = prompt_embeds.shape[0] * num_videos_per_prompt if isinstance(num_videos_per_prompt, int) else None
        planned = getattr(self, "memory_plan", None) is not None  # loaded for a memory plan: the planner checked the budget
        return request.checked(self.rules, free_bytes=None if planned else available_bytes(self.device), batch=batch)

    # -- prompts -----------------------------------------------------------------------------------
    def encode_text(self, prompts: list[str]) -> PromptStates:
        """Prompts -> their states (and mask) in the generator's dtype, on its device."""
        raise NotImplementedError

    @property
    def text_dim(self) -> int:
        """Width of the text states the generator takes."""
        return self.transformer.config.text_dim

    def prompt_states(
        self,
        prompt: str | Sequence[str] | None,
        negative_prompt: str | Sequence[str] | None,
        prompt_embeds: torch.Tensor | None,
        negative_prompt_embeds: torch.Tensor | None,
        do_cfg: bool,
        num_videos_per_prompt: int,
        prompt_attention_mask: torch.Tensor | None = None,
        negative_prompt_attention_mask: torch.Tensor | None = None,
        encode: Callable[[list[str]], PromptStates] | None = None,
    ) -> tuple[PromptStates, PromptStates | None]:
        """The conditional states and, with guidance, the unconditional ones (the negative prompt,
        "" by default), each repeated per video: batch ``n_prompts * num_videos_per_prompt``.
        ``encode`` replaces :meth:`encode_text` (e.g. to pass a per-call text length)."""
        encode = encode or self.encode_text
        prompts = [prompt] if isinstance(prompt, str) else (list(prompt) if prompt is not None else None)
        cond = encode(prompts) if prompts is not None else self._given_states(prompt_embeds, prompt_attention_mask, "prompt_embeds")
        n_prompts = cond.batch_size
        uncond = None
        if do_cfg:
            if negative_prompt_embeds is not None:
                uncond = self._given_states(negative_prompt_embeds, negative_prompt_attention_mask, "negative_prompt_embeds")
            else:
                negatives = [negative_prompt] if isinstance(negative_prompt, str) else list(negative_prompt or [""])
                if len(negatives) == 1:
                    negatives = negatives * n_prompts
                if len(negatives) != n_prompts:
                    raise KinemaError(f"got {len(negatives)} negative prompts for {n_prompts} prompts; pass one, or one per prompt")
                uncond = encode(negatives)
            if uncond.batch_size != n_prompts:
                raise KinemaError(f"negative_prompt_embeds has batch {uncond.batch_size}, prompts have {n_prompts}")
        cond = cond.repeat_videos(num_videos_per_prompt)
        uncond = uncond.repeat_videos(num_videos_per_prompt) if uncond is not None else None
        return cond, uncond

    def _given_states(self, embeds: torch.Tensor, mask: torch.Tensor | None, name: str) -> PromptStates:
        check_tensor(embeds, f"{name} (batch, length, {self.text_dim})", (None, None, self.text_dim))
        states = embeds.to(self.device, self.transformer.compute_dtype)  # type: ignore[attr-defined]
        if mask is not None:
            if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != tuple(states.shape[:2]):
                got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
                raise KinemaError(f"attention mask of {name} has shape {got}; expected (batch, length) = {tuple(states.shape[:2])}")
            mask = mask.to(self.device)
        return PromptStates(states, mask)

    # -- long videos -----------------------------------------------------------------------------------
    def long_video(
        self,
        prompt: str | None = None,
        num_frames: int | None = None,
        *,
        prompt_schedule: Sequence[tuple[str, int | None]] | None = None,
        window: int | None = None,
        overlap: int | None = None,
        video: Any = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        output_type: str = "np",
        callback: ProgressCallback | None = None,
        progress_bar: bool = True,
        fps: float | None = None,
        **keywords: Any,
    ) -> VideoOutput:
        """A video longer than the model's window, or whose prompt changes as it goes, in windows.

        The first window is a clip of up to ``window`` frames (default: the model's clip) with the
        first prompt; each later one continues the video so far (:meth:`extend`): it sees the
        ``overlap`` frames before it (as many as there are, when the video so far is shorter) and
        adds up to ``window - overlap`` new ones, with the prompt
        of the schedule entry those frames belong to; the ``JOIN_FADE_FRAMES`` frames before each
        join fade into the window's own decode of them (:func:`fade_into`), never into ``video``'s.
        A model that slides its own window (the token
        model) makes each prompt's frames in one call. Window ``i`` draws its noise from ``seed + i``
        (or from ``generator``, in turn), so the same call gives the same video.

        Args:
            prompt, num_frames: one prompt for the whole video and its length (a list of
                ``(prompt, frames)`` pairs is taken as ``prompt_schedule``); or
            prompt_schedule: ``[(prompt, frames), ...]`` in order (frames None: an even share of
                ``num_frames``); the first takes the codec's lone first frame (``4k + 1`` for Wan),
                the others whole groups (``4k``).
            window, overlap: frames per window and frames of the past each later window sees.
            video: a clip (F, H, W, 3) to continue instead of starting from nothing; the output
                holds it unchanged, then the new frames.
            keywords: the family's other call options (``num_inference_steps``, ``guidance_scale``,
                ``negative_prompt``, ``height``, ``width``, sampling options).

        Returns:
            VideoOutput with one video (1, F, H, W, 3); ``latents`` are the last window's.
        """
        if output_type not in ("np", "pt"):
            raise KinemaError(f"a long video is made in windows and comes back as frames: output_type must be 'np' or 'pt'; got {output_type!r}")
        if prompt_schedule is None and is_prompt_schedule(prompt):  # long_video([("...", 33), ("...", 32)])
            prompt, prompt_schedule = None, prompt
        if prompt is None and prompt_schedule is None:
            raise KinemaError('long_video needs prompt= (with num_frames=) or prompt_schedule=, e.g. [("a red circle moving left", 33)]')
        if isinstance(prompt, (list, tuple)):
            raise KinemaError("long_video makes one video: give one prompt (a prompt_schedule for prompts in turn), not a batch")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise KinemaError("a long video takes one torch.Generator (its windows draw from it in turn) or a seed")
        head = None
        if video is not None:
            from .inputs import videos_to_tensor

            head = videos_to_tensor(video)  # (1, 3, F, H, W) in [0, 1]
            if head.shape[0] != 1:
                raise KinemaError(f"a long video continues one video (F, H, W, 3); got a batch of {head.shape[0]}")
            for name, size in (("height", head.shape[-2]), ("width", head.shape[-1])):
                if keywords.get(name) not in (None, size):
                    raise KinemaError(f"the size comes from the video to continue ({head.shape[-1]}x{head.shape[-2]}); leave {name} out")
                keywords.pop(name, None)
            if overlap is None:
                overlap = self.rules.default_overlap(head.shape[2], window)
        schedule = [tuple(entry) if isinstance(entry, (list, tuple)) else entry for entry in prompt_schedule] if prompt_schedule is not None else None
        request = self.check_call(
            prompt=prompt if schedule is None or prompt is not None else _first_prompt(schedule), prompt_embeds=None, negative_prompt=keywords.get("negative_prompt"),
            num_videos_per_prompt=keywords.pop("num_videos_per_prompt", 1), output_type=output_type, num_frames=num_frames,
            prompt_schedule=schedule, window=window, overlap=overlap, seed=seed if seed is not None else 0,
            guidance_scale=keywords.get("guidance_scale"), **{k: keywords[k] for k in SAMPLING_OPTIONS if keywords.get(k) is not None},
            extend="(video given)" if head is not None else None,
            height=head.shape[-2] if head is not None else keywords.get("height"), width=head.shape[-1] if head is not None else keywords.get("width"),
        )  # fmt: skip
        if request.batch != 1:
            raise KinemaError(f"long_video makes one video; num_videos_per_prompt must be 1, got {request.num_videos_per_prompt}")
        plan = request.long_plan(self.rules)
        schedule = request.prompt_schedule or [(request.prompt, request.num_frames)]
        if plan is None:  # it fits one call
            plan_first, steps = (0, [(0, request.num_frames)]) if head is not None else (request.num_frames, [])
        else:
            plan_first, steps = plan.first, list(plan.steps)
        reporter = Reporter(callback, progress_bar)
        return self.run_windows(
            request, schedule, plan_first, steps, head[0].permute(1, 2, 3, 0) if head is not None else None, keywords,  # (F, H, W, 3) in [0, 1], whatever form it came in
            generator=generator, output_type=output_type, callback=callback, progress_bar=progress_bar, fps=fps, reporter=reporter,
        )  # fmt: skip

    def run_windows(
        self, request: GenerationRequest, schedule: list, first: int, steps: list[tuple[int, int]], video: Any, keywords: dict[str, Any], *,
        generator: torch.Generator | None, output_type: str, callback: Any, progress_bar: bool, fps: float | None, reporter: Reporter,
    ) -> VideoOutput:  # fmt: skip
        """Run a long video's windows (see :meth:`long_video`): a clip of ``first`` frames with the
        first prompt (unless ``video``, (F, H, W, 3) in [0, 1], comes first), then ``steps[i] = (schedule entry, new frames)``,
        each continuing the video so far through :meth:`extend`. A family that can continue its own
        output more exactly overrides this (the token model, from its own tokens)."""
        timings: dict[str, float] = {}

        def window_seed(i: int) -> dict[str, Any]:
            return {"generator": generator} if generator is not None else {"seed": (request.seed + i) % 2**64}

        def add(out: VideoOutput) -> np.ndarray:
            for k, v in out.timings.items():
                timings[k] = timings.get(k, 0.0) + v
            frames = out.frames
            return frames[0].numpy() if isinstance(frames, torch.Tensor) else frames[0]  # (F, H, W, 3) uint8

        out = None
        with reporter.stage("windows", (1 if first else 0) + len(steps), desc="windows", unit="window") as step:
            if video is not None:
                clip: Any = video
            else:
                out = self(prompt=schedule[0][0], num_frames=first, output_type="np", callback=callback, progress_bar=progress_bar,
                           **window_seed(0), **keywords)  # fmt: skip
                clip = add(out)
                step(1)
            for i, (segment, new) in enumerate(steps, 1):
                window_keywords = {k: v for k, v in keywords.items() if k not in ("height", "width")}
                past = request.overlap
                if past is not None and past > len(clip):  # a first prompt shorter than the past: all of it the model can take
                    past = self.rules.default_overlap(len(clip))
                out = self.extend(clip, prompt=schedule[segment][0], num_frames=new, overlap=past, output_type="np",
                                  callback=callback, progress_bar=progress_bar, fps=fps, **window_seed(i), **window_keywords)  # fmt: skip
                joined = len(clip)
                clip = add(out)
                if out.past is not None:
                    clip = fade_into(clip, out.past[0], joined, keep=len(video) if video is not None else 0)
                step(1)
        assert out is not None  # at least one window ran: a video to continue gets at least one group of new frames
        frames = clip[None]  # (1, F, H, W, 3) uint8
        if output_type == "pt":
            frames = torch.from_numpy(frames)
        return VideoOutput(frames=frames, latents=out.latents, fps=fps if fps is not None else out.fps, timings=timings)

    # -- extension -----------------------------------------------------------------------------------
    def extend(self, video: Any, prompt: Any = None, num_frames: int | None = None, overlap: int | None = None, **kwargs: Any) -> VideoOutput:
        """Continue ``video`` (F, H, W, 3): its frames unchanged, then ``num_frames`` new ones that
        follow from its last ``overlap`` frames. A family that can overrides this."""
        raise KinemaError(f"a {self.rules.family} model cannot continue a video yet (token-ar, wan-t2v, ltx-video and pixel-dit models can)")

    def extension_input(self, video: Any, overlap: Any, num_frames: Any, unknown: dict) -> tuple[torch.Tensor, Any, Any]:
        """What every family's ``extend`` checks first: one clip (1, 3, F, H, W) in [0, 1] (no
        height or width given apart from its own), the overlap (default: what the model can see,
        within the clip) and the new frames (default: the model's clip less its first frame)."""
        from .inputs import videos_to_tensor

        frames = videos_to_tensor(video)  # (N, 3, F, H, W) in [0, 1]
        if frames.shape[0] != 1:
            raise KinemaError(f"extend continues one video (F, H, W, 3); got a batch of {frames.shape[0]}")
        f_in, (h, w) = frames.shape[2], tuple(frames.shape[-2:])
        check_video_to_continue(self.rules, h, w)
        for name, size in (("height", h), ("width", w)):
            given = unknown.pop(name, None)
            if given is not None and given != size:
                raise KinemaError(f"extend takes its size from the video ({w}x{h}); leave {name} out (got {given!r})")
        if overlap is None:
            overlap = self.rules.default_overlap(f_in)
        if isinstance(overlap, int) and not isinstance(overlap, bool) and overlap > f_in:
            raise KinemaError(f"overlap is {overlap} frames but the video has {f_in}")
        if num_frames is None:
            num_frames = self.defaults.num_frames - self.rules.frames_offset
        return frames, overlap, num_frames

    @staticmethod
    def extension_frames(head: torch.Tensor, decode_window: Callable[[], torch.Tensor], num_frames: int) -> Callable[[], torch.Tensor]:
        """``decode`` for :meth:`finish`: the input's frames (1, 3, F, H, W) in [0, 1], unchanged,
        then the last ``num_frames`` frames of the decoded window (B, 3, f, H, W) in [-1, 1]."""

        def decode() -> torch.Tensor:
            window = decode_window()  # (B, 3, overlap + num_frames, H, W) in [-1, 1]
            decode.past = window[:, :, :-num_frames]  # the window's own rendering of the past, for with_past
            new = window[:, :, -num_frames:]
            return torch.cat([head.to(new.device, new.dtype).expand(new.shape[0], -1, -1, -1, -1) * 2 - 1, new], dim=2)

        decode.past = None
        return decode

    @staticmethod
    def with_past(out: VideoOutput, decode: Callable[[], torch.Tensor]) -> VideoOutput:
        """``out`` of an :meth:`extend` with ``past``: the window's decode of the past that
        :meth:`extension_frames`' ``decode`` kept, as uint8 frames like ``out.frames``."""
        rendered = getattr(decode, "past", None)
        if out.frames is not None and rendered is not None:
            past = to_uint8(rendered)
            out.past = past.numpy() if isinstance(out.frames, np.ndarray) else past
        return out

    # -- codec ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def reconstruct(self, frames: np.ndarray | torch.Tensor) -> np.ndarray:
        """Clips through the model's codec and back: uint8 frames (B, F, H, W, 3) -> the same.

        What the codec keeps of a real clip, encoded and decoded with no sampling: a measure of the
        VAE or tokenizer apart from the transformer (``kinema eval --reconstruct``).
        """
        return reconstruct_frames(frames, self.codec)

    def finish(
        self,
        latents: torch.Tensor,
        output_type: str,
        timings: dict[str, float],
        decode: Callable[[], torch.Tensor],
        reporter: Reporter,
        fps: float | None = None,
        cache: dict[str, int] | None = None,
    ) -> VideoOutput:
        """The call's result: the latents alone (``output_type="latent"``), or decoded by ``decode()``
        ((B, 3, F, H, W) in [-1, 1]) to uint8 frames (B, F, H, W, 3), numpy or torch."""
        fps = self.fps if fps is None else fps
        check_finite(latents)
        if output_type == "latent":
            return VideoOutput(frames=None, latents=latents, fps=fps, timings=timings, cache=cache)
        t0 = time.perf_counter()
        with reporter.stage("decode", 1, desc="decoding") as step:
            video = decode()
            check_finite(video)  # a codec with broken weights decodes good latents to NaN
            frames = to_uint8(video)
            step(1)
        timings["decode"] = time.perf_counter() - t0
        return VideoOutput(frames=frames.numpy() if output_type == "np" else frames, latents=latents, fps=fps, timings=timings, cache=cache)


JOIN_FADE_FRAMES = 8  # frames before each join of a long video faded into the next window's rendering of them


def fade_into(clip: np.ndarray, rendered: np.ndarray, join: int, keep: int = 0, frames: int = JOIN_FADE_FRAMES) -> np.ndarray:
    """A long video's join made smooth: ``clip`` (F, H, W, 3) uint8 whose new window starts at
    ``join``; the ``frames`` frames before it fade from what they were into ``rendered`` (the new
    window's own decode of the past it saw, ending at ``join``), linearly, so that the last one is
    nearly the window's and the jump into its new frames is spread out. Frames before ``keep`` (a
    video given to continue) stay as they were."""
    k = min(frames, len(rendered), join - keep)
    if k <= 0:
        return clip
    out = clip.copy()
    weights = np.arange(1, k + 1, dtype=np.float32) / (k + 1)  # (k,): the window's share, rising towards the join
    before = clip[join - k : join].astype(np.float32)
    out[join - k : join] = np.clip(np.rint(before + weights[:, None, None, None] * (rendered[-k:].astype(np.float32) - before)), 0, 255).astype(np.uint8)
    return out


def _first_prompt(schedule: Any) -> Any:
    """A prompt schedule's first prompt, or "" where it has none (its own check says what is wrong)."""
    try:
        return schedule[0][0]
    except (IndexError, KeyError, TypeError):
        return ""


def unknown_keyword(name: str, function: Callable) -> str:
    """"f() takes no argument x; did you mean y?" for a keyword ``function`` does not have."""
    import difflib
    import inspect

    known = [p for p in inspect.signature(function).parameters if p not in ("self", "unknown")]
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {close[0]}?" if close else f"; it takes {', '.join(known)}"
    return f"{function.__qualname__.split('.')[0]} takes no argument {name!r}{hint}"


def available_bytes(device: torch.device) -> int | None:
    """Memory free where a pipeline runs (see :func:`kinema.runtime.available_memory`)."""
    from ..runtime import available_memory

    return available_memory(device)
