"""BERT text encoders (all-MiniLM-L6-v2 and its kin) in kinema's own code, without transformers.

Importing transformers' modeling code takes seconds (it pulls in torch._dynamo, scipy, ...) for a
model that is a few lines of torch, so the small models' text encoder is this instead. The math
is transformers' ``BertModel`` (absolute positions, exact GELU, post-LayerNorm) under its parameter
names, so its safetensors load strictly with no key map; float32 states agree to float rounding.
The tokenizer is the ``tokenizers`` library's, read from ``tokenizer.json`` and called the way
transformers calls its fast tokenizers (which are the same Rust tokenizer).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from tokenizers import Tokenizer
from torch import nn

from ..checkpoints.io import (
    build_on_meta,
    load_into,
    load_sharded_safetensors,
    read_json,
)
from ..errors import CheckpointError, KinemaError
from ..models.attention import attention
from ..models.layers import zero_embedding
from .encoder import TokenStateEncoder

WEIGHTS_STEM = "model"  # model.safetensors, or shards named by model.safetensors.index.json
# Checkpoint tensors the encoder does not use: the pooler (a [CLS] head, not token states) and the
# position-id buffer older transformers saved (positions are always 0..L-1 here).
IGNORED_KEYS = ("pooler.dense.weight", "pooler.dense.bias", "embeddings.position_ids")
# config.json fields that change the math, and the one value of each that kinema implements.
_SUPPORTED = {"hidden_act": "gelu", "position_embedding_type": "absolute", "is_decoder": False}


# ------------------------------------------------------------------------------------------------
# Config
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BertConfig:
    """The sizes of a BERT encoder; defaults are transformers' ``BertConfig`` defaults."""

    vocab_size: int = 30522
    hidden_size: int = 768  # width of the token states
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072  # hidden width of each layer's feed-forward
    max_position_embeddings: int = 512  # the most tokens a sequence may have
    type_vocab_size: int = 2  # token types (segments); kinema encodes single sentences, type 0
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0  # id of [PAD]; padded keys are masked, so the states never depend on it

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "BertConfig":
        """From a transformers BERT config.json (missing fields take transformers' defaults); a
        config whose math kinema does not implement exactly raises :class:`CheckpointError`."""
        raw = read_json(path)
        if raw.get("model_type") != "bert":
            raise CheckpointError(f"{path}: model_type {raw.get('model_type')!r} is not a BERT; expected 'bert'")
        for key, supported in _SUPPORTED.items():
            if raw.get(key, supported) != supported:
                raise CheckpointError(f"{path}: {key} {raw[key]!r} is not supported; kinema's BERT implements only {supported!r}")
        config = cls(**{f.name: raw[f.name] for f in dataclasses.fields(cls) if f.name in raw})
        if config.hidden_size % config.num_attention_heads:
            raise CheckpointError(
                f"{path}: hidden_size {config.hidden_size} is not a multiple of num_attention_heads {config.num_attention_heads}"
            )
        return config


# ------------------------------------------------------------------------------------------------
# Model
# ------------------------------------------------------------------------------------------------
class BertEmbeddings(nn.Module):
    """Word + absolute position + token type 0 embeddings, then LayerNorm."""

    def __init__(self, c: BertConfig):
        super().__init__()
        self.word_embeddings = zero_embedding(c.vocab_size, c.hidden_size)
        self.position_embeddings = zero_embedding(c.max_position_embeddings, c.hidden_size)
        self.token_type_embeddings = zero_embedding(c.type_vocab_size, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)  # (L,)
        x = self.word_embeddings(ids) + self.token_type_embeddings.weight[0]  # (B, L, dim); transformers' order of sums
        return self.LayerNorm(x + self.position_embeddings(positions))


class BertSelfAttention(nn.Module):
    """Multi-head self-attention over the layer input; padded keys are hidden by the mask."""

    def __init__(self, c: BertConfig):
        super().__init__()
        self.heads = c.num_attention_heads
        self.query = nn.Linear(c.hidden_size, c.hidden_size)
        self.key = nn.Linear(c.hidden_size, c.hidden_size)
        self.value = nn.Linear(c.hidden_size, c.hidden_size)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        q, k, v = (rearrange(p(x), "b l (h d) -> b h l d", h=self.heads) for p in (self.query, self.key, self.value))
        return rearrange(attention(q, k, v, mask), "b h l d -> b l (h d)")  # (B, L, dim)


class DenseNorm(nn.Module):
    """``LayerNorm(dense(x) + residual)``: BERT's post-norm residual, after attention and after the MLP."""

    def __init__(self, in_features: int, c: BertConfig):
        super().__init__()
        self.dense = nn.Linear(in_features, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class BertLayer(nn.Module):
    """Self-attention, then an exact-GELU feed-forward, each followed by a post-norm residual."""

    def __init__(self, c: BertConfig):
        super().__init__()
        self.attention = nn.ModuleDict({"self": BertSelfAttention(c), "output": DenseNorm(c.hidden_size, c)})
        self.intermediate = nn.ModuleDict({"dense": nn.Linear(c.hidden_size, c.intermediate_size)})
        self.output = DenseNorm(c.intermediate_size, c)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = self.attention["output"](self.attention["self"](x, mask), x)  # (B, L, dim)
        return self.output(F.gelu(self.intermediate["dense"](x)), x)  # erf GELU: transformers' "gelu"


class BertEncoder(nn.Module):
    """transformers' ``BertModel`` without its pooler: token ids -> last hidden states."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = nn.ModuleDict({"layer": nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))})

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Args: input_ids (B, L) long; attention_mask (B, L), 1 for real tokens and 0 for padding
        (None: every token is real). Returns the last hidden states (B, L, hidden_size)."""
        if input_ids.shape[1] > self.config.max_position_embeddings:
            raise KinemaError(f"BERT takes at most {self.config.max_position_embeddings} tokens; got {input_ids.shape[1]}")
        mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]  # (B, 1, 1, L): keys to attend
        x = self.embeddings(input_ids)  # (B, L, dim)
        for layer in self.encoder["layer"]:
            x = layer(x, mask)
        return x


# ------------------------------------------------------------------------------------------------
# Tokenizer
# ------------------------------------------------------------------------------------------------
class TokenBatch(NamedTuple):
    input_ids: torch.Tensor  # (B, L) long
    attention_mask: torch.Tensor  # (B, L) long: 1 for real tokens, 0 for padding


class BertTokenizer:
    """A ``tokenizers`` tokenizer from ``tokenizer.json``, giving the ids transformers' fast one gives.

    Like transformers, truncation and padding are set on each call (the file's own settings, e.g.
    MiniLM's fixed 128, do not apply), and truncation keeps room for the special tokens, so a
    truncated prompt still ends with [SEP].
    """

    def __init__(self, tokenizer: Tokenizer, pad_token: str):
        pad_id = tokenizer.token_to_id(pad_token)
        if pad_id is None:
            raise CheckpointError(f"the tokenizer has no padding token {pad_token!r} in its vocabulary")
        self.tokenizer, self.pad_token, self.pad_id = tokenizer, pad_token, pad_id

    @classmethod
    def from_directory(cls, directory: str | os.PathLike) -> "BertTokenizer":
        """Read ``tokenizer.json`` and the padding token of ``tokenizer_config.json`` (default [PAD])."""
        directory = Path(directory)
        path = directory / "tokenizer.json"
        if not path.is_file():
            raise CheckpointError(f"tokenizer file not found: {path}")
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception for a malformed file
            raise CheckpointError(f"could not load the tokenizer from {path}: {' '.join(str(e).split())[:300]}") from None
        config_path = directory / "tokenizer_config.json"
        pad = read_json(config_path).get("pad_token", "[PAD]") if config_path.is_file() else "[PAD]"
        return cls(tokenizer, pad["content"] if isinstance(pad, dict) else pad)  # an AddedToken is saved as a dict

    def __call__(self, prompts: str | Sequence[str], *, padding: str = "longest", max_length: int | None = None) -> TokenBatch:
        """Token ids of ``[CLS] prompt [SEP]``, truncated to ``max_length`` tokens (None: not
        truncated) and right-padded to the longest prompt (``padding="longest"``) or to
        ``max_length`` (``padding="max_length"``).

        Returns:
            (B, L) long tensors; (L,) ones for a single string, as transformers returns them.
        """
        if padding not in ("longest", "max_length") or (padding == "max_length" and max_length is None):
            raise KinemaError(f"padding must be 'longest', or 'max_length' with a max_length; got {padding!r}, max_length={max_length}")
        single = isinstance(prompts, str)
        if max_length is None:
            self.tokenizer.no_truncation()
        else:
            self.tokenizer.enable_truncation(max_length)
        self.tokenizer.enable_padding(pad_id=self.pad_id, pad_token=self.pad_token, length=max_length if padding == "max_length" else None)
        encodings = self.tokenizer.encode_batch([prompts] if single else list(prompts), add_special_tokens=True)
        ids = torch.tensor([e.ids for e in encodings], dtype=torch.long)  # (B, L)
        mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.long)  # (B, L)
        return TokenBatch(ids[0], mask[0]) if single else TokenBatch(ids, mask)


# ------------------------------------------------------------------------------------------------
# The text encoder
# ------------------------------------------------------------------------------------------------
class BertTextEncoder(TokenStateEncoder):
    """kinema's BERT and its tokenizer behind the text-encoder seam; transformers is never imported."""

    model: BertEncoder
    tokenizer: BertTokenizer

    @classmethod
    def from_directory(
        cls,
        directory: str | os.PathLike,
        *,
        max_length: int,
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
    ) -> "BertTextEncoder":
        """Load a transformers BERT directory (config.json, model.safetensors, tokenizer.json)."""
        directory = Path(directory)
        if not directory.is_dir():
            raise CheckpointError(f"text encoder not found: {directory}")
        config = BertConfig.from_json(directory / "config.json")
        if max_length > config.max_position_embeddings:
            raise KinemaError(f"max_length {max_length} is more than the {config.max_position_embeddings} positions of {directory}")
        state = load_sharded_safetensors(directory, WEIGHTS_STEM)
        state = {k: v for k, v in state.items() if k not in IGNORED_KEYS}
        model = build_on_meta(lambda: BertEncoder(config))
        load_into(model, state, dtype=dtype or torch.float32, device=device or "cpu", what="BERT text encoder")
        return cls(model, BertTokenizer.from_directory(directory), max_length)

    def tokenize(self, prompts: list[str], *, padding: str, max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.tokenizer(prompts, padding=padding, max_length=max_length)

    def states(self, ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.model(ids, mask)


def load_bert_encoder(
    directory: str | os.PathLike,
    *,
    max_length: int,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> BertTextEncoder:
    """A BERT text encoder: prompts -> (batch, max_length, hidden_size) zero-padded token states.

    Args:
        directory: a transformers BERT directory (config.json, model.safetensors, tokenizer.json).
        max_length: positions per prompt in the output (longer prompts are truncated).
        dtype: of the weights and the states (default float32).
        device: where the weights go (default CPU).
    """
    return BertTextEncoder.from_directory(directory, max_length=max_length, dtype=dtype, device=device)
