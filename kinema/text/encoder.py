"""An encoder and its tokenizer as a kinema text encoder: token states, zero-padded.

Every text encoder of kinema (UMT5 for Wan, the small sentence encoder of the shapes-world models)
is one of these: prompts -> (batch, max_length, dim) token states with zeros past each prompt's
last token. The padding conventions live here once; the tokenizer and the model are called
through :meth:`TokenStateEncoder.tokenize` and :meth:`TokenStateEncoder.states`, which follow
transformers here and kinema's own BERT in :mod:`kinema.text.bert`. Files are read from local
directories only; nothing is downloaded.
"""

from __future__ import annotations

import html
import os
import re
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ..errors import CheckpointError, KinemaError
from ..schema import short


def clean_prompt(text: str) -> str:
    """Unescape HTML entities and collapse whitespace, as Wan's and diffusers' pipelines do."""
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()



MAX_TEXT_TOKENS = 4096  # text positions per prompt a call may ask for (LTX-Video uses 128; every prompt is padded to it)


def check_text_length(max_length: Any) -> int:
    """``max_length`` if it is a whole number of text tokens from 1 to :data:`MAX_TEXT_TOKENS`."""
    if isinstance(max_length, bool) or not isinstance(max_length, int) or not 1 <= max_length <= MAX_TEXT_TOKENS:
        raise KinemaError(f"max_sequence_length must be a whole number from 1 to {MAX_TEXT_TOKENS}; got {short(max_length)}")
    return max_length


class TokenStateEncoder:
    """An encoder-only model and its tokenizer, returning zero-padded token states.

    :meth:`tokenize` and :meth:`states` call a transformers tokenizer and model; subclasses that
    run other code (:class:`kinema.text.bert.BertTextEncoder`) override those two and share the rest.

    Args:
        model: the encoder (``UMT5EncoderModel``, ``BertModel``, ...); ``model.config.hidden_size``
            is the width of the states.
        tokenizer: its tokenizer.
        max_length: positions per prompt in the output (longer prompts are truncated).
    """

    def __init__(self, model: nn.Module, tokenizer, max_length: int):
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.dim = int(model.config.hidden_size)

    @classmethod
    def from_directory(
        cls,
        directory: str | os.PathLike,
        *,
        max_length: int,
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
    ) -> "TokenStateEncoder":
        """Load a model and tokenizer saved together (``save_pretrained``) in one directory."""
        from transformers import AutoModel

        directory = Path(directory)
        if not any(directory.glob("*.safetensors")):
            raise CheckpointError(f"{directory}: no safetensors weights (kinema does not unpickle text encoder weights)")
        model = _hf_call(AutoModel.from_pretrained, directory, what="text encoder", dtype=dtype or torch.float32, use_safetensors=True)
        return cls(model.to(device or "cpu"), load_tokenizer(directory), max_length)

    # -- the tokenizer and the model -----------------------------------------------------------
    def tokenize(self, prompts: list[str], *, padding: str, max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask, (B, L) long each, with the special tokens, truncated to
        ``max_length`` and right-padded to the longest prompt (``padding="longest"``) or to
        ``max_length`` (``padding="max_length"``)."""
        tokens = self.tokenizer(
            prompts,
            padding=padding,
            max_length=max_length,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        return tokens.input_ids, tokens.attention_mask

    def states(self, ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The last hidden states (B, L, dim) of ids (B, L); a mask (B, L) hides the padded keys,
        None attends to every position."""
        return self.model(input_ids=ids, attention_mask=mask).last_hidden_state

    # -- encoding ------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self, prompts: Sequence[str], *, device: str | torch.device | None = None, dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        """Encode prompts to (batch, max_length, dim) states, zero past each prompt's last token.

        The encoder runs only over the longest prompt of the batch (padding tokens are masked, so
        the states of real tokens do not depend on how much padding follows) and the result is
        zero-padded to ``max_length`` (Wan's convention, and diffusers').
        """
        ids, mask = self.tokenize([clean_prompt(p) for p in prompts], padding="longest", max_length=self.max_length)
        model_device = next(self.model.parameters()).device
        if ids.shape[1] == 0:  # no prompt gave a token (a tokenizer without end tokens, and "" prompts)
            out = torch.zeros(len(prompts), self.max_length, self.dim, device=model_device)  # what diffusers' padding gives
            return out.to(device=device or out.device, dtype=dtype or next(self.model.parameters()).dtype)
        ids, mask = ids.to(model_device), mask.to(model_device)  # (B, L) each
        states = self.states(ids, mask)  # (B, L, dim)
        states = states * mask.unsqueeze(-1).to(states.dtype)  # zero the padding positions
        out = states.new_zeros(states.shape[0], self.max_length, states.shape[2])  # (B, max_length, dim)
        out[:, : states.shape[1]] = states
        return out.to(device=device or out.device, dtype=dtype or out.dtype)

    @torch.no_grad()
    def encode_padded(
        self,
        prompts: Sequence[str],
        *,
        max_length: int | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode prompts padded to ``max_length`` tokens, returning the states and the token mask.

        The convention of diffusers' ``LTXPipeline`` (T5 for LTX-Video): every prompt is padded (or
        truncated) to ``max_length`` tokens, the encoder runs over all of them *without* an attention
        mask, the prompt text is used as given, and the states are returned as they come (padding
        positions included); the denoiser masks the padding in its cross-attention with the mask.

        Returns:
            states (batch, max_length, dim) and mask (batch, max_length) bool, True for real tokens.
        """
        max_length = check_text_length(self.max_length if max_length is None else max_length)
        ids, mask = self.tokenize(list(prompts), padding="max_length", max_length=max_length)  # (B, L) each
        model_device = next(self.model.parameters()).device
        states = self.states(ids.to(model_device), None)  # (B, L, dim)
        return states.to(device=device or states.device, dtype=dtype or states.dtype), mask.bool().to(device or states.device)


def load_tokenizer(tokenizer_dir: str | os.PathLike):
    """A transformers tokenizer from a local directory, with a one-line error when it fails."""
    from transformers import AutoTokenizer

    return _hf_call(AutoTokenizer.from_pretrained, Path(tokenizer_dir), what="tokenizer")


def _hf_call(fn, path: Path, *, what: str, **kwargs):
    if not path.exists():
        raise CheckpointError(f"{what} not found: {path}")
    from transformers.utils import logging as hf_logging

    bar_was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # loading a local file needs no bar of its own
    try:
        return fn(str(path), local_files_only=True, **kwargs)
    except (OSError, ValueError, KeyError, EnvironmentError) as e:
        raise CheckpointError(f"could not load the {what} from {path}: {' '.join(str(e).split())[:300]}") from None
    finally:
        if bar_was_on:
            hf_logging.enable_progress_bar()
