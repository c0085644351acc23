"""Key maps for the Wan 2.1 VAE: the original release and diffusers' ``AutoencoderKLWan``.

kinema's parameter names are the original ones (``Wan2.1_VAE.pth``), so :func:`original_keys` is an
identity map over the four top-level parts. diffusers renames most modules and nests the
decoder's flat ``upsamples.{i}`` list as ``up_blocks.{stage}.resnets.{r}`` / ``upsamplers.0``;
:func:`diffusers_keys` writes out those indices from the config.

Every tensor has the same shape in both formats (RMS norm gammas are (C, 1, 1, 1), or (C, 1, 1) in
the attention blocks, on both sides), so a map renames and never reshapes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .keymap import KeyMap

if TYPE_CHECKING:
    from ..models.vae.wan_vae import WanVAEConfig


def original_keys(config: "WanVAEConfig") -> KeyMap:
    """Identity map to the original Wan layout (``Wan2.1_VAE.pth``); keys outside it raise."""
    del config  # the original names are kinema's for every config
    return KeyMap(
        "wan-vae-original",
        [
            ("encoder.{path}.{leaf}", "encoder.{path}.{leaf}"),
            ("decoder.{path}.{leaf}", "decoder.{path}.{leaf}"),
            ("conv1.{leaf}", "conv1.{leaf}"),
            ("conv2.{leaf}", "conv2.{leaf}"),
        ],
    )


def _residual(ours: str, theirs: str) -> list[tuple[str, str]]:
    """One residual block: ``residual.{0,2,3,6}`` / ``shortcut`` <-> ``norm1 conv1 norm2 conv2 conv_shortcut``."""
    return [
        (f"{ours}.residual.0.gamma", f"{theirs}.norm1.gamma"),
        (f"{ours}.residual.2.{{leaf}}", f"{theirs}.conv1.{{leaf}}"),
        (f"{ours}.residual.3.gamma", f"{theirs}.norm2.gamma"),
        (f"{ours}.residual.6.{{leaf}}", f"{theirs}.conv2.{{leaf}}"),
        (f"{ours}.shortcut.{{leaf}}", f"{theirs}.conv_shortcut.{{leaf}}"),
    ]


def _resample(ours: str, theirs: str) -> list[tuple[str, str]]:
    """One resampler: the per-frame conv ``resample.1`` and the temporal ``time_conv``."""
    return [
        (f"{ours}.resample.1.{{leaf}}", f"{theirs}.resample.1.{{leaf}}"),
        (f"{ours}.time_conv.{{leaf}}", f"{theirs}.time_conv.{{leaf}}"),
    ]


def _middle_and_ends(part: str) -> list[tuple[str, str]]:
    """``conv1``, ``middle.{0,1,2}`` and ``head.{0,2}`` of the encoder or decoder."""
    return [
        (f"{part}.conv1.{{leaf}}", f"{part}.conv_in.{{leaf}}"),
        *_residual(f"{part}.middle.0", f"{part}.mid_block.resnets.0"),
        (f"{part}.middle.1.{{path}}", f"{part}.mid_block.attentions.0.{{path}}"),
        *_residual(f"{part}.middle.2", f"{part}.mid_block.resnets.1"),
        (f"{part}.head.0.gamma", f"{part}.norm_out.gamma"),
        (f"{part}.head.2.{{leaf}}", f"{part}.conv_out.{{leaf}}"),
    ]


def diffusers_keys(config: "WanVAEConfig") -> KeyMap:
    """Map to diffusers' ``AutoencoderKLWan`` state dict for ``config``."""
    rules = [("conv1.{leaf}", "quant_conv.{leaf}"), ("conv2.{leaf}", "post_quant_conv.{leaf}")]

    # encoder: both sides are one flat list of residual blocks and resamplers
    rules += _middle_and_ends("encoder")
    rules += _residual("encoder.downsamples.{i}", "encoder.down_blocks.{i}")
    rules += _resample("encoder.downsamples.{i}", "encoder.down_blocks.{i}")

    # decoder: a flat list in the original, nested per stage in diffusers
    rules += _middle_and_ends("decoder")
    flat = 0
    n_stages = len(config.dim_mult)
    for stage in range(n_stages):
        for r in range(config.num_res_blocks + 1):
            rules += _residual(f"decoder.upsamples.{flat}", f"decoder.up_blocks.{stage}.resnets.{r}")
            flat += 1
        if stage < n_stages - 1:
            rules += _resample(f"decoder.upsamples.{flat}", f"decoder.up_blocks.{stage}.upsamplers.0")
            flat += 1
    return KeyMap("diffusers AutoencoderKLWan", rules)
