"""Pieces the pipelines share: argument checks, prompts, seeds, initial noise (diffusion), the
output, and image / video inputs for conditioning."""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import KinemaError
from ..video import to_uint8
from .output import VideoOutput


def check_frames(num_frames: int, temporal_factor: int, codec: str = "VAE") -> None:
    """Causal video VAEs (and VQ tokenizers, ``codec="tokenizer"``) take ``temporal_factor * k + 1`` frames."""
    if not isinstance(num_frames, int) or num_frames < 1 or (num_frames - 1) % temporal_factor:
        lo = max(1, (max(int(num_frames), 1) - 1) // temporal_factor * temporal_factor + 1)
        raise KinemaError(
            f"num_frames must be {temporal_factor}k+1 for this {codec} (1, {temporal_factor + 1}, "
            f"{2 * temporal_factor + 1}, ...); got {num_frames}, try {lo} or {lo + temporal_factor}"
        )


def check_size(height: int, width: int, multiple: int) -> None:
    """Height and width must be positive multiples of the VAE stride times the patch size."""
    for name, v in (("height", height), ("width", width)):
        if not isinstance(v, int) or v <= 0 or v % multiple:
            lo = max(multiple, int(v) // multiple * multiple) if isinstance(v, int) else multiple
            raise KinemaError(f"{name} must be a positive multiple of {multiple} for this model; got {v}, try {lo} or {lo + multiple}")


def check_steps(num_inference_steps: int) -> None:
    if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
        raise KinemaError(f"num_inference_steps must be a positive integer; got {num_inference_steps}")


def as_prompt_list(prompt: str | Sequence[str] | None, name: str = "prompt") -> list[str] | None:
    if prompt is None:
        return None
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, Sequence) and all(isinstance(p, str) for p in prompt) and len(prompt) > 0:
        return list(prompt)
    raise KinemaError(f"{name} must be a string or a non-empty list of strings; got {type(prompt).__name__}")


def make_generators(
    generator: torch.Generator | list[torch.Generator] | None, seed: int | None, batch: int
) -> torch.Generator | list[torch.Generator] | None:
    """Resolve ``generator=`` / ``seed=`` (diffusers takes the first, Wan's scripts the second)."""
    if generator is not None and seed is not None:
        raise KinemaError("pass either generator= or seed=, not both")
    if seed is not None:
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise KinemaError(f"seed must be an integer; got {seed!r}")
        return torch.Generator("cpu").manual_seed(seed)
    if isinstance(generator, list) and len(generator) != batch:
        raise KinemaError(f"got {len(generator)} generators for a batch of {batch} videos; pass one per video")
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


def check_latents(latents: torch.Tensor, expected: tuple[int, ...]) -> None:
    if not isinstance(latents, torch.Tensor) or tuple(latents.shape) != tuple(expected):
        got = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
        raise KinemaError(f"latents must have shape (batch, channels, frames, height, width) = {tuple(expected)}; got {got}")


def check_output_options(output_type: str, num_videos_per_prompt: int) -> None:
    if output_type not in ("np", "pt", "latent"):
        raise KinemaError(f"output_type must be 'np', 'pt' or 'latent'; got {output_type!r}")
    if not isinstance(num_videos_per_prompt, int) or num_videos_per_prompt < 1:
        raise KinemaError(f"num_videos_per_prompt must be a positive integer; got {num_videos_per_prompt}")


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


class VideoPipeline:
    """What every text-to-video pipeline shares: request checks against the model's size rules,
    the prompt / negative prompt / precomputed-states logic, the progress switch and the frame rate.

    Subclasses set ``temporal_multiple``, ``spatial_multiple`` (the layout-level size rules the CLI
    checks before loading) and ``defaults_type``, hold ``transformer`` (with ``compute_dtype``),
    ``defaults``, ``device`` and ``progress``, and implement :meth:`encode_text`. The request check
    (:meth:`check_request`) and the sampling options are the diffusion pipelines'; a pipeline with
    another generator (the token model's) overrides both.
    """

    temporal_multiple: int
    spatial_multiple: int
    defaults_type: type
    supports_image: bool = False  # takes image= (image-to-video)
    supports_video: bool = False  # takes video= and strength= (video-to-video)
    # The keyword arguments of __call__ that steer the sampler (beyond prompts, size, frames,
    # guidance and seeds, which every pipeline takes). The CLI and `kinema eval` ask this which of
    # their options apply to a model.
    sampling_options: tuple[str, ...] = ("num_inference_steps", "shift", "sampler")

    def __init__(
        self,
        transformer: torch.nn.Module,
        vae: torch.nn.Module,
        text_encoder: Any,
        sampler: Any,
        defaults: Any = None,
        device: torch.device | str = "cpu",
    ):
        self.transformer = transformer.eval().requires_grad_(False)
        self.vae = vae.eval().requires_grad_(False)
        self.text_encoder = text_encoder
        self.sampler = sampler
        self.defaults = defaults or self.defaults_type()
        self.device = torch.device(device)
        self.progress = True

    # -- facts derived from the components ---------------------------------------------------------
    @property
    def codec(self):
        """The video codec (a VAE here; a subclass with another codec, e.g. a VQ tokenizer, overrides this)."""
        return self.vae

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

    @classmethod
    def check_request(
        cls,
        height: int | None = None,
        width: int | None = None,
        num_frames: int | None = None,
        num_inference_steps: int | None = None,
        defaults: Any = None,
        temporal_multiple: int | None = None,
        spatial_multiple: int | None = None,
        **sampling: Any,
    ) -> tuple[int, int, int, int]:
        """Fill defaults and check sizes before any work (the CLI calls it before loading weights).

        ``sampling``: other sampling options of the call (``shift``, ``sampler``): their names are
        checked here, their values where the call builds its schedule.

        Returns (height, width, num_frames, num_inference_steps); raises KinemaError on bad values.
        """
        cls.check_options(sampling)
        d = defaults or cls.defaults_type()
        height = d.height if height is None else height
        width = d.width if width is None else width
        num_frames = d.num_frames if num_frames is None else num_frames
        num_inference_steps = d.num_inference_steps if num_inference_steps is None else num_inference_steps
        check_frames(num_frames, temporal_multiple or cls.temporal_multiple)
        check_size(height, width, spatial_multiple or cls.spatial_multiple)
        check_steps(num_inference_steps)
        return height, width, num_frames, num_inference_steps

    @classmethod
    def check_options(cls, names: Iterable[str]) -> None:
        """Raise a one-line KinemaError for sampling options this pipeline does not take."""
        unknown = [n for n in names if n not in cls.sampling_options]
        if unknown:
            raise KinemaError(
                f"{', '.join(unknown)} does not apply to {cls.__name__}; its sampling options are {', '.join(cls.sampling_options)}"
            )

    def set_progress_bar_config(self, disable: bool = False) -> None:
        """diffusers-style switch for the per-step progress bar."""
        self.progress = not disable

    def encode_text(self, prompts: list[str]) -> PromptStates:
        """Prompts -> their states (and mask) in the denoiser's dtype, on its device."""
        raise NotImplementedError

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
        prompts = as_prompt_list(prompt)
        if (prompts is None) == (prompt_embeds is None):
            raise KinemaError("pass exactly one of prompt= and prompt_embeds=")
        cond = encode(prompts) if prompts is not None else self._given_states(prompt_embeds, prompt_attention_mask)
        n_prompts = cond.batch_size
        uncond = None
        if do_cfg:
            if negative_prompt_embeds is not None:
                uncond = self._given_states(negative_prompt_embeds, negative_prompt_attention_mask)
            else:
                negatives = as_prompt_list(negative_prompt if negative_prompt is not None else "", "negative_prompt")
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

    def _given_states(self, embeds: torch.Tensor, mask: torch.Tensor | None) -> PromptStates:
        states = embeds.to(self.device, self.transformer.compute_dtype)  # type: ignore[attr-defined]
        if mask is not None:
            if tuple(mask.shape) != tuple(states.shape[:2]):
                raise KinemaError(f"attention mask has shape {tuple(mask.shape)}; expected (batch, length) = {tuple(states.shape[:2])}")
            mask = mask.to(self.device)
        return PromptStates(states, mask)

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
        fps: float | None = None,
    ) -> VideoOutput:
        """The call's result: the latents alone (``output_type="latent"``), or decoded by ``decode()``
        ((B, 3, F, H, W) in [-1, 1]) to uint8 frames (B, F, H, W, 3), numpy or torch."""
        fps = self.fps if fps is None else fps
        if output_type == "latent":
            return VideoOutput(frames=None, latents=latents, fps=fps, timings=timings)
        t0 = time.perf_counter()
        frames = to_uint8(decode())
        timings["decode"] = time.perf_counter() - t0
        return VideoOutput(frames=frames.numpy() if output_type == "np" else frames, latents=latents, fps=fps, timings=timings)


@torch.no_grad()
def reconstruct_frames(frames: np.ndarray | torch.Tensor, codec: Any) -> np.ndarray:
    """uint8 (or [0, 1] float) frames (B, F, H, W, 3) -> ``codec.roundtrip`` (a
    :class:`~kinema.models.codec.VideoCodec`, on its device in its dtype) -> uint8 frames (B, F, H, W, 3)."""
    video = _unit_range(frames, "frames")  # (B, F, H, W, 3) in [0, 1]
    if video.dim() != 5 or video.shape[-1] != 3:
        raise KinemaError(f"frames must be (B, F, H, W, 3); got shape {tuple(video.shape)}")
    video = (video.permute(0, 4, 1, 2, 3) * 2 - 1).to(codec.device, codec.dtype)  # (B, 3, F, H, W)
    return to_uint8(codec.roundtrip(video)).cpu().numpy()


# ------------------------------------------------------------------------------------------------
# Images and videos as conditioning input
# ------------------------------------------------------------------------------------------------
def _as_array(x: Any) -> np.ndarray | torch.Tensor:
    if hasattr(x, "convert") and hasattr(x, "size"):  # a PIL image, without importing PIL
        return np.asarray(x.convert("RGB"))
    if isinstance(x, (np.ndarray, torch.Tensor)):
        return x
    raise KinemaError(f"expected an image (PIL image, numpy array or torch tensor); got {type(x).__name__}")


def _unit_range(x: np.ndarray | torch.Tensor, what: str) -> torch.Tensor:
    """uint8 -> [0, 1]; floats must already be in [0, 1]. Returns float32."""
    t = torch.as_tensor(np.ascontiguousarray(x) if isinstance(x, np.ndarray) else x)
    if t.dtype == torch.uint8:
        return t.float() / 255
    if not t.is_floating_point():
        raise KinemaError(f"{what} must be uint8 or float in [0, 1]; got dtype {t.dtype}")
    t = t.float()
    if t.numel() and (float(t.min()) < 0 or float(t.max()) > 1):
        raise KinemaError(f"{what} must be uint8 or float in [0, 1]; got values in [{float(t.min()):.3g}, {float(t.max()):.3g}]")
    return t


def images_to_tensor(image: Any) -> torch.Tensor:
    """One image or a list of images -> (N, 3, H, W) float32 in [0, 1].

    Accepted: PIL images; numpy arrays and uint8 tensors as (H, W, 3) or (N, H, W, 3) (channels last,
    as PIL, PyAV and kinema's own frames are); float tensors as (3, H, W) or (N, 3, H, W) in [0, 1]
    (channels first, as diffusers takes them). uint8 is scaled by 1/255; floats must be in [0, 1].
    """
    if isinstance(image, (list, tuple)):
        if not image:
            raise KinemaError("image is an empty list")
        return torch.cat([images_to_tensor(i) for i in image])
    x = _as_array(image)
    channels_first = isinstance(x, torch.Tensor) and x.is_floating_point()
    t = _unit_range(x, "image")
    if t.dim() == 3:
        t = t.unsqueeze(0)
    if t.dim() != 4:
        raise KinemaError(f"image must be (H, W, 3) or (N, H, W, 3) (float tensors: (3, H, W) or (N, 3, H, W)); got shape {tuple(t.shape)}")
    if not channels_first:
        t = t.permute(0, 3, 1, 2)  # (N, 3, H, W)
    if t.shape[1] != 3:
        layout = "(N, 3, H, W)" if channels_first else "(N, H, W, 3)"
        raise KinemaError(f"image must have 3 (RGB) channels in the layout {layout}; got shape {tuple(x.shape)}")
    return t.contiguous()


def videos_to_tensor(video: Any) -> torch.Tensor:
    """One video or a batch -> (N, 3, F, H, W) float32 in [0, 1].

    Accepted: frames channels-last, (F, H, W, 3) or (N, F, H, W, 3), as numpy arrays or tensors,
    uint8 (what ``kinema.video.read_video`` and a pipeline's ``frames`` give) or float in [0, 1]; or
    a list of frames (PIL images or (H, W, 3) arrays), one video.
    """
    if isinstance(video, (list, tuple)):
        if not video:
            raise KinemaError("video is an empty list")
        frames = [_unit_range(_as_array(f), "video frame") for f in video]
        if any(f.dim() != 3 for f in frames):
            raise KinemaError("a video given as a list must be a list of (H, W, 3) frames")
        try:
            t = torch.stack(frames)[None]  # (1, F, H, W, 3)
        except RuntimeError:
            raise KinemaError("the frames of a video must all have the same size") from None
    else:
        t = _unit_range(_as_array(video), "video")
        if t.dim() == 4:
            t = t[None]
    if t.dim() != 5 or t.shape[-1] != 3:
        raise KinemaError(f"video must be frames (F, H, W, 3) or (N, F, H, W, 3), channels last; got shape {tuple(t.shape)}")
    return t.permute(0, 4, 1, 2, 3).contiguous()  # (N, 3, F, H, W)


def resize_and_crop(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Scale (..., H, W) frames to cover ``height`` x ``width``, keeping the aspect ratio, then crop
    the centre: LTX-Video's own rule (bilinear, ``resize_and_crop_tensor``). Unchanged at that size."""
    h, w = x.shape[-2:]
    if (h, w) == (height, width):
        return x
    ratio = max(height / h, width / w)
    rh, rw = max(height, int(h * ratio)), max(width, int(w * ratio))
    lead = x.shape[:-2]
    y = F.interpolate(x.reshape(-1, 1, h, w), size=(rh, rw), mode="bilinear", align_corners=False)  # channels alike
    y = y.reshape(*lead, rh, rw)
    top, left = (rh - height) // 2, (rw - width) // 2
    return y[..., top : top + height, left : left + width]
