"""Decoding one video's latents on several processes, with the single-process result.

:func:`decode_split` gives every rank of a process group a contiguous share of the latent frames;
each rank decodes its share and the shares are all-gathered, so every rank returns the whole video,
equal to ``vae.decode(latents)`` in one process. Supported: the Wan 2.1 VAE (:class:`WanVAE`) and
the LTX-Video VAE (:class:`LTXVAE`).

Why a share can be decoded alone, exactly
-----------------------------------------
Both decoders mix frames only through temporal convolutions (norms, activations, attention and
resamplers work frame by frame), so a pixel frame depends on a *finite* run of latent frames: its
temporal receptive field. The share's edges are therefore exact if every decoder layer also runs
over the frames just outside the share that the layers after it look at, and those extra frames
are wrong only where they cannot reach the share.

* **Wan** is causal: frame ``t`` sees frames ``<= t`` only, through a cache of the last frames of
  each convolution. A rank whose share starts at latent frame ``a`` runs a *warm-up* over earlier
  frames, discarding what it computes, so that every cache holds at ``a`` exactly what the
  one-process decode holds there. The warm-up starts as a *continuation* (every cache begun
  empty, i.e. zero frames stand in for the unknown past), never as a new video: a new video would
  take Wan's first-frame path (a time upsampler keeps the first frame single) and shift every later
  frame. Chunks are the one-process decode's (frame 0, then ``chunk_size`` frames at a time), so
  every convolution sees the same shapes and the output is bit-identical.
* **LTX-Video**'s decoder is *centred* in time (output frame ``t`` sees ``t - 1 .. t + 1`` at
  every convolution, the clip's ends repeat their edge frame), so a share needs halos on both
  sides. A rank decodes a window of latent frames around its share as a stream of its own (its
  ends repeat their edge frames, and its upsamplers drop their stream's first frame) and keeps the
  share's frames, which the window's false edges cannot reach.

The reach is long (:func:`temporal_reach`, walked from the decoder's modules: 38 latent frames
back for Wan 2.1, 31 each way for LTX-Video 0.9.1), longer than most clips, so a uniform warm-up
would leave most ranks decoding nearly everything. The warm-up is therefore *tapered*: walking the
decoder from its output back to its input gives the frames each layer must produce exactly
(:func:`plan_decode`), so the full-resolution layers at the end, which cost the most, run over their
share and a frame or so, and only the cheap low-resolution layers at the start run over the whole
reach. Shares are then balanced by modelled work (convolution weights times output pixels), so
the first rank, which needs no warm-up, takes more frames. Per-layer FLOPs counted on the real
architectures (Wan 2.1 at 480x832, LTX-Video 0.9.1 at 512x768) give these speed-ups of the slowest
rank over one process: Wan 2.1, 21 latent frames (81 pixel frames): 1.50x on 2 ranks, 2.04x on 4,
2.33x on 8; 41 latent frames: 1.71x, 2.56x, 3.42x; LTX 0.9.1, 16 latent frames (121 pixel frames):
1.35x, 1.55x, 1.69x; 33 latent frames: 1.50x, 2.01x, 2.52x. A rank's memory is the one-process
decode's (the same streamed chunks) plus the gathered video.

Every rank must pass the same latents and arguments (and, for a VAE that draws noise, generators
in the same state): each decodes its own share of that one video.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn

from ..errors import KinemaError
from ..models.vae.causal import CausalCache, CausalConv3d
from ..models.vae.ltx_vae import DEFAULT_DECODE_CHUNK, LTXVAE
from ..models.vae.ltx_vae_blocks import (
    Conditioning,
    DepthToSpaceUpsample,
    LTXConv3d,
    ResGroup,
    ResnetBlock3D,
    flush_groups,  # LTXVAE.decode_iter's grouping of the end-of-stream announcements
)
from ..models.vae.wan_vae import (
    AttentionBlock,
    FrameConv2d,
    ResidualBlock,
    Resample,
    RMSNorm,
    SiLU,
    Upsample2x,
    WanVAE,
    norm_act_conv,
)
from ..runtime import cap_heap_growth


# ------------------------------------------------------------------------------------------------
# The decoder as a chain of steps, and how far each looks in time
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TimeMap:
    """How one decoder step mixes frames in time: output frame ``o`` is computed from input frames
    ``j - back .. j + ahead``, ``j = ceil(o / up)``, all indices counted from the clip's first frame
    at the step's own frame rate. ``up`` > 1 for a time upsampler (input frame ``j >= 1`` gives
    output frames ``up (j - 1) + 1 .. up j``; frame 0 gives frame 0)."""

    back: int
    ahead: int = 0
    up: int = 1

    def needs(self, lo: int, hi: int) -> tuple[int, int]:
        """Input frames ``[lo', hi']`` that output frames ``[lo, hi]`` are computed from."""
        return -(-lo // self.up) - self.back, -(-hi // self.up) + self.ahead


@dataclasses.dataclass(frozen=True)
class _Step:
    run: Callable  # Wan: (x, cache) -> y; LTX: a DecoderStep's run (x, cache, end, cond) -> y
    module: nn.Module  # what it runs (whose convolutions a Wan warm-up begins)
    time: TimeMap
    lag: float = 0.0  # LTX: latent frames' worth it holds back until told the end (DecoderStep.lag)


_PER_FRAME = (RMSNorm, SiLU, nn.Dropout, nn.Identity, nn.ZeroPad2d, FrameConv2d, Upsample2x, AttentionBlock)


def _wan_back(module: nn.Module) -> int:
    """Frames back a Wan decoder module looks (at its own rate); raises for a module it cannot read."""
    if isinstance(module, CausalConv3d):
        kt, st = module.kernel_size[0], module.stride[0]
        if st != 1 or module.time_pad != kt - 1:
            raise KinemaError(f"decode_split: a Wan decoder conv with time stride {st} and padding {module.time_pad} is not supported")
        return kt - 1
    if isinstance(module, ResidualBlock):
        return max(_wan_back(module.residual), _wan_back(module.shortcut))
    if isinstance(module, nn.Sequential):
        return sum(_wan_back(m) for m in module)
    if isinstance(module, _PER_FRAME):
        return 0  # works frame by frame (attention too: over the pixels of one frame)
    raise KinemaError(f"decode_split cannot tell how far {type(module).__name__} looks in time (Wan decoder)")


def _wan_time(module: nn.Module) -> TimeMap:
    if isinstance(module, Resample):
        if module.mode == "upsample3d":
            return TimeMap(_wan_back(module.time_conv), 0, 2)
        if module.mode == "upsample2d":
            return TimeMap(_wan_back(module.resample))
        raise KinemaError(f"decode_split: a Wan decoder Resample in mode {module.mode!r} is not supported")
    return TimeMap(_wan_back(module))


def _wan_steps(vae: WanVAE) -> list[_Step]:
    """The Wan decode as a chain (``WanVAE.decode_iter`` then ``Decoder3d.forward``, layer by layer):
    conv2, conv1, the middle blocks, every upsampling-stage block, the head."""
    dec = vae.decoder
    chain: list[tuple[Callable, nn.Module]] = [(lambda x, cache: vae.conv2(x), vae.conv2), (dec.conv1, dec.conv1)]
    for block in (*dec.middle, *dec.upsamples):
        run = (lambda x, cache, b=block: b(x)) if isinstance(block, AttentionBlock) else block
        chain.append((run, block))
    norm, act, conv = dec.head
    chain.append((lambda x, cache: norm_act_conv(norm, act, conv, x, cache), dec.head))
    return [_Step(run, module, _wan_time(module)) for run, module in chain]


def _ltx_conv_time(conv: LTXConv3d, up: int = 1) -> TimeMap:
    kt, st = conv.conv.kernel_size[0], conv.conv.stride[0]
    if st != 1 or conv.front + conv.lag != kt - 1:
        raise KinemaError(f"decode_split: an LTX decoder conv with time stride {st} is not supported")
    return TimeMap(conv.front, conv.lag, up)


def _ltx_steps(vae: LTXVAE) -> list[_Step]:
    """The LTX decoder's streaming chain (``Decoder.steps()``) with each step's module and time map."""
    dec = vae.decoder
    modules: list[nn.Module] = [dec.conv_in]
    for block in dec.up_blocks:
        modules += list(block.res_blocks) if isinstance(block, ResGroup) else [block]
    modules.append(dec.conv_out)  # the head: norm, (modulation), SiLU, conv_out, unpatchify
    steps = dec.steps()
    if len(steps) != len(modules):
        raise KinemaError(f"decode_split: the LTX decoder has {len(steps)} steps, {len(modules)} known modules")
    out: list[_Step] = []
    for step, m in zip(steps, modules):
        if isinstance(m, LTXConv3d):
            time = _ltx_conv_time(m)
        elif isinstance(m, ResnetBlock3D):
            a, b = _ltx_conv_time(m.conv1), _ltx_conv_time(m.conv2)
            time = TimeMap(a.back + b.back, a.ahead + b.ahead)
        elif isinstance(m, DepthToSpaceUpsample):
            time = _ltx_conv_time(m.conv, m.stride[0])
        else:
            raise KinemaError(f"decode_split cannot tell how far {type(m).__name__} looks in time (LTX decoder)")
        out.append(_Step(step.run, m, time, step.lag))
    return out


def _steps(vae: nn.Module) -> list[_Step]:
    if isinstance(vae, WanVAE):
        return _wan_steps(vae)
    if isinstance(vae, LTXVAE):
        return _ltx_steps(vae)
    raise KinemaError(f"decode_split supports the Wan and LTX-Video VAEs; got {type(vae).__name__}")


def _rates(steps: list[_Step]) -> list[int]:
    """Frames per latent frame at each step's input."""
    rates = [1]
    for s in steps:
        rates.append(rates[-1] * s.time.up)
    return rates


def _first_frame(t: int, rate: int) -> int:
    """First frame of latent frame ``t`` at ``rate`` frames per latent frame (frame 0 is latent 0's)."""
    return rate * (t - 1) + 1 if t > 0 else 0


def _latent_of(f: int, rate: int) -> int:
    """The latent frame that frame ``f`` (at ``rate``) belongs to (also for negative ``f``)."""
    return -(-f // rate)


def _walk(steps: list[_Step], lo: int, hi: int, num_latent_frames: int | None = None, window: bool = False) -> list[tuple[int, int]]:
    """Backwards through the chain from output frames ``[lo, hi]``: the input frames ``(lo, hi)``
    each step needs (clip indices at its input rate), clamped to a clip of ``num_latent_frames``
    (None: unclamped). ``window``: a step's stream starts where its range does (LTX), and an
    upsampler's stream starting at input frame ``s`` begins its output at frame ``up * s``."""
    rates = _rates(steps)
    ranges = []
    for step, rate in zip(reversed(steps), reversed(rates[:-1])):
        out_lo = lo
        lo, hi = step.time.needs(lo, hi)
        if window:
            lo = min(lo, out_lo // step.time.up)
        if num_latent_frames is not None:
            lo, hi = max(lo, 0), min(hi, _first_frame(num_latent_frames, rate) - 1)
        ranges.append((lo, hi))
    return ranges[::-1]


def temporal_reach(vae: nn.Module) -> tuple[int, int]:
    """Latent frames ``(back, ahead)`` of the decoder's temporal receptive field: the pixel frames
    of latent frame ``t`` depend on latent frames ``t - back .. t + ahead`` and on no others (within
    the clip). Walks the decoder's modules; a VAE built on the meta device (``build_on_meta``) works,
    so a config's reach costs no memory. Wan 2.1: (38, 0); LTX-Video 0.9.1: (31, 31)."""
    steps = _steps(vae)
    rate = _rates(steps)[-1]
    t = 1  # any latent frame after the first: the walk is the same for all of them
    lo, hi = _walk(steps, _first_frame(t, rate), _first_frame(t + 1, rate) - 1)[0]
    return t - lo, hi - t


# ------------------------------------------------------------------------------------------------
# The plan: who decodes what
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class RankShare:
    """One rank's part of a decode.

    ``latents``: the latent frames ``[a, e)`` whose pixel frames it returns; ``frames``: those pixel
    frames ``[f0, f1)``; ``steps``: for each decoder step, the frames ``(lo, hi)`` (inclusive, at the
    step's input rate) it runs over, and ``latent_steps`` the same as latent frames ``[first, end)``:
    the share plus that step's warm-up / halos. Empty when the rank decodes nothing.
    """

    latents: tuple[int, int]
    frames: tuple[int, int]
    steps: tuple[tuple[int, int], ...]
    latent_steps: tuple[tuple[int, int], ...]

    @property
    def empty(self) -> bool:
        return self.latents[0] == self.latents[1]


def _step_costs(steps: list[_Step]) -> list[int]:
    """Each step's cost per input frame, in proportion: its convolution weights times the frames it
    puts out per input frame times its output's area relative to the latents (multiply-adds per
    pixel x pixels). A model of the work, for balancing shares: it changes no result."""
    area, costs = 1, []
    for s in steps:
        m = s.module
        if isinstance(m, Resample) and m.mode.startswith("upsample"):
            area *= 4  # height and width doubled
        elif isinstance(m, DepthToSpaceUpsample):
            area *= m.stride[1] * m.stride[2]
        weights = sum(p.numel() for p in m.parameters() if p.dim() >= 4)  # conv kernels
        costs.append(max(weights, 1) * s.time.up * area)
    return costs


def _balance(n: int, size: int, cuts: list[int], cost: Callable[[int, int], int]) -> list[tuple[int, int]]:
    """Contiguous shares ``[a, e)`` of ``n`` frames for ``size`` ranks, cut only at ``cuts`` (sorted,
    from 0 to ``n``), whose largest ``cost(a, e)`` is the least possible (cost grows with the
    share). Earlier ranks take as much as that allows, so with few frames the last ones get none."""

    def greedy(target: int) -> list[tuple[int, int]] | None:
        bounds, i = [], 0  # i: index of the next share's start in cuts
        for _ in range(size):
            lo, hi = i, len(cuts) - 1  # the furthest cut j with cost(cuts[i], cuts[j]) <= target
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if cost(cuts[i], cuts[mid]) <= target:
                    lo = mid
                else:
                    hi = mid - 1
            bounds.append((cuts[i], cuts[lo]))
            i = lo
        return bounds if cuts[i] == n else None

    lo, hi = 0, cost(0, n)  # the least feasible largest cost, by bisection (integers: the same on every rank)
    while lo < hi:
        mid = (lo + hi) // 2
        if greedy(mid) is None:
            lo = mid + 1
        else:
            hi = mid
    return greedy(lo)  # type: ignore[return-value]


def plan_decode(vae: nn.Module, num_latent_frames: int, size: int, chunk_size: int | None = None) -> list[RankShare]:
    """Each of ``size`` ranks' share of decoding ``num_latent_frames`` latent frames, with the frames
    every decoder step runs over (see :class:`RankShare`). Shares are contiguous and balanced by
    modelled work (:func:`_step_costs`) including each share's warm-up / halos, so the first rank,
    which needs no warm-up, takes more frames; with fewer frames than ranks some ranks get none.
    ``chunk_size``: Wan: the decode's latent frames per chunk after the first (default 1); shares
    and warm-ups start on its chunks, so that every convolution sees the one-process shapes.
    LTX: not used (any window decodes to the same frames)."""
    steps = _steps(vae)
    wan = isinstance(vae, WanVAE)
    chunk = (chunk_size or 1) if wan else 1
    rates = _rates(steps)
    costs = _step_costs(steps)
    n = num_latent_frames
    if n < 1:
        raise KinemaError("latents must have at least one frame")

    def ranges(a: int, e: int) -> list[tuple[int, int]]:
        f0, f1 = _first_frame(a, rates[-1]), _first_frame(e, rates[-1])
        walked = _walk(steps, f0, f1 - 1, n, window=not wan)
        if not wan:
            return walked
        # Wan: a step starts on a chunk boundary and runs to the end of the share (causal: no halo after)
        starts = [_latent_of(lo, r) for (lo, _), r in zip(walked, rates)]
        starts = [0 if t == 0 else 1 + (t - 1) // chunk * chunk for t in starts]
        return [(_first_frame(t, r), _first_frame(e, r) - 1) for t, r in zip(starts, rates)]

    def cost(a: int, e: int) -> int:
        return 0 if a == e else sum(c * (hi + 1 - lo) for c, (lo, hi) in zip(costs, ranges(a, e)))

    cuts = sorted({0, n, *range(1, n, chunk)})
    plans = []
    for a, e in _balance(n, size, cuts, cost):
        frames = (_first_frame(a, rates[-1]), _first_frame(e, rates[-1]))
        if a == e:
            plans.append(RankShare((a, e), frames, (), ()))
            continue
        rs = ranges(a, e)
        latent_steps = tuple((_latent_of(lo, r), _latent_of(hi, r) + 1) for (lo, hi), r in zip(rs, rates))
        plans.append(RankShare((a, e), frames, tuple(rs), latent_steps))
    return plans


# ------------------------------------------------------------------------------------------------
# Decoding one share
# ------------------------------------------------------------------------------------------------
def _wan_chunks(start: int, stop: int, chunk_size: int) -> list[tuple[int, int]]:
    """The one-process decode's chunks (frame 0, then ``chunk_size`` at a time) within [start, stop)."""
    bounds = [0, *range(1, stop + chunk_size, chunk_size)]
    return [(a, min(b, stop)) for a, b in zip(bounds[:-1], bounds[1:]) if a >= start and a < stop]


@torch.no_grad()
def _decode_wan_share(vae: WanVAE, z: torch.Tensor, share: RankShare, chunk_size: int) -> torch.Tensor:
    """The pixel frames of ``share`` (B, 3, f1 - f0, 8h, 8w): every step runs from its first latent
    frame in the plan to the end of the share; a step that starts after frame 0 starts as a
    continuation (its convolutions' caches begun empty: zeros stand in for the frames before)."""
    steps = _wan_steps(vae)
    starts = [first for first, _ in share.latent_steps]
    cache = CausalCache()
    for step, start in zip(steps, starts):
        if start > 0:
            for m in step.module.modules():
                if isinstance(m, CausalConv3d) and m.context > 0:
                    cache.begin(m, z.new_empty(z.shape[0], m.in_channels, 0, 1, 1))  # zero frames: H, W unused
    a, e = share.latents
    out = []
    for c0, c1 in _wan_chunks(starts[0], e, chunk_size):
        x = z[:, :, c0:c1]  # (B, z, t, h, w)
        for step, start in zip(steps, starts):
            if c0 < start:
                break  # this chunk's frames are not needed from here on
            x = step.run(x, cache)  # (B, C, t', H', W')
        else:
            if c0 >= a:
                out.append(x.contiguous().clamp_(-1.0, 1.0))  # (B, 3, f, 8h, 8w)
    return torch.cat(out, dim=2) if len(out) > 1 else out[0]


@torch.no_grad()
def _decode_ltx_share(vae: LTXVAE, z: torch.Tensor, cond: Conditioning, share: RankShare, chunk_size: int | None) -> torch.Tensor:
    """The pixel frames of ``share``: the LTX decoder streamed over a window, every step fed only the
    frames of its range in the plan. A step whose range reaches the clip's end is told the end (in
    groups, as ``LTXVAE.decode_iter`` does, so that no step pushes more than ``chunk_size`` latent
    frames' worth at once); the others simply stop once they have had their last frame."""
    steps = _ltx_steps(vae)
    n_steps = len(steps)
    ranges = share.steps
    rates = _rates(steps)
    n = z.shape[2]
    true_end = [hi == _first_frame(n, r) - 1 for (_, hi), r in zip(ranges, rates)]
    # nxt[i]: the clip index of the next frame to reach step i's input (i = n_steps: the output);
    # a stream that starts at frame s of an upsampler's input starts at frame up * s of its output
    nxt = [ranges[0][0]] + [s.time.up * lo for s, (lo, _) in zip(steps, ranges)]
    shapes: list[tuple[int, ...] | None] = [None] * n_steps
    done = [False] * n_steps
    f0, f1 = share.frames
    out: list[torch.Tensor] = []

    def run(x: torch.Tensor, first: int, n_ended: int) -> None:
        for i in range(first, n_steps):
            g = nxt[i]
            nxt[i] += x.shape[2]
            lo, hi = ranges[i]
            start = min(max(lo - g, 0), x.shape[2])
            x = x[:, :, start : max(min(hi + 1 - g, x.shape[2]), start)]  # the frames of step i's range
            end = i < n_ended
            if done[i] or (x.shape[2] == 0 and not end):
                return
            if shapes[i] is None:
                shapes[i] = (x.shape[0], x.shape[1], x.shape[3], x.shape[4])
            done[i] = end or (not true_end[i] and g + start + x.shape[2] - 1 >= hi)
            x = steps[i].run(x, cache, end, cond)
        g = nxt[n_steps]
        nxt[n_steps] += x.shape[2]
        x = x[:, :, max(f0 - g, 0) : max(f1 - g, 0)]
        if x.shape[2]:
            out.append(x.clamp(-1.0, 1.0))

    cache = CausalCache()
    lo0, hi0 = ranges[0]
    step_size = hi0 + 1 - lo0 if chunk_size is None else chunk_size
    for s in range(lo0, hi0 + 1, step_size):  # feed the window
        run(z[:, :, s : min(s + step_size, hi0 + 1)], 0, 0)
    m = sum(true_end)  # the steps whose range reaches the clip's end (a prefix of the chain) are told the end
    first = 0
    for stop in flush_groups([s.lag for s in steps[:m]], float("inf") if chunk_size is None else chunk_size) if m else []:
        b, c, h, w = shapes[first]
        run(z.new_empty(b, c, 0, h, w), first, stop)
        first = stop
    video = torch.cat(out, dim=2) if len(out) > 1 else out[0]  # (B, 3, f1 - f0, 32h, 32w)
    if video.shape[2] != f1 - f0:
        raise AssertionError(f"decode_split lost frames: {video.shape[2]} of {f1 - f0}")
    return video


# ------------------------------------------------------------------------------------------------
# The split decode
# ------------------------------------------------------------------------------------------------
def _decode_args(vae: nn.Module, latents: torch.Tensor, decode_kwargs: dict) -> dict:
    """``vae.decode``'s keyword arguments with their defaults, checked (a bad call raises here, on
    every rank alike, before any rank waits for another)."""
    if not isinstance(vae, (WanVAE, LTXVAE)):
        raise KinemaError(f"decode_split supports the Wan and LTX-Video VAEs; got {type(vae).__name__}")
    channels = vae.config.z_dim if isinstance(vae, WanVAE) else vae.config.latent_channels
    if latents.dim() != 5 or latents.shape[1] != channels:
        raise KinemaError(f"latents must be (B, {channels}, T, h, w); got {tuple(latents.shape)}")
    if latents.shape[2] == 0:
        raise KinemaError("latents must have at least one frame")
    if isinstance(vae, WanVAE):
        known, args = {"chunk_size"}, {"chunk_size": 1}
    else:
        known = {"timestep", "decode_noise_scale", "generator", "chunk_size"}
        args = {"timestep": None, "decode_noise_scale": None, "generator": None, "chunk_size": DEFAULT_DECODE_CHUNK}
    unknown = set(decode_kwargs) - known
    if unknown:
        raise KinemaError(f"{type(vae).__name__}.decode takes {sorted(known)}; got {sorted(unknown)}")
    args.update(decode_kwargs)
    chunk_size = args["chunk_size"]
    if isinstance(vae, WanVAE) and (not isinstance(chunk_size, int) or chunk_size <= 0):
        raise KinemaError(f"decode chunk_size must be positive; got {chunk_size}")
    if isinstance(vae, LTXVAE) and chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size <= 0):
        raise KinemaError(f"decode chunk_size must be positive (or None); got {chunk_size}")
    return args


def _draws_noise(vae: LTXVAE, args: dict) -> bool:
    """Whether an LTX decode with these arguments draws random numbers: noise injected by the
    decoder's residual blocks (0.9.1), or latents blended with noise (a nonzero noise scale)."""
    if any(isinstance(m, ResnetBlock3D) and m.per_channel_scale1 is not None for m in vae.decoder.modules()):
        return True
    if not vae.config.timestep_conditioning:
        return False
    scale = args["decode_noise_scale"] if args["decode_noise_scale"] is not None else args["timestep"]
    return scale is not None and bool(torch.as_tensor(scale).ne(0).any())


def decode_share(vae: nn.Module, latents: torch.Tensor, share: RankShare, **decode_kwargs) -> torch.Tensor:
    """The pixel frames ``share.frames`` of ``vae.decode(latents, **decode_kwargs)``: (B, 3,
    f1 - f0, H, W), computed from the frames of the plan only (:func:`plan_decode`), with no
    communication; an empty share gives no frames. Keyword arguments are ``vae.decode``'s. An LTX
    VAE draws its decode noise for the whole clip, as the one-process decode does (for an empty
    share too), so a generator ends in the same state."""
    args = _decode_args(vae, latents, decode_kwargs)
    b, _, _, h, w = latents.shape
    sc = vae.spatial_compression
    nothing = torch.empty(b, vae.config.out_channels, 0, h * sc, w * sc, dtype=vae.dtype, device=vae.device)
    if isinstance(vae, WanVAE):
        z = latents.to(device=vae.device, dtype=vae.dtype)
        return nothing if share.empty else _decode_wan_share(vae, z, share, args["chunk_size"])
    cap_heap_growth()  # as LTXVAE.decode_iter (see kinema.runtime)
    z, cond = vae.prepare_decode(latents, args["timestep"], args["decode_noise_scale"], args["generator"])
    return nothing if share.empty else _decode_ltx_share(vae, z, cond, share, args["chunk_size"])


def decode_split(vae: nn.Module, latents: torch.Tensor, group: dist.ProcessGroup | None = None, **decode_kwargs) -> torch.Tensor:
    """``vae.decode(latents, **decode_kwargs)`` with the work split over the ranks of ``group``.

    Every rank decodes a contiguous share of the latent frames (:func:`plan_decode`: the share
    plus the warm-up / halo frames each decoder layer needs for exact edges) and the shares are
    all-gathered, so every rank returns the same whole video, equal to the one-process decode
    (bit-identical where the convolutions see the same shapes: always for Wan; LTX's windows give
    its convolutions other lengths, which PyTorch's CPU kernels sum the same way at real sizes).
    Collective: every rank of ``group`` must call it with the same latents and arguments (a VAE
    that draws noise, LTX 0.9.1+, needs a ``generator`` in the same state on every rank). No
    gradients. Outside a process group, or in a group of one, this is ``vae.decode``.

    Args:
        vae: a :class:`WanVAE` or :class:`LTXVAE`.
        latents: (B, C, T, h, w) un-normalised latents, as ``vae.decode`` takes them.
        group: the process group (None: the default group, the world).
        decode_kwargs: ``vae.decode``'s other arguments (Wan: ``chunk_size``; LTX: ``timestep``,
            ``decode_noise_scale``, ``generator``, ``chunk_size``).
    Returns:
        the video (B, 3, F, H, W) in [-1, 1] in the VAE's dtype, on the VAE's device.
    """
    args = _decode_args(vae, latents, decode_kwargs)
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
        return vae.decode(latents, **decode_kwargs)
    if args.get("generator", False) is None and _draws_noise(vae, args):
        raise KinemaError(
            "decode_split: this LTX VAE draws decode noise; pass a generator seeded alike on every rank "
            "(from the global generator each rank would draw its own)"
        )
    rank, size = dist.get_rank(group), dist.get_world_size(group)
    plans = plan_decode(vae, latents.shape[2], size, args["chunk_size"])
    share = plans[rank]
    b, _, _, h, w = latents.shape
    sc = vae.spatial_compression
    n_max = max(p.frames[1] - p.frames[0] for p in plans)
    piece = torch.zeros(b, vae.config.out_channels, n_max, h * sc, w * sc, dtype=vae.dtype, device=vae.device)
    mine = decode_share(vae, latents, share, **decode_kwargs)  # (B, 3, f1 - f0, H, W); an LTX VAE draws its noise
    piece[:, :, : mine.shape[2]] = mine
    del mine
    gathered = piece.new_empty(size, *piece.shape)  # (ranks, B, 3, n_max, H, W)
    dist.all_gather(list(gathered.unbind(0)), piece, group=group)
    del piece
    parts = [gathered[r, :, :, : p.frames[1] - p.frames[0]] for r, p in enumerate(plans) if not p.empty]
    return torch.cat(parts, dim=2) if len(parts) > 1 else parts[0].clone()  # (B, 3, F, H, W)
