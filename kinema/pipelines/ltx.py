"""LTX-Video (kinema's Spectro-2B): text-, image- and video-to-video with one pipeline.

encode the prompt (T5, 128 tokens and their mask) -> sample latents with rectified flow under a
resolution-dependent shift -> decode with the timestep-conditioned VAE (0.9.1+). Arguments follow
diffusers' ``LTXPipeline`` and ``LTXImageToVideoPipeline`` names, so code written for diffusers calls
kinema unchanged.

- **text-to-video**: as diffusers' ``LTXPipeline``.
- **image-to-video** (``image=``): as diffusers' ``LTXImageToVideoPipeline``: the image is encoded
  (a sample of the VAE posterior) into latent frame 0, which the denoiser sees at timestep 0
  (per-token timesteps ``t * (1 - mask)``) and which no step changes.
- **video-to-video** (``video=``, ``strength=``): SDEdit. The input video is encoded, noised to the
  level ``strength`` on the model's schedule and denoised from there (the steps of the full schedule
  whose sigma is at most ``strength``, see :func:`kinema.sampling.strength_start_index`). The
  prompt describes the result. ``strength`` is a noise level, not a fraction of steps as in
  diffusers' image-to-image pipelines: under LTX's shift (about 7x at 768x512, 121 frames) a step
  fraction of 0.8 starts almost at pure noise, at a level that changes with the resolution.

``latents=`` is always the initial noise (batch, 128, F', H', W'): for image-to-video its frame 0 is
replaced by the image's latents, for video-to-video it is blended with the input's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..errors import CheckpointError, KinemaError
from ..models.ltx import LTXTransformer, ltx_rope_scale
from ..models.vae.ltx_vae import (
    DEFAULT_DECODE_CHUNK,
    DEFAULT_DECODE_NOISE_SCALE,
    DEFAULT_DECODE_TIMESTEP,
    LTXVAE,
)
from ..request import MemoryModel, ModelRules, half_window, check_number, frames_that_fit
from ..sampling import SamplerSpec, strength_start_index
from ..schema import is_finite_number, short
from ..text import MaskedTextEncoder
from ..text.encoder import check_text_length
from .base import (
    ProgressCallback,
    PromptStates,
    Reporter,
    check_latents,
    initial_noise,
    make_generators,
)
from .diffusion import DiffusionPipeline, StepCallback
from .inputs import images_to_tensor, resize_and_crop, videos_to_tensor
from .output import VideoOutput

LTX_TEXT_LEN = 128  # T5 tokens per prompt: LTX-Video's max_length, diffusers' max_sequence_length
DEFAULT_STRENGTH = 0.8  # video-to-video: the input is taken to noise level 0.8 (20% of it kept)


@dataclass
class LTXDefaults:
    """Spectro-2B's defaults: 768x512, 121 frames (5 s at 24 fps; LTX-Video's published setting),
    and diffusers' LTXPipeline's sampling defaults (50 steps, guidance 3). diffusers' own call
    defaults differ (704x512, 161 frames at 25 fps, decode timestep 0): pass them to reproduce it."""

    height: int = 512
    width: int = 768
    num_frames: int = 121
    num_inference_steps: int = 50
    guidance_scale: float = 3.0
    fps: float = 24.0  # also the frame_rate the positions are scaled by
    decode_timestep: float = DEFAULT_DECODE_TIMESTEP  # for the timestep-conditioned VAE (0.9.1+)
    decode_noise_scale: float = DEFAULT_DECODE_NOISE_SCALE
    max_sequence_length: int = LTX_TEXT_LEN


class LTXPipeline(DiffusionPipeline):
    """LTX-Video text-, image- and video-to-video.

    Args:
        transformer: the denoiser (:class:`~kinema.models.ltx.LTXTransformer`).
        vae: the video autoencoder (:class:`~kinema.models.vae.ltx_vae.LTXVAE`).
        text_encoder: T5 with ``encode_padded`` (states and token mask), or None (then pass
            ``prompt_embeds``).
        sampler: the schedule (LTX-Video's: Euler with a resolution-dependent shift).
        defaults: size, frames, frame rate, sampling and decoding defaults.
        device: where the denoiser and VAE run.
    """

    defaults_type = LTXDefaults
    supports_image = True
    supports_video = True
    # Guidance runs cond and uncond as one batch unless a call passes batch_cfg=False (faster;
    # twice the activation memory: pass False when memory is what runs out).
    batch_cfg_default = True

    transformer: LTXTransformer
    text_encoder: MaskedTextEncoder | None
    sampler: SamplerSpec
    defaults: LTXDefaults

    @property
    def vae(self) -> LTXVAE:
        return self.codec

    # -- rules read off the components' configs (before loading) ------------------------------------
    @classmethod
    def model_rules(cls, transformer: Any, vae: Any, *, text_dim: int | None = None, card_defaults: dict | None = None,
                    defaults: Any = None, sampler: Any = None, weights: int = 0, element_bytes: int = 4) -> ModelRules:  # fmt: skip
        """Frames ``k t + 1``, sizes multiples of the VAE's stride (the patch is 1); raises
        CheckpointError when the transformer and the VAE do not fit together."""
        if transformer.in_dim != vae.latent_channels or transformer.out_dim != vae.latent_channels:
            raise CheckpointError(
                f"the transformer takes {transformer.in_dim} and gives {transformer.out_dim} latent channels but the VAE has "
                f"{vae.latent_channels}; pair the transformer with its own VAE"
            )
        memory = MemoryModel(
            weights=weights,
            latent_channels=vae.latent_channels,
            temporal_compression=vae.temporal_compression,
            spatial_compression=vae.spatial_compression,
            tokens_per_latent_voxel=1.0,
            activation_per_token=7 * transformer.dim + transformer.ffn_dim,
            # the decoder's last stage runs at 1/patch of the pixels' side, at its narrowest width
            codec_activation_per_pixel=max(1, 8 * min(vae.decoder_block_out_channels) // vae.patch_size**2),
            codec_frames_at_once=DEFAULT_DECODE_CHUNK * vae.temporal_compression,
            element_bytes=element_bytes,
        )
        d = defaults if defaults is not None else LTXDefaults(**(card_defaults or {}))
        return ModelRules(
            family="ltx-video",
            defaults=d,
            temporal_multiple=vae.temporal_compression,
            spatial_multiple=vae.spatial_compression,
            sampling_options=cls.sampling_options,
            samplers=cls.allowed_samplers(sampler),
            supports_image=True,
            supports_video=True,
            memory=memory,
            supports_extend=True,  # frame conditioning: the input's last frames start the window (extend)
            context_frames=half_window(d.num_frames, vae.temporal_compression),
        )

    # -- prompts ---------------------------------------------------------------------------------
    def encode_text(self, prompts: list[str], max_sequence_length: int | None = None) -> PromptStates:
        """Prompts -> (B, L, text_dim) states in the denoiser's dtype and the (B, L) token mask."""
        if self.text_encoder is None:
            raise KinemaError("this pipeline was loaded without a text encoder; pass prompt_embeds= instead of a prompt")
        length = self.defaults.max_sequence_length if max_sequence_length is None else max_sequence_length
        states, mask = self.text_encoder.encode_padded(
            prompts, max_length=length, device=self.device, dtype=self.transformer.compute_dtype
        )
        return PromptStates(states, mask)

    # -- the call ----------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        image: Any = None,
        video: Any = None,
        strength: float | None = None,
        height: int | None = None,
        width: int | None = None,
        num_frames: int | None = None,
        frame_rate: float | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        guidance_rescale: float = 0.0,
        num_videos_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        seed: int | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        negative_prompt_attention_mask: torch.Tensor | None = None,
        decode_timestep: float | list[float] | None = None,
        decode_noise_scale: float | list[float] | None = None,
        output_type: str = "np",
        shift: float | None = None,
        sampler: str | None = None,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        max_sequence_length: int | None = None,
        callback: ProgressCallback | None = None,
        progress_bar: bool = True,
        batch_cfg: bool | None = None,
        cache_threshold: float | None = None,
        conditioning_frames: Any = None,
        **unknown: Any,
    ) -> VideoOutput:
        """Generate videos, from text alone, from a first frame (``image``) or from a video (``video``).

        Args:
            prompt: one prompt or a list (a batch). Or pass ``prompt_embeds``.
            negative_prompt: what to steer away from (one, or one per prompt); "" by default.
            image: image-to-video: the first frame, one or one per prompt (PIL image, (H, W, 3)
                uint8 array, or (3, H, W) float tensor in [0, 1]; see
                :func:`~kinema.pipelines.inputs.images_to_tensor`); scaled and centre-cropped to
                the video's size if it differs.
            video: video-to-video: the input, one or one per prompt, (F, H, W, 3) frames (uint8,
                or float in [0, 1]); at least ``num_frames`` frames (the first ones are used;
                by default as many 8k+1 frames as it has, up to the model's default).
            strength: video-to-video: the noise level in (0, 1] the input is taken to (default
                0.8); 1 ignores the input, below the schedule's last sigma it comes back unchanged.
            height, width: pixels, multiples of 32 (default 512 x 768).
            num_frames: 8k+1 (default 121).
            frame_rate: frames per second the video is made for (positions are scaled by it) and
                written at (default 24).
            num_inference_steps: steps of the full schedule (default 50).
            guidance_scale: classifier-free guidance; at 1.0 or below no unconditional pass is run.
            guidance_rescale: diffusers' guidance rescale (0 = off).
            num_videos_per_prompt: videos per prompt.
            generator: a torch.Generator (or one per video) for every random draw; or ``seed``.
            seed: an integer seed (a CPU generator): the same seed gives the same video on CPU.
            latents: initial noise (batch, 128, F', H', W') float32 instead of drawing it.
            prompt_embeds, negative_prompt_embeds: precomputed text states (batch, length, 4096),
                with ``prompt_attention_mask`` / ``negative_prompt_attention_mask`` (batch, length)
                (None: every position is a token).
            decode_timestep, decode_noise_scale: for a timestep-conditioned VAE (0.9.1+): the
                noise level the decoder is told, and the share of fresh noise blended into the
                latents before decoding (None: 0.05 and 0.025, LTX-Video's recommendation; diffusers
                defaults to 0 and to the decode timestep). One value or one per video.
            output_type: "np" (uint8 numpy frames), "pt" (uint8 torch frames) or "latent" (no decode).
            shift: fix the schedule's shift at every resolution (None: the model's resolution rule).
            sampler: "euler" (None: the model's scheduler); LTX's schedule needs Euler.
            callback_on_step_end: ``fn(pipe, step, timestep, {"latents": ...}) -> dict | None``; a
                returned "latents" replaces the current latents.
            max_sequence_length: T5 tokens per prompt (default 128).
            callback: ``fn(Progress)`` at every stage and step; raising (``kinema.Cancelled``) stops.
            progress_bar: show a progress bar on stderr.
            cache_threshold: step caching (first-block cache): skip the other blocks at a step whose
                first-block residual changed by less than this share since the last full step; None
                or 0: off (the output is then exactly the uncached one).
            batch_cfg: run the unconditional and conditional passes as one batch (default: on;
                False runs them one after the other, for less activation memory).
            conditioning_frames: the clip's first frames, fixed, as ``image`` fixes the first one
                (LTX-Video's frame conditioning at position 0; what :meth:`extend` uses): one clip
                (K, H, W, 3), K = 8k+1 <= num_frames, uint8 or float in [0, 1].

        Returns:
            VideoOutput with ``frames`` (batch, frames, H, W, 3) uint8, ``latents`` and ``fps``.
        """
        if image is not None and video is not None:
            raise KinemaError("pass image= (image-to-video) or video= (video-to-video), not both")
        if conditioning_frames is not None and (image is not None or video is not None):
            raise KinemaError(f"pass conditioning_frames= or {'image' if image is not None else 'video'}=, not both")
        if strength is not None and video is None:
            raise KinemaError("strength= applies to video-to-video: pass video= too")
        pixels = None
        if video is not None:
            pixels = videos_to_tensor(video)  # (n, 3, F_in, H_in, W_in) in [0, 1]
            if num_frames is None:
                num_frames = frames_that_fit(pixels.shape[2], self.defaults.num_frames, self.vae_scale_factor_temporal)
        request = self.check_call(
            unknown=unknown, step_callback=callback_on_step_end, step_tensor_inputs=callback_on_step_end_tensor_inputs,
            prompt=prompt, prompt_embeds=prompt_embeds, negative_prompt=negative_prompt, num_videos_per_prompt=num_videos_per_prompt,
            output_type=output_type, height=height, width=width, num_frames=num_frames, num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale, shift=shift, sampler=sampler, seed=seed, cache_threshold=cache_threshold, strength=strength, frame_rate=frame_rate,
            video="(frames)" if video is not None else None, image="(picture)" if image is not None else None,
        )  # fmt: skip
        height, width, num_frames = request.height, request.width, request.num_frames
        check_number("guidance_rescale", guidance_rescale, 0, 1)
        if max_sequence_length is not None:
            check_text_length(max_sequence_length)
        reporter = Reporter(callback, progress_bar)
        if video is not None:
            strength = DEFAULT_STRENGTH if strength is None else strength
        if video is not None and pixels.shape[2] < num_frames:
            fit = frames_that_fit(pixels.shape[2], num_frames, self.vae_scale_factor_temporal)
            raise KinemaError(f"the input video has {pixels.shape[2]} frames, fewer than num_frames={num_frames}; use num_frames={fit}")
        if image is not None:
            pixels = images_to_tensor(image)[:, :, None]  # (n, 3, 1, H_in, W_in) in [0, 1]
        if conditioning_frames is not None:
            pixels = videos_to_tensor(conditioning_frames)  # (n, 3, K, H_in, W_in) in [0, 1]
            k = pixels.shape[2]
            t = self.vae_scale_factor_temporal
            if (k - 1) % t or k > num_frames:
                raise KinemaError(f"conditioning_frames must be {t}k+1 frames, at most num_frames={num_frames}; got {k}")
        guidance_scale = request.guidance_scale
        frame_rate = self.defaults.fps if frame_rate is None else frame_rate
        decode_timestep, decode_noise_scale = self._decode_settings(decode_timestep, decode_noise_scale)
        spec = self.sampler if sampler is None and shift is None else self.sampler.with_overrides(name=sampler, shift=shift)
        grid = (
            (num_frames - 1) // self.vae_scale_factor_temporal + 1,
            height // self.vae_scale_factor_spatial,
            width // self.vae_scale_factor_spatial,
        )  # latent (F', H', W'): one token per voxel
        sampler_, sigmas, timesteps = spec.build(request.num_inference_steps, device=self.device, seq_len=grid[0] * grid[1] * grid[2])
        do_cfg = guidance_scale > 1.0

        # 1. text states (B, L, text_dim) and masks (B, L)
        timings, t0 = {}, time.perf_counter()
        with reporter.stage("text", 1, desc="text") as step:
            cond, uncond = self.prompt_states(
                prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, do_cfg, num_videos_per_prompt,
                prompt_attention_mask, negative_prompt_attention_mask,
                encode=lambda p: self.encode_text(p, max_sequence_length),
            )  # fmt: skip
            step(1)
        batch = cond.batch_size
        n_prompts = batch // num_videos_per_prompt
        timings["text"] = time.perf_counter() - t0

        # 2. initial latents: (B, C, F', H', W')
        shape = (batch, self.transformer.config.in_dim, *grid)
        generators = make_generators(generator, seed, batch)
        if latents is not None:
            check_latents(latents, shape)
        keep = None  # image-to-video: the latents of frame 0 (conditioning frames: of the first frames), which the steps leave alone
        if image is not None or conditioning_frames is not None:
            # diffusers' order of draws: the image's posterior sample, then the noise
            kept = pixels[:, :, :1] if image is not None else pixels
            keep = self._encode_pixels(kept, height, width, n_prompts, num_videos_per_prompt, generators, "image" if image is not None else "conditioning clip")
            noise = latents.to(self.device, torch.float32) if latents is not None else initial_noise(shape, generators, self.device)
            latents = noise.clone()
            latents[:, :, : keep.shape[2]] = keep
        else:
            latents = latents.to(self.device, torch.float32) if latents is not None else initial_noise(shape, generators, self.device)
        if video is not None:
            start = strength_start_index(sigmas, strength)
            sigmas, timesteps = sigmas[start:], timesteps[start:]
            if start > 0:  # strength 1 starts from pure noise: the input is not needed (nor encoded)
                clean = self._encode_pixels(
                    pixels[:, :, :num_frames], height, width, n_prompts, num_videos_per_prompt, generators, "video"
                )
                latents = spec.process.add_noise(clean, latents, sigmas[0])  # the input taken to the first step's level

        # 3. sample
        t0 = time.perf_counter()
        rope_scale = ltx_rope_scale(frame_rate, self.vae_scale_factor_temporal, self.vae_scale_factor_spatial)
        timestep_of, after_step = None, None
        if keep is not None:  # the conditioning frames' tokens are told they are clean; no step changes them
            b, _, f, h, w = latents.shape
            kf = keep.shape[2]  # latent frames kept: 1 for a picture
            is_first = torch.zeros(b, f, h * w, dtype=torch.bool, device=self.device)  # (B, F, H*W)
            is_first[:, :kf] = True
            is_first = is_first.reshape(b, f * h * w)  # (B, N), frame-major like the tokens
            clean_t = float(spec.process.model_timestep(spec.process.clean_level))
            timestep_of = lambda t: torch.where(is_first, clean_t, t.unsqueeze(-1))  # noqa: E731  (B, N)
            after_step = lambda x, sigma: torch.cat([keep, x[:, :, kf:]], dim=2)  # noqa: E731  (clean at every level)
        cache_stats: dict[str, int] = {}  # step caching: model calls and those skipped
        latents = self.denoise(
            latents, lambda x, t, ctx: self.transformer(x, t, ctx, rope_scale=rope_scale), self.transformer.prepare_context,
            cond, uncond, guidance_scale, sampler_, sigmas, timesteps, reporter,
            guidance_rescale=guidance_rescale, batch_cfg=batch_cfg, cache_threshold=request.cache_threshold, cache_stats=cache_stats, timestep_of=timestep_of, after_step=after_step,
            callback=callback_on_step_end,
        )  # fmt: skip
        timings["denoise"] = time.perf_counter() - t0
        decode = lambda: self.decode_latents(latents, decode_timestep, decode_noise_scale, generators)  # noqa: E731
        return self.finish(latents, output_type, timings, decode, reporter, fps=float(frame_rate), cache=cache_stats or None)

    @torch.no_grad()
    def extend(
        self,
        video: Any,
        prompt: str | list[str] | None = None,
        num_frames: int | None = None,
        overlap: int | None = None,
        frame_rate: float | None = None,
        output_type: str = "np",
        fps: float | None = None,
        **kwargs: Any,
    ) -> VideoOutput:
        """Continue a video with LTX-Video's frame conditioning: its last ``overlap`` frames are the
        new window's first frames, their tokens told they are clean at every step (as a picture is
        for image-to-video), and the rest of the window is sampled to follow them.

        Args:
            video: one clip, uint8 (F, H, W, 3) (or float in [0, 1]), sizes multiples of 32.
            prompt: what happens next; other keywords as in ``__call__`` (no image, video or size).
            num_frames: new frames, a multiple of 8 (default: the model's clip less its first frame).
            overlap: the input's last frames the model sees, 8k+1 (default: up to half the model's
                clip, within the input).
            frame_rate: what the positions are scaled by (default: ``fps``, else the model's).
            fps: the output's frame rate (default: the model's; ``generate`` passes the input's).

        Returns:
            VideoOutput whose ``frames`` (B, F + num_frames, H, W, 3) hold the input's frames,
            unchanged, then the new ones; ``latents``: the window's latents.
        """
        frames, overlap, num_frames = self.extension_input(video, overlap, num_frames, kwargs)
        f_in, (h, w) = frames.shape[2], tuple(frames.shape[-2:])
        for name in ("image", "video", "conditioning_frames", "latents", "strength"):
            if kwargs.get(name) is not None:
                raise KinemaError(f"extend takes no {name}: the video it continues is its input")
        self.check_call(
            unknown={k: v for k, v in kwargs.items() if k not in _CALL_ONLY}, prompt=prompt, prompt_embeds=kwargs.get("prompt_embeds"),
            negative_prompt=kwargs.get("negative_prompt"), num_videos_per_prompt=kwargs.get("num_videos_per_prompt", 1), output_type=output_type,
            height=h, width=w, num_frames=num_frames, extend="(video given)", overlap=overlap,
        )  # fmt: skip
        rate = frame_rate if frame_rate is not None else (fps if fps is not None else self.defaults.fps)
        past = frames[0, :, f_in - overlap :].permute(1, 2, 3, 0)  # (K, H, W, 3) in [0, 1]
        out = self(prompt, conditioning_frames=past, height=h, width=w, num_frames=overlap + num_frames, frame_rate=rate,
                   output_type="latent" if output_type == "latent" else "pt", **kwargs)  # fmt: skip
        if output_type == "latent":
            return out
        head = (frames[0].permute(1, 2, 3, 0) * 255).round().to(torch.uint8)  # (F, H, W, 3): the input as it was
        new = out.frames[:, -num_frames:]  # (B, num_frames, H, W, 3) uint8
        video_out = torch.cat([head[None].expand(new.shape[0], -1, -1, -1, -1).to(new.device), new], dim=1)
        rendered = out.frames[:, :-num_frames]  # (B, overlap, H, W, 3): the window's own decode of the past
        return VideoOutput(frames=video_out.numpy() if output_type == "np" else video_out, latents=out.latents,
                           fps=float(fps if fps is not None else rate), timings=out.timings, cache=out.cache,
                           past=rendered.numpy() if output_type == "np" else rendered)  # fmt: skip

    # -- pieces of the call ----------------------------------------------------------------------
    def _decode_settings(self, timestep, noise_scale) -> tuple[Any, Any]:
        for name, value in (("decode_timestep", timestep), ("decode_noise_scale", noise_scale)):
            values = list(value) if isinstance(value, (list, tuple)) else [value]
            if value is not None and (not values or not all(is_finite_number(v) and 0 <= v <= 1 for v in values)):
                raise KinemaError(f"{name} must be a number in [0, 1] or a list of them (one per video); got {short(value)}")
        if not self.vae.config.timestep_conditioning:
            if timestep is not None or noise_scale is not None:
                raise KinemaError(
                    "this model's VAE decoder is not timestep-conditioned (LTX-Video 0.9.0): "
                    "leave decode_timestep and decode_noise_scale unset"
                )
            return None, None
        if timestep is None:
            timestep = self.defaults.decode_timestep
            noise_scale = self.defaults.decode_noise_scale if noise_scale is None else noise_scale
        return timestep, noise_scale

    def _encode_pixels(
        self,
        pixels: torch.Tensor,
        height: int,
        width: int,
        n_prompts: int,
        per_prompt: int,
        generators: torch.Generator | list[torch.Generator] | None,
        what: str,
    ) -> torch.Tensor:
        """Conditioning pixels (n, 3, F, H_in, W_in) in [0, 1], one or one per prompt -> normalised
        latents (B, C, F', H', W') float32, one per video, from a sample of the VAE posterior.

        As diffusers does: with one generator each given image is encoded once, in order, and shared
        by its prompt's videos; with one generator per video, each video's image is encoded with its own.
        """
        n = pixels.shape[0]
        if n not in (1, n_prompts):
            raise KinemaError(f"got {n} {what}s for {n_prompts} prompts; pass one, or one per prompt")
        x = resize_and_crop(pixels, height, width) * 2 - 1  # (n, 3, F, H, W) in [-1, 1]
        batch = n_prompts * per_prompt
        if isinstance(generators, list):
            per_video = x.repeat_interleave(per_prompt, dim=0) if n > 1 else x.expand(batch, *x.shape[1:])
            return torch.cat([self._encode_one(per_video[i : i + 1], generators[i]) for i in range(batch)])
        z = torch.cat([self._encode_one(x[i : i + 1], generators) for i in range(n)])  # (n, C, F', H', W')
        return z.repeat_interleave(per_prompt, dim=0) if n > 1 else z.expand(batch, *z.shape[1:]).contiguous()

    def _encode_one(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        posterior = self.vae.encode(x.to(self.device))  # mean, logvar (1, C, F', H', W')
        noise = initial_noise(tuple(posterior.mean.shape), generator, self.device)
        z = posterior.mean.float() + posterior.std.float() * noise  # a posterior sample, as diffusers draws it
        return self.vae.normalize_latents(z)

    def decode_latents(
        self,
        latents: torch.Tensor,
        decode_timestep: float | list[float] | None = None,
        decode_noise_scale: float | list[float] | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
    ) -> torch.Tensor:
        """Normalised latents (B, C, F', H', W') -> video (B, 3, F, H, W) float32 in [-1, 1].

        For a timestep-conditioned VAE, fresh noise (drawn from ``generator``, per video for a list,
        as diffusers draws it) is blended in at ``decode_noise_scale`` (default: the timestep) and
        the decoder is told ``decode_timestep``; its own injected noise then comes from the
        (first) generator. diffusers draws that injected noise from the global generator instead.
        """
        z = self.vae.denormalize_latents(latents.float())  # float32 math; the VAE casts to its dtype
        if not self.vae.config.timestep_conditioning:
            return self.vae_decode(z).float()
        timestep = 0.0 if decode_timestep is None else decode_timestep
        scale = timestep if decode_noise_scale is None else decode_noise_scale
        b = z.shape[0]
        for name, value in (("decode_timestep", timestep), ("decode_noise_scale", scale)):
            n = len(value) if isinstance(value, (list, tuple)) else torch.as_tensor(value).numel()
            if n not in (1, b):
                raise KinemaError(f"{name} needs 1 value or one per video ({b}); got {n}")
        noise = initial_noise(tuple(z.shape), generator, z.device)  # drawn even at scale 0, as diffusers
        s = torch.as_tensor(scale, dtype=torch.float32, device=z.device).reshape(-1)  # (1,) or (B,)
        z = self.sampler.process.add_noise(z, noise, s)  # diffusers' decode noise: the latents taken to level s
        injected = generator[0] if isinstance(generator, list) else generator
        return self.vae_decode(z, timestep=timestep, decode_noise_scale=0.0, generator=injected).float()


# Keywords of ``__call__`` that are not request fields (``extend`` passes them through unchecked by the request).
_CALL_ONLY = frozenset({"generator", "latents", "prompt_embeds", "prompt_attention_mask", "negative_prompt_embeds", "negative_prompt_attention_mask",
                        "decode_timestep", "decode_noise_scale", "guidance_rescale", "callback_on_step_end", "callback_on_step_end_tensor_inputs",
                        "max_sequence_length", "callback", "progress_bar", "batch_cfg", "negative_prompt", "num_videos_per_prompt"})  # fmt: skip

