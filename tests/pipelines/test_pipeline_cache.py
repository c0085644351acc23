"""Models kept loaded between calls (a server's worker): one load for many jobs, the same frames as
a fresh load, least recently used dropped first within the limit."""

from __future__ import annotations

import numpy as np
import pytest

from kinema.generation import generate
from kinema.pipelines.cache import PipelineCache, pipeline_bytes
from kinema.request import GenerationRequest



def _request(**over) -> GenerationRequest:
    return GenerationRequest(**{"prompt": "a red circle moving left", "model": "shapes", "num_frames": 5, "num_inference_steps": 2, **over})


def test_generate_keeps_the_model_between_calls():
    cache = PipelineCache(1 << 34)
    first = generate(_request(seed=1), write=False, progress_bar=False, pipelines=cache)
    second = generate(_request(seed=2), write=False, progress_bar=False, pipelines=cache)
    again = generate(_request(seed=1), write=False, progress_bar=False, pipelines=cache)
    assert (cache.loads, cache.hits, len(cache)) == (1, 2, 1)
    assert cache.held_bytes > 0
    fresh = generate(_request(seed=1), write=False, progress_bar=False)
    assert np.array_equal(np.asarray(first.output.frames), np.asarray(fresh.output.frames))
    assert np.array_equal(np.asarray(again.output.frames), np.asarray(fresh.output.frames))
    assert not np.array_equal(np.asarray(second.output.frames), np.asarray(first.output.frames))


def test_a_limit_too_small_keeps_nothing():
    cache = PipelineCache(0)
    generate(_request(), write=False, progress_bar=False, pipelines=cache)
    generate(_request(), write=False, progress_bar=False, pipelines=cache)
    assert (cache.loads, cache.hits, len(cache)) == (2, 0, 0)


class _Pipe:
    """A stand-in pipeline of ``n`` float32 weights."""

    def __init__(self, n: int) -> None:
        import torch

        self.transformer = torch.nn.Linear(n, 1, bias=False)


def test_least_recently_used_goes_first():
    size = pipeline_bytes(_Pipe(256))
    assert size == 256 * 4
    cache = PipelineCache(2 * size)
    a = cache.get("a", lambda: _Pipe(256))
    cache.get("b", lambda: _Pipe(256))
    assert cache.get("a", lambda: pytest.fail("a is kept")) is a  # a is now the most recent
    cache.get("c", lambda: _Pipe(256))  # b goes
    assert cache.bytes_of("b") == 0 and cache.bytes_of("a") == size and cache.bytes_of("c") == size
    assert cache.held_bytes == 2 * size
    cache.clear()
    assert len(cache) == 0


def test_negative_limit_is_refused():
    with pytest.raises(ValueError):
        PipelineCache(-1)


