"""Shared test contracts: what every model, codec and pipeline of every family must do.

A family's test file subclasses a contract with a ``Test`` name and supplies a tiny case; pytest
then runs every contract test on it::

    class TestWanTransformerContract(ModelContract):
        golden = [...]  # pasted from the first run's failure message

        def build(self):
            return WanTransformer(TINY)

        def inputs(self):
            return _inputs()

        def golden_slice(self, out):
            return out[0, :3, 1, 2, :4].flatten()

The contracts (each a test below; a contract that does not apply skips and says why):

- :class:`ModelContract`: a meta build has a real build's parameters and buffers (names, shapes,
  dtypes) and allocates nothing; kinema's strict loader (:func:`~kinema.checkpoints.io.load_into`)
  fills it from a real build's state dict to the same outputs and refuses, in one line, a state
  dict with a key missing, an unexpected key or a tensor of the wrong shape; the same input twice
  and the same seed twice give bit-identical outputs and weights; a small slice of a seeded tiny
  model's output equals values stored in the test class; every external key map (diffusers',
  the original release's) sends kinema's state dict out and back to the same keys and tensors; a
  bfloat16 load keeps the modules in the model's ``_keep_in_fp32`` float32 and still runs, close
  to float32.
- :class:`CodecContract` (a :class:`ModelContract`): a :class:`~kinema.models.codec.VideoCodec`
  whose encode, decode and roundtrip shapes obey its temporal and spatial compressions, and which
  refuses sizes that do not.
- :class:`PipelineContract`: a tiny pipeline gives the same video twice for the same seed (and
  another for another seed), reports each stage and step through ``callback=`` as
  :class:`~kinema.pipelines.base.Progress`, and a callback raising :class:`~kinema.errors.Cancelled`
  stops the call there, leaving the pipeline as it was.

Golden values are compared to ``golden_atol`` (1e-5): the tests run on CPUs whose kernels round
differently. When ``golden`` is None the golden test fails with the values to paste.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Sequence

import numpy as np
import pytest
import torch
from torch import nn

from kinema.checkpoints.io import build_on_meta, load_into, module_pattern
from kinema.checkpoints.keymap import KeyMap
from kinema.errors import Cancelled, CheckpointError, KinemaError
from kinema.models.codec import VideoCodec
from kinema.pipelines.base import Progress


def outputs(out: Any) -> tuple[torch.Tensor, ...]:
    """A run's result as a tuple of tensors (one tensor, or a tuple/list of them)."""
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def cast_floats(inputs: Sequence[Any], dtype: torch.dtype, keep: Sequence[int] = ()) -> tuple[Any, ...]:
    """``inputs`` with every floating-point tensor cast to ``dtype``, except those at ``keep``."""
    return tuple(
        x.to(dtype) if isinstance(x, torch.Tensor) and x.is_floating_point() and i not in keep else x for i, x in enumerate(inputs)
    )


def _layout(tensors) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    return {name: (tuple(t.shape), t.dtype) for name, t in tensors}


# ------------------------------------------------------------------------------------------------
# Models
# ------------------------------------------------------------------------------------------------
class ModelContract:
    """What every model (denoiser, token model, codec) of every family must do.

    A subclass supplies :meth:`build`, :meth:`inputs`, :meth:`golden_slice` and :attr:`golden`,
    and, where they apply, :meth:`run`, :meth:`make_model`, :meth:`key_maps`, :attr:`keeps_fp32`.
    """

    seed: ClassVar[int] = 0  # the seed of the tiny model whose outputs are golden
    golden: ClassVar[Sequence[float] | None] = None  # golden_slice(run(make_model(), inputs())), pasted
    golden_atol: ClassVar[float] = 1e-5
    keeps_fp32: ClassVar[bool] = False  # the model lists modules in _keep_in_fp32 (False: the bf16 contract skips)
    fp32_prefixes_all_used: ClassVar[bool] = True  # every _keep_in_fp32 prefix names a module of this tiny config
    bf16_tolerance: ClassVar[float | None] = 0.05  # |bf16 - fp32| <= this * max |fp32| (None: finite only)
    bf16_output_dtype: ClassVar[torch.dtype] = torch.bfloat16  # dtype of the floating outputs of a bf16 model
    bf16_fp32_inputs: ClassVar[tuple[int, ...]] = ()  # positions of inputs() a bf16 model still takes in float32

    # -- what a family supplies ---------------------------------------------------------------------
    def build(self) -> nn.Module:
        """Construct the tiny model (on the default device: the meta build calls this under meta)."""
        raise NotImplementedError

    def make_model(self, seed: int | None = None) -> nn.Module:
        """The seeded tiny model, float32, eval mode, no gradients."""
        torch.manual_seed(self.seed if seed is None else seed)
        return self.build().eval().requires_grad_(False)

    def inputs(self) -> tuple[Any, ...]:
        """Deterministic inputs of :meth:`run` (drawn from seeded generators, never the global one)."""
        raise NotImplementedError

    def run(self, model: nn.Module, inputs: tuple[Any, ...]) -> Any:
        """The model's output on ``inputs``: a tensor or a tuple of tensors."""
        return model(*inputs)

    def golden_slice(self, out: Any) -> torch.Tensor:
        """A few values of :meth:`run`'s output (any shape; compared flattened)."""
        raise NotImplementedError

    def key_maps(self) -> Sequence[KeyMap]:
        """Maps from kinema's names to each external format this model's weights come in."""
        return ()

    def bf16_case(self) -> tuple[Any, ...]:
        """float32 inputs on which a bf16 load is compared with the float32 model (default :meth:`inputs`)."""
        return self.inputs()

    # -- helpers -------------------------------------------------------------------------------------
    def _run(self, model: nn.Module, inputs: tuple[Any, ...]) -> tuple[torch.Tensor, ...]:
        with torch.no_grad():
            return outputs(self.run(model, inputs))

    def _meta(self) -> nn.Module:
        return build_on_meta(self.build)

    # -- the contract ---------------------------------------------------------------------------------
    def test_meta_build_has_the_real_layout(self):
        meta, real = self._meta(), self.make_model()
        assert all(t.is_meta for t in (*meta.parameters(), *meta.buffers())), "a meta build allocated memory"
        assert _layout(meta.named_parameters()) == _layout(real.named_parameters())
        assert _layout(meta.named_buffers()) == _layout(real.named_buffers())
        assert list(meta.state_dict()) == list(real.state_dict())

    def test_strict_load_fills_a_meta_build(self):
        real = self.make_model()
        loaded = load_into(self._meta(), real.state_dict()).eval()
        assert not any(t.is_meta for t in (*loaded.parameters(), *loaded.buffers())), "load left tensors on meta"
        state = loaded.state_dict()
        assert all(torch.equal(state[k], v) for k, v in real.state_dict().items())
        inputs = self.inputs()
        for a, b in zip(self._run(loaded, inputs), self._run(real, inputs), strict=True):
            assert torch.equal(a, b)

    @pytest.mark.parametrize("fault", ["missing", "unexpected", "wrong shape"])
    def test_strict_load_refuses_a_state_dict_that_does_not_fit(self, fault):
        state = dict(self.make_model().state_dict())
        names = [k for k, v in state.items() if v.is_floating_point() and v.dim() > 0]
        key = names[len(names) // 2]  # one deep in the model
        if fault == "missing":
            del state[key]
            match = rf"missing 1: {re.escape(key)}"
        elif fault == "unexpected":
            state[key + "_extra"] = state[key].clone()
            match = rf"unexpected 1: {re.escape(key)}_extra"
        else:
            state[key] = torch.zeros(*(n + 1 for n in state[key].shape))
            match = rf"wrong shapes .*{re.escape(key)}"
        with pytest.raises(CheckpointError, match=match) as e:
            load_into(self._meta(), state)
        assert "\n" not in str(e.value)

    def test_deterministic(self):
        model, inputs = self.make_model(), self.inputs()
        first = self._run(model, inputs)
        for a, b in zip(first, self._run(model, inputs), strict=True):  # the same input twice
            assert torch.equal(a, b)
        again = self.make_model()  # the same seed twice: the same weights, the same outputs
        state = again.state_dict()
        assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
        for a, b in zip(first, self._run(again, inputs), strict=True):
            assert torch.equal(a, b)
        other = self.make_model(self.seed + 1).state_dict()
        assert any(not torch.equal(other[k], v) for k, v in state.items()), "the seed changes no weight"

    def test_golden_slice(self):
        out = self._run(self.make_model(), self.inputs())
        got = self.golden_slice(out if len(out) > 1 else out[0]).flatten().float()
        if self.golden is None:
            pytest.fail(f"{type(self).__name__} has no golden values; paste golden = {[round(v, 8) for v in got.tolist()]}")
        torch.testing.assert_close(got, torch.tensor(self.golden, dtype=torch.float32), rtol=0, atol=self.golden_atol)

    def test_key_maps_round_trip(self):
        maps = self.key_maps()
        if not maps:
            pytest.skip("kinema's own format only: no external key map")
        state = self.make_model().state_dict()
        for keymap in maps:
            theirs = keymap.to_theirs(state)
            assert len(theirs) == len(state), keymap.name
            back = keymap.to_ours(theirs)
            assert list(back) == list(state), keymap.name
            assert all(torch.equal(back[k], v) and back[k].dtype == v.dtype for k, v in state.items()), keymap.name
            assert all(keymap.our_key(keymap.their_key(k)) == k for k in state), keymap.name

    def test_bf16_load_keeps_fp32_modules(self):
        model = self.make_model()
        listed = tuple(getattr(model, "_keep_in_fp32", ()))
        if not self.keeps_fp32:
            assert not listed, f"{type(model).__name__} keeps modules in float32: set keeps_fp32 = True"
            pytest.skip(f"{type(model).__name__} keeps no module in float32")
        assert listed, f"{type(model).__name__} has no _keep_in_fp32"
        state = model.state_dict()
        if self.fp32_prefixes_all_used:
            for prefix in listed:  # no stale prefix
                assert any(module_pattern([prefix]).match(k) for k in state), f"_keep_in_fp32 {prefix!r} names no module"
        kept = module_pattern(listed)
        bf16 = load_into(self._meta(), state, dtype=torch.bfloat16).eval()
        floats = {k: t for k, t in bf16.state_dict().items() if t.is_floating_point()}
        for name, t in floats.items():
            assert t.dtype == (torch.float32 if kept.match(name) else torch.bfloat16), name
        assert any(t.dtype == torch.bfloat16 for t in floats.values())
        for name, t in bf16.state_dict().items():
            if not t.is_floating_point():
                assert t.dtype == state[name].dtype, name
        case = self.bf16_case()
        exact = self._run(model, case)
        got = self._run(bf16, cast_floats(case, torch.bfloat16, self.bf16_fp32_inputs))
        for out, ref in zip(got, exact, strict=True):
            if not out.is_floating_point():
                continue
            assert out.dtype == self.bf16_output_dtype and bool(torch.isfinite(out).all())
            if self.bf16_tolerance is not None:
                assert (out.float() - ref.float()).abs().max() <= self.bf16_tolerance * ref.float().abs().max()


# ------------------------------------------------------------------------------------------------
# Codecs
# ------------------------------------------------------------------------------------------------
class CodecContract(ModelContract):
    """A :class:`ModelContract` that is also a :class:`~kinema.models.codec.VideoCodec`."""

    compressions: ClassVar[tuple[int, int]]  # (temporal, spatial) of the tiny config
    latent_frames: ClassVar[tuple[int, ...]] = (1, 2, 3)  # latent frames to check: 1 + (n - 1) * temporal pixel frames
    latent_grid: ClassVar[tuple[int, int]] = (2, 3)  # latent (h, w): not square, so a transposition shows

    def video(self, latent_frames: int, seed: int = 1) -> torch.Tensor:
        """A random clip (1, 3, F, H, W) in [-1, 1] of ``latent_frames`` latent frames."""
        t, s = self.compressions
        h, w = self.latent_grid
        g = torch.Generator().manual_seed(seed)
        return torch.rand(1, 3, t * (latent_frames - 1) + 1, h * s, w * s, generator=g) * 2 - 1

    def test_is_a_video_codec(self):
        codec = self.make_model()
        assert isinstance(codec, VideoCodec)
        assert (codec.temporal_compression, codec.spatial_compression) == self.compressions
        assert codec.dtype == torch.float32 and codec.device.type == "cpu"

    def test_encode_decode_and_roundtrip_shapes(self):
        codec = self.make_model()
        h, w = self.latent_grid
        for n in self.latent_frames:
            video = self.video(n)
            with torch.no_grad():
                encoded = codec.encode(video)
                if isinstance(encoded, torch.Tensor):  # token ids
                    latents = encoded
                    assert latents.shape == (1, n, h, w) and not latents.is_floating_point()
                else:  # a posterior
                    latents = encoded.mean
                    assert latents.shape[0] == 1 and latents.shape[2:] == (n, h, w)
                    assert encoded.logvar.shape == latents.shape
                decoded = codec.decode(latents)
                assert decoded.shape == video.shape and bool((decoded.abs() <= 1).all())
                back = codec.roundtrip(video)
            assert back.shape == video.shape and back.dtype == torch.float32

    def test_refuses_sizes_off_its_compressions(self):
        codec = self.make_model()
        t, s = self.compressions
        good = self.video(2)
        bad = [good[:, :, :, :, : s * self.latent_grid[1] - 1]]  # a width that is not a multiple of s
        if t > 1:
            bad.append(torch.cat([good, good[:, :, :1]], dim=2))  # one frame too many
        for video in bad:
            with pytest.raises(KinemaError):
                codec.encode(video)


# ------------------------------------------------------------------------------------------------
# Pipelines
# ------------------------------------------------------------------------------------------------
class PipelineContract:
    """What every pipeline must do. The test module provides a ``pipe`` fixture (a tiny pipeline);
    the subclass gives :attr:`call` and the :attr:`stages` that call reports."""

    call: ClassVar[dict[str, Any]]  # keywords of a tiny call (prompt, sizes, steps), without seed
    stages: ClassVar[tuple[tuple[str, int], ...]]  # (stage, total steps) the call reports, in order
    seed: ClassVar[int] = 0

    @classmethod
    def generate(cls, pipe, seed: int | None = None, **kw: Any):
        return pipe(**cls.call, seed=cls.seed if seed is None else seed, progress_bar=False, **kw)

    @pytest.fixture(scope="class")
    @classmethod
    def reference(cls, pipe):
        """The call's video at the contract's seed, made once per class."""
        return cls.generate(pipe)

    def test_same_seed_same_video(self, pipe, reference):
        again, other = self.generate(pipe), self.generate(pipe, seed=self.seed + 1)
        assert np.array_equal(np.asarray(again.frames), np.asarray(reference.frames))
        assert torch.equal(again.latents, reference.latents)
        assert not torch.equal(other.latents, reference.latents)

    def test_progress_reports_every_stage_and_step(self, pipe, reference):
        seen: list[Progress] = []
        out = self.generate(pipe, callback=seen.append)
        assert all(type(p) is Progress for p in seen)
        assert [(p.stage, p.step, p.total) for p in seen] == [(s, i, n) for s, n in self.stages for i in range(n + 1)]
        assert {"denoise", "tokens"} & {s for s, _ in self.stages} and self.stages[-1][0] == "decode"
        assert np.array_equal(np.asarray(out.frames), np.asarray(reference.frames))  # watching changes nothing

    def test_cancel_stops_the_call(self, pipe, reference):
        for stage, total in self.stages:
            step = min(1, total)  # inside the stage (its first step done), or as it begins
            seen: list[Progress] = []

            def callback(p: Progress) -> None:
                seen.append(p)
                if (p.stage, p.step) == (stage, step):
                    raise Cancelled(f"stop at {stage} {step}")

            with pytest.raises(Cancelled, match=f"stop at {stage} {step}"):
                self.generate(pipe, callback=callback)
            assert (seen[-1].stage, seen[-1].step) == (stage, step)  # nothing ran on to report again
        after = self.generate(pipe)  # a cancelled call leaves the pipeline as it was
        assert torch.equal(after.latents, reference.latents)
