"""The packaged sentence encoder behind the text-encoder seam."""

from __future__ import annotations

import torch

from kinema.text.minilm import MINILM_DIM, load_minilm


def _mean_pool(states: torch.Tensor) -> torch.Tensor:
    mask = (states.abs().sum(-1, keepdim=True) > 0).float()  # (B, L, 1): real tokens
    return torch.nn.functional.normalize((states * mask).sum(1) / mask.sum(1), dim=-1)


def test_minilm_token_states_and_meaning():
    enc = load_minilm(max_length=16)
    prompts = ["a red circle moving left", "a red disc going to the left", "a blue square moving up"]
    states = enc(prompts)
    assert states.shape == (3, 16, MINILM_DIM) and enc.dim == MINILM_DIM
    n = len(enc.tokenizer(prompts[0]).input_ids)  # [CLS] ... [SEP]
    assert states[0, n:].abs().max() == 0 and states[0, n - 1].abs().max() > 0
    pooled = _mean_pool(states)
    assert pooled[0] @ pooled[1] > pooled[0] @ pooled[2]  # a real sentence encoder: paraphrases are closer
    torch.testing.assert_close(enc(prompts[:1]), states[:1], atol=1e-5, rtol=0)  # padding in a batch is masked out
