"""What the diffusion pipelines share: classifier-free guidance around the denoiser and the
sampling loop with its callbacks.

A family gives :meth:`DiffusionPipeline.denoise` its denoiser as a function of ``(x, timestep,
context)`` and how to project a batch of text states into a context once (``prepare``); the loop
runs the family's sampler over the schedule, guided (``uncond + g (cond - uncond)``, optionally
rescaled), with the unconditional and conditional passes as one batch or one after the other,
and reports every step to the call's progress reporter and diffusers-style
``callback_on_step_end``.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch

from ..sampling import (
    DISCRETE_SAMPLERS,
    SAMPLERS,
    DiscreteSamplerSpec,
    SamplerSpec,
    cfg,
    rescale_guidance,
    sample,
)
from .base import PromptStates, Reporter, VideoPipeline
from .step_cache import StepCache

StepCallback = Callable[[Any, int, torch.Tensor, dict], dict | None]
Denoiser = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]  # (x, timestep, context) -> prediction


class DiffusionPipeline(VideoPipeline):
    """A pipeline whose generator is a denoiser driven by a sampler over a noise schedule."""

    sampling_options = ("num_inference_steps", "shift", "sampler", "cache_threshold")
    samplers = tuple(SAMPLERS)
    batch_cfg_default = False  # run uncond and cond as one batch unless the call says otherwise
    # A multi-process plan applied to this pipeline (kinema.parallel.plan.parallelize sets it): with
    # guidance parallelism, half of the processes run the conditional pass and half the unconditional.
    parallel: Any = None

    def vae_decode(self, z: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """``self.vae.decode(z, **kwargs)``; under a plan of several processes, split over them by
        latent frames (:func:`kinema.parallel.vae.decode_split`: every process gets the same whole
        video, the one-process decode's)."""
        if self.parallel is not None and self.parallel.plan.world_size > 1:
            from ..parallel.vae import decode_split

            return decode_split(self.vae, z, **kwargs)
        return self.vae.decode(z, **kwargs)

    @classmethod
    def allowed_samplers(cls, spec: SamplerSpec | DiscreteSamplerSpec | None) -> tuple[str, ...]:
        """The sampler names a model with this scheduler takes (a resolution-dependent shift: Euler
        only; the DDPM process: DDPM and DDIM)."""
        if isinstance(spec, DiscreteSamplerSpec):
            return tuple(DISCRETE_SAMPLERS)
        if spec is not None and spec.resolution_shift is not None:
            return ("euler",)
        return tuple(SAMPLERS)

    @staticmethod
    def known_frames(process: Any, clean: torch.Tensor, noise: torch.Tensor, highest: float | None = None) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """``after_step`` for extending a video: the first ``clean.shape[2]`` frames of the sample
        (B, C, F, H, W) replaced by ``clean`` taken to the level the sample is at, always with the
        same ``noise`` (so the known frames follow one noisy path down to ``clean`` itself); with
        ``highest`` (a model trained with a given past), to no level above it."""
        k = clean.shape[2]

        def put_back(x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
            past_last = not level.is_floating_point() and int(level) < 0  # a discrete schedule's step onto the clean sample
            if highest is not None and not past_last:
                level = level.clamp(max=highest)
            at = clean if past_last else process.add_noise(clean, noise, level)
            return torch.cat([at.to(x.dtype), x[:, :, k:]], dim=2)

        return put_back

    def denoise(
        self,
        latents: torch.Tensor,
        denoiser: Denoiser,
        prepare: Callable[[torch.Tensor, torch.Tensor | None], Any],
        cond: PromptStates,
        uncond: PromptStates | None,
        guidance_scale: float,
        sampler: Any,
        sigmas: torch.Tensor,
        timesteps: torch.Tensor,
        reporter: Reporter,
        *,
        guidance_rescale: float = 0.0,
        batch_cfg: bool | None = None,
        cache_threshold: float | None = None,
        cache_stats: dict[str, int] | None = None,
        timestep_of: Callable[[torch.Tensor], torch.Tensor] | None = None,
        after_step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        callback: StepCallback | None = None,
        generator: Any = None,
    ) -> torch.Tensor:
        """Run ``sampler`` over ``sigmas`` from ``latents`` (B, C, F, H, W) float32 to clean latents.

        Args:
            denoiser: the model, ``(x in its dtype, timestep, context) -> prediction``.
            prepare: ``(states, mask or None) -> context``: the text embedding and every block's
                cross-attention keys/values depend only on the prompt, so they are projected once
                here instead of at every step (bit-identical results).
            cond, uncond: the prompts' states; uncond None runs no unconditional pass.
            timesteps: (steps,) the values the denoiser is told at each step; ``timestep_of`` maps
                step i's (B,) timesteps to what the model takes (per-token timesteps, image-to-video).
            batch_cfg: uncond and cond as one batch of 2B (faster; twice the activation memory)
                when their text shapes agree; None: the family's default.
            after_step: ``(x, sigma) -> x`` applied to each step's result, which is at level
                ``sigma`` (image-to-video puts frame 0 back; extending a video puts its known
                frames back at that level).
            callback: diffusers' ``callback_on_step_end``: ``fn(pipe, step, timestep, {"latents": x})``;
                a returned "latents" replaces the current latents.
            generator: the call's generator(s), for samplers that draw noise at each step (DDPM).
            cache_threshold: step caching (:class:`~kinema.pipelines.step_cache.StepCache`) for
                this call; None: off. ``cache_stats`` (a dict) gets its "calls" and "skipped".
        """
        from ..errors import KinemaError

        model_dtype = self.transformer.compute_dtype
        batch_cfg = self.batch_cfg_default if batch_cfg is None else batch_cfg
        if not isinstance(batch_cfg, bool):
            raise KinemaError(f"batch_cfg must be true or false; got {batch_cfg!r}")
        parallel = self.parallel
        if parallel is not None and parallel.sequence > 1 and cache_threshold:
            raise KinemaError("step caching (cache_threshold) does not combine with sequence parallelism (each process would decide on its own tokens); leave it off")
        # Guidance parallelism: this process runs one of the two passes (index 0 the conditional, 1 the
        # unconditional) and gets the other's from its partner. Without guidance both halves run the one pass.
        split = uncond is not None and parallel is not None and parallel.guidance_index is not None
        batched = not split and uncond is not None and batch_cfg and uncond.states.shape == cond.states.shape
        if batched:
            ones = torch.ones(cond.states.shape[:2], device=cond.states.device)
            masks = [ones if s.mask is None else s.mask.to(ones.dtype) for s in (uncond, cond)]
            both = prepare(torch.cat([uncond.states, cond.states]), torch.cat(masks))  # batch 2B
        elif split:
            mine = cond if parallel.guidance_index == 0 else uncond
            own_ctx = prepare(mine.states, mine.mask)
        else:
            cond_ctx = prepare(cond.states, cond.mask)
            uncond_ctx = prepare(uncond.states, uncond.mask) if uncond is not None else None
        b = latents.shape[0]

        def prediction(x: torch.Tensor, i: int) -> torch.Tensor:
            x = x.to(model_dtype)  # (B, C, F, H, W)
            t = timesteps[i].expand(b)  # (B,)
            if timestep_of is not None:
                t = timestep_of(t)
            if split:
                v, v_uncond = parallel.exchange_guidance(denoiser(x, t, own_ctx).float())  # (B, C, F, H, W) each
            elif batched:
                v_uncond, v = denoiser(torch.cat([x, x]), torch.cat([t, t]), both).float().chunk(2)
            else:
                v = denoiser(x, t, cond_ctx).float()  # (B, C, F, H, W)
                if uncond_ctx is None:
                    return v
                v_uncond = denoiser(x, t, uncond_ctx).float()
            return rescale_guidance(cfg(v_uncond, v, guidance_scale), v, guidance_rescale)

        cache = StepCache(cache_threshold) if cache_threshold is not None else None
        if cache is not None:
            denoiser = cache.wrap(denoiser)
        with reporter.stage("denoise", len(sigmas) - 1, desc=f"sampling ({sampler.name})") as step, (
            cache.attached(self.transformer) if cache is not None else contextlib.nullcontext()
        ):

            def on_step(i: int, x: torch.Tensor) -> torch.Tensor | None:
                if after_step is not None:
                    x = after_step(x, sigmas[i + 1])
                out = callback(self, i, timesteps[i], {"latents": x}) if callback is not None else None
                replaced = out.get("latents") if isinstance(out, dict) else None
                step(1)
                return replaced if replaced is not None else x

            out = sample(prediction, latents, sigmas, sampler, callback=on_step, generator=generator)
        if cache is not None and cache_stats is not None:
            cache_stats.update(calls=cache.calls, skipped=cache.skipped)
        return out
