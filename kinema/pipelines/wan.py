"""Wan 2.1 text-to-video: encode the prompt -> sample latents with flow matching -> decode.

The pipeline holds no model logic: it wires a text encoder, the Wan transformer (the denoiser),
a sampler over an explicit sigma schedule, and the causal VAE. Arguments follow diffusers'
``WanPipeline`` names, so code written for diffusers calls kinema unchanged.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from ..errors import CheckpointError, KinemaError
from ..models.vae.wan_vae import WanVAE
from ..models.wan import WanTransformer
from ..sampling import SamplerSpec, cfg, sample
from ..text import TextEncoder
from .common import (
    PromptStates,
    VideoPipeline,
    check_latents,
    check_output_options,
    initial_noise,
    make_generators,
)
from .output import VideoOutput

# Wan 2.1's published sampling defaults (wan/configs/shared_config.py, generate.py).
WAN_FPS = 16
WAN_DEFAULT_STEPS = 50
WAN_DEFAULT_GUIDANCE = 5.0

StepCallback = Callable[[Any, int, torch.Tensor, dict], dict | None]


@dataclass
class WanDefaults:
    """Per-model defaults that a checkpoint's files decide (size, frames, sampler)."""

    height: int = 480
    width: int = 832
    num_frames: int = 81
    num_inference_steps: int = WAN_DEFAULT_STEPS
    guidance_scale: float = WAN_DEFAULT_GUIDANCE
    fps: float = WAN_FPS


class WanPipeline(VideoPipeline):
    """Wan 2.1 text-to-video.

    Args:
        transformer: the denoiser.
        vae: the causal video autoencoder.
        text_encoder: prompts -> (batch, length, text_dim) states (UMT5 for the published models).
        sampler: which solver and schedule (``SamplerSpec``); the shift can be overridden per call.
        defaults: size, frame count and sampling defaults of this model.
        device: where the denoiser and VAE run.
    """

    # Wan 2.1's VAE compresses time 4x and space 8x, and the transformer patches 2x2 latents:
    # frames are 4k+1 and sizes multiples of 16. (An instance re-derives both from its modules.)
    temporal_multiple = 4
    spatial_multiple = 16
    defaults_type = WanDefaults

    transformer: WanTransformer
    vae: WanVAE
    text_encoder: TextEncoder | None
    sampler: SamplerSpec
    defaults: WanDefaults

    # What a kinema model card of this family holds, and what `kinema package` writes by default.
    card_sampler_keys = ("name", "shift", "num_train_timesteps")
    package_sampler = {"name": "unipc", "shift": 1.0}
    package_defaults = {"num_inference_steps": 20, "guidance_scale": 5.0}

    # -- rules read off the components' configs (before loading) ------------------------------------
    @staticmethod
    def sampler_from_card(sampler: dict[str, Any]) -> SamplerSpec:
        """A card's ``sampler`` entry (``{"name", "shift", "num_train_timesteps"}``) as the sampler."""
        return SamplerSpec(**sampler)

    @classmethod
    def rules(cls, transformer: Any, vae: Any, text_dim: int | None = None) -> dict[str, int]:
        """The size rules of :meth:`check_request` for a transformer and VAE config (frames
        ``k t + 1`` for the VAE's time stride t, sizes multiples of its space stride times the
        patch); raises CheckpointError when the parts do not fit together."""
        if transformer.in_dim != vae.z_dim or transformer.out_dim != vae.z_dim:
            raise CheckpointError(
                f"the transformer takes {transformer.in_dim} and gives {transformer.out_dim} latent channels but the VAE has "
                f"{vae.z_dim}; pair the transformer with the VAE it was trained on"
            )
        if text_dim is not None and text_dim != transformer.text_dim:
            raise CheckpointError(f"the transformer takes {transformer.text_dim}-d text states but its text encoder gives {text_dim}-d ones")
        return {"temporal_multiple": vae.temporal_compression, "spatial_multiple": vae.spatial_compression * max(transformer.patch_size[1:])}

    @classmethod
    def defaults_for(cls, card_defaults: dict[str, Any], rules: dict[str, Any]) -> WanDefaults:
        """The model's defaults: a card's, over Wan 2.1's published ones."""
        return WanDefaults(**card_defaults)

    # -- facts derived from the components ---------------------------------------------------------
    @property
    def size_multiple(self) -> int:
        """Height and width must be multiples of this (VAE stride x patch size)."""
        return self.vae_scale_factor_spatial * max(self.transformer.config.patch_size[1:])

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
    ) -> VideoOutput:
        """Generate videos.

        Args:
            prompt: one prompt or a list (a batch). Or pass ``prompt_embeds``.
            negative_prompt: what to steer away from (one, or one per prompt); "" by default.
            height, width: pixels, multiples of ``size_multiple`` (16 for Wan).
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

        Returns:
            VideoOutput with ``frames`` (batch, frames, H, W, 3) uint8 and ``latents``.
        """
        height, width, num_frames, num_inference_steps = self.check_request(
            height, width, num_frames, num_inference_steps, self.defaults, self.vae_scale_factor_temporal, self.size_multiple
        )
        guidance_scale = self.defaults.guidance_scale if guidance_scale is None else float(guidance_scale)
        check_output_options(output_type, num_videos_per_prompt)
        spec = self.sampler if sampler is None and shift is None else self.sampler.with_overrides(name=sampler, shift=shift)
        do_cfg = guidance_scale > 1.0

        # 1. text states: (B, L, text_dim)
        timings, t0 = {}, time.perf_counter()
        cond_states, uncond_states = self.prompt_states(
            prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, do_cfg, num_videos_per_prompt
        )
        cond = cond_states.states  # (B, L, text_dim)
        uncond = uncond_states.states if uncond_states is not None else None
        batch = cond.shape[0]
        timings["text"] = time.perf_counter() - t0

        # 2. initial noise: (B, C, F', H', W')
        shape = (
            batch,
            self.transformer.config.out_dim,
            (num_frames - 1) // self.vae_scale_factor_temporal + 1,
            height // self.vae_scale_factor_spatial,
            width // self.vae_scale_factor_spatial,
        )
        if latents is None:
            latents = initial_noise(shape, make_generators(generator, seed, batch), self.device)
        else:
            check_latents(latents, shape)
            latents = latents.to(self.device, torch.float32)

        # 3. sample
        t0 = time.perf_counter()
        latents = self.denoise(latents, cond, uncond, guidance_scale, num_inference_steps, spec, callback_on_step_end)
        timings["denoise"] = time.perf_counter() - t0
        return self.finish(latents, output_type, timings, lambda: self.decode_latents(latents))

    def denoise(
        self,
        latents: torch.Tensor,
        cond: torch.Tensor,
        uncond: torch.Tensor | None,
        guidance_scale: float,
        num_inference_steps: int,
        spec: SamplerSpec,
        callback: StepCallback | None = None,
    ) -> torch.Tensor:
        """Run the sampler from noise ``latents`` (B, C, F, H, W) float32 to clean latents."""
        sampler, sigmas, timesteps = spec.build(num_inference_steps, device=self.device)
        model_dtype = self.transformer.compute_dtype
        # The text embedding and every block's cross-attention keys/values depend only on the
        # prompt: project them once here instead of at every step (bit-identical results).
        cond = self.transformer.prepare_context(cond)
        uncond = self.transformer.prepare_context(uncond) if uncond is not None else None

        def velocity(x: torch.Tensor, i: int) -> torch.Tensor:
            x = x.to(model_dtype)  # (B, C, F, H, W)
            t = timesteps[i].expand(x.shape[0])  # (B,)
            v = self.transformer(x, t, cond).float()  # (B, C, F, H, W)
            if uncond is None:
                return v
            return cfg(self.transformer(x, t, uncond).float(), v, guidance_scale)

        def on_step(i: int, x: torch.Tensor) -> torch.Tensor | None:
            out = callback(self, i, timesteps[i], {"latents": x}) if callback is not None else None
            return out.get("latents") if out else None

        return sample(velocity, latents, sigmas, sampler, callback=on_step, progress=self.progress)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents (B, C, F', H', W') -> video (B, 3, F, H, W) float32 in [-1, 1]."""
        z = self.vae.denormalize_latents(latents.float())  # float32 math; the VAE casts to its dtype
        return self.vae.decode(z).float()
