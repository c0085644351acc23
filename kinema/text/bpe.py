"""A byte-level BPE tokenizer trained on a model's own captions, and the text encoder built on it.

The TTV-1B design tokenises prompts with GPT-2's byte-level BPE (50,257 ids). No package in
kinema's registry ships that vocabulary offline without a heavy dependency (tiktoken's offline
builds carry cl100k only; openai-whisper carries gpt2.tiktoken but pulls numba and llvmlite), and a
text encoder trained from scratch with the denoiser gains nothing from GPT-2's merges: so kinema
trains the same kind of tokenizer (byte-level BPE, Hugging Face ``tokenizers``, already installed
with transformers) on the training captions, with the vocabulary size a config field
(``architecture.vocab_size``: 50,257 for the ``ttv-1b`` preset, 512 for the shapes model).

Byte-level means every string has ids: words the captions never held fall back to byte pieces. The
tokenizer lower-cases (NFKC first) and ends every prompt with ``<|endoftext|>`` (GPT-2's one special
token), so "" still has a token: the unconditional prompt of classifier-free guidance. Training is
deterministic: the same captions in the same order give the same ``tokenizer.json``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from ..errors import CheckpointError, KinemaError

END_OF_TEXT = "<|endoftext|>"
TOKENIZER_FILE = "tokenizer.json"


def train_bpe(texts: Iterable[str], vocab_size: int) -> Any:
    """A byte-level BPE ``tokenizers.Tokenizer`` trained on ``texts`` with at most ``vocab_size`` ids.

    The vocabulary holds the 256 byte symbols, ``<|endoftext|>`` and the merges learned (fewer when
    the texts run out of pairs). ``vocab_size`` must leave room for the bytes and the special token.
    """
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + 1:
        raise KinemaError(f"a byte-level BPE needs vocab_size >= {len(alphabet) + 1} (256 bytes and {END_OF_TEXT}); got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[END_OF_TEXT], initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator(list(texts), trainer=trainer)
    end = tok.token_to_id(END_OF_TEXT)
    tok.post_processor = processors.TemplateProcessing(single=f"$A {END_OF_TEXT}", special_tokens=[(END_OF_TEXT, end)])
    return tok


def load_bpe(path: str | os.PathLike) -> Any:
    """A tokenizer from its ``tokenizer.json`` (the file, or the folder holding it)."""
    from tokenizers import Tokenizer

    path = Path(path)
    file = path / TOKENIZER_FILE if path.is_dir() else path
    if not file.is_file():
        raise CheckpointError(f"no tokenizer at {file}")
    try:
        return Tokenizer.from_file(str(file))
    except Exception as e:  # tokenizers raises its own Exception type for a bad file
        raise CheckpointError(f"{file}: not a tokenizers tokenizer.json ({' '.join(str(e).split())[:200]})") from None


def tokenize(tokenizer: Any, prompts: Sequence[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids (B, L) int64 and mask (B, L) bool of ``prompts``, L = the longest prompt's tokens (at
    most ``max_length``; longer prompts are cut, keeping their final ``<|endoftext|>``)."""
    encoded = [tokenizer.encode(p).ids for p in prompts]
    end_id = tokenizer.token_to_id(END_OF_TEXT)
    end = [end_id] if end_id is not None else []
    encoded = [ids if len(ids) <= max_length else ids[: max_length - 1] + end for ids in encoded]
    n = max((len(ids) for ids in encoded), default=1)
    ids = torch.zeros(len(prompts), n, dtype=torch.long)
    mask = torch.zeros(len(prompts), n, dtype=torch.bool)
    for i, row in enumerate(encoded):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = True
    return ids, mask


class OwnTextEncoder:
    """A model's own text encoder: its BPE tokenizer and the model's text tower (``encode_text``).

    ``encoder(prompts) -> (B, max_length, dim)`` token states, zero past each prompt's last token,
    like every kinema text encoder; the tower's weights are the model's (they train with it).
    """

    def __init__(self, tokenizer: Any, model: torch.nn.Module, max_length: int) -> None:
        self.tokenizer, self.model, self.max_length = tokenizer, model, max_length
        self.dim = int(model.config.text_dim)

    def __call__(self, prompts: Sequence[str], *, device: Any = None, dtype: torch.dtype | None = None) -> torch.Tensor:
        return self.encode_padded(prompts, device=device, dtype=dtype)[0]

    @torch.no_grad()
    def encode_padded(
        self, prompts: Sequence[str], *, max_length: int | None = None, device: Any = None, dtype: torch.dtype | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, max_length, dim) states, zero past each prompt's tokens, and the (B, max_length) bool
        token mask (:class:`kinema.text.MaskedTextEncoder`); the prompts are tokenized once."""
        if isinstance(prompts, str):
            raise KinemaError("pass a list of prompts")
        length = max_length or self.max_length
        ids, mask = tokenize(self.tokenizer, prompts, length)
        states = self.model.encode_text(ids, mask).float()  # (B, L, dim), zero at padding
        out = torch.zeros(len(prompts), length, self.dim)
        out[:, : states.shape[1]] = states.cpu()
        full = torch.zeros(len(prompts), length, dtype=torch.bool)
        full[:, : mask.shape[1]] = mask
        return out.to(device=device or "cpu", dtype=dtype or torch.float32), full.to(device or "cpu")


def load_own_text_encoder(folder: str | os.PathLike, model: torch.nn.Module, max_length: int) -> OwnTextEncoder:
    """The text encoder of a model whose tokenizer is ``folder``/tokenizer.json; ids beyond the
    model's vocabulary are refused here, not at the first prompt."""
    tokenizer = load_bpe(folder)
    vocab = tokenizer.get_vocab_size()
    if vocab > model.config.vocab_size:
        raise CheckpointError(f"{folder}: the tokenizer has {vocab} ids but the model's text encoder takes {model.config.vocab_size}")
    if max_length > model.config.text_len:
        raise CheckpointError(f"text max_length {max_length} exceeds the model's text_len {model.config.text_len}")
    return OwnTextEncoder(tokenizer, model, max_length)
