"""Tiny random components for tests: a word-level tokenizer and small UMT5 encoders.

Nothing here downloads anything: every component is built in-process and saved locally.
"""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = (
    "a red green blue yellow purple cyan orange white circle square triangle moving left right up down "
    "the cat dog walks on grass in snow city night day fast slow blurry low quality"
).split()


def make_tokenizer(directory: Path):
    """A T5-like word-level fast tokenizer (pad=0, eos=1, unk=2) saved to ``directory``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for w in WORDS:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(str(directory))
    return fast


def make_umt5(seed: int = 0, d_model: int = 32, vocab: int = 64):
    """A tiny random transformers UMT5EncoderModel in float32."""
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    config = UMT5Config(
        vocab_size=vocab,
        d_model=d_model,
        d_kv=8,
        d_ff=48,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=32,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
    )
    model = UMT5EncoderModel(config).eval()
    # random init leaves norms at one; perturb them so that a wrong key map cannot pass
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model
