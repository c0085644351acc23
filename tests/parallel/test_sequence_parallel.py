"""Sequence parallelism (Ulysses, ring attention and USP) against one process, on tiny random fp32
denoisers of the Wan, LTX-Video and pixel families, in 2- and 4-process gloo groups on the CPU.

Each worker builds the same seeded models, computes the single-process output, applies
:func:`kinema.parallel.plan.parallelize`, computes it again split over the group, and removes the
hooks (after which the model must give the single-process output bit for bit). The parent checks
the differences and that every rank got the same output.
"""

from __future__ import annotations

import dataclasses
import time

import pytest
import torch

from kinema.errors import KinemaError
from kinema.models.attention import attention, attention_override, sdpa_attention
from kinema.models.ltx import LTXTransformer, LTXTransformerConfig, ltx_rope_scale
from kinema.models.pixel_dit import PIXEL_DIT_PRESETS, PixelDiT
from kinema.models.wan import WanTransformer, WanTransformerConfig
from kinema.parallel import ParallelPlan, parallelize
from tests.distributed import run_workers

TOLERANCE = 1e-5  # fp32: the distributed merge adds the softmax's terms in another order


# ------------------------------------------------------------------------------------------------
# Tiny models and inputs (the same on every rank: seeded)
# ------------------------------------------------------------------------------------------------
def _wan(heads: int) -> WanTransformer:
    torch.manual_seed(0)
    return WanTransformer(WanTransformerConfig(dim=12 * heads, ffn_dim=32, num_heads=heads, num_layers=2, text_dim=16, text_len=8, rope_max_seq_len=16)).eval()


def _wan_inputs(model: WanTransformer, fhw: tuple[int, int, int], per_frame: bool = False) -> tuple:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 16, *fhw, generator=g)  # (B, C, F, H, W), patch (1, 2, 2)
    t = torch.tensor([[50.0] + [700.0] * (fhw[0] - 1), [0.0] + [30.0] * (fhw[0] - 1)]) if per_frame else torch.tensor([700.0, 30.0])  # a given past's form
    return x, t, torch.randn(2, 5, model.config.text_dim, generator=g)


def _ltx(heads: int) -> LTXTransformer:
    torch.manual_seed(0)
    return LTXTransformer(LTXTransformerConfig(dim=6 * heads, ffn_dim=32, num_heads=heads, num_layers=2, in_dim=8, out_dim=6, text_dim=12)).eval()


def _ltx_call(model: LTXTransformer, fhw: tuple[int, int, int], per_token: bool):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 8, *fhw, generator=g)  # (B, C, F, H, W), patch 1
    n = fhw[0] * fhw[1] * fhw[2]
    t = torch.rand(2, n, generator=g) * 1000 if per_token else torch.tensor([400.0, 10.0])  # per-token: image-to-video's form
    context, mask = torch.randn(2, 6, 12, generator=g), torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    return lambda: model(x, t, context, mask, rope_scale=ltx_rope_scale(25, 8, 32))


def _pixel(heads: int) -> PixelDiT:
    torch.manual_seed(0)
    return PixelDiT(dataclasses.replace(PIXEL_DIT_PRESETS["ttv-tiny"](), dim=12 * heads, num_heads=heads)).eval()


def _pixel_inputs(fhw: tuple[int, int, int]) -> tuple:
    g = torch.Generator().manual_seed(3)
    return torch.randn(2, 3, *fhw, generator=g), torch.tensor([999, 3]), torch.randn(2, 4, 16, generator=g)  # patch (2, 4, 2)


def _cases(world: int) -> list:
    """(name, model, call, plan) for a group of ``world`` ranks; the token counts in the names."""
    wan2, wan3, ltx2, ltx3, pix2, pix3 = _wan(2), _wan(3), _ltx(2), _ltx(3), _pixel(2), _pixel(3)
    wan_call = lambda m, fhw: (lambda: m(*_wan_inputs(m, fhw)))
    pix_call = lambda m, fhw: (lambda: m(*_pixel_inputs(fhw)))
    plan = ParallelPlan(sequence=world)
    cases = [
        ("wan heads2 18 tokens", wan2, wan_call(wan2, (3, 4, 6)), plan),
        ("wan heads2 9 tokens", wan2, wan_call(wan2, (3, 2, 6)), plan),
        ("wan heads3 18 tokens", wan3, wan_call(wan3, (3, 4, 6)), plan),
        ("wan heads3 3 tokens", wan3, wan_call(wan3, (3, 2, 2)), plan),
        ("wan heads2 18 tokens per-frame time", wan2, lambda: wan2(*_wan_inputs(wan2, (3, 4, 6), per_frame=True)), plan),
        ("ltx heads2 18 tokens", ltx2, _ltx_call(ltx2, (3, 2, 3), False), plan),
        ("ltx heads2 9 tokens per-token time", ltx2, _ltx_call(ltx2, (1, 3, 3), True), plan),
        ("ltx heads3 9 tokens per-token time", ltx3, _ltx_call(ltx3, (1, 3, 3), True), plan),
        ("pixel heads2 18 tokens", pix2, pix_call(pix2, (4, 12, 6)), plan),
        ("pixel heads3 9 tokens", pix3, pix_call(pix3, (2, 12, 6)), plan),
    ]
    if world == 4:
        wan4 = _wan(4)
        cases += [
            ("wan heads2 forced ring 18 tokens", wan2, wan_call(wan2, (3, 4, 6)), ParallelPlan(sequence=4, ulysses=1)),
            ("wan heads4 18 tokens", wan4, wan_call(wan4, (3, 4, 6)), plan),
        ]
    return cases


# ------------------------------------------------------------------------------------------------
# Workers
# ------------------------------------------------------------------------------------------------
def _sequence_worker(rank: int, world: int) -> dict:
    results = {}
    mesh = None
    with torch.no_grad():
        for name, model, call, plan in _cases(world):
            reference = call()
            handle = parallelize(model, plan)
            seen = []  # the token count each block's self-attention gets: this rank's chunk
            attn = model.blocks[0] if isinstance(model, PixelDiT) else model.blocks[0].self_attn
            probe = attn.register_forward_pre_hook(lambda m, args, seen=seen: seen.append(args[0].shape[1]))
            split = call()
            probe.remove()
            handle.remove()
            again = call()
            results[name] = {
                "diff": float((split - reference).abs().max()),
                "restored": bool(torch.equal(again, reference)),
                "degrees": (handle.mesh.ulysses, handle.mesh.ring),
                "chunk": seen[0],
                "out": split,
            }
            if name == "wan heads2 9 tokens":
                mesh = handle.mesh  # u = 2 (and r = 2 with four ranks)
        results["gqa attention"] = _gqa_check(mesh)
    return results


def _gqa_check(mesh) -> dict:
    """The attention function itself with grouped queries (4 query heads over 2 key/value heads)
    and 7 tokens (padded): this rank's rows against single-process attention."""
    from kinema.parallel.attention import sequence_parallel_attention

    g = torch.Generator().manual_seed(4)
    q, k, v = torch.randn(2, 4, 7, 8, generator=g), torch.randn(2, 2, 7, 8, generator=g), torch.randn(2, 2, 7, 8, generator=g)
    whole = sdpa_attention(q, k, v)  # (B, H, S, D)
    size = -(-7 // mesh.size)
    pad = lambda t: torch.nn.functional.pad(t, (0, 0, 0, size * mesh.size - 7))[:, :, mesh.index * size : (mesh.index + 1) * size]
    mine = sequence_parallel_attention(pad(q), pad(k), pad(v), None, mesh, 7)
    rows = whole[:, :, mesh.index * size : (mesh.index + 1) * size]
    return {"diff": float((mine[:, :, : rows.shape[2]] - rows).abs().max()), "restored": True, "degrees": (mesh.ulysses, mesh.ring), "out": rows}


def _check(results: list[dict], world: int, expect: dict) -> dict:
    diffs = {}
    for name in results[0]:
        diffs[name] = max(r[name]["diff"] for r in results)
        assert diffs[name] <= TOLERANCE, (name, diffs[name])
        assert all(r[name]["restored"] for r in results), f"{name}: removing the hooks did not restore the model"
        if name != "gqa attention":
            assert all(torch.equal(r[name]["out"], results[0][name]["out"]) for r in results), f"{name}: ranks differ"
            tokens = int(name.split(" tokens")[0].split()[-1])
            assert all(r[name]["chunk"] == -(-tokens // world) for r in results), f"{name}: blocks did not get a chunk of the tokens"
    for name, degrees in expect.items():
        assert results[0][name]["degrees"] == degrees, (name, results[0][name]["degrees"])
    print(f"{world} ranks, max abs difference per case: " + ", ".join(f"{k}: {v:.2e}" for k, v in diffs.items()))
    return diffs


def test_two_ranks_ulysses_and_ring_equal_one_process():
    t0 = time.perf_counter()
    results = run_workers(_sequence_worker, 2)
    _check(results, 2, {"wan heads2 18 tokens": (2, 1), "wan heads3 18 tokens": (1, 2), "ltx heads3 9 tokens per-token time": (1, 2)})
    print(f"2 ranks: {time.perf_counter() - t0:.1f} s")


def test_four_ranks_usp_ring_and_ulysses_equal_one_process():
    t0 = time.perf_counter()
    results = run_workers(_sequence_worker, 4)
    _check(results, 4, {
        "wan heads2 18 tokens": (2, 2), "wan heads3 3 tokens": (1, 4), "wan heads2 forced ring 18 tokens": (1, 4),
        "wan heads4 18 tokens": (4, 1), "pixel heads2 18 tokens": (2, 2), "gqa attention": (2, 2),
    })  # fmt: skip
    print(f"4 ranks: {time.perf_counter() - t0:.1f} s")


# ------------------------------------------------------------------------------------------------
# One process: the seam, the plan's rules
# ------------------------------------------------------------------------------------------------
def test_attention_override_is_scoped_and_the_plain_path_unchanged():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 5, 4, generator=g) for _ in range(3))
    assert torch.equal(attention(q, k, v), torch.nn.functional.scaled_dot_product_attention(q, k, v))
    seen = []
    with attention_override(lambda *a: seen.append(len(a)) or torch.zeros(1)):
        assert torch.equal(attention(q, k, v), torch.zeros(1))
        with attention_override(None):
            assert torch.equal(attention(q, k, v), sdpa_attention(q, k, v))
    with pytest.raises(RuntimeError, match="boom"), attention_override(lambda *a: torch.zeros(1)):
        raise RuntimeError("boom")
    assert seen == [4] and torch.equal(attention(q, k, v), sdpa_attention(q, k, v))


def test_plans_are_checked_in_one_line():
    assert ParallelPlan(sequence=6).degrees(heads=12) == (6, 1)
    assert ParallelPlan(sequence=8).degrees(heads=12) == (4, 2)  # Wan 1.3B on 8: ulysses 4 x ring 2
    assert ParallelPlan(sequence=8).degrees(heads=40) == (8, 1)
    assert ParallelPlan(sequence=4).degrees(heads=3) == (1, 4)
    assert ParallelPlan.for_world(8, guidance=2) == ParallelPlan(sequence=4, guidance=2)
    assert ParallelPlan.for_world(4) == ParallelPlan(sequence=4)
    for make, words in [
        (lambda: ParallelPlan(sequence=0), "positive integer"),
        (lambda: ParallelPlan(guidance=3), "must be 1 or 2"),
        (lambda: ParallelPlan(sequence=4, ulysses=3), "must divide the sequence"),
        (lambda: ParallelPlan(sequence=4, ulysses=4).degrees(heads=6), "must divide the model's 6"),
        (lambda: ParallelPlan.for_world(4, sequence=3), "is 3 processes, but this run has 4"),
        (lambda: ParallelPlan.for_world(3, guidance=2), "this run has 3"),
    ]:
        with pytest.raises(KinemaError, match=words) as e:
            make()
        assert "\n" not in str(e.value)


def test_parallelize_in_one_process():
    model = _wan(2)
    call = lambda: model(*_wan_inputs(model, (3, 4, 6)))
    with torch.no_grad():
        reference = call()
        handle = parallelize(model, ParallelPlan())  # a world of one: nothing to split
        assert handle.mesh is None and handle.guidance_index is None and not handle.handles
        assert torch.equal(call(), reference)
    with pytest.raises(KinemaError, match="is 2 processes, but this run has 1"):
        parallelize(model, ParallelPlan(sequence=2))
    with pytest.raises(KinemaError, match="denoiser or a pipeline"):
        parallelize(object(), ParallelPlan())


def test_block_attention_and_its_merge():
    """One key block's output and log-sum-exp (the fused kernel, and the plain maths it falls back
    to), with grouped queries; blocks merged by their log-sum-exps give attention over all keys."""
    from kinema.parallel.attention import _plain_with_lse, attention_with_lse, merge_blocks

    g = torch.Generator().manual_seed(5)
    q, k, v = torch.randn(2, 4, 9, 8, generator=g), torch.randn(2, 2, 13, 8, generator=g), torch.randn(2, 2, 13, 6, generator=g)
    out, lse = attention_with_lse(q, k, v)
    plain_out, plain_lse = _plain_with_lse(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1))
    assert out.shape == (2, 4, 9, 6) and lse.shape == (2, 4, 9) and lse.dtype == torch.float32
    assert (out - plain_out).abs().max() < 1e-6 and (lse - plain_lse).abs().max() < 1e-5
    assert (out - sdpa_attention(q, k, v)).abs().max() < 1e-6
    merged = None
    for part in (slice(0, 5), slice(5, 6), slice(6, 13)):
        o, l = attention_with_lse(q, k[:, :, part], v[:, :, part])
        merged = (o, l) if merged is None else merge_blocks(*merged, o, l)
    assert (merged[0] - out).abs().max() < 1e-6 and (merged[1] - lse).abs().max() < 1e-5
