"""Causal 3D convolution over a stream of video chunks, with an explicit cache object.

A causal video autoencoder sees frame ``t`` only through frames ``<= t``. Processing a long video in
time chunks (to bound memory) then gives exactly the result of one pass over the whole video,
provided every layer that looks back in time remembers the last few frames of its input from the
previous chunk. :class:`CausalCache` is that memory: one small tensor per layer, the *tail* of the
stream the layer has seen, passed explicitly through every call. There is no hidden counter: a
layer finds its own tail by identity, and a fresh cache means a fresh video.

>>> cache = CausalCache()
>>> for chunk in chunks:                   # (B, C, T_i, H, W) pieces of one video, in order
...     y = conv(chunk, cache)             # == the matching piece of conv(whole_video)
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn


# ------------------------------------------------------------------------------------------------
# The cache
# ------------------------------------------------------------------------------------------------
class CausalCache:
    """Per-layer tails of the frame streams seen so far, for chunked causal processing.

    Keys are the layers themselves (``nn.Module`` objects, by identity); a value is a tensor
    ``(B, C, n, H, W)``: the last ``n`` frames of that layer's input stream, as the layer needs
    them. A layer that is in the cache has *begun* its stream (possibly with no frames yet).
    """

    def __init__(self) -> None:
        self._tails: dict[nn.Module, torch.Tensor] = {}

    def __contains__(self, layer: nn.Module) -> bool:
        return layer in self._tails

    def __len__(self) -> int:
        return len(self._tails)

    def get(self, layer: nn.Module) -> torch.Tensor | None:
        """The frames remembered for ``layer`` (None if its stream has not begun)."""
        return self._tails.get(layer)

    def keep(self, layer: nn.Module, frames: torch.Tensor, n: int) -> None:
        """Remember (a copy of) the last ``n`` of ``frames`` (B, C, T, H, W) for ``layer``'s next chunk."""
        self._tails[layer] = frames[:, :, -n:].clone()  # (B, C, min(n, T), H, W)

    def begin(self, layer: nn.Module, like: torch.Tensor) -> None:
        """Begin ``layer``'s stream with no frames yet (shaped like ``like``, with 0 frames)."""
        self._tails[layer] = like[:, :, :0].clone()  # (B, C, 0, H, W)

    def nbytes(self) -> int:
        """Bytes held by all tails (constant once every stream is full: memory does not grow)."""
        return sum(t.numel() * t.element_size() for t in self._tails.values())

    def clear(self) -> None:
        """Forget everything: the next call starts a new video."""
        self._tails.clear()


# ------------------------------------------------------------------------------------------------
# The causal convolution
# ------------------------------------------------------------------------------------------------
@functools.cache
def _cpu_has_fast(dtype: torch.dtype) -> bool:
    if dtype == torch.bfloat16:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if dtype == torch.float16:
        return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
    return True


def preferred_format(x: torch.Tensor) -> torch.memory_format:
    """The memory layout conv inputs are built in: channels-last on the CPU, where oneDNN's 3D
    convolutions run faster on it (up to 25% here on 96-192 channels); PyTorch's default elsewhere."""
    return torch.channels_last_3d if x.device.type == "cpu" else torch.contiguous_format


def conv3d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: tuple[int, ...],
    padding: tuple[int, ...],
) -> torch.Tensor:
    """``F.conv3d``, except that a bf16/fp16 conv on a CPU without native kernels for that dtype
    (no AVX512-BF16/AMX: PyTorch then takes a path hundreds of times slower) runs in float32 and
    rounds the output back: the fp32 accumulation a native low-precision kernel does anyway.
    """
    if x.device.type == "cpu" and not _cpu_has_fast(x.dtype):
        b = None if bias is None else bias.float()
        return F.conv3d(x.float(), weight.float(), b, stride, padding).to(x.dtype)
    return F.conv3d(x, weight, bias, stride, padding)


def _triple(v: int | tuple[int, int, int]) -> tuple[int, int, int]:
    return (v, v, v) if isinstance(v, int) else tuple(v)  # type: ignore[return-value]


class CausalConv3d(nn.Conv3d):
    """A Conv3d that is causal in time and can run chunk by chunk with a :class:`CausalCache`.

    ``padding=(pt, ph, pw)`` follows ``nn.Conv3d``: space is padded ``ph``/``pw`` on both sides (by
    the convolution itself, no extra copy); time is padded with ``2 * pt`` zero frames *before* the
    first frame only. With a cache, the frames remembered from earlier chunks take the place of
    those zeros, so chunked and whole-video outputs are the same. Parameters are those of
    ``nn.Conv3d`` (``weight`` (out, in, kt, kh, kw), ``bias``).

    For a strided time axis (``stride[0] > 1``), every chunk after the first must hold a multiple
    of the stride in frames.

    ``forward`` = :meth:`padded_input` + copy + :meth:`forward_padded`; a caller that computes its
    input (a norm, an activation) can write it straight into the padded buffer instead of copying.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int, int],
        stride: int | tuple[int, int, int] = 1,
        padding: int | tuple[int, int, int] = 0,
    ) -> None:
        kt = _triple(kernel_size)[0]
        st = _triple(stride)[0]
        pt, ph, pw = _triple(padding)
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=(0, ph, pw))
        self.time_pad = 2 * pt  # zero frames in front of a stream
        self.context = max(kt - st, 0)  # frames a chunk needs from the stream before it

    def padded_input(self, x: torch.Tensor, cache: CausalCache | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """A conv input buffer for ``x``'s frames: ``(buffer, body)``.

        ``buffer`` is (B, C_in, n + T, H, W): ``n`` frames of past (the cached tail, or zeros at the
        start of a stream) then ``body``, the T frames still to be filled with ``x``'s values.
        Without past frames to add, ``buffer`` and ``body`` are ``x`` itself (already filled).
        """
        prev = cache.get(self) if cache is not None and self.context > 0 else None
        n_prev = 0 if prev is None else prev.shape[2]
        n_zero = max(self.time_pad - n_prev, 0)
        if n_zero + n_prev == 0:
            return x, x
        b, c, t, h, w = x.shape
        shape = (b, c, n_zero + n_prev + t, h, w)  # (B, C_in, n + T, H, W)
        buf = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=preferred_format(x))
        if n_zero:
            buf[:, :, :n_zero].zero_()
        if n_prev:
            buf[:, :, n_zero : n_zero + n_prev] = prev
        return buf, buf[:, :, n_zero + n_prev :]

    def forward_padded(self, buf: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        """Convolve a buffer from :meth:`padded_input` (filled) and remember its tail in ``cache``."""
        if cache is not None and self.context > 0:
            cache.keep(self, buf, self.context)
        return conv3d(buf, self.weight, self.bias, self.stride, self.padding)  # (B, C_out, T', H', W')

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        """x: (B, C_in, T, H, W), the next frames of the stream -> (B, C_out, T', H', W')."""
        buf, body = self.padded_input(x, cache)
        if body is not x:
            body.copy_(x)
        return self.forward_padded(buf, cache)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", time_pad={self.time_pad}, context={self.context}"
