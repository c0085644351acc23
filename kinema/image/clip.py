"""CLIP vision towers as image encoders: pictures -> the token features of their penultimate layer.

Wan 2.1's image-to-video feeds its transformer the 257 tokens (a class token and 16 x 16 patches)
of width 1,280 that the 31st of the 32 layers of CLIP ViT-H/14 gives, before any final norm. The
model is transformers' ``CLIPVisionModel`` built with one layer fewer than the checkpoint holds
(the last layer's weights are never loaded), so its ``last_hidden_state`` is exactly
``hidden_states[-2]`` of the whole tower, what diffusers' ``WanImageToVideoPipeline.encode_image``
takes.

Two layouts, each preprocessed exactly as its reference does it:
- diffusers: ``image_encoder/`` (``CLIPVisionModel``, safetensors) and ``image_processor/``
  (a ``CLIPImageProcessor``: shortest side to 224 (bicubic), centre crop, rescale, normalise),
  called on the picture's uint8 pixels;
- the original Wan release: ``models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth`` (read with
  ``weights_only=True``; only the vision tower is kept, renamed by
  :data:`kinema.checkpoints.clip_keys.WAN_CLIP_KEYS`), preprocessed as ``wan/modules/clip.py``'s
  ``CLIPModel.visual`` does: the picture in [-1, 1] resized to 224 x 224 with bicubic
  interpolation (no crop), back to [0, 1], normalised with OpenAI CLIP's mean and std.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..checkpoints.io import (
    build_on_meta,
    load_into,
    load_sharded_safetensors,
    load_weights,
)
from ..errors import CheckpointError
from ..pipelines.inputs import images_to_tensor

# wan/modules/clip.py: clip_xlm_roberta_vit_h_14 (vision_dim 1280, vision_heads 16, patch 14,
# image 224, GELU, LayerNorm eps 1e-5) and the transforms of _clip (OpenAI CLIP's mean and std).
WAN_CLIP_HEAD_DIM = 80  # 1280 / 16: the head count is not in the tensors, the head width is Wan's
WAN_CLIP_EPS = 1e-5
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HF_WEIGHTS_STEM = "model"  # transformers' model.safetensors (or its shards' index)
HF_PREFIX = "vision_model."  # transformers 4 saved CLIPVisionModel's keys under it; transformers 5 does not


class CLIPImageEncoder:
    """Pictures -> (N, tokens, dim) features of a CLIP vision tower's penultimate layer.

    Args:
        model: a ``CLIPVisionModel`` holding every layer up to the penultimate one.
        preprocess: pictures (N, 3, H, W) float32 in [0, 1] -> the tower's pixel values (N, 3, S, S).
        name: which preprocessing, for messages and ``repr`` ("diffusers" or "wan-original").
    """

    def __init__(self, model: torch.nn.Module, preprocess: Callable[[torch.Tensor], torch.Tensor], name: str) -> None:
        self.model = model.eval().requires_grad_(False)
        self.preprocess = preprocess
        self.name = name
        c = model.config
        self.dim = int(c.hidden_size)
        self.image_size = int(c.image_size)
        self.tokens = (c.image_size // c.patch_size) ** 2 + 1

    def __repr__(self) -> str:
        return f"CLIPImageEncoder({self.name}, {self.tokens} tokens of {self.dim})"

    @property
    def dtype(self) -> torch.dtype:
        return self.model.embeddings.patch_embedding.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.model.embeddings.patch_embedding.weight.device

    @torch.no_grad()
    def __call__(self, image: Any, *, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Encode one picture or several (PIL images, uint8 arrays (H, W, 3), float tensors (3, H, W)
        in [0, 1]; see :func:`~kinema.pipelines.inputs.images_to_tensor`) -> (N, tokens, dim)."""
        pixels = images_to_tensor(image)  # (N, 3, H, W) in [0, 1]
        values = self.preprocess(pixels).to(self.device, self.dtype)  # (N, 3, S, S)
        out = self.model(pixel_values=values).last_hidden_state  # (N, tokens, dim)
        return out.to(device=device or out.device, dtype=dtype or out.dtype)

    # -- loading ---------------------------------------------------------------------------------
    @classmethod
    def from_diffusers(
        cls,
        image_encoder_dir: str | os.PathLike,
        image_processor_dir: str | os.PathLike,
        *,
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
    ) -> "CLIPImageEncoder":
        """``image_encoder/`` (a transformers ``CLIPVisionModel``, safetensors) and ``image_processor/``."""
        from transformers import CLIPImageProcessor, CLIPVisionConfig

        from ..text.encoder import _hf_call

        directory = Path(image_encoder_dir)
        config = _hf_call(CLIPVisionConfig.from_pretrained, directory, what="image encoder config")
        if not any(directory.glob("*.safetensors")):
            raise CheckpointError(f"{directory}: no safetensors weights (kinema does not unpickle image encoder weights)")
        state = load_sharded_safetensors(directory, HF_WEIGHTS_STEM)
        processor = _hf_call(CLIPImageProcessor.from_pretrained, Path(image_processor_dir), what="image processor")
        model = _penultimate_tower(config, state, dtype=dtype, device=device, what=f"image encoder ({directory})")

        def preprocess(pixels: torch.Tensor) -> torch.Tensor:
            # the processor's own path from uint8 pixels, as diffusers hands it the user's PIL image
            arrays = [np.ascontiguousarray(p) for p in (pixels * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()]
            return processor(images=arrays, return_tensors="pt").pixel_values

        return cls(model, preprocess, "diffusers")

    @classmethod
    def from_wan_original(
        cls, weights: str | os.PathLike, *, dtype: torch.dtype | None = None, device: str | torch.device | None = None
    ) -> "CLIPImageEncoder":
        """Wan's own CLIP checkpoint (``.pth`` read with ``weights_only=True``, or safetensors with the same keys)."""
        from transformers import CLIPVisionConfig

        from ..checkpoints.clip_keys import from_wan_original

        state = from_wan_original(load_weights(weights))
        config = CLIPVisionConfig(**_infer_vision_config(state, where=Path(weights)))
        model = _penultimate_tower(config, state, dtype=dtype, device=device, what=f"Wan CLIP image encoder ({weights})")
        size = config.image_size
        mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)

        def preprocess(pixels: torch.Tensor) -> torch.Tensor:
            x = pixels.sub(0.5).div(0.5)  # TF.to_tensor(img).sub_(0.5).div_(0.5): the picture Wan's i2v holds
            x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)
            return x.mul(0.5).add(0.5).sub(mean).div(std)  # back to [0, 1], then T.Normalize

        return cls(model, preprocess, "wan-original")


def _infer_vision_config(state: dict[str, torch.Tensor], where: Path) -> dict:
    """CLIPVisionConfig fields read off the vision tower's tensors (transformers names)."""
    try:
        dim, _, patch, _ = state["embeddings.patch_embedding.weight"].shape
        positions = state["embeddings.position_embedding.weight"].shape[0]
        layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.layers."))
        ffn = state["encoder.layers.0.mlp.fc1.weight"].shape[0]
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{where}: not a CLIP vision tower kinema can read (missing {e})") from None
    grid = int(round((positions - 1) ** 0.5))
    if grid * grid != positions - 1 or dim % WAN_CLIP_HEAD_DIM:
        raise CheckpointError(
            f"{where}: a CLIP tower of width {dim} with {positions} positions is not one Wan's layout has "
            f"(a class token plus a square grid, heads of {WAN_CLIP_HEAD_DIM})"
        )
    return dict(
        hidden_size=dim,
        intermediate_size=ffn,
        num_hidden_layers=layers,
        num_attention_heads=dim // WAN_CLIP_HEAD_DIM,
        image_size=grid * patch,
        patch_size=patch,
        hidden_act="gelu",  # wan/modules/clip.py: activation='gelu' (nn.GELU, exact)
        layer_norm_eps=WAN_CLIP_EPS,
    )


def _penultimate_tower(config: Any, state: dict[str, torch.Tensor], *, dtype: Any, device: Any, what: str) -> torch.nn.Module:
    """A ``CLIPVisionModel`` of the layers before the last, filled from a whole tower's weights (the
    last layer, the final norm and any projection head are not loaded)."""
    from transformers import CLIPVisionModel

    layers = int(config.num_hidden_layers)
    if layers < 2:
        raise CheckpointError(f"{what}: a CLIP tower needs at least 2 layers for its penultimate features; it has {layers}")
    state = {k.removeprefix(HF_PREFIX): v for k, v in state.items()}  # files saved by transformers 4 (Wan's diffusers release)
    dropped = (f"encoder.layers.{layers - 1}.", "visual_projection.")  # the final norm stays: the model has one (pooler only)
    state = {k: v for k, v in state.items() if not k.startswith(dropped)}
    config = type(config)(**{**config.to_dict(), "num_hidden_layers": layers - 1})
    model = build_on_meta(lambda: CLIPVisionModel(config))
    embeddings = model.embeddings
    positions = embeddings.position_embedding.weight.shape[0]
    embeddings.register_buffer("position_ids", torch.arange(positions).expand((1, -1)), persistent=False)  # not in the weights
    load_into(model, state, dtype=dtype or torch.float32, device=device or "cpu", what=what)
    return model.eval()
