"""Key maps for the LTX-Video VAE: the original single-file release and diffusers' ``AutoencoderKLLTXVideo``.

kinema's names are the original ones (Lightricks/LTX-Video ``CausalVideoAutoencoder``), so
:data:`ORIGINAL_KEYS` only renames the few places where kinema's modules differ: LayerNorms without
the original's ``.norm`` wrapper, timestep MLPs as ``nn.Sequential`` (``.0`` / ``.2``), and the
latent statistics. In an LTX-Video single file the VAE's keys carry :data:`ORIGINAL_PREFIX`, and
:data:`ORIGINAL_IGNORED_KEYS` are statistics nothing reads.

diffusers nests the flat block lists (``down_blocks.{i}`` / ``up_blocks.{i}``) into stages of
resnets, a downsampler or upsampler and a channel-changing resnet (``conv_out`` in the encoder,
``conv_in`` in the decoder); :func:`diffusers_keys` writes the indices out from the config's block
plan. The rename rules of diffusers' ``convert_ltx_vae_checkpoint_to_diffusers`` (single_file_utils)
are the composition of the two maps.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .keymap import KeyMap

if TYPE_CHECKING:
    from ..models.vae.ltx_vae import BlockSpec, LTXVAEConfig

ORIGINAL_PREFIX = "vae."  # the VAE's keys in an LTX-Video single-file checkpoint
# statistics in the original checkpoints that neither the original code nor diffusers reads
ORIGINAL_IGNORED_KEYS = frozenset(
    {
        "per_channel_statistics.channel",
        "per_channel_statistics.mean-of-stds",
        "per_channel_statistics.mean-of-stds_over_std-of-means",
    }
)

# (kinema, original LTX-Video) with the prefix removed; kinema's names are the original's otherwise.
ORIGINAL_KEYS = KeyMap(
    "ltx-video-vae-original",
    [
        ("latents_mean", "per_channel_statistics.mean-of-means"),
        ("latents_std", "per_channel_statistics.std-of-means"),
        ("{path}.norm3.{leaf}", "{path}.norm3.norm.{leaf}"),
        ("{path}.time_embedder.0.{leaf}", "{path}.time_embedder.timestep_embedder.linear_1.{leaf}"),
        ("{path}.time_embedder.2.{leaf}", "{path}.time_embedder.timestep_embedder.linear_2.{leaf}"),
        ("decoder.last_time_embedder.0.{leaf}", "decoder.last_time_embedder.timestep_embedder.linear_1.{leaf}"),
        ("decoder.last_time_embedder.2.{leaf}", "decoder.last_time_embedder.timestep_embedder.linear_2.{leaf}"),
        ("encoder.{path}", "encoder.{path}"),
        ("decoder.{path}", "decoder.{path}"),
    ],
)


def _resnet(ours: str, theirs: str) -> list[tuple[str, str]]:
    """One residual block: diffusers wraps the 1x1x1 shortcut conv in a ``.conv``; the rest is the same."""
    return [
        (f"{ours}.conv_shortcut.{{leaf}}", f"{theirs}.conv_shortcut.conv.{{leaf}}"),
        (f"{ours}.{{path}}", f"{theirs}.{{path}}"),
    ]


def _time_embedder(ours: str, theirs: str) -> list[tuple[str, str]]:
    """A timestep MLP: ``Sequential`` indices <-> PixArt-alpha's ``timestep_embedder.linear_{1,2}``."""
    return [
        (f"{ours}.0.{{leaf}}", f"{theirs}.timestep_embedder.linear_1.{{leaf}}"),
        (f"{ours}.2.{{leaf}}", f"{theirs}.timestep_embedder.linear_2.{{leaf}}"),
    ]


def _block(ours: str, part: str, stages: str, spec: "BlockSpec", roles: dict) -> list[tuple[str, str]]:
    """Rules for one block of the flat list at ``ours``, inside diffusers' stage ``spec.stage``."""
    from ..models.vae.ltx_vae import BlockKind

    stage = f"{part}.mid_block" if spec.stage < 0 else f"{part}.{stages}.{spec.stage}"
    if spec.kind is BlockKind.RES:
        return _resnet(f"{ours}.res_blocks.{{j}}", f"{stage}.resnets.{{j}}") + _time_embedder(
            f"{ours}.time_embedder", f"{stage}.time_embedder"
        )
    if spec.kind is BlockKind.RES_X_Y:
        return _resnet(ours, f"{stage}.{roles[spec.kind]}")
    return [(f"{ours}.{{path}}", f"{stage}.{roles[spec.kind]}.{{path}}")]  # a resampler: same names inside


def diffusers_keys(config: "LTXVAEConfig") -> KeyMap:
    """Map to diffusers' ``AutoencoderKLLTXVideo`` state dict for ``config``."""
    from ..models.vae.ltx_vae import BlockKind

    rules = [
        ("latents_mean", "latents_mean"),
        ("latents_std", "latents_std"),
        ("encoder.conv_in.{path}", "encoder.conv_in.{path}"),
        ("encoder.conv_out.{path}", "encoder.conv_out.{path}"),
        ("decoder.conv_in.{path}", "decoder.conv_in.{path}"),
        ("decoder.conv_out.{path}", "decoder.conv_out.{path}"),
        ("decoder.timestep_scale_multiplier", "decoder.timestep_scale_multiplier"),
        ("decoder.last_scale_shift_table", "decoder.scale_shift_table"),
        *_time_embedder("decoder.last_time_embedder", "decoder.time_embedder"),
    ]
    encoder_roles = {
        BlockKind.RES_X_Y: "conv_out",
        BlockKind.DOWN_CONV: "downsamplers.0",
        BlockKind.DOWN_S2D: "downsamplers.0",
    }
    for i, spec in enumerate(config.encoder_plan()):
        rules += _block(f"encoder.down_blocks.{i}", "encoder", "down_blocks", spec, encoder_roles)
    decoder_roles = {BlockKind.RES_X_Y: "conv_in", BlockKind.UP: "upsamplers.0"}
    for i, spec in enumerate(config.decoder_plan()):
        rules += _block(f"decoder.up_blocks.{i}", "decoder", "up_blocks", spec, decoder_roles)
    return KeyMap("diffusers AutoencoderKLLTXVideo", rules)
