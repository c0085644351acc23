"""Wan 2.1 image-to-video: a picture and a prompt -> a clip that starts from the picture.

As Wan's own ``WanI2V.generate`` and diffusers' ``WanImageToVideoPipeline`` do it:

1. the picture's CLIP features (257 tokens of 1,280 from ViT-H/14's penultimate layer, by the
   layout's image encoder, :mod:`kinema.image.clip`) go to every block's image cross-attention
   through the transformer's ``img_emb`` MLP, for the conditional and the unconditional pass alike;
2. the picture, resized to the clip's size, is frame 0 of a video whose other frames are zeros;
   the VAE encodes that whole video (the posterior's mean) and normalises it: 16 channels;
3. a mask over latent frames, 4 channels (the VAE's time stride): ones for latent frame 0 (the
   picture's four pixel frames), zeros after;
4. at every step the transformer takes ``[noise latents (16), mask (4), picture latents (16)]``:
   the 36 input channels of the I2V models.

Size: given ``height`` and ``width`` (diffusers' way) the picture is scaled to cover that size
and centre-cropped (bicubic); left out, Wan's rule picks them from the picture's aspect ratio and
the model's area (:meth:`~kinema.request.ModelRules.size_for_image`; the default area is 480 x 832) and the picture is
resized to them directly, as Wan does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from ..errors import CheckpointError, KinemaError
from ..request import ModelRules
from .base import Reporter, VideoPipeline, check_tensor
from .diffusion import StepCallback
from .inputs import images_to_tensor, resize_and_crop
from .output import VideoOutput
from .wan import WAN_DEFAULT_GUIDANCE, WAN_FPS, WanPipeline

# Wan 2.1's image-to-video defaults (generate.py: sample_steps 40 for i2v; 480p area; guidance 5).
WAN_I2V_STEPS = 40
WAN_I2V_AREA = 480 * 832


@dataclass
class WanI2VDefaults:
    """Per-model defaults of an image-to-video model. ``height`` x ``width`` is also the area
    Wan's size rule aims at when a call leaves the size out."""

    height: int = 480
    width: int = 832
    num_frames: int = 81
    num_inference_steps: int = WAN_I2V_STEPS
    guidance_scale: float = WAN_DEFAULT_GUIDANCE
    fps: float = WAN_FPS
    negative_prompt: str | None = None  # used when a call gives none (the original release: Wan's own)


class WanImageToVideoPipeline(WanPipeline):
    """Wan 2.1 image-to-video (the I2V-14B models, and any transformer with the image branch).

    Args, as :class:`~kinema.pipelines.wan.WanPipeline`, and:
        image_encoder: pictures -> (N, tokens, image_dim) features (:class:`~kinema.image.CLIPImageEncoder`).
    """

    defaults_type = WanI2VDefaults
    supports_image = True
    card_sampler_keys = ("name", "shift", "num_train_timesteps")

    def __init__(self, transformer, codec, text_encoder, sampler, defaults=None, device="cpu", image_encoder=None):
        super().__init__(transformer, codec, text_encoder, sampler, defaults=defaults, device=device)
        self.image_encoder = image_encoder
        width = transformer.config.image_dim
        if image_encoder is not None and image_encoder.dim != width:
            raise CheckpointError(f"the transformer takes {width}-wide image features but its image encoder gives {image_encoder.dim}")

    @classmethod
    def model_rules(cls, transformer: Any, vae: Any, *, text_dim: int | None = None, card_defaults: dict | None = None,
                    defaults: Any = None, sampler: Any = None, weights: int = 0, element_bytes: int = 4) -> ModelRules:  # fmt: skip
        """As Wan's text-to-video rules, for a transformer that takes the noise, the mask and the
        picture's latents (``2 z_dim + time stride`` channels) and CLIP features."""
        mask = vae.temporal_compression
        if transformer.image_dim is None:
            raise CheckpointError("this Wan transformer has no image branch (image_dim); it is a text-to-video model")
        if transformer.in_dim != 2 * vae.z_dim + mask or transformer.out_dim != vae.z_dim:
            raise CheckpointError(
                f"the transformer takes {transformer.in_dim} and gives {transformer.out_dim} channels; an image-to-video "
                f"transformer with this VAE ({vae.z_dim} latent channels) takes {2 * vae.z_dim + mask} (noise, mask, picture) and gives {vae.z_dim}"
            )
        text_model = _as_t2v(transformer, vae.z_dim)
        rules = WanPipeline.model_rules(text_model, vae, text_dim=text_dim, defaults=defaults if defaults is not None
                                        else WanI2VDefaults(**(card_defaults or {})), sampler=sampler, weights=weights,
                                        element_bytes=element_bytes)  # fmt: skip
        import dataclasses

        return dataclasses.replace(rules, family="wan-i2v", supports_image=True, requires_image=True, image_size_rule=True,
                                   supports_extend=False, context_frames=None)  # its extension needs the picture's channels too: not yet  # fmt: skip

    # -- the call ----------------------------------------------------------------------------------
    @torch.no_grad()
    def extend(self, video: Any, prompt: Any = None, num_frames: int | None = None, overlap: int | None = None, **kwargs: Any) -> Any:
        """Not yet for image-to-video: its window also needs the picture's channels (refused in one line)."""
        return VideoPipeline.extend(self, video, prompt, num_frames, overlap, **kwargs)

    def __call__(
        self,
        image: Any = None,
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
        image_embeds: torch.Tensor | None = None,
        max_area: int | None = None,
        output_type: str = "np",
        shift: float | None = None,
        sampler: str | None = None,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        max_sequence_length: int | None = None,
        callback: Any = None,
        progress_bar: bool = True,
        batch_cfg: bool | None = None,
        cache_threshold: float | None = None,
        **unknown: Any,
    ) -> VideoOutput:
        """Generate videos that start from ``image``.

        Args:
            image: the first frame: one picture for every prompt, or one per prompt (PIL image,
                uint8 array (H, W, 3), float tensor (3, H, W) in [0, 1]).
            height, width: the clip's size (multiples of 16); the picture is scaled to cover it and
                centre-cropped. Leave both out for Wan's rule: the picture's aspect ratio within
                the model's area (480 x 832 by default), the picture resized to it.
            max_area: with no size given, the pixels Wan's rule aims at (None: the model's default
                size's area; Wan's 720p models: 720 * 1280).
            image_embeds: precomputed image features (N, tokens, image_dim) instead of encoding ``image``
                (the picture is still needed: its pixels are frame 0).
            Everything else as :meth:`WanPipeline.__call__`.

        Returns:
            VideoOutput with ``frames`` (batch, frames, H, W, 3) uint8 and ``latents``.
        """
        if image is None:
            raise KinemaError("image-to-video needs image=: the picture the clip starts from")
        pixels = images_to_tensor(image)  # (n, 3, H_in, W_in) in [0, 1]
        if (height is None) != (width is None):
            raise KinemaError("give both height and width, or neither (then the picture's aspect ratio decides them)")
        auto_size = height is None
        if max_area is not None and not auto_size:
            raise KinemaError("give max_area (the size from the picture) or height and width, not both")
        if auto_size:
            from ..request import GenerationRequest

            GenerationRequest(prompt="-", max_area=max_area).checked_alone()  # a whole number of pixels, in bounds
            height, width = self.rules.size_for_image(pixels.shape[2], pixels.shape[3], max_area)
        request = self.check_call(
            unknown=unknown, step_callback=callback_on_step_end, step_tensor_inputs=callback_on_step_end_tensor_inputs,
            prompt=prompt, prompt_embeds=prompt_embeds, negative_prompt=negative_prompt, num_videos_per_prompt=num_videos_per_prompt,
            output_type=output_type, height=height, width=width, num_frames=num_frames, num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale, shift=shift, sampler=sampler, seed=seed, cache_threshold=cache_threshold, image="(picture)",
        )  # fmt: skip
        reporter = Reporter(callback, progress_bar)
        timings: dict[str, float] = {}
        cond, uncond = self.text_states(request, reporter, timings, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds)
        batch = cond.batch_size
        n_prompts = batch // num_videos_per_prompt
        if pixels.shape[0] not in (1, n_prompts):
            raise KinemaError(f"got {pixels.shape[0]} images for {n_prompts} prompts; pass one, or one per prompt")

        # the picture: CLIP features (B, tokens, image_dim), then the condition (B, t + z, F', H', W'):
        # the mask and the latents of [picture at the clip's size, zeros...] (the VAE draws nothing)
        t0 = time.perf_counter()
        with reporter.stage("image", 2, desc="picture") as step:
            if image_embeds is None:
                if self.image_encoder is None:
                    raise KinemaError("this pipeline was loaded without an image encoder; pass image_embeds= with image=")
                image_embeds = self.image_encoder(image, device=self.device, dtype=self.transformer.compute_dtype)
            else:
                check_tensor(image_embeds, f"image_embeds (pictures, tokens, {self.transformer.config.image_dim})",
                             (None, None, self.transformer.config.image_dim))  # fmt: skip
                image_embeds = image_embeds.to(self.device, self.transformer.compute_dtype)
            image_embeds = self._per_video(image_embeds, n_prompts, num_videos_per_prompt, "image_embeds")
            step(1)
            frame0 = self._frame0(pixels, request.height, request.width, auto_size)  # (n, 3, H, W) in [-1, 1]
            condition = self._per_video(self.image_condition(frame0, request.num_frames), n_prompts, num_videos_per_prompt, "the picture")
            step(1)
        timings["image"] = time.perf_counter() - t0

        latents = self.initial_latents(request, batch, latents, generator, seed)
        latents, cache = self.sample_latents(request, reporter, timings, latents, cond, uncond, sampler, shift, batch_cfg,
                                             callback_on_step_end, condition=condition, image_embeds=image_embeds)  # fmt: skip
        return self.finish(latents, output_type, timings, lambda: self.decode_latents(latents), reporter, cache=cache)

    # -- the picture -------------------------------------------------------------------------------
    @staticmethod
    def _frame0(pixels: torch.Tensor, height: int, width: int, auto_size: bool) -> torch.Tensor:
        """The picture at the clip's size in [-1, 1]: resized straight to it (Wan's rule, whose size
        keeps the aspect ratio) or scaled to cover it and centre-cropped (a size given), bicubic."""
        x = pixels * 2 - 1  # (n, 3, H_in, W_in)
        if auto_size:
            if tuple(x.shape[-2:]) != (height, width):
                x = F.interpolate(x, size=(height, width), mode="bicubic", align_corners=False)
            return x
        return resize_and_crop(x, height, width, mode="bicubic")

    def image_condition(self, frame0: torch.Tensor, num_frames: int) -> torch.Tensor:
        """The picture (n, 3, H, W) in [-1, 1] as the transformer's extra input (n, t + z, F', H', W'):
        the mask over latent frames (t = the VAE's time stride channels: ones for latent frame 0),
        then the normalised latents of the video [picture, zeros x (num_frames - 1)]."""
        n, _, h, w = frame0.shape
        video = torch.cat([frame0[:, :, None], frame0.new_zeros(n, 3, num_frames - 1, h, w)], dim=2)  # (n, 3, F, H, W)
        z = self.vae.normalize_latents(self.vae.encode(video.to(self.vae.device, self.vae.dtype)).mode().float())  # (n, z, F', h', w')
        t = self.vae_scale_factor_temporal
        mask = torch.zeros(n, t, z.shape[2], z.shape[3], z.shape[4], device=z.device)  # (n, t, F', h', w')
        mask[:, :, 0] = 1  # latent frame 0 stands for pixel frame 0 repeated t times: all of them given
        return torch.cat([mask, z], dim=1).to(self.device)

    @staticmethod
    def _per_video(x: torch.Tensor, n_prompts: int, per_prompt: int, what: str) -> torch.Tensor:
        """One (or one per prompt) -> one per video, prompt-major (B = prompts x videos per prompt)."""
        if x.shape[0] == 1:
            return x.expand(n_prompts * per_prompt, *x.shape[1:]).contiguous()
        if x.shape[0] != n_prompts:
            raise KinemaError(f"{what}: got {x.shape[0]} for {n_prompts} prompts; pass one, or one per prompt")
        return x.repeat_interleave(per_prompt, dim=0)


def _as_t2v(transformer: Any, z_dim: int) -> Any:
    """The transformer's config as a text-to-video one (the image channels and branch aside), for
    the size, position and memory rules the two share."""
    import dataclasses

    return dataclasses.replace(transformer, in_dim=z_dim, image_dim=None)
