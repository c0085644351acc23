"""Wan 2.1 text-to-video: encode the prompt -> sample latents with flow matching -> decode.

The pipeline holds no model logic: it wires a text encoder, the Wan transformer (the denoiser),
a sampler over an explicit sigma schedule, and the causal VAE. Arguments follow diffusers'
``WanPipeline`` names, so code written for diffusers calls kinema unchanged.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from ..errors import CheckpointError, KinemaError
from ..models.vae.wan_vae import WanVAE
from ..models.wan import WanTransformer
from ..request import MemoryModel, ModelRules, half_window
from ..sampling import SamplerSpec
from ..text import TextEncoder
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

# Wan 2.1's published sampling defaults (wan/configs/shared_config.py, generate.py).
WAN_FPS = 16
WAN_DEFAULT_STEPS = 50
WAN_DEFAULT_GUIDANCE = 5.0


@dataclass
class WanDefaults:
    """Per-model defaults that a checkpoint's files decide (size, frames, sampler)."""

    height: int = 480
    width: int = 832
    num_frames: int = 81
    num_inference_steps: int = WAN_DEFAULT_STEPS
    guidance_scale: float = WAN_DEFAULT_GUIDANCE
    fps: float = WAN_FPS
    negative_prompt: str | None = None  # used when a call gives none (the original release: Wan's own)


class WanPipeline(DiffusionPipeline):
    """Wan 2.1 text-to-video.

    Args:
        transformer: the denoiser.
        vae: the causal video autoencoder.
        text_encoder: prompts -> (batch, length, text_dim) states (UMT5 for the published models).
        sampler: which solver and schedule (``SamplerSpec``); the shift can be overridden per call.
        defaults: size, frame count and sampling defaults of this model.
        device: where the denoiser and VAE run.
    """

    defaults_type = WanDefaults

    transformer: WanTransformer
    text_encoder: TextEncoder | None
    sampler: SamplerSpec
    defaults: WanDefaults

    # What a kinema model card of this family holds, and what `kinema package` writes by default.
    card_sampler_keys = ("name", "shift", "num_train_timesteps", "past_sigma")
    package_sampler = {"name": "unipc", "shift": 1.0}
    package_defaults = {"num_inference_steps": 20, "guidance_scale": 5.0}

    @property
    def vae(self) -> WanVAE:
        return self.codec

    # -- rules read off the components' configs (before loading) ------------------------------------
    @classmethod
    def trained_sampler(cls, objective: dict[str, Any]) -> dict[str, Any]:
        """``past_sigma`` from a run that gave its items a past (``past_share`` or ``past_from_data``),
        the level extending holds the known frames at; from any other run, nothing (its
        ``past_sigma`` default means no past)."""
        gave = objective.get("past_share") or objective.get("past_from_data")
        return {"past_sigma": objective["past_sigma"]} if gave and "past_sigma" in objective else {}

    @staticmethod
    def sampler_from_card(sampler: dict[str, Any]) -> SamplerSpec:
        """A card's ``sampler`` entry (``{"name", "shift", "num_train_timesteps"}``, and
        ``past_sigma`` for a model trained with a given past) as the sampler."""
        return SamplerSpec(**sampler)

    @classmethod
    def model_rules(cls, transformer: Any, vae: Any, *, text_dim: int | None = None, card_defaults: dict | None = None,
                    defaults: Any = None, sampler: Any = None, weights: int = 0, element_bytes: int = 4) -> ModelRules:  # fmt: skip
        """Frames ``k t + 1`` for the VAE's time stride t, sizes multiples of its space stride times
        the patch, the positions RoPE can tell apart; raises CheckpointError when the transformer,
        the VAE and the text encoder do not fit together."""
        if transformer.in_dim != vae.z_dim or transformer.out_dim != vae.z_dim:
            raise CheckpointError(
                f"the transformer takes {transformer.in_dim} and gives {transformer.out_dim} latent channels but the VAE has "
                f"{vae.z_dim}; pair the transformer with the VAE it was trained on"
            )
        if text_dim is not None and text_dim != transformer.text_dim:
            raise CheckpointError(f"the transformer takes {transformer.text_dim}-d text states but its text encoder gives {text_dim}-d ones")
        pt, ph, pw = transformer.patch_size
        memory = MemoryModel(
            weights=weights,
            latent_channels=vae.z_dim,
            temporal_compression=vae.temporal_compression,
            spatial_compression=vae.spatial_compression,
            tokens_per_latent_voxel=1 / (pt * ph * pw),
            activation_per_token=7 * transformer.dim + transformer.ffn_dim,
            # prepare_context keeps every block's cross-attention keys and values (text, and the picture's 257 tokens for i2v)
            context_per_stream=2 * transformer.num_layers * transformer.dim * (transformer.text_len + (257 if transformer.image_dim else 0)),
            codec_activation_per_pixel=8 * vae.base_dim * vae.dim_mult[0],
            codec_frames_at_once=vae.temporal_compression + 2,  # one latent frame, plus the causal cache
            element_bytes=element_bytes,
        )
        d = defaults if defaults is not None else WanDefaults(**(card_defaults or {}))
        return ModelRules(
            family="wan-t2v",
            defaults=d,
            temporal_multiple=vae.temporal_compression,
            spatial_multiple=vae.spatial_compression * max(ph, pw),
            sampling_options=cls.sampling_options,
            samplers=cls.allowed_samplers(sampler),
            max_latent_frames=transformer.rope_max_seq_len * pt,
            max_latent_side=transformer.rope_max_seq_len * max(ph, pw),
            memory=memory,
            supports_extend=True,  # the input's last latent frames put back at every step's level (extend)
            context_frames=half_window(d.num_frames, vae.temporal_compression),
        )

    # -- prompts ---------------------------------------------------------------------------------
    def encode_prompt(self, prompts: Sequence[str]) -> torch.Tensor:
        """(batch, text_len, text_dim) states in the denoiser's dtype, on its device."""
        if self.text_encoder is None:
            raise KinemaError("this pipeline was loaded without a text encoder; pass prompt_embeds= instead of a prompt")
        return self.text_encoder(prompts, device=self.device, dtype=self.transformer.compute_dtype)

    def encode_text(self, prompts: list[str]) -> PromptStates:
        return PromptStates(self.encode_prompt(prompts))  # zero-padded states, no mask (Wan's convention)

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
        shift: float | None = None,
        sampler: str | None = None,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        max_sequence_length: int | None = None,
        callback: ProgressCallback | None = None,
        progress_bar: bool = True,
        batch_cfg: bool | None = None,
        cache_threshold: float | None = None,
        **unknown: Any,
    ) -> VideoOutput:
        """Generate videos.

        Args:
            prompt: one prompt or a list (a batch). Or pass ``prompt_embeds``.
            negative_prompt: what to steer away from (one, or one per prompt); by default the
                model's (Wan's own for the original release, as its scripts do; else "").
            height, width: pixels, multiples of ``rules.spatial_multiple`` (16 for Wan).
            num_frames: 4k+1.
            num_inference_steps: sampler steps.
            guidance_scale: classifier-free guidance; at 1.0 or below no unconditional pass is run.
            num_videos_per_prompt: videos per prompt.
            generator: a torch.Generator (or one per video) for the initial noise; or ``seed``.
            seed: an integer seed (a CPU generator): the same seed gives the same video on CPU.
            latents: initial noise (batch, channels, frames, height, width), float32, instead of drawing it.
            prompt_embeds, negative_prompt_embeds: precomputed text states (batch, length, text_dim).
            output_type: "np" (uint8 numpy frames), "pt" (uint8 torch frames) or "latent" (no decode).
            shift: flow-matching shift (None: the model's scheduler default).
            sampler: "unipc" or "euler" (None: the model's scheduler default).
            callback_on_step_end: ``fn(pipe, step, timestep, {"latents": ...}) -> dict | None``; a
                returned "latents" replaces the current latents.
            max_sequence_length: accepted for diffusers compatibility; Wan always uses its text length.
            callback: ``fn(Progress)`` at every stage and step; raising (``kinema.Cancelled``) stops.
            progress_bar: show a progress bar on stderr.
            cache_threshold: step caching (first-block cache): skip the other blocks at a step whose
                first-block residual changed by less than this share since the last full step; None
                or 0: off (the output is then exactly the uncached one).
            batch_cfg: run the unconditional and conditional passes as one batch (faster, twice
                the activation memory); default off.

        Returns:
            VideoOutput with ``frames`` (batch, frames, H, W, 3) uint8 and ``latents``.
        """
        request = self.check_call(
            unknown=unknown, step_callback=callback_on_step_end, step_tensor_inputs=callback_on_step_end_tensor_inputs,
            prompt=prompt, prompt_embeds=prompt_embeds, negative_prompt=negative_prompt, num_videos_per_prompt=num_videos_per_prompt,
            output_type=output_type, height=height, width=width, num_frames=num_frames, num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale, shift=shift, sampler=sampler, seed=seed, cache_threshold=cache_threshold,
        )  # fmt: skip
        reporter = Reporter(callback, progress_bar)
        timings: dict[str, float] = {}
        cond, uncond = self.text_states(request, reporter, timings, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds)
        latents = self.initial_latents(request, cond.batch_size, latents, generator, seed)
        latents, cache = self.sample_latents(request, reporter, timings, latents, cond, uncond, sampler, shift, batch_cfg, callback_on_step_end)
        return self.finish(latents, output_type, timings, lambda: self.decode_latents(latents), reporter, cache=cache)

    # -- the steps of a call (shared with image-to-video) --------------------------------------------
    def text_states(self, request: Any, reporter: Reporter, timings: dict, prompt: Any, negative_prompt: Any,
                    prompt_embeds: Any, negative_prompt_embeds: Any) -> tuple[PromptStates, PromptStates | None]:  # fmt: skip
        """The prompts' states (B, L, text_dim) and, with guidance, the negative prompts' (the
        model's default negative prompt when none is given); no masks: Wan zero-pads."""
        t0 = time.perf_counter()
        if negative_prompt is None and negative_prompt_embeds is None:
            negative_prompt = self.defaults.negative_prompt
        with reporter.stage("text", 1, desc="text") as step:
            cond, uncond = self.prompt_states(
                request.prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, request.guidance_scale > 1.0,
                request.num_videos_per_prompt,
            )  # fmt: skip
            step(1)
        timings["text"] = time.perf_counter() - t0
        return PromptStates(cond.states), (PromptStates(uncond.states) if uncond is not None else None)

    def initial_latents(self, request: Any, batch: int, latents: torch.Tensor | None, generator: Any, seed: int | None) -> torch.Tensor:
        """The initial noise (B, z, F', H', W') float32: drawn (diffusers' rule) or the given ``latents``, checked."""
        shape = (
            batch,
            self.transformer.config.out_dim,
            (request.num_frames - 1) // self.vae_scale_factor_temporal + 1,
            request.height // self.vae_scale_factor_spatial,
            request.width // self.vae_scale_factor_spatial,
        )
        if latents is None:
            return initial_noise(shape, make_generators(generator, seed, batch), self.device)
        check_latents(latents, shape)
        return latents.to(self.device, torch.float32)

    def sample_latents(
        self, request: Any, reporter: Reporter, timings: dict, latents: torch.Tensor, cond: PromptStates, uncond: PromptStates | None,
        sampler: str | None, shift: float | None, batch_cfg: bool | None, callback: StepCallback | None,
        condition: torch.Tensor | None = None, image_embeds: torch.Tensor | None = None, known: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict | None]:  # fmt: skip
        """Sample the latents from the noise: the sampler at the request's size (a shift rule by area
        applies, then the call's overrides), guided. For image-to-video, ``condition`` (B, C', F',
        H', W') joins the noise as extra input channels and ``image_embeds`` (B, tokens, image_dim)
        the text in every block's cross-attention. Extending a video, ``known`` (B, C, K', H', W')
        are the clean latents of its last frames: the first K' latent frames are replaced after every
        step by ``known`` taken to that step's level (from the initial noise's own draw), so the new
        frames are sampled to follow them and come out clean at the end; for a model trained with a
        given past (its sampler's ``past_sigma``) they are held at that level instead, nearly clean
        from the first step, and the model is told a time per frame. Returns the latents and the
        step cache's counts."""
        t0 = time.perf_counter()
        spec = self.sampler.for_size(request.height, request.width)
        spec = spec if sampler is None and shift is None else spec.with_overrides(name=sampler, shift=shift)
        sampler_, sigmas, timesteps = spec.build(request.num_inference_steps, device=self.device)
        if condition is not None:
            condition = condition.to(self.transformer.compute_dtype)

        def denoiser(x: torch.Tensor, t: torch.Tensor, ctx: Any) -> torch.Tensor:
            if condition is not None:  # batched guidance runs 2B rows: the condition repeats
                x = torch.cat([x, condition.repeat(x.shape[0] // condition.shape[0], 1, 1, 1, 1)], dim=1)
            return self.transformer(x, t, ctx)

        def prepare(states: torch.Tensor, mask: Any) -> Any:
            if image_embeds is None:
                return self.transformer.prepare_context(states)
            return self.transformer.prepare_context(states, image_embeds.repeat(states.shape[0] // image_embeds.shape[0], 1, 1))

        after_step, timestep_of = None, None
        if known is not None:  # extending: the known latent frames, from the initial noise's own draw
            after_step = self.known_frames(spec.process, known, latents[:, :, : known.shape[2]].clone(), spec.past_sigma)
            latents = after_step(latents, sigmas[0])
            if spec.past_sigma is not None:  # a model trained with a given past: the known frames' own time
                timestep_of = self.past_times(spec.process, spec.past_sigma, known.shape[2], latents.shape[2])
        cache: dict[str, int] = {}  # step caching: model calls and those skipped
        latents = self.denoise(
            latents, denoiser, prepare, cond, uncond, request.guidance_scale, sampler_, sigmas, timesteps, reporter,
            batch_cfg=batch_cfg, cache_threshold=request.cache_threshold, cache_stats=cache, callback=callback, after_step=after_step,
            timestep_of=timestep_of,
        )  # fmt: skip
        timings["denoise"] = time.perf_counter() - t0
        return latents, cache or None

    def past_times(self, process: Any, past_sigma: float, known: int, frames: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """``timestep_of`` for a model trained with a given past: step times (B,) -> (B, F' / patch_t),
        the first ``known`` latent frames told the lower of the step's time and ``past_sigma``'s."""
        pt = self.transformer.config.patch_size[0]
        if known % pt or frames % pt:
            raise KinemaError(f"a given past of {known} latent frames does not fill whole time patches of {pt}")
        given = torch.arange(frames // pt, device=self.device) < known // pt  # (F'/pt,)
        held = float(process.model_timestep(past_sigma))

        def per_frame(t: torch.Tensor) -> torch.Tensor:
            return torch.where(given, t.clamp(max=held)[:, None], t[:, None])  # (B, F'/pt)

        return per_frame

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
        shift: float | None = None,
        sampler: str | None = None,
        callback: ProgressCallback | None = None,
        progress_bar: bool = True,
        batch_cfg: bool | None = None,
        cache_threshold: float | None = None,
        fps: float | None = None,
        **unknown: Any,
    ) -> VideoOutput:
        """Continue a video: its last ``overlap`` frames, encoded by the causal VAE, fix the first
        latent frames of a new window (put back at every step at that step's noise level), and the
        rest of the window is sampled to follow them; the whole window is decoded with the VAE's
        causal cache, so the seam decodes as one clip.

        Args:
            video: one clip, uint8 (F, H, W, 3) (or float in [0, 1]); its height and width must be
                multiples of the model's stride.
            prompt: what happens next (or ``prompt_embeds``); the other arguments as in ``__call__``.
            num_frames: new frames, a multiple of 4 (default: the model's clip less its first frame).
            overlap: the input's last frames the model sees, 4k+1 (default: up to half the model's
                clip, within the input).
            fps: the output's frame rate (default: the model's; ``generate`` passes the input's).

        Returns:
            VideoOutput whose ``frames`` (B, F + num_frames, H, W, 3) hold the input's frames,
            unchanged, then the new ones; ``latents``: the window's latents.
        """
        frames, overlap, num_frames = self.extension_input(video, overlap, num_frames, unknown)
        f_in, (h, w) = frames.shape[2], tuple(frames.shape[-2:])
        request = self.check_call(
            unknown=unknown, prompt=prompt, prompt_embeds=prompt_embeds, negative_prompt=negative_prompt, num_videos_per_prompt=num_videos_per_prompt,
            output_type=output_type, height=h, width=w, num_frames=num_frames, num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale, shift=shift, sampler=sampler, seed=seed, cache_threshold=cache_threshold,
            extend="(video given)", overlap=overlap,
        )  # fmt: skip
        reporter = Reporter(callback, progress_bar)
        timings: dict[str, float] = {}
        cond, uncond = self.text_states(request, reporter, timings, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds)
        window = dataclasses.replace(request, num_frames=request.overlap + request.num_frames, extend=None, overlap=None)  # the frames sampled
        latents = self.initial_latents(window, cond.batch_size, None, generator, seed)
        past = frames[:, :, f_in - request.overlap :].to(self.device, self.vae.dtype) * 2 - 1  # (1, 3, overlap, H, W) in [-1, 1]
        known = self.vae.normalize_latents(self.vae.encode(past).mode().float()).repeat(cond.batch_size, 1, 1, 1, 1)  # (B, z, K', h', w')
        latents, cache = self.sample_latents(window, reporter, timings, latents, cond, uncond, sampler, shift, batch_cfg, None, known=known)
        decode = self.extension_frames(frames, lambda: self.decode_latents(latents), request.num_frames)  # the input as it was, then the new frames
        return self.with_past(self.finish(latents, output_type, timings, decode, reporter, fps=fps, cache=cache), decode)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents (B, C, F', H', W') -> video (B, 3, F, H, W) float32 in [-1, 1]."""
        z = self.vae.denormalize_latents(latents.float())  # float32 math; the VAE casts to its dtype
        return self.vae_decode(z).float()
