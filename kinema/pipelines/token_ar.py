"""Autoregressive text-to-video: encode the prompt -> generate video tokens one at a time with the
token model -> decode the token grids with the VQ tokenizer.

The pipeline holds no model logic: it wires a text encoder, the token model
(:class:`~kinema.models.token_ar.TokenAR`, decoded by :func:`~kinema.models.token_ar.generate` with
its KV cache), a sampling rule (:class:`~kinema.sampling.tokens.TokenSampling`) and the VQ video
tokenizer. Arguments follow the diffusion pipelines' (diffusers') names where they mean the same
thing (``prompt``, ``negative_prompt``, ``height``, ``width``, ``num_frames``, ``guidance_scale``,
``generator``, ``output_type``) and transformers' ``generate`` names for the sampling rule
(``temperature``, ``top_k``, ``top_p``, ``typical_p``).

Sizes: the token model predicts a fixed (h, w) grid per frame, so a model makes one frame size only
(the grid times the tokenizer's stride); frames are ``t k + 1`` for a tokenizer that compresses time
``t`` times (one token grid for the first frame, one per ``t`` frames after it).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch

from ..errors import CheckpointError, KinemaError
from ..models.token_ar import TokenAR, generate
from ..models.vae.vq_video import VQVideoTokenizer
from ..sampling.tokens import TokenSampling, guided_logits, sample_tokens
from ..text import TextEncoder
from .common import (
    PromptStates,
    VideoPipeline,
    check_frames,
    check_output_options,
    make_generators,
)
from .output import VideoOutput

TOKEN_AR_FPS = 16  # the shapes world's frame rate (kinema.data.shapes.DEFAULT_FPS), Wan 2.1's too
TOKEN_AR_DEFAULT_GUIDANCE = 3.0  # classifier-free guidance on log-probabilities (1 = off)
TOKEN_AR_DEFAULT_FRAMES = 33  # 2 s at 16 fps; t k + 1 for every power-of-two temporal compression up to 32


@dataclass
class TokenARDefaults:
    """Per-model defaults a token model's card decides."""

    height: int | None = None  # None: the model's frame height (token grid x tokenizer stride), the only one it makes
    width: int | None = None  # likewise
    num_frames: int = TOKEN_AR_DEFAULT_FRAMES
    guidance_scale: float = TOKEN_AR_DEFAULT_GUIDANCE
    fps: float = TOKEN_AR_FPS


def check_frame_size(height: int, width: int, frame_size: tuple[int, int], grid: tuple[int, int] | None = None) -> None:
    """A token model makes ``frame_size`` = (height, width) frames only."""
    if (height, width) != tuple(frame_size):
        how = f" (its {grid[0]}x{grid[1]} token grid at {frame_size[0] // grid[0]} pixels per token)" if grid else ""
        raise KinemaError(
            f"height and width must be {frame_size[0]} and {frame_size[1]} for this model{how}; got {height} and {width}"
        )


class TokenARPipeline(VideoPipeline):
    """Autoregressive text-to-video with a token model and a VQ video tokenizer.

    Args:
        transformer: the token model (:class:`~kinema.models.token_ar.TokenAR`), bf16/fp32 or with
            FP8 linears (its compute dtype is its token embedding's).
        tokenizer: the VQ video tokenizer whose token ids the model predicts (a *video* tokenizer:
            the text encoder holds its own text tokenizer).
        text_encoder: prompts -> (batch, length, text_dim) zero-padded states (the seam every
            kinema text encoder provides), or None (then pass ``prompt_embeds``).
        sampler: the model's default sampling rule (temperature, top_k, top_p, typical_p; its
            ``guidance_scale`` is not used: guidance comes from ``defaults``).
        defaults: size, frame count, guidance and frame rate defaults of this model.
        device: where the token model and the tokenizer run.
    """

    defaults_type = TokenARDefaults
    sampling_options = ("temperature", "top_k", "top_p", "typical_p")

    transformer: TokenAR
    tokenizer: VQVideoTokenizer
    text_encoder: TextEncoder | None
    sampler: TokenSampling
    defaults: TokenARDefaults

    def __init__(
        self,
        transformer: TokenAR,
        tokenizer: VQVideoTokenizer,
        text_encoder: TextEncoder | None,
        sampler: TokenSampling | None = None,
        defaults: TokenARDefaults | None = None,
        device: torch.device | str = "cpu",
    ):
        # The base's __init__ would hold the codec as ``vae``; here it is the VQ tokenizer.
        if transformer.config.vocab_size != tokenizer.codebook_size:
            raise KinemaError(
                f"the token model predicts {transformer.config.vocab_size} ids but the tokenizer has "
                f"{tokenizer.codebook_size} codes; pair the model with the tokenizer it was trained on"
            )
        self.transformer = transformer.eval().requires_grad_(False)
        self.tokenizer = tokenizer.eval().requires_grad_(False)
        self.text_encoder = text_encoder
        self.sampler = sampler or TokenSampling()
        self.defaults = defaults or TokenARDefaults()
        self.device = torch.device(device)
        self.progress = True

    # What a kinema model card of this family holds, and what `kinema package` writes by default:
    # plain sampling from the full distribution (temperature 1, every filter off) and guidance 3.
    card_sampler_keys = ("temperature", "top_k", "top_p", "typical_p")
    package_sampler = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "typical_p": 1.0}
    package_defaults = {"guidance_scale": TOKEN_AR_DEFAULT_GUIDANCE}

    # -- rules read off the components' configs (before loading) ------------------------------------
    @staticmethod
    def sampler_from_card(sampler: dict[str, Any]) -> TokenSampling:
        """A card's ``sampler`` entry (``{"temperature", "top_k", "top_p", "typical_p"}``) as the rule."""
        return TokenSampling(**sampler)

    @classmethod
    def rules(cls, transformer: Any, tokenizer: Any, text_dim: int | None = None) -> dict[str, Any]:
        """The request rules of :meth:`check_request`: the tokenizer's time stride and the one frame
        size (token grid x stride); raises CheckpointError unless the parts fit together (codebook
        size, text width)."""
        if transformer.vocab_size != tokenizer.codebook_size:
            raise CheckpointError(
                f"the token model predicts {transformer.vocab_size} ids but the tokenizer has {tokenizer.codebook_size} codes; "
                "package the model with the tokenizer it was trained on"
            )
        if text_dim is not None and text_dim != transformer.text_dim:
            raise CheckpointError(
                f"the token model takes {transformer.text_dim}-d text states but its text encoder gives {text_dim}-d ones; "
                "package it with the text encoder it was trained with"
            )
        s = tokenizer.spatial_compression
        grid = tuple(transformer.grid)
        return {"temporal_multiple": tokenizer.temporal_compression, "frame_size": (grid[0] * s, grid[1] * s), "grid": grid}

    @classmethod
    def defaults_for(cls, card_defaults: dict[str, Any], rules: dict[str, Any]) -> TokenARDefaults:
        """A card's defaults; height and width, when given, must be the model's frame size."""
        height, width = rules["frame_size"]
        defaults = TokenARDefaults(**card_defaults)
        given = (height if defaults.height is None else defaults.height, width if defaults.width is None else defaults.width)
        if given != (height, width):
            raise CheckpointError(
                f"defaults height x width {defaults.height}x{defaults.width} is not this model's frame size {height}x{width} "
                "(its token grid times the tokenizer's stride); fix or drop them"
            )
        return dataclasses.replace(defaults, height=height, width=width)

    # -- facts derived from the components ---------------------------------------------------------
    @property
    def codec(self) -> VQVideoTokenizer:
        return self.tokenizer

    @property
    def frame_size(self) -> tuple[int, int]:
        """(height, width) in pixels: the only frame size this model makes."""
        h, w = self.transformer.config.grid
        return h * self.vae_scale_factor_spatial, w * self.vae_scale_factor_spatial

    # -- checks ------------------------------------------------------------------------------------
    @classmethod
    def check_request(  # type: ignore[override]  (a token model has no steps, and one frame size)
        cls,
        height: int | None = None,
        width: int | None = None,
        num_frames: int | None = None,
        defaults: TokenARDefaults | None = None,
        temporal_multiple: int | None = None,
        frame_size: tuple[int, int] | None = None,
        grid: tuple[int, int] | None = None,
        **sampling: Any,
    ) -> tuple[int, int, int]:
        """Fill defaults and check a request before any work (the CLI calls it before loading weights).

        Args:
            height, width, num_frames: the request (None: the defaults).
            defaults: the model's defaults.
            temporal_multiple: the tokenizer's temporal compression (frames are ``t k + 1``).
            frame_size: (height, width), the model's only frame size (None: the defaults' size).
            grid: the token grid, for the error message.
            sampling: temperature, top_k, top_p, typical_p as the call takes them (None: the
                model's); names and values are checked.

        Returns (height, width, num_frames); raises KinemaError on bad values.
        """
        cls.check_options(sampling)
        d = defaults or cls.defaults_type()
        if frame_size is None:
            if d.height is None or d.width is None:
                raise KinemaError("a token model's frame size comes from its token grid and tokenizer: pass frame_size")
            frame_size = (d.height, d.width)
        height = (d.height if d.height is not None else frame_size[0]) if height is None else height
        width = (d.width if d.width is not None else frame_size[1]) if width is None else width
        num_frames = d.num_frames if num_frames is None else num_frames
        check_frames(num_frames, temporal_multiple or 1, codec="tokenizer")
        check_frame_size(height, width, frame_size, grid)
        TokenSampling(**{k: v for k, v in sampling.items() if v is not None})  # raises on a bad value
        return height, width, num_frames

    def sampling_rule(
        self,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        typical_p: float | None = None,
        guidance_scale: float | None = None,
    ) -> TokenSampling:
        """The model's rule with the given settings replaced (None keeps the model's)."""
        given = dict(temperature=temperature, top_k=top_k, top_p=top_p, typical_p=typical_p)
        guidance = self.defaults.guidance_scale if guidance_scale is None else guidance_scale
        return dataclasses.replace(self.sampler, **{k: v for k, v in given.items() if v is not None}, guidance_scale=guidance)

    # -- prompts -----------------------------------------------------------------------------------
    def encode_text(self, prompts: list[str]) -> PromptStates:
        """Prompts -> (B, L, text_dim) zero-padded states in the model's compute dtype, no mask:
        the states the token model is trained on (the training loop's text encoder gives the same)."""
        if self.text_encoder is None:
            raise KinemaError("this pipeline was loaded without a text encoder; pass prompt_embeds= instead of a prompt")
        return PromptStates(self.text_encoder(prompts, device=self.device, dtype=self.transformer.compute_dtype))

    # -- the call ----------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_frames: int | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        typical_p: float | None = None,
        guidance_scale: float | None = None,
        num_videos_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        seed: int | None = None,
        prompt_embeds: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        negative_prompt_attention_mask: torch.Tensor | None = None,
        output_type: str = "np",
        use_cache: bool = True,
    ) -> VideoOutput:
        """Generate videos.

        Args:
            prompt: one prompt or a list (a batch). Or pass ``prompt_embeds``.
            negative_prompt: the unconditional text of classifier-free guidance (one, or one per
                prompt); "" by default.
            height, width: pixels; a token model makes one size (``frame_size``), the default.
            num_frames: ``t k + 1`` for a tokenizer compressing time ``t`` times (4k+1 for 4x).
            temperature: softmax temperature; 0 is greedy (argmax). None: the model's.
            top_k: keep the k most probable tokens; 0 turns it off. None: the model's.
            top_p: nucleus mass in (0, 1]; 1 turns it off. None: the model's.
            typical_p: locally typical mass in (0, 1]; 1 turns it off. None: the model's.
            guidance_scale: classifier-free guidance on log-probabilities (``u + g (c - u)``); at
                exactly 1 no unconditional pass runs. None: the model's.
            num_videos_per_prompt: videos per prompt.
            generator: a torch.Generator, or one per video (each video then samples with its own,
                so it does not depend on the rest of the batch); or ``seed``.
            seed: an integer seed (a CPU generator): the same seed gives the same video on CPU.
            prompt_embeds, negative_prompt_embeds: precomputed text states (batch, length,
                text_dim), with ``prompt_attention_mask`` / ``negative_prompt_attention_mask``
                (batch, length) (None: every position is attended, as with the text encoder's
                zero-padded states).
            output_type: "np" (uint8 numpy frames), "pt" (uint8 torch frames) or "latent" (the
                token ids alone, no decode).
            use_cache: decode with the KV cache (True) or recompute the whole clip for every token
                (the reference; the same tokens, much slower).

        Returns:
            VideoOutput with ``frames`` (batch, frames, H, W, 3) uint8 and ``latents``: the token
            ids (batch, frames', h, w) int64.
        """
        height, width, num_frames = self.check_request(
            height, width, num_frames, self.defaults, self.vae_scale_factor_temporal, self.frame_size, self.transformer.config.grid
        )
        rule = self.sampling_rule(temperature, top_k, top_p, typical_p, guidance_scale)
        check_output_options(output_type, num_videos_per_prompt)

        # 1. text states: (B, L, text_dim), and for guidance the unconditional ones
        timings, t0 = {}, time.perf_counter()
        cond, uncond = self.prompt_states(
            prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, rule.uses_guidance, num_videos_per_prompt,
            prompt_attention_mask, negative_prompt_attention_mask,
        )  # fmt: skip
        generators = make_generators(generator, seed, cond.batch_size)
        timings["text"] = time.perf_counter() - t0

        # 2. tokens: (B, F', h, w), one frame's grid after another; cond and uncond as one batch
        t0 = time.perf_counter()
        token_frames = (num_frames - 1) // self.vae_scale_factor_temporal + 1
        tokens = generate(
            self.transformer, cond.states, cond.mask, token_frames, token_picker(rule, generators),
            uncond_text=uncond.states if uncond is not None else None,
            uncond_mask=uncond.mask if uncond is not None else None,
            guidance=(lambda c, u: guided_logits(c, u, rule.guidance_scale)) if uncond is not None else None,
            use_cache=use_cache, progress=self.progress,
        )  # fmt: skip
        timings["tokens"] = time.perf_counter() - t0
        return self.finish(tokens, output_type, timings, lambda: self.decode_tokens(tokens))

    def decode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids (B, F', h, w) -> video (B, 3, F, H, W) float32 in [-1, 1]."""
        return self.tokenizer.decode_tokens(tokens).float()


def token_picker(
    rule: TokenSampling, generators: torch.Generator | list[torch.Generator] | None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The ``pick`` of :func:`~kinema.models.token_ar.generate`: logits (B, V) -> ids (B,) under
    ``rule``, drawing with the generator (on its device; the same seed gives the same tokens), or
    row b with ``generators[b]`` for a list."""

    def pick(logits: torch.Tensor) -> torch.Tensor:
        if rule.greedy:
            return sample_tokens(logits, rule)  # (B,) argmax: no draw
        if isinstance(generators, list):
            rows: Iterable[torch.Tensor] = (
                sample_tokens(logits[b : b + 1].to(g.device), rule, g) for b, g in enumerate(generators)
            )  # (1,) each
            return torch.cat(list(rows)).to(logits.device)  # (B,)
        device = generators.device if generators is not None else logits.device
        return sample_tokens(logits.to(device), rule, generators).to(logits.device)  # (B,)

    return pick
