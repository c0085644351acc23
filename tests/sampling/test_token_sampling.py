"""Token sampling rules: exact answers on hand-made logits, parity with transformers' warpers,
greedy decoding, the sampled distribution, determinism, guidance, and argument errors."""

from __future__ import annotations

import math

import pytest
import torch

from kinema.errors import KinemaError
from kinema.sampling.tokens import (
    TokenSampling,
    apply_temperature,
    filter_logits,
    guided_logits,
    sample_tokens,
    top_k_filter,
    top_p_filter,
    typical_filter,
)

INF = math.inf


def kept(logits: torch.Tensor) -> list[int]:
    """Indices of the tokens a filter left finite in a (1, V) row."""
    return torch.isfinite(logits[0]).nonzero().flatten().tolist()


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    """``torch.allclose`` with a message (``torch.testing.assert_close`` imports DTensor: seconds)."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert torch.allclose(actual, expected, rtol=rtol, atol=atol), f"max |diff| {(actual - expected).abs().max():.3g}"


def random_logits(seed: int, shape: tuple[int, int] = (6, 97)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * 3  # (B, V); scale 3 gives peaked and flat rows


@pytest.fixture(scope="module")
def hf():
    """transformers' logits processors: the reference, used by the tests only."""
    return pytest.importorskip("transformers.generation.logits_process")


# ------------------------------------------------------------------------------------------------
# Exact answers
# ------------------------------------------------------------------------------------------------
# probabilities 1/2, 1/4, 1/8, 1/16, 1/16: exact in float32, so the mass boundaries are exact too
DYADIC = torch.tensor([[0.5, 0.25, 0.125, 0.0625, 0.0625]]).log()  # (1, 5)


def test_temperature_divides_and_one_is_a_no_op():
    x = torch.tensor([[1.0, -2.0, 4.0]])
    assert torch.equal(apply_temperature(x, 2.0), torch.tensor([[0.5, -1.0, 2.0]]))
    assert apply_temperature(x, 1.0) is x


def test_top_k_keeps_exactly_k():
    x = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0]])
    assert kept(top_k_filter(x, 1)) == [1]
    assert kept(top_k_filter(x, 2)) == [1, 3]
    out = top_k_filter(x, 3)
    assert kept(out) == [1, 2, 3]
    assert torch.equal(out[0, [1, 2, 3]], x[0, [1, 2, 3]])  # kept logits untouched
    assert out[0, 0] == -INF and out[0, 4] == -INF


def test_top_k_keeps_ties_at_the_boundary_as_transformers_does():
    x = torch.tensor([[3.0, 1.0, 3.0, 2.0]])
    assert kept(top_k_filter(x, 1)) == [0, 2]


@pytest.mark.parametrize("k", [None, 0, 5, 50])
def test_top_k_no_op_values_return_the_input(k):
    assert top_k_filter(DYADIC, k) is DYADIC


@pytest.mark.parametrize(
    "p, expected",
    [
        (0.5, [0]),  # the top token alone reaches 0.5 exactly
        (0.500001, [0, 1]),
        (0.75, [0, 1]),  # 1/2 + 1/4 reaches 0.75 exactly: no third token
        (0.76, [0, 1, 2]),
        (0.875, [0, 1, 2]),
        (1e-9, [0]),  # always at least the most probable token
    ],
)
def test_top_p_keeps_the_smallest_set_reaching_p(p, expected):
    assert kept(top_p_filter(DYADIC, p)) == expected


@pytest.mark.parametrize("p", [None, 1.0, 1])
def test_top_p_no_op_values_return_the_input(p):
    assert top_p_filter(DYADIC, p) is DYADIC


# probabilities 0.4, 0.21, 0.2, 0.19: entropy 1.33 nats; the surprisal of 0.21 (1.56) is the closest
# to it and that of 0.4 (0.92) the farthest, so the most probable token is the least typical.
TYPICAL = torch.tensor([[0.4, 0.21, 0.2, 0.19]]).log()  # (1, 4)


@pytest.mark.parametrize(
    "p, expected",
    [
        (1e-9, [1]),  # at least one token: the most typical, not the most probable
        (0.2, [1]),
        (0.5, [1, 2, 3]),  # 0.21 + 0.2 < 0.5 <= 0.21 + 0.2 + 0.19: the most probable token goes
        (0.95, [0, 1, 2, 3]),
    ],
)
def test_typical_keeps_the_most_typical_set_reaching_p(p, expected):
    assert kept(typical_filter(TYPICAL, p)) == expected


@pytest.mark.parametrize("p", [None, 1.0])
def test_typical_no_op_values_return_the_input(p):
    assert typical_filter(TYPICAL, p) is TYPICAL


def test_filters_keep_one_token_when_only_one_is_left():
    x = torch.tensor([[-INF, 2.0, -INF, -INF]])
    for out in (top_k_filter(x, 2), top_p_filter(x, 0.3), typical_filter(x, 0.3)):
        assert kept(out) == [1]


def test_filters_work_per_row():
    x = torch.cat([DYADIC, DYADIC.flip(-1)])  # (2, 5): the second row prefers the last token
    out = top_p_filter(x, 0.5)
    assert torch.isfinite(out).tolist() == [[True, False, False, False, False], [False, False, False, False, True]]


# ------------------------------------------------------------------------------------------------
# Parity with transformers
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1])
def test_filters_match_transformers_warpers(hf, seed):
    x = random_logits(seed)
    ids = torch.zeros(x.shape[0], 1, dtype=torch.long)
    for t in (0.3, 0.7, 1.5):
        assert torch.equal(apply_temperature(x, t), hf.TemperatureLogitsWarper(t)(ids, x))
    for k in (1, 3, 10, 96):
        assert torch.equal(top_k_filter(x, k), hf.TopKLogitsWarper(k)(ids, x))
    for p in (0.05, 0.3, 0.8, 0.95, 0.999):
        assert torch.equal(top_p_filter(x, p), hf.TopPLogitsWarper(p)(ids, x))
        assert torch.equal(typical_filter(x, p), hf.TypicalLogitsWarper(p)(ids, x))


def test_the_chain_matches_transformers_generate_order(hf):
    x = random_logits(2)
    ids = torch.zeros(x.shape[0], 1, dtype=torch.long)
    rule = TokenSampling(temperature=0.8, top_k=40, top_p=0.9, typical_p=0.95)
    reference = hf.LogitsProcessorList(
        [hf.TemperatureLogitsWarper(0.8), hf.TopKLogitsWarper(40), hf.TopPLogitsWarper(0.9), hf.TypicalLogitsWarper(0.95)]
    )
    assert torch.equal(filter_logits(x, rule), reference(ids, x))


def test_guidance_matches_transformers_unbatched_cfg(hf):
    cond, uncond = random_logits(3), random_logits(4) + 7.0  # offsets differ between passes

    class FakeModel:  # what UnbatchedClassifierFreeGuidanceLogitsProcessor calls for the uncond pass
        def __call__(self, input_ids, **kwargs):
            return self

        logits = uncond[:, None, :]  # (B, 1, V)

        def get(self, key, default=None):
            return default

    ids = torch.zeros(cond.shape[0], 1, dtype=torch.long)
    reference = hf.UnbatchedClassifierFreeGuidanceLogitsProcessor(3.0, FakeModel())(ids, cond)
    assert_close(guided_logits(cond, uncond, 3.0), reference, rtol=1e-6, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# Guidance
# ------------------------------------------------------------------------------------------------
def test_guidance_on_log_probs_by_hand():
    cond = torch.tensor([[0.5, 0.25, 0.25]]).log() + 10.0  # an arbitrary offset, removed by log-softmax
    uncond = torch.tensor([[0.25, 0.5, 0.25]]).log()
    expected = 2 * torch.tensor([[0.5, 0.25, 0.25]]).log() - uncond  # u + 2 (c - u) = 2c - u
    assert_close(guided_logits(cond, uncond, 2.0), expected)
    assert_close(guided_logits(cond, uncond, 0.0), uncond)
    assert guided_logits(cond, uncond, 1.0) is cond


def test_guidance_keeps_masked_tokens_masked():
    cond = torch.tensor([[1.0, -INF, 0.0, 2.0]])
    uncond = torch.tensor([[0.0, -INF, -INF, 1.0]])
    out = guided_logits(cond, uncond, 4.0)
    assert not out.isnan().any()
    assert kept(out) == [0, 3]


# ------------------------------------------------------------------------------------------------
# Sampling
# ------------------------------------------------------------------------------------------------
def test_greedy_is_argmax_and_ignores_the_filters():
    x = random_logits(5)
    assert torch.equal(sample_tokens(x, TokenSampling(temperature=0)), x.argmax(-1))
    # typical filtering would remove the argmax here; greedy decoding does not filter
    rule = TokenSampling(temperature=0.0, typical_p=0.2)
    assert sample_tokens(TYPICAL, rule).tolist() == [0]
    assert TokenSampling(temperature=None).greedy and TokenSampling(temperature=None).temperature == 0.0


def test_sampled_frequencies_follow_the_softmax():
    n = 20_000
    probs = torch.tensor([0.6, 0.3, 0.1])
    logits = probs.log().expand(n, 3)  # (n, 3): n independent draws in one call
    g = torch.Generator().manual_seed(0)
    tokens = sample_tokens(logits, TokenSampling(), g)
    assert tokens.shape == (n,) and tokens.dtype == torch.long
    freq = torch.bincount(tokens, minlength=3).float() / n
    assert_close(freq, probs, rtol=0, atol=0.015)  # ~4 standard deviations
    # top-k 2 drops the third token and renormalises the other two: 2/3, 1/3
    tokens = sample_tokens(logits, TokenSampling(top_k=2), g)
    freq = torch.bincount(tokens, minlength=3).float() / n
    assert_close(freq, torch.tensor([2 / 3, 1 / 3, 0.0]), rtol=0, atol=0.015)
    # temperature 2 flattens: softmax(log p / 2) is proportional to sqrt(p)
    tokens = sample_tokens(logits, TokenSampling(temperature=2.0), g)
    freq = torch.bincount(tokens, minlength=3).float() / n
    assert_close(freq, probs.sqrt() / probs.sqrt().sum(), rtol=0, atol=0.015)


def test_same_seed_same_tokens():
    x = random_logits(6, (500, 97))
    rule = TokenSampling(temperature=0.9, top_k=50, top_p=0.95, typical_p=0.99)
    a = sample_tokens(x, rule, torch.Generator().manual_seed(123))
    b = sample_tokens(x, rule, torch.Generator().manual_seed(123))
    c = sample_tokens(x, rule, torch.Generator().manual_seed(124))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_sampled_tokens_respect_the_filters():
    x = random_logits(7, (500, 97))
    tokens = sample_tokens(x, TokenSampling(top_k=3), torch.Generator().manual_seed(0))
    top3 = x.topk(3, dim=-1).indices  # (500, 3)
    assert (top3 == tokens[:, None]).any(dim=-1).all()


# ------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"temperature": -0.5}, "temperature"),
        ({"temperature": math.inf}, "temperature"),
        ({"temperature": "1"}, "temperature"),
        ({"top_k": -1}, "top_k"),
        ({"top_k": 2.5}, "top_k"),
        ({"top_k": True}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_p": math.nan}, "top_p"),
        ({"typical_p": 0}, "typical_p"),
        ({"typical_p": -0.1}, "typical_p"),
        ({"guidance_scale": math.nan}, "guidance_scale"),
        ({"guidance_scale": None}, "guidance_scale"),
    ],
)
def test_bad_rules_raise(kwargs, message):
    with pytest.raises(KinemaError, match=message):
        TokenSampling(**kwargs)


def test_bad_arguments_raise():
    x = random_logits(8)
    with pytest.raises(KinemaError, match="greedy"):
        apply_temperature(x, 0.0)
    with pytest.raises(KinemaError, match="temperature"):
        apply_temperature(x, -1.0)
    with pytest.raises(KinemaError, match="top_k"):
        top_k_filter(x, -3)
    with pytest.raises(KinemaError, match="top_p"):
        top_p_filter(x, 2.0)
    with pytest.raises(KinemaError, match="typical_p"):
        typical_filter(x, 0.0)
    with pytest.raises(KinemaError, match="same shape"):
        guided_logits(x, x[:, :-1], 2.0)
    with pytest.raises(KinemaError, match=r"\(batch, vocab\)"):
        sample_tokens(x[:, None, :], TokenSampling())
    with pytest.raises(KinemaError, match="argmax"):
        filter_logits(x, TokenSampling(temperature=0))
