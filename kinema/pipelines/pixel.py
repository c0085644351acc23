"""Pixel-space text-to-video (the TTV-1B design): encode the prompt with the model's own text
encoder -> sample pixels with DDIM or DDPM under classifier-free guidance -> clamp to [-1, 1].

There is no VAE: the sampler runs on the video itself, (B, 3, F, H, W). Arguments follow the
diffusers pipelines' names (``num_inference_steps``, ``guidance_scale`` with 7.5 the default as in
diffusers' DDPM-trained pipelines, ``generator``, ``callback_on_step_end``); the sampler is chosen
per call with ``sampler="ddim"`` or ``"ddpm"``. DDPM (ancestral) draws fresh noise at every step
from the call's generator, after the initial noise, so a seed fixes the whole trajectory.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..errors import CheckpointError, KinemaError
from ..models.pixel_dit import PixelDiT
from ..request import MemoryModel, ModelRules
from ..sampling import DISCRETE_SAMPLERS
from ..sampling.ddpm import DiscreteSamplerSpec
from ..sampling.noise import DDPM
from .base import (
    ProgressCallback,
    PromptStates,
    Reporter,
    check_latents,
    initial_noise,
    make_generators,
)
from .diffusion import DiffusionPipeline, StepCallback
from .output import VideoOutput

TTV_DEFAULT_GUIDANCE = 7.5  # the published design's classifier-free guidance
TTV_DEFAULT_STEPS = 50  # DDIM steps


@dataclass
class PixelDefaults:
    """Per-model defaults (a model card's ``defaults``); the published design's clip: 16 x 256 x 256."""

    height: int = 256
    width: int = 256
    num_frames: int = 16
    num_inference_steps: int = TTV_DEFAULT_STEPS
    guidance_scale: float = TTV_DEFAULT_GUIDANCE
    fps: float = 8.0


# What a card's sampler entry may hold: the DDPM process the model was trained under, and the sampler.
PROCESS_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "prediction_type")
SAMPLER_KEYS = ("name", "timestep_spacing", "steps_offset", "eta", "clip_sample", "clip_sample_range", "set_alpha_to_one", "variance_type")


class PixelPipeline(DiffusionPipeline):
    """Text-to-video on pixels with a pixel DiT and its own text encoder.

    Args:
        transformer: the :class:`~kinema.models.pixel_dit.PixelDiT` (denoiser and text tower).
        codec: the identity codec of pixels (:class:`~kinema.models.codec.PixelCodec`).
        text_encoder: the model's :class:`~kinema.text.bpe.OwnTextEncoder`.
        sampler: a :class:`~kinema.sampling.ddpm.DiscreteSamplerSpec` (its DDPM process and DDIM or DDPM).
    """

    defaults_type = PixelDefaults
    sampling_options = ("num_inference_steps", "sampler", "cache_threshold")
    samplers = tuple(DISCRETE_SAMPLERS)

    transformer: PixelDiT
    sampler: DiscreteSamplerSpec
    defaults: PixelDefaults

    card_sampler_keys = SAMPLER_KEYS + PROCESS_KEYS
    package_sampler = {"name": "ddim", "timestep_spacing": "trailing"}
    package_defaults = {"num_inference_steps": TTV_DEFAULT_STEPS, "guidance_scale": TTV_DEFAULT_GUIDANCE}

    @staticmethod
    def sampler_from_card(sampler: dict[str, Any]) -> DiscreteSamplerSpec:
        """A card's ``sampler`` entry: the process (``num_train_timesteps``, betas, ``prediction_type``)
        and the sampler's settings (``name``, ``timestep_spacing``, ``eta``, ...)."""
        if not isinstance(sampler, dict):
            raise KinemaError(f"sampler must be a JSON object; got {sampler!r}")
        process = DDPM(**{k: sampler[k] for k in PROCESS_KEYS if k in sampler})
        rest = {k: sampler[k] for k in SAMPLER_KEYS if k in sampler}
        try:
            return DiscreteSamplerSpec(noise=process, **rest)
        except TypeError as e:
            raise KinemaError(f"bad sampler entry {sampler!r}: {e}") from None

    @classmethod
    def model_rules(cls, transformer: Any, codec: Any, *, text_dim: int | None = None, card_defaults: dict | None = None,
                    defaults: Any = None, sampler: Any = None, weights: int = 0, element_bytes: int = 4) -> ModelRules:  # fmt: skip
        """Frames ``2k`` (whole time patches), sizes multiples of the spatial patch; any count of
        frame groups (RoPE on time) and any size (the position table is resized)."""
        if text_dim is not None:
            raise CheckpointError(f"a pixel-dit model encodes text with its own encoder, not a {text_dim}-d frozen one")
        pt, ph, pw = transformer.patch_size
        memory = MemoryModel(
            weights=weights,
            latent_channels=transformer.in_channels,
            temporal_compression=1,
            spatial_compression=1,
            tokens_per_latent_voxel=1 / (pt * ph * pw),
            activation_per_token=7 * transformer.dim + transformer.ffn_dim,
            codec_activation_per_pixel=0,
            codec_frames_at_once=1,
            element_bytes=element_bytes,
        )
        d = defaults if defaults is not None else PixelDefaults(**(card_defaults or {}))
        return ModelRules(
            family="pixel-dit",
            defaults=d,
            temporal_multiple=pt,
            frames_offset=0,
            spatial_multiple=math.lcm(ph, pw),
            sampling_options=cls.sampling_options,
            samplers=cls.allowed_samplers(sampler),
            max_steps=sampler.noise.num_train_timesteps if sampler is not None else None,
            memory=memory,
            supports_extend=True,  # the input's last frames put back at every step's level (extend)
            context_frames=max(pt, d.num_frames // 2 // pt * pt),  # half the model's clip, whole time patches
        )

    # -- prompts ---------------------------------------------------------------------------------
    def encode_text(self, prompts: list[str]) -> PromptStates:
        """(B, max_length, text_dim) states, zero past each prompt's tokens, with the token mask."""
        if self.text_encoder is None:
            raise KinemaError("this pipeline was loaded without a text encoder; pass prompt_embeds= instead of a prompt")
        return PromptStates(*self.text_encoder.encode_padded(prompts, device=self.device, dtype=self.transformer.compute_dtype))

    # -- the call ----------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_frames: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        num_videos_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        seed: int | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "np",
        sampler: str | None = None,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        callback: ProgressCallback | None = None,
        progress_bar: bool = True,
        batch_cfg: bool | None = None,
        cache_threshold: float | None = None,
        **unknown: Any,
    ) -> VideoOutput:
        """Generate videos.

        Args:
            prompt: one prompt or a list (a batch). Or pass ``prompt_embeds`` (B, L, text_dim),
                zero at padding.
            negative_prompt: what to steer away from (one, or one per prompt); "" by default.
            height, width: pixels, multiples of the spatial patch (16 for TTV-1B).
            num_frames: a multiple of the temporal patch (2).
            num_inference_steps: sampler steps (DDIM: 50 by default; DDPM: up to the 1,000 of training).
            guidance_scale: ``uncond + s (cond - uncond)``, 7.5 by default; 1.0 or below runs no
                unconditional pass.
            num_videos_per_prompt: videos per prompt.
            generator: a torch.Generator (or one per video) for the initial noise and DDPM's step
                noise; or ``seed``.
            seed: an integer seed (a CPU generator): the same seed gives the same video on CPU.
            latents: the initial noise (B, 3, F, H, W) float32 instead of drawing it.
            output_type: "np" (uint8 numpy frames), "pt" (uint8 torch frames) or "latent" (the
                sampled pixels in [-1, 1] units, unclamped).
            sampler: "ddim" or "ddpm" (None: the model's).
            callback_on_step_end: ``fn(pipe, step, timestep, {"latents": ...}) -> dict | None``.
            callback: ``fn(Progress)`` at every stage and step; raising (``kinema.Cancelled``) stops.
            progress_bar: show a progress bar on stderr.
            cache_threshold: step caching (first-block cache): skip the other blocks at a step whose
                first-block residual changed by less than this share since the last full step; None
                or 0: off (the output is then exactly the uncached one).
            batch_cfg: run the unconditional and conditional passes as one batch (default off).

        Returns:
            VideoOutput with ``frames`` (batch, frames, H, W, 3) uint8.
        """
        request = self.check_call(
            unknown=unknown, step_callback=callback_on_step_end, step_tensor_inputs=callback_on_step_end_tensor_inputs,
            prompt=prompt, prompt_embeds=prompt_embeds, negative_prompt=negative_prompt, num_videos_per_prompt=num_videos_per_prompt,
            output_type=output_type, height=height, width=width, num_frames=num_frames, num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale, sampler=sampler, seed=seed, cache_threshold=cache_threshold,
        )  # fmt: skip
        spec = self.sampler.with_overrides(name=sampler)
        reporter = Reporter(callback, progress_bar)
        do_cfg = request.guidance_scale > 1.0

        timings, t0 = {}, time.perf_counter()
        with reporter.stage("text", 1, desc="text") as step:
            cond, uncond = self.prompt_states(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, do_cfg, num_videos_per_prompt)
            step(1)
        batch = cond.batch_size
        timings["text"] = time.perf_counter() - t0

        shape = (batch, self.transformer.config.in_channels, request.num_frames, request.height, request.width)
        generators = make_generators(generator, seed, batch)
        if latents is None:
            latents = initial_noise(shape, generators, self.device)
        else:
            check_latents(latents, shape)
            latents = latents.to(self.device, torch.float32)

        latents, cache_stats = self.sample_pixels(request, spec, reporter, timings, latents, cond, uncond, batch_cfg, callback_on_step_end, generators)
        return self.finish(latents, output_type, timings, lambda: self.codec.decode(latents), reporter, cache=cache_stats)

    def sample_pixels(self, request: Any, spec: Any, reporter: Reporter, timings: dict, latents: torch.Tensor, cond: PromptStates,
                      uncond: PromptStates | None, batch_cfg: bool | None, callback: StepCallback | None, generators: Any,
                      known: torch.Tensor | None = None) -> tuple[torch.Tensor, dict | None]:  # fmt: skip
        """The sampler over the noise (B, 3, F, H, W), guided; extending a video, ``known`` (B, 3,
        K, H, W) in [-1, 1] are its last frames, put back at every step's level (the rule of
        :meth:`known_frames`). Returns the clean pixels and the step cache's counts."""
        t0 = time.perf_counter()
        sampler_, levels, timesteps = spec.build(request.num_inference_steps, device=self.device)
        after_step = None
        if known is not None:
            after_step = self.known_frames(spec.noise, known, latents[:, :, : known.shape[2]].clone())
            latents = after_step(latents, levels[0])
        cache_stats: dict[str, int] = {}  # step caching: model calls and those skipped
        latents = self.denoise(
            latents, lambda x, t, ctx: self.transformer(x, t, ctx), self.transformer.prepare_context,
            cond, uncond, request.guidance_scale, sampler_, levels, timesteps, reporter,
            batch_cfg=batch_cfg, cache_threshold=request.cache_threshold, cache_stats=cache_stats, callback=callback, generator=generators,
            after_step=after_step,
        )  # fmt: skip
        timings["denoise"] = time.perf_counter() - t0
        return latents, cache_stats or None

    @torch.no_grad()
    def extend(
        self,
        video: Any,
        prompt: str | list[str] | None = None,
        num_frames: int | None = None,
        overlap: int | None = None,
        negative_prompt: str | list[str] | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        num_videos_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        seed: int | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "np",
        sampler: str | None = None,
        callback: ProgressCallback | None = None,
        progress_bar: bool = True,
        batch_cfg: bool | None = None,
        cache_threshold: float | None = None,
        fps: float | None = None,
        **unknown: Any,
    ) -> VideoOutput:
        """Continue a video in pixel space: its last ``overlap`` frames fix the first frames of a new
        window (put back at every step at that step's noise level), and the rest of the window is
        sampled to follow them.

        Args:
            video: one clip, uint8 (F, H, W, 3) (or float in [0, 1]), sizes multiples of the patch.
            prompt: what happens next (or ``prompt_embeds``); the other arguments as in ``__call__``.
            num_frames: new frames, a multiple of the temporal patch (default: the model's clip).
            overlap: the input's last frames the model sees, whole temporal patches (default: up to
                half the model's clip, within the input).
            fps: the output's frame rate (default: the model's; ``generate`` passes the input's).

        Returns:
            VideoOutput whose ``frames`` (B, F + num_frames, H, W, 3) hold the input's frames,
            unchanged, then the new ones; ``latents``: the window's pixels.
        """
        frames, overlap, num_frames = self.extension_input(video, overlap, num_frames, unknown)
        f_in, (h, w) = frames.shape[2], tuple(frames.shape[-2:])
        request = self.check_call(
            unknown=unknown, prompt=prompt, prompt_embeds=prompt_embeds, negative_prompt=negative_prompt, num_videos_per_prompt=num_videos_per_prompt,
            output_type=output_type, height=h, width=w, num_frames=num_frames, num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale, sampler=sampler, seed=seed, cache_threshold=cache_threshold, extend="(video given)", overlap=overlap,
        )  # fmt: skip
        spec = self.sampler.with_overrides(name=sampler)
        reporter = Reporter(callback, progress_bar)
        timings, t0 = {}, time.perf_counter()
        with reporter.stage("text", 1, desc="text") as step:
            cond, uncond = self.prompt_states(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, request.guidance_scale > 1.0, num_videos_per_prompt)
            step(1)
        batch = cond.batch_size
        timings["text"] = time.perf_counter() - t0
        window = request.overlap + request.num_frames
        generators = make_generators(generator, seed, batch)
        latents = initial_noise((batch, self.transformer.config.in_channels, window, h, w), generators, self.device)
        known = (frames[:, :, f_in - request.overlap :].to(self.device, torch.float32) * 2 - 1).repeat(batch, 1, 1, 1, 1)  # (B, 3, K, H, W)
        latents, cache_stats = self.sample_pixels(request, spec, reporter, timings, latents, cond, uncond, batch_cfg, None, generators, known=known)
        decode = self.extension_frames(frames, lambda: self.codec.decode(latents), request.num_frames)  # the input as it was, then the new frames
        return self.with_past(self.finish(latents, output_type, timings, decode, reporter, fps=fps, cache=cache_stats), decode)
