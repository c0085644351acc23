"""Autoregressive text-to-video: encode the prompt -> generate video tokens one at a time with the
token model -> decode the token grids with the VQ tokenizer.

The pipeline holds no model logic: it wires a text encoder, the token model
(:class:`~kinema.models.token_ar.TokenAR`, decoded by :func:`~kinema.sampling.tokens.generate`
with its KV cache), a sampling rule (:class:`~kinema.sampling.tokens.TokenSampling`) and the VQ
video tokenizer. Arguments follow the diffusion pipelines' (diffusers') names where they mean the
same thing (``prompt``, ``negative_prompt``, ``height``, ``width``, ``num_frames``,
``guidance_scale``, ``generator``, ``output_type``) and transformers' ``generate`` names for the
sampling rule (``temperature``, ``top_k``, ``top_p``, ``typical_p``).

Sizes: the token model predicts a fixed (h, w) grid per frame, so a model makes one frame size only
(the grid times the tokenizer's stride); frames are ``t k + 1`` for a tokenizer that compresses time
``t`` times (one token grid for the first frame, one per ``t`` frames after it).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, KinemaError
from ..models.token_ar import TokenAR
from ..models.vae.vq_video import VQVideoTokenizer
from ..request import MemoryModel, ModelRules, half_window
from ..sampling.tokens import TokenSampling, generate, guided_logits, new_generation_cache, token_picker
from ..text import TextEncoder
from .base import (
    ProgressCallback,
    PromptStates,
    Reporter,
    VideoPipeline,
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
    # A long video: True, one call whose KV cache slides on past num_frames (a model trained on items
    # longer than its temporal window, so it has seen the window slide); False, windows of num_frames,
    # each a continuation that re-reads its past from the frames, as the diffusion families' do (a
    # model trained on clips its window holds whole, which meets positions past its clip nowhere else).
    slide: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.slide, bool):
            raise TypeError(f"defaults.slide must be true or false; got {self.slide!r}")


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
    text_encoder: TextEncoder | None
    sampler: TokenSampling
    defaults: TokenARDefaults

    # What a kinema model card of this family holds, and what `kinema package` writes by default:
    # plain sampling from the full distribution (temperature 1, every filter off) and guidance 3.
    card_sampler_keys = ("temperature", "top_k", "top_p", "typical_p")
    package_sampler = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "typical_p": 1.0}
    package_defaults = {"guidance_scale": TOKEN_AR_DEFAULT_GUIDANCE}

    def __init__(
        self,
        transformer: TokenAR,
        tokenizer: VQVideoTokenizer,
        text_encoder: TextEncoder | None,
        sampler: TokenSampling | None = None,
        defaults: TokenARDefaults | None = None,
        device: torch.device | str = "cpu",
    ):
        if transformer.config.vocab_size != tokenizer.codebook_size:
            raise KinemaError(
                f"the token model predicts {transformer.config.vocab_size} ids but the tokenizer has "
                f"{tokenizer.codebook_size} codes; pair the model with the tokenizer it was trained on"
            )
        super().__init__(transformer, tokenizer, text_encoder, sampler or TokenSampling(), defaults, device)

    @property
    def tokenizer(self) -> VQVideoTokenizer:
        return self.codec

    @property
    def frame_size(self) -> tuple[int, int]:
        """(height, width) in pixels: the only frame size this model makes."""
        h, w = self.transformer.config.grid
        return h * self.vae_scale_factor_spatial, w * self.vae_scale_factor_spatial

    # -- rules read off the components' configs (before loading) ------------------------------------
    @staticmethod
    def sampler_from_card(sampler: dict[str, Any]) -> TokenSampling:
        """A card's ``sampler`` entry (``{"temperature", "top_k", "top_p", "typical_p"}``) as the rule."""
        return TokenSampling(**sampler)

    @classmethod
    def model_rules(cls, transformer: Any, tokenizer: Any, *, text_dim: int | None = None, card_defaults: dict | None = None,
                    defaults: Any = None, sampler: Any = None, weights: int = 0, element_bytes: int = 4) -> ModelRules:  # fmt: skip
        """The tokenizer's time stride and the one frame size (token grid x stride); raises
        CheckpointError unless the parts fit together (codebook size, text width, a card's size)."""
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
        height, width = grid[0] * s, grid[1] * s
        if defaults is None:
            defaults = TokenARDefaults(**(card_defaults or {}))
            given = (height if defaults.height is None else defaults.height, width if defaults.width is None else defaults.width)
            if given != (height, width):
                raise CheckpointError(
                    f"defaults height x width {defaults.height}x{defaults.width} is not this model's frame size {height}x{width} "
                    "(its token grid times the tokenizer's stride); fix or drop them"
                )
            defaults = dataclasses.replace(defaults, height=height, width=width)
        ae = tokenizer.autoencoder
        slots = sum(transformer.window_frames if kind == "T" else 1 for kind in transformer.layers)
        memory = MemoryModel(
            weights=weights,
            latent_channels=2,  # int64 ids: two float32 elements a token
            temporal_compression=tokenizer.temporal_compression,
            spatial_compression=s,
            tokens_per_latent_voxel=0.0,  # one token at a time: the KV cache (below), not the clip, holds activations
            activation_per_token=0,
            codec_activation_per_pixel=8 * ae.base_dim * ae.dim_mult[0],
            codec_frames_at_once=tokenizer.temporal_compression + 2,
            fixed=4 * slots * grid[0] * grid[1] * transformer.num_kv_heads * transformer.head_dim,  # K and V, cond and uncond
            element_bytes=element_bytes,
        )
        return ModelRules(
            family="token-ar",
            defaults=defaults,
            temporal_multiple=tokenizer.temporal_compression,
            frame_size=(height, width),
            grid=grid,
            sampling_options=cls.sampling_options,
            memory=memory,
            supports_extend=True,  # the input's tokens fill the KV cache; generation goes on (extend)
            slides=defaults.slide,  # any length in one call: its temporal layers keep a sliding window of frames
            # the past a continuation reads: what its stacked windows reach, or for a model made in windows half its clip (as Wan's)
            context_frames=tokenizer.temporal_compression * (transformer.receptive_frames - 1) + 1 if defaults.slide
            else half_window(defaults.num_frames, tokenizer.temporal_compression),
        )

    @classmethod
    def trained_defaults(cls, training: dict[str, Any], model_dir: Path, codec_dir: Path | None) -> dict[str, Any]:
        """``slide: false`` for a run whose items its temporal window held whole (their token frames
        at most ``window_frames``): that model never saw its window slide, nor a position past its
        items, so its long videos are made in windows of its clip."""
        from ..checkpoints.io import read_json
        from ..checkpoints.token_ar import from_json
        from ..checkpoints.vq_video import codec_config

        frames = (training.get("data") or {}).get("frames")
        if not frames or codec_dir is None:
            return {}
        window = from_json(read_json(model_dir / "config.json")).window_frames
        token_frames = (frames - 1) // codec_config(codec_dir).temporal_compression + 1
        return {"slide": False} if token_frames <= window else {}

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
        callback: ProgressCallback | None = None,
        progress_bar: bool = True,
        **unknown: Any,
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
            callback: ``fn(Progress)`` at every stage and frame; raising (``kinema.Cancelled``) stops.
            progress_bar: show a progress bar on stderr.

        Returns:
            VideoOutput with ``frames`` (batch, frames, H, W, 3) uint8 and ``latents``: the token
            ids (batch, frames', h, w) int64.
        """
        request = self.check_call(
            unknown=unknown, prompt=prompt, prompt_embeds=prompt_embeds, negative_prompt=negative_prompt, num_videos_per_prompt=num_videos_per_prompt,
            output_type=output_type, height=height, width=width, num_frames=num_frames, temperature=temperature, top_k=top_k,
            top_p=top_p, typical_p=typical_p, guidance_scale=guidance_scale, seed=seed,
        )  # fmt: skip
        if not isinstance(use_cache, bool):
            raise KinemaError(f"use_cache must be true or false; got {use_cache!r}")
        reporter = Reporter(callback, progress_bar)
        token_frames = (request.num_frames - 1) // self.vae_scale_factor_temporal + 1
        tokens, timings = self._sample_tokens(
            request, reporter, (prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, prompt_attention_mask, negative_prompt_attention_mask),
            (temperature, top_k, top_p, typical_p), generator, seed, token_frames, use_cache=use_cache,
        )  # fmt: skip
        return self.finish(tokens, output_type, timings, lambda: self.decode_tokens(tokens), reporter)

    @torch.no_grad()
    def extend(
        self,
        video: Any,
        prompt: str | list[str] | None = None,
        num_frames: int | None = None,
        overlap: int | None = None,
        negative_prompt: str | list[str] | None = None,
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
        callback: ProgressCallback | None = None,
        progress_bar: bool = True,
        fps: float | None = None,
        **unknown: Any,
    ) -> VideoOutput:
        """Continue a video: its last ``overlap`` frames, through the tokenizer, fill the token
        model's KV cache as if it had made them, and generation goes on for ``num_frames`` more.

        Args:
            video: one clip, uint8 (F, H, W, 3) (or float in [0, 1]; what ``read_video`` gives), at
                this model's frame size.
            prompt: what happens next (or ``prompt_embeds``); the other arguments as in ``__call__``.
            num_frames: new frames, a multiple of the tokenizer's time stride ``t`` (default: the
                model's default clip less its first frame).
            overlap: the input's last frames the model sees, ``t j + 1`` (default: as many as it
                reads, ``rules.context_frames``, within the input: what its stacked windows reach,
                or half its clip for a model whose card says ``slide: false``).
            fps: the frame rate of the output (default: the model's; ``generate`` passes the input's).

        Returns:
            VideoOutput whose ``frames`` (B, F + num_frames, H, W, 3) hold the input's frames,
            unchanged, then the new ones; ``latents``: the token ids of the overlap and the new frames.
        """
        frames, overlap, num_frames = self.extension_input(video, overlap, num_frames, unknown)
        f_in, (h, w) = frames.shape[2], tuple(frames.shape[-2:])
        request = self.check_call(
            unknown=unknown, prompt=prompt, prompt_embeds=prompt_embeds, negative_prompt=negative_prompt, num_videos_per_prompt=num_videos_per_prompt,
            output_type=output_type, height=h, width=w, num_frames=num_frames, temperature=temperature, top_k=top_k,
            top_p=top_p, typical_p=typical_p, guidance_scale=guidance_scale, seed=seed, extend="(video given)", overlap=overlap,
        )  # fmt: skip
        reporter = Reporter(callback, progress_bar)
        past = frames[:, :, f_in - request.overlap :].to(self.device, self.tokenizer.dtype) * 2 - 1  # (1, 3, overlap, H, W) in [-1, 1]
        tokens, timings = self._sample_tokens(
            request, reporter, (prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, prompt_attention_mask, negative_prompt_attention_mask),
            (temperature, top_k, top_p, typical_p), generator, seed, request.num_frames // self.vae_scale_factor_temporal,
            prefix=self.tokenizer.encode_tokens(past),  # (1, j + 1, h, w): the overlap's tokens
        )  # fmt: skip
        decode = self.extension_frames(frames, lambda: self.decode_tokens(tokens), request.num_frames)  # the input as it was, then the new frames
        return self.with_past(self.finish(tokens, output_type, timings, decode, reporter, fps=fps), decode)

    def _sample_tokens(
        self, request: Any, reporter: Reporter, texts: tuple, options: tuple, generator: Any, seed: int | None, token_frames: int,
        *, use_cache: bool = True, prefix: torch.Tensor | None = None, keep: dict | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:  # fmt: skip
        """The call's text states (``texts``: prompt, negative prompt, their precomputed states and
        masks), then ``token_frames`` frames of tokens, one grid after another, cond and uncond as
        one batch; continuing a clip, after ``prefix`` (1, P, h, w), the given frames' tokens.
        ``options``: temperature, top_k, top_p, typical_p. ``keep``: a dict whose ``"cache"`` goes
        on from the call before (made here on the first call), so the prefix is not fed again.
        Returns the tokens (B, P + token_frames, h, w) and the timings of the two stages."""
        prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, prompt_mask, negative_mask = texts
        rule = self.sampling_rule(*options, request.guidance_scale)

        # 1. text states: (B, L, text_dim), and for guidance the unconditional ones
        timings, t0 = {}, time.perf_counter()
        with reporter.stage("text", 1, desc="text") as step:
            cond, uncond = self.prompt_states(
                prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, rule.uses_guidance, request.num_videos_per_prompt,
                prompt_mask, negative_mask,
            )  # fmt: skip
            step(1)
        generators = make_generators(generator, seed, cond.batch_size)
        cache = None
        if keep is not None:
            cache = keep.get("cache") or new_generation_cache(
                self.transformer, cond.states, cond.mask, uncond_text=uncond.states if uncond is not None else None,
                uncond_mask=uncond.mask if uncond is not None else None,
            )  # fmt: skip
            keep["cache"] = cache
        timings["text"] = time.perf_counter() - t0

        # 2. tokens: (B, F', h, w)
        t0 = time.perf_counter()
        with reporter.stage("tokens", token_frames, desc="frames", unit="frame") as step:
            tokens = generate(
                self.transformer, cond.states, cond.mask, token_frames, token_picker(rule, generators),
                uncond_text=uncond.states if uncond is not None else None,
                uncond_mask=uncond.mask if uncond is not None else None,
                guidance=(lambda c, u: guided_logits(c, u, rule.guidance_scale)) if uncond is not None else None,
                use_cache=use_cache, on_frame=lambda done: step(1),
                prefix=prefix.repeat(cond.batch_size, 1, 1, 1) if prefix is not None else None, cache=cache,
            )  # fmt: skip
        timings["tokens"] = time.perf_counter() - t0
        return tokens, timings

    def run_windows(
        self, request: Any, schedule: list, first: int, steps: list[tuple[int, int]], video: Any, keywords: dict[str, Any], *,
        generator: torch.Generator | None, output_type: str, callback: Any, progress_bar: bool, fps: float | None, reporter: Reporter,
    ) -> VideoOutput:  # fmt: skip
        """A long video's prompts, natively: each prompt's frames of tokens follow all the tokens before
        them through one KV cache, carried from prompt to prompt (a new prompt changes only the text
        the cross-attention reads from there on; the past keeps the keys it was made with and is not
        fed again), and the whole video decodes once, so no join passes through the tokenizer twice. A video to
        continue is encoded once (its last ``overlap`` frames, as :meth:`extend` does) and comes back
        unchanged at the head. Prompt ``i`` samples from ``seed + i`` (or from ``generator``). A model
        whose card says ``slide: false`` runs kinema's windows instead (:meth:`VideoPipeline.run_windows`)."""
        if not self.rules.slides:
            return super().run_windows(request, schedule, first, steps, video, keywords, generator=generator, output_type=output_type,
                                       callback=callback, progress_bar=progress_bar, fps=fps, reporter=reporter)  # fmt: skip
        from .inputs import videos_to_tensor

        t = self.vae_scale_factor_temporal
        options = tuple(keywords.get(k) for k in ("temperature", "top_k", "top_p", "typical_p"))
        negative = keywords.get("negative_prompt")
        tokens, head = None, None
        if video is not None:
            head = videos_to_tensor(video)  # (1, 3, F, H, W) in [0, 1]
            past = head[:, :, head.shape[2] - request.overlap :].to(self.device, self.tokenizer.dtype) * 2 - 1
            tokens = self.tokenizer.encode_tokens(past)  # (1, j + 1, h, w)
        segments = ([(0, first)] if first else []) + list(steps)
        timings: dict[str, float] = {}
        keep: dict[str, Any] = {}  # the KV cache, from one prompt to the next
        with reporter.stage("windows", len(segments), desc="prompts", unit="prompt") as step:
            for i, (entry, frames) in enumerate(segments):
                token_frames = (frames - 1) // t + 1 if tokens is None else frames // t
                seed = None if generator is not None else (request.seed + i) % 2**64
                tokens, spent = self._sample_tokens(
                    request, reporter, (schedule[entry][0], negative, None, None, None, None), options, generator, seed, token_frames, prefix=tokens,
                    keep=keep,
                )  # fmt: skip
                for k, v in spent.items():
                    timings[k] = timings.get(k, 0.0) + v
                step(1)
        assert tokens is not None
        if head is None:
            decode = lambda: self.decode_tokens(tokens)  # noqa: E731
        else:
            decode = self.extension_frames(head, lambda: self.decode_tokens(tokens), sum(n for _, n in segments))
        return self.finish(tokens, output_type, timings, decode, reporter, fps=fps)

    def decode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids (B, F', h, w) -> video (B, 3, F, H, W) float32 in [-1, 1]."""
        return self.tokenizer.decode_tokens(tokens).float()
