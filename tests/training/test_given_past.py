"""Training with the past given (objective.past_share, past_from_data, past_sigma): the given latent
frames reach the model clean but for their own small noise level, told by a time per frame, and are
left out of the loss; a continuation item is given its own past; nothing changes when it is off;
a packaged model's card carries past_sigma only when it was trained so."""

from __future__ import annotations

import json

import pytest
import torch

from kinema.data.caches import latent_cache
from kinema.data.shapes import ShapesDataset
from kinema.errors import KinemaError
from kinema.sampling.noise import FlowMatching
from kinema.seeds import make_generator
from kinema.training import train
from kinema.training.config import config_hash, load_config
from kinema.training.objectives import DiffusionObjective, given_past_loss

from .test_training import tiny_vae, transformer_config  # noqa: F401  (tiny_vae is a fixture)


class _VAE:
    def latent_frames(self, frames):
        return (frames - 1) // 4 + 1

    def normalize_latents(self, z):
        return z


def _text(prompts):
    return torch.zeros(len(prompts), 4, 16)


class _Recorder:
    """A model that records what it was given and predicts ``value`` everywhere."""

    def __init__(self, value: float = 0.0):
        self.calls, self.value = [], value

    def __call__(self, x, t, context):
        self.calls.append((x.clone(), t.clone()))
        return torch.full_like(x, self.value)


def _item(past: int = 0, frames: int = 5) -> dict:
    g = torch.Generator().manual_seed(past)
    return {"mean": torch.randn(4, frames, 2, 2, generator=g), "logvar": torch.full((4, frames, 2, 2), -20.0), "caption": "a red square", "past": past}


def _gens(n: int, seed: int = 0):
    return [make_generator(seed, "item", 0, k) for k in range(n)]


def test_given_frames_are_nearly_clean_told_their_own_time_and_left_out_of_the_loss():
    process = FlowMatching()
    g = torch.Generator().manual_seed(0)
    x0, noise, past_noise = (torch.randn(2, 4, 5, 2, 2, generator=g) for _ in range(3))
    levels, past_levels, past = torch.tensor([0.9, 0.5]), torch.tensor([0.05, 0.0]), torch.tensor([2, 0])
    seen = []

    def model(x, t):
        seen.append((x, t))
        return torch.zeros_like(x)

    loss = given_past_loss(model, process, x0, noise, levels, past, past_noise, past_levels)
    x, t = seen[0]
    assert t.shape == (2, 5)
    assert torch.allclose(t[0], torch.tensor([50.0, 50.0, 900.0, 900.0, 900.0])) and torch.allclose(t[1], torch.full((5,), 500.0))
    assert torch.allclose(x[0, :, :2], 0.95 * x0[0, :, :2] + 0.05 * past_noise[0, :, :2])  # the given frames
    assert torch.allclose(x[0, :, 2:], 0.1 * x0[0, :, 2:] + 0.9 * noise[0, :, 2:])
    target = noise - x0
    keep = torch.ones(2, 1, 5, 1, 1)
    keep[0, :, :2] = 0
    assert torch.allclose(loss, (target.square() * keep).sum() / (keep.sum() * 4 * 2 * 2))

    def wrong_on_given(x, t):  # a prediction that is wrong only on the given frames costs nothing
        out = process.target(x0, noise, levels).clone()
        out[0, :, :2] += 100.0
        return out

    assert given_past_loss(wrong_on_given, process, x0, noise, levels, past, past_noise, past_levels).item() == 0.0


def test_off_by_default_and_the_draws_before_it_unchanged():
    items = [_item(past=9), _item(past=0)]
    plain, with_past = _Recorder(), _Recorder()
    loss = DiffusionObjective(FlowMatching(), _VAE(), _text, 0.0)(plain, items, _gens(2))[0]
    assert plain.calls[0][1].shape == (2,)  # one time per item: the past is ignored unless asked for
    # past_from_data gives the first item its own 9 frames (3 latent frames); the second, no past
    loss2 = DiffusionObjective(FlowMatching(), _VAE(), _text, 0.0, past_from_data=True, past_sigma=0.1)(with_past, items, _gens(2))[0]
    (x1, t1), (x2, t2) = plain.calls[0], with_past.calls[0]
    assert t2.shape == (2, 5)
    assert (t2[0, :3] <= 100.0).all() and torch.equal(t2[0, 3:], t1[0].expand(2)) and torch.equal(t2[1], t1[1].expand(5))
    assert torch.equal(x2[:, :, 3:], x1[:, :, 3:]) and torch.equal(x2[1], x1[1])  # the same level and noise as before
    assert not torch.equal(x2[0, :, :3], x1[0, :, :3]) and loss.item() != loss2.item()


def test_past_share_gives_a_past_to_that_share_of_plain_items():
    rec = _Recorder()
    n = 300
    objective = DiffusionObjective(FlowMatching(), _VAE(), _text, 0.0, past_share=0.4, past_frames=(1, 3), past_sigma=0.2)
    objective(rec, [_item()] * n, _gens(n))
    t = rec.calls[0][1]  # (n, 5)
    given = t < t[:, -1:]  # the given frames are told a lower time (at most 200) than the noisy rest
    counts = given.sum(1)
    assert set(counts.tolist()) <= {0, 1, 3} and abs((counts > 0).float().mean().item() - 0.4) < 0.08
    assert (t[given] <= 200.0).all()
    with pytest.raises(KinemaError, match="past_frames must be from 1 to 4"):
        DiffusionObjective(FlowMatching(), _VAE(), _text, 0.0, past_share=1.0, past_frames=(5,))(rec, [_item()], _gens(1))


def test_shapes_items_and_the_latent_cache_say_each_item_s_past(tmp_path):
    data = ShapesDataset(split="train", size=64, frames=17, seed=3, length=12, continue_share=0.5, continue_past=(5, 9))
    pasts = [data.past_of(i) for i in range(len(data))]
    assert set(pasts) <= {0, 5, 9} and any(pasts) and not all(pasts)
    assert [data[i]["past"] for i in range(len(data))] == pasts
    assert all(data.past_of(i) == (0 if data.continuation(i) is None else data.continuation(i)[1]) for i in range(len(data)))
    plain = ShapesDataset(split="train", size=64, frames=17, seed=3, length=12)
    assert [plain.past_of(i) for i in range(12)] == [0] * 12 and plain[0]["past"] == 0
    for d in (data, plain):
        with pytest.raises(IndexError):
            d.past_of(12)

    class Posterior:
        def __init__(self, video):
            self.mean = self.logvar = torch.zeros(video.shape[0], 1, 5, 8, 8)

    class VAE:
        def encode(self, video):
            return Posterior(video)

    cache = latent_cache(tmp_path / "cache.safetensors", "k", data, VAE())
    assert [cache[i]["past"] for i in range(len(cache))] == pasts
    again = latent_cache(tmp_path / "cache.safetensors", "k", data, None)  # read back, not encoded
    assert [again[i]["past"] for i in range(len(again))] == pasts


def test_config_checks_hash_and_the_packaged_card(tiny_vae, tmp_path):  # noqa: F811
    base = transformer_config(tmp_path / "a", tiny_vae)
    assert config_hash(load_config(base)) == config_hash(load_config({**base, "objective": {**base["objective"], "past_share": 0.0}}))
    for bad, message in (
        ({"past_share": 1.5}, "past_share"),
        ({"past_sigma": 1.0}, "past_sigma"),
        ({"past_frames": [0]}, "past_frames"),
    ):
        with pytest.raises(KinemaError, match=message):
            cfg = load_config({**base, "objective": {**base["objective"], **bad}})
            train(cfg, progress=False)
    too_long = transformer_config(tmp_path / "long", tiny_vae, steps=1, objective={**base["objective"], "past_share": 0.5, "past_frames": [2, 3]})
    too_long["data"] = {**too_long["data"], "frames": 5}  # the tiny VAE halves time: 3 latent frames, at most 2 given
    with pytest.raises(KinemaError, match=r"past_frames must list latent-frame counts from 1 to 2 .*got \[2, 3\]"):
        train(too_long, progress=False)
    assert not (tmp_path / "long").exists()
    cfg = transformer_config(tmp_path / "p", tiny_vae, steps=2, objective={**base["objective"], "past_share": 0.5, "past_frames": [1], "past_sigma": 0.1})
    cfg["data"] = {**cfg["data"], "frames": 9}  # 5 latent frames (the tiny VAE halves time)
    train(cfg, progress=False)  # a time per frame through the whole loop
    metrics = [json.loads(line) for line in (tmp_path / "p" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2 and all(m["loss"] == m["loss"] for m in metrics)


@pytest.mark.parametrize("objective, card", [({"past_from_data": True, "past_sigma": 0.1}, 0.1), ({"past_sigma": 0.1}, None), ({}, None)])
def test_the_packaged_card_says_past_sigma_only_for_a_model_trained_with_a_past(objective, card, tmp_path):
    """kinema package copies the objective's past_sigma into the card's sampler, and only from a run that gave a past."""
    import shutil
    from pathlib import Path

    import kinema
    from kinema.pipelines.package import package_trained_model

    shapes = Path(kinema.__file__).parent / "assets" / "shapes"
    run = tmp_path / "run" / "model"
    shutil.copytree(shapes / "transformer", run)
    training = {"model": "wan-transformer", "vae": str(shapes / "vae"), "text_encoder": "minilm", "text_max_length": 32,
                "data": {"kind": "shapes", "size": 64, "frames": 33}, "objective": {"sigma_sampling": "logit_normal", **objective}}  # fmt: skip
    (run / "training.json").write_text(json.dumps(training))
    out = package_trained_model(run, tmp_path / "pkg", sampler={"shift": 3.0})
    assert json.loads((out / "kinema.json").read_text())["sampler"].get("past_sigma") == card
    pipe = kinema.load_pipeline(out)
    assert pipe.sampler.past_sigma == card


def test_the_token_model_reads_a_continuation_s_past_without_being_scored_on_it():
    """token-ar with objective.past_from_data: the past's latent frames are model input but not in
    the loss (nor the accuracy); without a past, or with the setting off, every token counts."""
    from kinema.training.objectives import TokenObjective, next_token_loss

    class Tokenizer:
        def latent_frames(self, frames):
            return (frames - 1) // 4 + 1

    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 7, (2, 3, 2, 2), generator=g)  # (B, F', h, w): 12 tokens a clip
    logits = torch.randn(2, 12, 7, generator=g)
    seen = []

    def model(ids, context):
        seen.append(ids)
        return logits

    items = [{"tokens": tokens[0], "caption": "a", "past": 5}, {"tokens": tokens[1], "caption": "b", "past": 0}]
    loss, logs = TokenObjective(Tokenizer(), _text, 0.0, past_from_data=True)(model, items, _gens(2))
    scored = torch.ones(2, 12, dtype=torch.bool)
    scored[0, :8] = False  # 5 pixel frames: latent frames 0 and 1, 4 tokens each
    per = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens.flatten(1).flatten(), reduction="none").view(2, 12)
    assert torch.allclose(loss, per[scored].mean())
    right = logits.argmax(-1) == tokens.flatten(1)
    assert logs["accuracy"] == int(right[scored].sum()) / int(scored.sum())  # over the scored tokens, as the step's metric
    assert torch.equal(seen[0], tokens.flatten(1))  # the past is still read
    off, _ = TokenObjective(Tokenizer(), _text, 0.0)(model, items, _gens(2))
    assert torch.allclose(off, per.mean()) and torch.allclose(next_token_loss(logits, tokens.flatten(1))[0], per.mean())


def test_the_token_model_reads_noisy_tokens_but_is_scored_on_the_clip_s_own():
    """objective.token_noise: about that share of the tokens the model reads are random codebook
    ids, drawn from each item's own generator (the same generators, the same ids), while the loss
    and the accuracy are against the clip's tokens; at 0 the model reads the clip itself."""
    from kinema.training.objectives import TokenObjective, corrupt_tokens

    class Tokenizer:
        def latent_frames(self, frames):
            return (frames - 1) // 4 + 1

    class Model:
        config = type("Config", (), {"vocab_size": 50})()

        def __init__(self):
            self.seen = []

        def __call__(self, ids, context):
            self.seen.append(ids)
            return logits

    tokens = torch.randint(0, 50, (2, 9, 8, 8), generator=torch.Generator().manual_seed(0))  # 576 tokens a clip
    logits = torch.randn(2, 9 * 64, 50, generator=torch.Generator().manual_seed(1))
    items = [{"tokens": tokens[0], "caption": "a"}, {"tokens": tokens[1], "caption": "b"}]
    clean = tokens.flatten(1)
    model = Model()
    loss, logs = TokenObjective(Tokenizer(), _text, 0.0, token_noise=0.2)(model, items, _gens(2))
    read = model.seen[0]
    changed = (read != clean).float().mean(1)
    assert ((changed > 0.12) & (changed < 0.25)).all()  # about a fifth (a random id may be the clip's own: 1 in 50)
    assert read.min() >= 0 and read.max() < 50
    per = torch.nn.functional.cross_entropy(logits.flatten(0, 1), clean.flatten(), reduction="none")
    assert torch.allclose(loss, per.mean())  # scored on the clip, not on what was read
    assert logs["accuracy"] == int((logits.argmax(-1) == clean).sum()) / clean.numel()
    TokenObjective(Tokenizer(), _text, 0.0, token_noise=0.2)(model, items, _gens(2))
    assert torch.equal(model.seen[1], read)  # the same generators draw the same noise
    gens = _gens(2)
    [torch.rand((), generator=g) for g in gens]  # each item's caption coin comes first
    assert torch.equal(corrupt_tokens(clean, gens, 0.2, 50), read)  # then row i's noise, from generator i
    TokenObjective(Tokenizer(), _text, 0.0)(model, items, _gens(2))
    assert torch.equal(model.seen[2], clean)
    with pytest.raises(KinemaError, match="token_noise"):
        load_config({"model": "token-ar", "architecture": {}, "out_dir": "x", "objective": {"token_noise": 1.0}})


class _RoundTripVAE(_VAE):
    """A codec whose round trip is visible: decoding halves (clamped), encoding adds 0.25."""

    device, dtype = torch.device("cpu"), torch.float32

    def __init__(self):
        self.decoded = 0

    def decode(self, z):
        self.decoded += 1
        return z.clamp(-1, 1) * 0.5

    def encode(self, video):
        class Posterior:
            mean = video + 0.25
            logvar = torch.full_like(video, -20.0)

        return Posterior


def test_past_roundtrip_gives_the_past_as_the_codec_gives_it_back_and_keeps_the_frames_to_make():
    """objective.past_roundtrip: a given past is its round trip (decoded, rounded to 8-bit frames,
    encoded), from the cache's item where it holds one, else computed; the frames after it, their
    level and noise are as without it."""
    from kinema.data.caches import codec_roundtrip

    items = [_item(past=9), _item(past=0), _item(past=5)]  # 3, 0 and 2 latent frames given
    plain, tripped, cached = _Recorder(), _Recorder(), _Recorder()
    DiffusionObjective(FlowMatching(), _VAE(), _text, 0.0, past_from_data=True)(plain, items, _gens(3))
    vae = _RoundTripVAE()
    DiffusionObjective(FlowMatching(), vae, _text, 0.0, past_from_data=True, past_roundtrip=1.0)(tripped, items, _gens(3))
    assert vae.decoded == 1  # one batch of the given pasts, computed
    (x1, t1), (x2, t2) = plain.calls[0], tripped.calls[0]
    assert torch.equal(t1, t2) and torch.equal(x2[:, :, 3:], x1[:, :, 3:]) and torch.equal(x2[1], x1[1])
    for i, k in ((0, 3), (2, 2)):
        expected = ((items[i]["mean"][:, :k].clamp(-1, 1) * 0.5 / 2 + 0.5) * 255).round() / 255 * 2 - 1 + 0.25
        assert torch.allclose(x2[i, :, :k], expected, atol=1e-3)  # past_sigma 0: the given frames (and a posterior std of 5e-5)
        assert torch.equal(x2[i, :, k:], x1[i, :, k:])
    rt_mean, rt_logvar = codec_roundtrip(vae, torch.stack([it["mean"] for it in items]), 3)
    with_cache = [{**it, "roundtrip_mean": rt_mean[i], "roundtrip_logvar": rt_logvar[i]} for i, it in enumerate(items)]
    vae.decoded = 0
    DiffusionObjective(FlowMatching(), vae, _text, 0.0, past_from_data=True, past_roundtrip=1.0)(cached, with_cache, _gens(3))
    assert vae.decoded == 0 and torch.equal(cached.calls[0][0], x2)  # read from the items, the same


def test_the_round_trip_cache_and_the_codec_s_causality(tiny_vae, tmp_path):  # noqa: F811
    """latent_cache keeps the round trip of the first latent frames in a file of its own, read back
    without the codec; of a causal codec, the first k of a longer round trip are the round trip of k."""
    from kinema.checkpoints.wan_vae import load_wan_vae
    from kinema.data.caches import codec_roundtrip

    vae = load_wan_vae(tiny_vae)
    data = ShapesDataset(split="train", size=64, frames=9, seed=3, length=3)
    cache = latent_cache(tmp_path / "cache.safetensors", "k", data, vae, roundtrip_frames=2)
    assert (tmp_path / "cache-roundtrip.safetensors").is_file() and cache[0]["roundtrip_mean"].shape[1] == 2
    again = latent_cache(tmp_path / "cache.safetensors", "k", data, None, roundtrip_frames=2)  # read back, not computed
    assert torch.equal(again[2]["roundtrip_mean"], cache[2]["roundtrip_mean"]) and "roundtrip_mean" not in latent_cache(tmp_path / "cache.safetensors", "k", data, None)[0]
    mean = torch.stack([cache[i]["mean"] for i in range(3)])
    longer, _ = codec_roundtrip(vae, mean, mean.shape[2])
    shorter, _ = codec_roundtrip(vae, mean, 2)
    assert torch.allclose(longer[:, :, :2], shorter, atol=1e-5) and torch.allclose(shorter, torch.stack([cache[i]["roundtrip_mean"] for i in range(3)]))


def test_past_roundtrip_config(tiny_vae, tmp_path):  # noqa: F811
    base = transformer_config(tmp_path / "a", tiny_vae)
    assert config_hash(load_config(base)) == config_hash(load_config({**base, "objective": {**base["objective"], "past_roundtrip": 0.0}}))
    for bad, message in (({"past_roundtrip": 1.5}, "past_roundtrip"), ({"past_roundtrip": 0.5}, "past_roundtrip takes given pasts through the VAE")):
        with pytest.raises(KinemaError, match=message):
            train(load_config({**base, "objective": {**base["objective"], **bad}}), progress=False)
    cfg = transformer_config(tmp_path / "p", tiny_vae, steps=2, objective={**base["objective"], "past_share": 1.0, "past_frames": [2], "past_roundtrip": 1.0})
    cfg["data"] = {**cfg["data"], "frames": 9}
    train(cfg, progress=False)  # through the whole loop (with the latent cache where the tiny config has one)
    assert len((tmp_path / "p" / "metrics.jsonl").read_text().splitlines()) == 2
