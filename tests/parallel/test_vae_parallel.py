"""decode_split: the Wan and LTX-Video VAE decodes split over gloo ranks equal the one-process
decode; the temporal reach that makes the shares' edges exact is the decoders' own, and no less."""

from __future__ import annotations

import time

import pytest
import torch
import torch.distributed as dist

from kinema.checkpoints.io import build_on_meta
from kinema.errors import KinemaError
from kinema.models.vae import CausalCache, CausalConv3d, WanVAE, WanVAEConfig
from kinema.models.vae.ltx_vae import LTX_VAE_PRESETS, LTXVAE
from kinema.parallel.vae import decode_share, decode_split, plan_decode, temporal_reach
from tests.distributed import run_workers
from tests.models.test_ltx_vae import TINY_090, TINY_091
from tests.models.test_ltx_vae import tiny_vae as tiny_ltx
from tests.models.test_wan_vae import tiny_vae as tiny_wan

@pytest.fixture(autouse=True)
def one_thread():
    """Tiny decodes run fastest, and steadiest on a busy machine, on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


LTX_TOL = 1e-5  # LTX windows give convolutions other lengths: PyTorch's CPU sums may round differently


def _latents(channels: int, frames: int, h: int, w: int, seed: int) -> torch.Tensor:
    return torch.randn(1, channels, frames, h, w, generator=torch.Generator().manual_seed(seed))


def _ltx_kwargs(config) -> dict:
    """Decode arguments that exercise a timestep-conditioned decoder's noise (blend and injection)."""
    if not config.timestep_conditioning:
        return {}
    return dict(timestep=0.05, decode_noise_scale=0.03, generator=torch.Generator().manual_seed(11))


# The multi-process cases: (name, vae maker, latents maker, decode kwargs maker); T not divisible
# by 2, 3 or 4, and one clip shorter than 4 ranks.
CASES = {
    "wan": (lambda: tiny_wan(), lambda: _latents(4, 11, 2, 2, 1), lambda: {}),
    "wan-chunk2": (lambda: tiny_wan(), lambda: _latents(4, 10, 2, 2, 2), lambda: {"chunk_size": 2}),
    "wan-short": (lambda: tiny_wan(), lambda: _latents(4, 3, 2, 2, 3), lambda: {}),
    "ltx-0.9.0": (lambda: tiny_ltx(TINY_090), lambda: _latents(4, 13, 4, 4, 4), lambda: {}),
    "ltx-0.9.1": (lambda: tiny_ltx(TINY_091), lambda: _latents(4, 7, 2, 4, 5), lambda: _ltx_kwargs(TINY_091)),
}


# ------------------------------------------------------------------------------------------------
# The reach, from the modules
# ------------------------------------------------------------------------------------------------
def test_reach_of_the_released_configs_from_config_alone():
    # Wan 2.1, by hand: latent a's first pixel frame is 4a - 3; the head (2) and stages 3 and 2 at
    # 4 frames per latent (3 residual blocks of two 3-frame convs each: 12 + 12) reach back to
    # 4a - 29; the time upsampler (frame j from ceil(j / 2), conv of 3) to 2a - 16; stage 1 (12) to
    # 2a - 28; the next time upsampler to a - 16; stage 0 (12), the middle (8), conv1 (2): a - 38.
    wan = build_on_meta(lambda: WanVAE(WanVAEConfig()))
    assert temporal_reach(wan) == (38, 0)
    reach = {name: temporal_reach(build_on_meta(lambda: LTXVAE(make()))) for name, make in LTX_VAE_PRESETS.items()}
    assert reach == {"ltx-video-0.9.0": (24, 24), "ltx-video-0.9.1": (31, 31), "ltx-video-0.9.5": (22, 22)}
    assert temporal_reach(tiny_wan()) == (30, 0)
    assert temporal_reach(tiny_ltx(TINY_090)) == (10, 10) and temporal_reach(tiny_ltx(TINY_091)) == (9, 9)


def _begun_cache(vae: WanVAE) -> CausalCache:
    """A cache in which every decoder stream has begun with no frames: decoding continues a video."""
    cache = CausalCache()
    for m in vae.decoder.modules():
        if isinstance(m, CausalConv3d) and m.context > 0:
            cache.begin(m, torch.zeros(1, m.in_channels, 0, 1, 1))
    return cache


@torch.no_grad()
def test_wan_warm_up_of_the_reach_is_exact_and_one_less_is_not():
    """With the model's own decode_iter: continuing a video from a - R, discarding the warm-up, gives
    latent frames a.. bit-identical to the whole decode; from a - R + 1 it does not (the frame left
    out still reaches them, if faintly: 5e-7 here, 1e-4 at R - 3, 0.03 at R - 10)."""
    vae = tiny_wan()
    back, _ = temporal_reach(vae)
    t, a = back + 4, back + 2
    z = _latents(4, t, 2, 2, 7)
    ref = vae.decode(z)[:, :, 4 * (a - 1) + 1 :]  # (1, 3, 4 (t - a), 16, 16): latent frames a..t-1

    def warmed(warm: int) -> torch.Tensor:
        out = torch.cat(list(vae.decode_iter(z[:, :, a - warm :], cache=_begun_cache(vae))), dim=2)
        return out[:, :, 4 * warm :]

    assert torch.equal(warmed(back), ref)
    assert not torch.equal(warmed(back - 1), ref)


@torch.no_grad()
def test_ltx_halos_of_the_reach_are_exact_and_one_less_is_not():
    """With the model's own decode: a window of latent frames a - back .. e - 1 + ahead decoded as a
    clip of its own gives share a..e-1's pixel frames (frame f of the window is the clip's
    8 * start + f); one frame less on either side does not."""
    vae = tiny_ltx(TINY_090)
    back, ahead = temporal_reach(vae)
    a, e = back + 1, back + 3
    t = e + ahead + 1
    z = _latents(4, t, 2, 2, 8)
    f0, f1 = 8 * (a - 1) + 1, 8 * (e - 1) + 1
    ref = vae.decode(z)[:, :, f0:f1]

    def window(b: int, f: int) -> torch.Tensor:
        s = a - b
        return vae.decode(z[:, :, s : e + f])[:, :, f0 - 8 * s : f1 - 8 * s]

    assert (window(back, ahead) - ref).abs().max() <= LTX_TOL
    assert (window(back - 1, ahead) - ref).abs().max() > LTX_TOL  # 5e-5 here
    assert (window(back, ahead - 1) - ref).abs().max() > LTX_TOL  # 1e-4


# ------------------------------------------------------------------------------------------------
# The plan
# ------------------------------------------------------------------------------------------------
def test_plan_covers_the_clip_and_tapers_the_warm_up():
    wan = build_on_meta(lambda: WanVAE(WanVAEConfig()))
    for vae, t in ((wan, 21), (build_on_meta(lambda: LTXVAE(LTX_VAE_PRESETS["ltx-video-0.9.1"]())), 16)):
        for size in (1, 2, 3, 4, 8):
            plans = plan_decode(vae, t, size)
            assert [p.latents[0] for p in plans] == [0] + [p.latents[1] for p in plans[:-1]]
            assert plans[-1].latents[1] == t and plans[-1].frames[1] == vae.temporal_compression * (t - 1) + 1
            for p in plans:
                a, e = p.latents
                if p.empty:
                    continue
                first, last = p.latent_steps[0], p.latent_steps[-1]
                assert first[0] == max(0, a - temporal_reach(vae)[0])  # the first layer: the whole reach
                assert a - 1 <= last[0] <= a and last[1] <= e + 1  # the head: the share and a frame at most
    # Wan 2.1 at 81 frames on 4 ranks: the first rank, with no warm-up, takes the most frames
    shares = [p.latents for p in plan_decode(wan, 21, 4)]
    assert shares[0][1] - shares[0][0] > max(e - a for a, e in shares[1:])
    assert [p.latents for p in plan_decode(wan, 3, 4)][-1] == (3, 3)  # fewer frames than ranks: one rank idle
    chunked = plan_decode(wan, 21, 3, chunk_size=4)
    assert all((a == 0 or (a - 1) % 4 == 0) and (s == 0 or (s - 1) % 4 == 0) for p in chunked for (a, _), (s, _) in [(p.latents, p.latent_steps[0])])


@torch.no_grad()
def test_shares_decoded_apart_equal_the_whole_decode():
    """Every rank's computation without the gather, in one process, on more shapes than the spawned test."""
    for name, (make_vae, make_z, make_kwargs) in CASES.items():
        vae, z = make_vae(), make_z()
        ref = vae.decode(z, **make_kwargs())
        for size in (2, 3, 5):
            parts = [decode_share(vae, z, p, **make_kwargs()) for p in plan_decode(vae, z.shape[2], size, make_kwargs().get("chunk_size"))]
            out = torch.cat([p for p in parts if p.shape[2]], dim=2) if any(p.shape[2] for p in parts) else None
            assert out is not None and out.shape == ref.shape, (name, size)
            if name.startswith("wan"):
                assert torch.equal(out, ref), (name, size)
            else:
                assert (out - ref).abs().max() <= LTX_TOL, (name, size)


def test_bad_calls_raise_before_any_collective():
    vae = tiny_wan()
    with pytest.raises(KinemaError, match="Wan and LTX-Video"):
        decode_split(torch.nn.Linear(2, 2), torch.zeros(1, 4, 2, 2, 2))
    with pytest.raises(KinemaError, match="latents must be"):
        decode_split(vae, torch.zeros(1, 16, 2, 2, 2))
    with pytest.raises(KinemaError, match="takes \\['chunk_size'\\]"):
        decode_split(vae, torch.zeros(1, 4, 2, 2, 2), timestep=0.1)
    with pytest.raises(KinemaError, match="chunk_size must be positive"):
        decode_split(vae, torch.zeros(1, 4, 2, 2, 2), chunk_size=0)
    with pytest.raises(KinemaError, match="at least one frame"):
        plan_decode(vae, 0, 2)


# ------------------------------------------------------------------------------------------------
# Across processes
# ------------------------------------------------------------------------------------------------
def _split_worker(rank: int, n: int) -> dict:
    """Each case's decode_split output on this rank (numpy: torch tensors would travel through shared
    memory that dies with the process), the generator's next draws, the time and the share."""
    torch.manual_seed(1234 + rank)  # ranks' global generators differ: nothing may depend on them
    out = {}
    for name, (make_vae, make_z, make_kwargs) in CASES.items():
        vae, z, kwargs = make_vae(), make_z(), make_kwargs()
        t0 = time.perf_counter()
        video = decode_split(vae, z, **kwargs)
        elapsed = time.perf_counter() - t0
        after = torch.randn(4, generator=kwargs["generator"]) if "generator" in kwargs else None  # generator in step?
        share = plan_decode(vae, z.shape[2], n, kwargs.get("chunk_size"))[rank]
        out[name] = (video.numpy(), None if after is None else after.numpy(), elapsed, share.latents, share.latent_steps)
    try:  # a decoder that draws noise from the global generator would draw different noise per rank
        decode_split(tiny_ltx(TINY_091), CASES["ltx-0.9.1"][1](), timestep=0.05)
        out["no-generator"] = None
    except KinemaError as e:
        out["no-generator"] = str(e)
    if n == 4:  # a subgroup: ranks 1..3 decode together, rank 0 is not in it
        group = dist.new_group([1, 2, 3])
        if rank > 0:
            make_vae, make_z, make_kwargs = CASES["wan"]
            out["wan-subgroup"] = (decode_split(make_vae(), make_z(), group=group).numpy(), None, 0.0, None, None)
    return out


@pytest.mark.parametrize("n", [2, 4])
@torch.no_grad()
def test_decode_split_on_gloo_ranks_equals_one_process(n):
    results = run_workers(_split_worker, n)
    for name, (make_vae, make_z, make_kwargs) in CASES.items():
        vae, z, kwargs = make_vae(), make_z(), make_kwargs()
        ref = vae.decode(z, **kwargs)
        after = torch.randn(4, generator=kwargs["generator"]) if "generator" in kwargs else None
        for rank, result in enumerate(results):
            video, rank_after, _, _, _ = result[name]
            video = torch.from_numpy(video)
            assert video.shape == ref.shape and video.dtype == ref.dtype, (name, rank)
            if name.startswith("wan"):
                assert torch.equal(video, ref), (name, rank)
            else:
                assert (video - ref).abs().max() <= LTX_TOL, (name, rank)
            if after is not None:
                assert torch.equal(torch.from_numpy(rank_after), after), (name, rank)  # the generator ends where the decode leaves it
    assert all("pass a generator seeded alike" in r["no-generator"] for r in results)
    shares = [r["wan-short"][3] for r in results]
    if n == 4:
        assert (3, 3) in shares  # 3 latent frames on 4 ranks: one rank decoded nothing, yet returned the video
        ref = CASES["wan"][0]().decode(CASES["wan"][1]())
        assert all(torch.equal(torch.from_numpy(r["wan-subgroup"][0]), ref) for r in results[1:])
