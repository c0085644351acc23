"""The codebook quantiser and the VQ video tokenizer on tiny CPU configs."""

from __future__ import annotations

import json

import pytest
import torch

import kinema.models.vq as vq_module
from kinema.checkpoints import vq_video as vq_ckpt
from kinema.checkpoints.io import load_safetensors, save_safetensors
from kinema.checkpoints.vq_video import load_vq_tokenizer, save_vq_tokenizer
from kinema.errors import CheckpointError, KinemaError
from kinema.models.vae.vq_video import (
    VQVideoConfig,
    VQVideoTokenizer,
)
from kinema.models.vae.wan_vae import WanVAE
from kinema.models.vq import VectorQuantizer, perplexity
from tests.contracts import CodecContract


def quantizer(codes: list[list[float]], **kwargs) -> VectorQuantizer:
    """A quantiser whose codebook is ``codes`` (K, D), marked initialised."""
    codes_t = torch.tensor(codes, dtype=torch.float32)
    q = VectorQuantizer(codes_t.shape[0], codes_t.shape[1], **kwargs)
    q._set_codes(torch.arange(codes_t.shape[0]), codes_t)
    q.initialized.fill_(True)
    return q


def as_input(vectors: list[list[float]]) -> torch.Tensor:
    """Row vectors (N, D) as a (1, D, N) quantiser input."""
    return torch.tensor(vectors, dtype=torch.float32).t().unsqueeze(0)


def assigned(q: VectorQuantizer, z: torch.Tensor):
    """The assignments of one training forward of ``q`` on ``z``."""
    return q(z)[2]["assignments"]


# ------------------------------------------------------------------------------------------------
# The quantiser
# ------------------------------------------------------------------------------------------------
def test_nearest_code_matches_brute_force_in_any_chunking(monkeypatch):
    g = torch.Generator().manual_seed(0)
    q = VectorQuantizer(37, 6)
    z = torch.randn(2, 6, 5, 7, 3, generator=g)  # (B, D, *grid)
    x = z.movedim(1, -1).reshape(-1, 6)
    brute = (x[:, None, :] - q.codebook[None]).square().sum(-1)  # (N, K)
    idx = q.encode(z)
    assert idx.shape == (2, 5, 7, 3) and idx.dtype == torch.int64
    assert torch.equal(idx.flatten(), brute.argmin(1))
    _, dist = q.nearest(x)
    torch.testing.assert_close(dist, brute.min(1).values, rtol=1e-5, atol=1e-5)
    monkeypatch.setattr(vq_module, "DISTANCE_CHUNK_ELEMENTS", 37 * 4)  # 4 rows a block
    assert torch.equal(q.encode(z), idx)


def test_straight_through_gradient_reaches_the_encoder_side():
    q = quantizer([[0.0, 0.0], [2.0, 0.0]])
    z = as_input([[0.5, 0.0], [2.0, 1.0], [1.4, -0.3]]).requires_grad_(True)
    z_q, idx, _ = q(z)
    assert idx.tolist() == [[0, 1, 1]]
    assert torch.equal(z_q.detach(), q.codebook[idx[0]].t().unsqueeze(0))  # forward: the codes
    w = torch.randn_like(z)
    (z_q * w).sum().backward()
    assert torch.equal(z.grad, w)  # backward: identity


def test_commitment_and_codebook_losses_on_a_hand_case():
    z = as_input([[0.5, 0.0], [2.0, 1.0]])  # errors (0.5, 0) to code 0 and (0, 1) to code 1
    expected = (0.25 + 0.0 + 0.0 + 1.0) / 4  # mean squared error over the 4 elements
    _, _, info = quantizer([[0.0, 0.0], [2.0, 0.0]])(z)
    assert info["commitment"].item() == pytest.approx(expected) and info["codebook"].item() == pytest.approx(expected)
    assert info["loss"].item() == pytest.approx(0.25 * expected)  # EMA codebook: commitment only
    trained = quantizer([[0.0, 0.0], [2.0, 0.0]], ema=False, beta=0.5)
    _, _, info = trained(z)
    assert info["loss"].item() == pytest.approx(0.5 * expected + expected)
    info["loss"].backward()
    # d/de of mean |sg(z) - e|^2 over 4 elements: 2 (e - z) / 4 for each assigned vector
    torch.testing.assert_close(trained.codebook.grad, torch.tensor([[-0.25, 0.0], [0.0, -0.5]]))


def test_ema_update_moves_used_codes_towards_their_vectors():
    q = quantizer([[0.0, 0.0], [5.0, 5.0]], decay=0.5).train()
    records = [assigned(q, as_input([[1.0, 0.0], [1.0, 2.0]]))]  # both to code 0: their mean is (1, 1)
    q.update_codebook(records, torch.Generator().manual_seed(0))
    # counts 0.5 * 1 + 0.5 * 2 = 1.5, sums 0.5 * (0, 0) + 0.5 * (2, 2): code 0 -> (1, 1) / 1.5
    torch.testing.assert_close(q.codebook[0], torch.tensor([2 / 3, 2 / 3]), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(q.codebook[1], torch.tensor([5.0, 5.0]), rtol=1e-4, atol=1e-4)  # unused: stays
    torch.testing.assert_close(q.cluster_size, torch.tensor([1.5, 0.5]))
    assert q.unused_steps.tolist() == [0, 1]
    q = quantizer([[10.0, 10.0], [-5.0, -5.0]], decay=0.5).train()
    for _ in range(30):  # repeated: converges to the mean of its vectors
        q.update_codebook([assigned(q, as_input([[11.0, 10.0], [11.0, 12.0]]))], torch.Generator().manual_seed(0))
    torch.testing.assert_close(q.codebook[0], torch.tensor([11.0, 11.0]), rtol=1e-3, atol=1e-3)


def test_dead_codes_restart_where_the_error_is():
    q = quantizer([[0.0, 0.0], [10.0, 10.0], [100.0, 100.0]], restart_after=1).train()
    records = [assigned(q, as_input([[0.0, 0.0], [0.0, 0.0], [10.0, 10.0], [5.0, 5.0]]))]  # code 2 unused; (5, 5) is far from every code
    stats = q.update_codebook(records, torch.Generator().manual_seed(0))
    assert stats["codes_restarted"] == 1.0
    assert q.codebook[2].tolist() == [5.0, 5.0]
    assert q.cluster_size[2] == 1.0 and q.embed_sum[2].tolist() == [5.0, 5.0] and q.unused_steps[2] == 0


def test_dead_code_restarts_are_deterministic_given_the_generator():
    def run(seed: int) -> torch.Tensor:
        torch.manual_seed(0)
        q = VectorQuantizer(64, 3, restart_after=1).train()
        z = torch.randn(4, 3, 10, generator=torch.Generator().manual_seed(1))
        q.update_codebook([assigned(q, z)], torch.Generator().manual_seed(5))  # k-means++ init from z
        moved = [assigned(q, z + 3.0)]  # everything moved: most codes go unused
        stats = q.update_codebook(moved, torch.Generator().manual_seed(seed))
        assert stats["codes_restarted"] > 0
        restarted = [k for k in range(64) if any(torch.equal(q.codebook[k], v) for v in (z + 3.0).movedim(1, -1).reshape(-1, 3))]
        assert len(restarted) >= stats["codes_restarted"]  # re-seeded at current encoder outputs
        return q.codebook.clone()

    assert torch.equal(run(7), run(7))
    assert not torch.equal(run(7), run(8))


def test_first_update_seeds_the_codebook_by_kmeans_plus_plus():
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    samples = (centres[:, None, :] + 0.01 * torch.randn(4, 25, 2, generator=torch.Generator().manual_seed(0))).reshape(-1, 2)
    q = VectorQuantizer(4, 2).train()
    assert not q.initialized
    q.update_codebook([assigned(q, samples.t().unsqueeze(0))], torch.Generator().manual_seed(3))
    assert q.initialized
    nearest_centre = (q.codebook[:, None, :] - centres[None]).square().sum(-1).argmin(1)
    assert sorted(nearest_centre.tolist()) == [0, 1, 2, 3]  # one code per cluster
    assert all(any(torch.equal(c, s) for s in samples) for c in q.codebook)  # codes are samples
    torch.testing.assert_close(q.embed_sum, q.codebook)  # EMA statistics restart from the seeds
    again = VectorQuantizer(4, 2)
    again.init_from_samples(samples, torch.Generator().manual_seed(3))
    assert torch.equal(again.codebook, q.codebook)


def test_usage_stats():
    assert perplexity(torch.tensor([5.0, 5.0, 5.0, 5.0, 0.0])).item() == pytest.approx(4.0)
    assert perplexity(torch.tensor([7.0, 0.0, 0.0])).item() == pytest.approx(1.0)
    q = quantizer([[0.0], [1.0], [2.0], [3.0]])
    _, _, info = q(as_input([[0.0], [0.1], [2.0], [2.1]]))  # codes 0 and 2, twice each
    assert info["perplexity"].item() == pytest.approx(2.0) and info["usage"].item() == 0.5


def test_forward_keeps_no_state_and_updates_use_only_the_assignments_given():
    q = quantizer([[0.0], [1.0], [5.0]], decay=0.5).train()
    state = {k: v.clone() for k, v in q.state_dict().items()}
    for _ in range(3):  # forwards outside a training loop: nothing accumulates anywhere
        q(as_input([[0.9], [4.0]]))
    assert [k for k, v in vars(q).items() if isinstance(v, (list, tuple)) and v] == []
    assert all(torch.equal(v, state[k]) for k, v in q.state_dict().items())
    assert q.update_codebook([], torch.Generator()) == {}  # no assignments: nothing moves
    assert all(torch.equal(v, state[k]) for k, v in q.state_dict().items())
    _, idx, info = q(as_input([[0.2], [0.1]]))
    a = info["assignments"]
    assert a.indices.tolist() == idx.flatten().tolist() == [0, 0] and not a.vectors.requires_grad
    torch.testing.assert_close(a.distances, torch.tensor([0.04, 0.01]))
    stats = q.update_codebook([a], torch.Generator())  # only these two, not the three forwards before
    assert stats["codes_used"] == pytest.approx(1 / 3)
    fresh = quantizer([[0.0], [1.0], [5.0]], decay=0.5)
    fresh.update_codebook([a], torch.Generator())
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in q.state_dict().items())


def test_lookup_and_state_round_trip(tmp_path):
    q = quantizer([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]])
    ids = torch.tensor([[[2, 0], [1, 1]]])
    assert q.lookup(ids).shape == (1, 2, 2, 2)
    assert q.lookup(ids)[0, :, 0, 0].tolist() == [4.0, 5.0]
    with pytest.raises(KinemaError, match=r"\[0, 3\)"):
        q.lookup(torch.tensor([[3]]))
    save_safetensors(q.state_dict(), tmp_path / "q.safetensors")
    state = load_safetensors(tmp_path / "q.safetensors")
    assert set(state) == {"codebook", "cluster_size", "embed_sum", "unused_steps", "initialized"}
    fresh = VectorQuantizer(3, 2)
    fresh.load_state_dict(state)
    assert fresh.initialized and torch.equal(fresh.codebook, q.codebook)
    with pytest.raises(KinemaError, match="code width on dim 1"):
        q(torch.zeros(1, 3, 4))


# ------------------------------------------------------------------------------------------------
# The tokenizer
# ------------------------------------------------------------------------------------------------
TINY = VQVideoConfig(base_dim=4, z_dim=4, dim_mult=(1, 2, 2, 2), num_res_blocks=1, codebook_size=16, codebook_dim=3)


def clip(frames: int, size: int = 64, seed: int = 1, batch: int = 1) -> torch.Tensor:
    return torch.rand(batch, 3, frames, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_tokens_chunking_and_training_forward():
    torch.manual_seed(0)
    model = VQVideoTokenizer(TINY).eval()
    video = clip(9)
    with torch.no_grad():
        tokens = model.encode_tokens(video)
        assert tokens.shape == (1, 3, 8, 8) == (1, *model.grid(9, 64, 64)) and model.tokens_per_frame(64, 64) == 64
        assert tokens.dtype == torch.int64 and 0 <= int(tokens.min()) and int(tokens.max()) < TINY.codebook_size
        assert torch.equal(model.encode_tokens(video, chunk_size=8), tokens)  # chunking is exact
        recon, info = model(video)
        assert torch.equal(info["tokens"], tokens)
        torch.testing.assert_close(recon, model.decode_tokens(tokens))  # z + (e - z) is e up to rounding
    with pytest.raises(KinemaError, match="4k\\+1"):
        model.grid(10, 64, 64)


def test_per_frame_tokens_without_temporal_downsampling():
    config = VQVideoConfig(base_dim=4, z_dim=4, dim_mult=(1, 2), temporal_downsample=(False,), codebook_size=8, codebook_dim=2)
    model = VQVideoTokenizer(config).eval()
    assert model.temporal_compression == 1 and model.grid(6, 16, 16) == (6, 8, 8)
    with torch.no_grad():
        tokens = model.encode_tokens(clip(6, size=16))
        assert tokens.shape == (1, 6, 8, 8)
        assert model.decode_tokens(tokens).shape == (1, 3, 6, 16, 16)


def test_shares_the_wan_vae_names_and_loads_its_weights(tmp_path):
    from kinema.training.checkpointing import init_weights_from

    torch.manual_seed(3)
    vae = WanVAE(TINY.autoencoder)
    save_safetensors(vae.state_dict(), tmp_path / "vae.safetensors")
    torch.manual_seed(4)
    model = VQVideoTokenizer(TINY)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loaded = init_weights_from(model, tmp_path / "vae.safetensors", partial=True)
    assert set(loaded) == set(vae.state_dict())  # every VAE tensor has a place in the tokenizer
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in vae.state_dict().items())
    fresh = [k for k in after if k.split(".")[0] in ("quant_proj", "quantizer", "post_quant_proj")]
    assert fresh and set(fresh) == set(after) - set(loaded)
    assert all(torch.equal(after[k], before[k]) for k in fresh)
    # a VAE of another width or time structure: an error naming the module, never a half-loaded one
    wider = WanVAE(VQVideoConfig(base_dim=8, z_dim=4, dim_mult=(1, 2, 2, 2), num_res_blocks=1).autoencoder)
    save_safetensors(wider.state_dict(), tmp_path / "wider.safetensors")
    with pytest.raises(KinemaError, match=r"decoder \(decoder.conv1.bias \(16,\) vs \(8,\)\), encoder .* do not match"):
        init_weights_from(model, tmp_path / "wider.safetensors", partial=True)
    frames = WanVAE(VQVideoConfig(base_dim=4, z_dim=4, dim_mult=(1, 2, 2, 2), num_res_blocks=1, temporal_downsample=(True, True, True)).autoencoder)
    save_safetensors(frames.state_dict(), tmp_path / "frames.safetensors")
    with pytest.raises(KinemaError, match="time_conv"):
        init_weights_from(model, tmp_path / "frames.safetensors", partial=True)
    save_safetensors({"blocks.0.weight": torch.zeros(2)}, tmp_path / "other.safetensors")
    with pytest.raises(KinemaError, match="no module of this model"):
        init_weights_from(model, tmp_path / "other.safetensors", partial=True)
    with pytest.raises(KinemaError, match="do not fit"):  # strict for every other kind
        init_weights_from(model, tmp_path / "vae.safetensors")


def test_config_json_round_trip(tmp_path):
    torch.manual_seed(0)
    model = VQVideoTokenizer(TINY).eval()
    model.quantizer.init_from_samples(torch.randn(100, 3))
    directory = save_vq_tokenizer(tmp_path / "tok", TINY, model.state_dict())
    raw = json.loads((directory / "config.json").read_text())
    assert raw["_class_name"] == "VQVideoTokenizer" and vq_ckpt.from_json(raw) == TINY
    loaded = load_vq_tokenizer(directory, dtype=torch.bfloat16)
    assert loaded.quantizer.codebook.dtype == torch.float32 and loaded.conv2.weight.dtype == torch.bfloat16
    loaded = load_vq_tokenizer(directory)
    video = clip(5, size=16)
    with torch.no_grad():
        assert torch.equal(loaded.encode_tokens(video), model.encode_tokens(video))
    with pytest.raises(CheckpointError, match="unknown"):
        vq_ckpt.from_json({**raw, "codebook_colour": 1})
    with pytest.raises(CheckpointError, match="expected a VQVideoTokenizer"):
        vq_ckpt.from_json({**raw, "_class_name": "AutoencoderKLWan"})
    with pytest.raises(KinemaError, match="temporal_downsample"):
        VQVideoConfig(dim_mult=(1, 2), temporal_downsample=(True, True))


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("codebook_size", "1024", r"codebook_size must be an integer >= 2; got '1024'"),
        ("codebook_size", 1, "codebook_size must be an integer >= 2"),
        ("dim_mult", 4, r"dim_mult must be a list of integers >= 1; got 4"),
        ("dim_mult", [1, "2"], "dim_mult must be a list"),
        ("temporal_downsample", [1], "temporal_downsample must be a list of true/false"),
        ("codebook_dim", 0, "codebook_dim must be an integer >= 1"),
        ("base_dim", 8.5, "base_dim must be an integer"),
        ("restart_after", -1, "restart_after must be an integer >= 0"),
        ("codebook_decay", 1.0, r"codebook_decay must be a number in \(0, 1\)"),
        ("beta", "0.25", "beta must be a number >= 0"),
        ("codebook_ema", "yes", "codebook_ema must be true or false"),
    ],
)
def test_bad_config_values_give_one_line_errors(field, value, message):
    with pytest.raises(KinemaError, match=message) as e:
        VQVideoConfig(**{field: value})
    assert "\n" not in str(e.value)
    with pytest.raises(CheckpointError, match=message) as e:  # reading a config.json
        vq_ckpt.from_json({**vq_ckpt.to_json(TINY), field: value})
    assert "\n" not in str(e.value)
    with pytest.raises(CheckpointError, match="must be a mapping"):
        vq_ckpt.from_json(["codebook_size", 16])


def test_tiny_tokenizer_overfits_two_clips():
    from kinema.data.synthetic import SyntheticClips

    config = VQVideoConfig(base_dim=8, z_dim=4, dim_mult=(1, 2), temporal_downsample=(True,), codebook_size=16, codebook_dim=4, restart_after=5)
    torch.manual_seed(0)
    model = VQVideoTokenizer(config).train()
    clips = SyntheticClips(size=16, frames=5, length=2)
    video = torch.stack([clips[i]["video"] for i in range(2)])  # (2, 3, 5, 16, 16): squares moving on black
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for step in range(15):
        recon, info = model(video)
        loss = (recon - video).abs().mean() + (recon - video).square().mean() + info["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.quantizer.update_codebook([info["assignments"]], torch.Generator().manual_seed(step))
        losses.append(loss.item())
    assert sum(losses[-3:]) < 0.3 * sum(losses[:3]), losses


# ------------------------------------------------------------------------------------------------
# The codec contract (tests/contracts.py): meta build, strict load, determinism, golden values,
# bf16 with a float32 codebook, VideoCodec shapes (its own format: no external key map)
# ------------------------------------------------------------------------------------------------
class TestVQVideoTokenizerContract(CodecContract):
    compressions = (4, 8)
    keeps_fp32 = True
    golden = [
        -0.20134433, -0.18874615, -0.12306747, -0.19284901, -0.34706670, -0.31234547,  # the quantiser's input
        0.51546496, 0.51103491, 0.50179613, 0.48619318, 0.22438020, 0.16254228,
        0.16827659, 0.11963555, 0.00996836, -0.02024464, 0.00194867, 0.00701907,  # decoded pixels
    ]  # fmt: skip

    def build(self) -> VQVideoTokenizer:
        return VQVideoTokenizer(TINY)

    def inputs(self):
        tokens = torch.randint(0, TINY.codebook_size, (1, 2, 2, 3), generator=torch.Generator().manual_seed(2))
        return self.video(2, seed=1), tokens

    def run(self, model, inputs):
        video, tokens = inputs
        features = model.encode_features(video)
        return features, model.quantizer.encode(features), model.decode_tokens(tokens)

    def golden_slice(self, out):
        features, _, decoded = out
        return torch.cat([features[0, :, -1, 1, :2].flatten(), decoded[0, :, -1, 9, 10:14].flatten()])
