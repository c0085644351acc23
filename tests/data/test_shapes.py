"""The shapes world: exact colours, geometry inside the canvas, captions, splits and determinism."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from kinema.data.shapes import (
    ALL_COMBOS,
    BACKGROUND,
    COLOURS,
    DIRECTION_WORDS,
    HELD_OUT,
    HELD_OUT_COMBOS,
    MOTIONS,
    PALETTE,
    SHAPES,
    SIZE_RANGE,
    TRAIN_COMBOS,
    TRAVEL_RANGE,
    ClipSpec,
    ShapesDataset,
    canonical_caption,
    caption,
    render_clip,
    reworded_caption,
    sample_spec,
    training_captions,
    REWORDED_TEMPLATES,
)
from kinema.errors import KinemaError

SHAPE_KEYWORDS = {
    "circle": ("circle", "disc", "round"),
    "square": ("square", "box"),
    "triangle": ("triangle", "triangular"),
}
FILL = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5}


def _specs(n_seeds: int = 2):
    for seed in range(n_seeds):
        for i, combo in enumerate(ALL_COMBOS):
            yield sample_spec(*combo, np.random.default_rng([seed, i]))


def test_sampled_parameters_in_range_and_inside_canvas():
    for spec in _specs(3):
        assert SIZE_RANGE[0] <= spec.size <= SIZE_RANGE[1]
        assert TRAVEL_RANGE[0] <= spec.travel <= TRAVEL_RANGE[1]
        half = spec.size / 2
        for x, y in (spec.start, spec.end):
            assert half <= x <= 1 - half and half <= y <= 1 - half


@pytest.mark.parametrize("size", [64, 96])
def test_render_exact_colours_inside_canvas_and_fill(size):
    bg = np.asarray(BACKGROUND, dtype=np.uint8)
    for spec in itertools.islice(_specs(), 0, None, 5):
        clip = render_clip(spec, size=size)
        assert clip.shape == (33, size, size, 3) and clip.dtype == np.uint8
        colour = np.asarray(PALETTE[spec.colour], dtype=np.uint8)
        for f in (0, 16, 32):
            t = f / 32
            cx, cy = (c * size for c in spec.centre(t))
            # the centre pixel is exactly the palette colour (for a triangle, a point below the centre)
            py = int(cy + (spec.size * size / 4 if spec.shape == "triangle" else 0))
            assert (clip[f, py, int(cx)] == colour).all()
            # the border rows/columns of the canvas are exactly background: the object stays inside
            frame = clip[f]
            for edge in (frame[0], frame[-1], frame[:, 0], frame[:, -1]):
                assert (edge == bg).all()
            # every pixel is background, palette colour or a blend on the segment between them
            other = (frame != bg).any(-1) & (frame != colour).any(-1)
            n_exact = (frame == colour).all(-1).sum()
            assert other.sum() < n_exact  # anti-aliasing only at the edges
            # coverage (blend weight) sums to the shape's area: fill ratio of its bounding box
            k = np.argmax(np.abs(colour.astype(float) - bg))
            cov = (frame[..., k].astype(float) - bg[k]) / (float(colour[k]) - bg[k])
            side = spec.size * size
            assert cov.sum() / side**2 == pytest.approx(FILL[spec.shape], abs=0.03)


def test_render_constant_speed():
    for spec in itertools.islice(_specs(), 0, None, 7):
        clip = render_clip(spec, size=64).astype(float)
        w = np.abs(clip - np.asarray(BACKGROUND)).sum(-1)  # (F, H, W) blend weight
        ys, xs = np.mgrid[0:64, 0:64]
        cx = (w * xs).sum((1, 2)) / w.sum((1, 2))
        cy = (w * ys).sum((1, 2)) / w.sum((1, 2))
        pos = cx if spec.motion in ("left", "right") else cy  # (F,) pixels along the motion axis
        t = np.arange(33)
        slope, offset = np.polyfit(t, pos, 1)
        # a straight line in time (constant speed), up to the 1/4-pixel supersampling quantisation
        assert np.abs(pos - (slope * t + offset)).max() < 0.15
        assert abs(slope) == pytest.approx(spec.travel * 64 / 32, rel=0.02)
        total = np.hypot(cx[-1] - cx[0], cy[-1] - cy[0]) / 64
        assert total == pytest.approx(spec.travel, abs=0.005)


def test_render_is_fast_enough_and_rejects_bad_input():
    import time

    spec = sample_spec("red", "circle", "left", np.random.default_rng(0))
    t = time.perf_counter()
    for _ in range(5):
        render_clip(spec)
    assert (time.perf_counter() - t) / 5 < 0.05
    with pytest.raises(KinemaError, match="at least 64"):
        render_clip(spec, size=32)
    with pytest.raises(KinemaError, match="unknown colour"):
        ClipSpec("pink", "circle", "left")


def test_held_out_split():
    assert len(ALL_COMBOS) == 96 and len(HELD_OUT_COMBOS) == len(HELD_OUT) == 10
    assert set(TRAIN_COMBOS).isdisjoint(HELD_OUT) and set(TRAIN_COMBOS) | HELD_OUT == set(ALL_COMBOS)
    for names, pos in ((COLOURS, 0), (SHAPES, 1), (MOTIONS, 2)):
        assert {c[pos] for c in TRAIN_COMBOS} == set(names)
    # every pair inside a held-out combination is still seen in training
    for c in HELD_OUT:
        for a, b in ((0, 1), (0, 2), (1, 2)):
            assert any(t[a] == c[a] and t[b] == c[b] for t in TRAIN_COMBOS)


def test_dataset_split_disjoint_and_covering():
    train = ShapesDataset("train", length=10_000)
    seen = {(s.colour, s.shape, s.motion) for s in (train.spec(i)[0] for i in range(3000))}
    assert seen.isdisjoint(HELD_OUT)
    assert seen == set(TRAIN_COMBOS)  # 3000 uniform draws over 86 combos cover them all
    held = ShapesDataset("held_out", length=100)
    assert {(s.colour, s.shape, s.motion) for s in (held.spec(i)[0] for i in range(100))} <= HELD_OUT
    with pytest.raises(KinemaError, match="unknown split"):
        ShapesDataset("test")


def test_dataset_deterministic_and_dataloader():
    a, b = ShapesDataset(seed=3, length=50), ShapesDataset(seed=3, length=50)
    x, y = a[7], b[7]
    assert x["video"].shape == (3, 33, 64, 64) and x["video"].dtype == torch.float32
    assert x["video"].min() >= -1 and x["video"].max() <= 1
    assert torch.equal(x["video"], y["video"]) and x["caption"] == y["caption"]
    assert not torch.equal(a[8]["video"], x["video"])
    assert not torch.equal(ShapesDataset(seed=4, length=50)[7]["video"], x["video"])
    # background maps to (20 / 127.5 - 1) exactly
    assert torch.isclose(x["video"][:, 0, 0, 0], torch.full((3,), 20 / 127.5 - 1)).all()
    batch = next(iter(torch.utils.data.DataLoader(a, batch_size=4)))
    assert batch["video"].shape == (4, 3, 33, 64, 64) and len(batch["caption"]) == 4
    assert torch.equal(batch["video"][1], a[1]["video"])
    with pytest.raises(IndexError):
        a[50]


def test_captions_varied_and_name_attributes():
    texts = []
    rng = np.random.default_rng(0)
    for i in range(200):
        spec = sample_spec(*ALL_COMBOS[i % 96], rng)
        text = caption(spec, rng)
        texts.append(text)
        assert spec.colour in text.split(" ") or f"{spec.colour}-coloured" in text or f"{spec.colour}," in text
        assert any(k in text for k in SHAPE_KEYWORDS[spec.shape])
        assert any(d in text for d in DIRECTION_WORDS[spec.motion])
        assert any(v in text for v in ("moving", "going", "drifting", "sliding", "travelling", "gliding"))
        assert text in training_captions(spec.colour, spec.shape, spec.motion)
    assert len(set(texts)) >= 150
    assert canonical_caption("red", "circle", "left") == "a red circle moving left"


def test_canonical_is_a_training_caption_and_reworded_never_is():
    for combo in ALL_COMBOS:
        produced = training_captions(*combo)
        assert canonical_caption(*combo) in produced
        reworded = {reworded_caption(*combo, v) for v in range(len(REWORDED_TEMPLATES))}
        assert len(reworded) == len(REWORDED_TEMPLATES)
        assert reworded.isdisjoint(produced)
        for text in reworded:
            assert combo[0] in text and combo[1] in text


def test_a_clip_continues_from_where_it_ends_at_any_speed():
    """The same object goes on from its last position with a new motion; the judge reads each part."""
    from kinema.data.shapes import ClipSpec, continuations, continue_spec, render_sequence, room
    from kinema.evaluation.judge import judge_clip

    first = ClipSpec("purple", "triangle", "up", size=0.25, start=(0.5, 0.7), travel=0.4)
    assert first.end == pytest.approx((0.5, 0.3)) and "up" in continuations(first)
    at_edge = ClipSpec("purple", "triangle", "up", size=0.25, start=(0.5, 0.6), travel=0.455)
    assert room(at_edge, "up") < 0.12 and continuations(at_edge) == ("left", "right", "down")
    with pytest.raises(KinemaError, match="at the up edge; it can continue left or right or down"):
        continue_spec(at_edge, "up")
    with pytest.raises(KinemaError, match="leaves the canvas"):
        continue_spec(first, "up", travel=0.5)
    slow = continue_spec(first, "right", travel=0.15)
    fast = continue_spec(slow, "down", rng=np.random.default_rng(0))
    assert slow.start == first.end and fast.start == slow.end and (slow.size, slow.colour) == (first.size, first.colour)
    assert fast.travel <= room(slow, "down") + 1e-9
    video = render_sequence([first, slow, fast], [33, 32, 32])
    assert video.shape == (97, 64, 64, 3)
    assert np.array_equal(video[:33], render_clip(first, 64, 33))
    assert np.array_equal(video[32:65], render_clip(slow, 64, 33))  # the joins are shared frames
    motions = [judge_clip(video[a:b]).motion for a, b in ((0, 33), (32, 65), (64, 97))]
    assert motions == ["up", "right", "down"]


def test_continuation_items_show_the_past_then_the_captioned_new_motion():
    """data.continue_share: an item may start with the last frames of an earlier clip and go on
    with the motion its caption names; plain items stay what they were without the option."""
    from kinema.data.shapes import ShapesDataset, render_clip
    from kinema.evaluation.judge import judge_clip

    plain = ShapesDataset(length=40, seed=3, wording="wide")
    mixed = ShapesDataset(length=40, seed=3, wording="wide", continue_share=0.5, continue_past=(9, 17))
    kinds = {"plain": 0, "continued": 0}
    for i in range(40):
        earlier = mixed.continuation(i)
        item = mixed[i]
        assert item["video"].shape == (3, 33, 64, 64)
        if earlier is None:
            kinds["plain"] += 1
            assert mixed.caption(i) == plain.caption(i) and torch.equal(item["video"], plain[i]["video"])
            continue
        kinds["continued"] += 1
        first, past = earlier
        frames = ((item["video"].permute(1, 2, 3, 0) + 1) * 127.5).round().byte().numpy()  # (F, H, W, 3)
        assert past in (9, 17)
        assert np.array_equal(frames[:past], render_clip(first, 64, 33)[33 - past :])  # the earlier clip's last frames
        spec = mixed.spec(i)[0]
        assert spec.start == first.end and (spec.colour, spec.shape, spec.size) == (first.colour, first.shape, first.size)
        new = judge_clip(frames[past - 1 :])  # the new part, from the frame it starts at
        assert (new.colour, new.shape, new.motion) == (spec.colour, spec.shape, spec.motion) == (item["colour"], item["shape"], item["motion"])
    assert kinds["plain"] >= 10 and kinds["continued"] >= 10
    with pytest.raises(KinemaError, match="continue_past must list"):
        ShapesDataset(continue_share=0.5, continue_past=(33,))
    with pytest.raises(KinemaError, match="continue_share must be from 0 to 1"):
        ShapesDataset(continue_share=1.5)


def test_items_longer_than_a_clip_are_a_whole_clip_and_its_continuation_at_a_clip_speed():
    """data.clip_frames below data.frames: a continuation item is an earlier clip of clip_frames
    frames (its last continue_past of them) and then the same object going on at a clip's speed, as
    a long video's windows are; a plain item is one motion at a clip's speed for the whole item. A
    model sees the positions and time offsets a long video reaches."""
    from kinema.data.shapes import TRAVEL_RANGE, ShapesDataset, render_clip
    from kinema.evaluation.judge import judge_clip

    data = ShapesDataset(length=16, seed=5, frames=33, clip_frames=17, continue_share=0.6, continue_past=(17, 9))
    seen = set()
    for i in range(16):
        item, earlier, spec = data[i], data.continuation(i), data.spec(i)[0]
        if earlier is None:  # a plain item: one motion over two clips, each clip's travel in TRAVEL_RANGE
            seen.add(0)
            assert item["past"] == 0 and TRAVEL_RANGE[0] * 2 - 1e-9 <= spec.travel <= TRAVEL_RANGE[1] * 2 + 1e-9
            frames = ((item["video"].permute(1, 2, 3, 0) + 1) * 127.5).round().byte().numpy()
            assert np.array_equal(frames, render_clip(spec, 64, 33))
            assert [judge_clip(frames[a : a + 17]).motion for a in (0, 16)] == [spec.motion] * 2
            continue
        first, past = earlier
        seen.add(past)
        assert item["video"].shape == (3, 33, 64, 64) and item["past"] == past
        frames = ((item["video"].permute(1, 2, 3, 0) + 1) * 127.5).round().byte().numpy()
        assert np.array_equal(frames[:past], render_clip(first, 64, 17)[17 - past :])  # the earlier clip, at a clip's length
        assert spec.start == first.end and spec.travel <= TRAVEL_RANGE[1] * (33 - past) / 16 + 1e-9  # a clip's speed over the new frames
        new = judge_clip(frames[past - 1 :])
        assert (new.colour, new.shape, new.motion) == (spec.colour, spec.shape, spec.motion)
    assert seen == {0, 9, 17}
    assert ShapesDataset(length=3, seed=5, continue_share=0.5, continue_past=(9,), clip_frames=33)[1]["video"].shape == (3, 33, 64, 64)  # the default: a clip
    for kwargs, message in (
        ({"frames": 49, "clip_frames": 1}, "clip_frames must be from 2"),
        ({"frames": 49, "clip_frames": 17, "continue_share": 1.0, "continue_past": (25,)}, "continue_past must list past-frame counts from 1 to 17"),
        ({"frames": 49, "clip_frames": 17, "continue_share": 0.5, "continue_past": (9,)}, "a plain item of 49 frames is 3 clips of 17: more than an object can cross"),
        ({"frames": 33, "clip_frames": 49}, "clip_frames must be from 2 to the item's 33 frames"),
    ):
        with pytest.raises(KinemaError, match=message):
            ShapesDataset(**kwargs)


def test_clip_frames_is_hashed_only_when_set():
    from kinema.training.config import DataConfig, TrainConfig, config_hash

    def cfg(**data):
        return TrainConfig(model="wan-transformer", architecture={}, out_dir="x", data=DataConfig(**data))

    assert config_hash(cfg()) == config_hash(cfg(clip_frames=None))
    assert config_hash(cfg(frames=65, clip_frames=33)) != config_hash(cfg(frames=65))
