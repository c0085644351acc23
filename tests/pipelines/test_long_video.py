"""Videos longer than one window, and prompts that change as the video goes on: the window plan
(pure arithmetic on the model's frame rule), the pipelines' ``long_video`` on the shipped models,
``generate`` and the command line, and every bad value in one line."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest

import kinema
from kinema.cli import main
from kinema.errors import KinemaError
from kinema.pipelines.base import fade_into
from kinema.generation import generate
from kinema.replay import read_metadata
from kinema.request import GenerationRequest, ModelRules, plan_windows, share_frames
from kinema.video import read_video, write_video


def rules(t: int = 4, o: int = 1, clip: int = 33, context: int | None = 17, slides: bool = False) -> ModelRules:
    return ModelRules(family="test", defaults=SimpleNamespace(num_frames=clip), temporal_multiple=t, frames_offset=o,
                      context_frames=context, slides=slides, supports_extend=True)  # fmt: skip


@pytest.mark.parametrize(
    "r, frames, window, overlap, head, first, steps, used_overlap",
    [
        (rules(), [65], 33, None, False, 33, [(0, 16), (0, 16)], 17),  # Wan's rule: 33, then 16 new a window
        (rules(), [33, 32], 33, None, False, 33, [(1, 16), (1, 16)], 17),  # a new prompt starts a new window
        (rules(), [17, 8, 40], 33, 9, False, 17, [(1, 8), (2, 24), (2, 16)], 9),  # a window never spans two prompts
        (rules(), [21], 33, None, False, 21, [], 17),  # fits one window
        (rules(), [48], 33, 5, True, 0, [(0, 28), (0, 20)], 5),  # continuing a given video: every window extends
        (rules(t=2, o=0, clip=8, context=4), [20], 8, None, False, 8, [(0, 4), (0, 4), (0, 4)], 4),  # whole time patches
        (rules(slides=True), [33, 32, 16], None, None, False, 33, [(1, 32), (2, 16)], None),  # a model that slides its own window
    ],
)
def test_the_window_plan(r, frames, window, overlap, head, first, steps, used_overlap):
    plan = plan_windows(r, frames, window, overlap, head=head)
    assert (plan.first, list(plan.steps), plan.overlap) == (first, steps, used_overlap)
    assert plan.first + sum(n for _, n in plan.steps) == sum(frames)  # every frame made once
    for segment, n in plan.steps:
        assert n % r.temporal_multiple == 0 and (window is None or plan.overlap + n <= window)


@pytest.mark.parametrize(
    "frames, window, overlap, head, pattern",
    [
        ([66], 33, None, False, "num_frames must be 4k\\+1 for this VAE \\(1, 5, 9, ...\\); got 66, try 65 or 69"),
        ([33, 30], 33, None, False, "item 1 has 30 frames; after the first, a prompt's frames must be a multiple of 4 for this model, try 28 or 32"),
        ([65], 30, None, False, "window must be 4k\\+1 frames .*got 30, try 29 or 33"),
        ([65], 33, 33, False, "overlap \\(33\\) must leave room in each window \\(33 frames\\) for 4 new frames"),
        ([65], 33, 31, False, "overlap must be 4k\\+1 frames for this model; got 31, try 29 or 33"),
        ([10], 33, None, True, "multiple of 4 for this model; got 10, try 8 or 12"),
    ],
)
def test_the_window_plan_refuses_counts_the_model_cannot_make(frames, window, overlap, head, pattern):
    with pytest.raises(KinemaError, match=pattern) as info:
        plan_windows(rules(), frames, window, overlap, head=head)
    assert "\n" not in str(info.value)


def test_frames_shared_among_prompts():
    r = rules()
    assert share_frames([("a", None), ("b", None)], 65, r) == [("a", 33), ("b", 32)]
    assert share_frames([("a", None), ("b", None), ("c", None)], 65, r) == [("a", 25), ("b", 20), ("c", 20)]
    assert share_frames([("a", 17), ("b", None)], 65, r) == [("a", 17), ("b", 48)]
    assert share_frames([("a", None), ("b", None)], None, r) == [("a", 33), ("b", 32)]  # a window each
    assert share_frames([("a", None), ("b", None)], 16, r, head=True) == [("a", 8), ("b", 8)]  # continuing: no lone first frame
    with pytest.raises(KinemaError, match="cannot be shared among the 2 prompt"):
        share_frames([("a", None), ("b", None)], 7, r)
    with pytest.raises(KinemaError, match="item 0 has 30 frames; the first must be 4k\\+1"):
        share_frames([("a", 30), ("b", 32)], None, r)


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(prompt_schedule=[]), "prompt_schedule must be a list of \\[prompt, frames\\] pairs"),
        (dict(prompt_schedule=[["a"]]), "item 0 is"),
        (dict(prompt_schedule=[["a", 0]]), "item 0: frames must be a whole number from 1"),
        (dict(prompt_schedule=[["a", 33], ["", 32]]), "prompt_schedule\\[1\\] is empty"),
        (dict(prompt_schedule=[["a", 33]], prompt="b"), "give prompt or prompt_schedule"),
        (dict(prompt_schedule=[["a", 33], ["b", 32]], num_frames=64), "num_frames is 64 but the prompt schedule's frames add up to 65"),
        (dict(prompt_schedule=[["a", 33]], num_videos_per_prompt=2), "num_videos_per_prompt must be 1"),
        (dict(prompt_schedule=[["a", 33]], image="a.png"), "leave out image"),
        (dict(prompt="a", window=0), "window must be a positive integer"),
        (dict(prompt="a", window=2.5), "window must be a whole number"),
    ],
)
def test_the_request_refuses_a_bad_schedule_in_one_line(kwargs, pattern):
    with pytest.raises(KinemaError, match=pattern) as info:
        GenerationRequest(**kwargs).checked_alone()
    assert "\n" not in str(info.value)


def test_overlap_needs_a_video_to_continue_or_a_long_video():
    from kinema.checkpoints.layouts import resolve_model

    r = resolve_model("shapes").rules()
    with pytest.raises(KinemaError, match="overlap applies to continuing a video"):
        GenerationRequest("x", overlap=5).checked(r)
    checked = GenerationRequest("x", num_frames=65, overlap=9).checked(r)  # a long video: each window sees 9 frames before it
    assert (checked.window, checked.overlap) == (33, 9)
    assert checked.long_plan(r).steps == ((0, 24), (0, 8))
    json_again = GenerationRequest.from_json(GenerationRequest(prompt_schedule=[["a", 33], ["b", None]], num_frames=65).to_json())
    assert json_again.checked(r).prompt_schedule == [("a", 33), ("b", 32)] and json_again.checked(r).prompt == "a"


@pytest.fixture(scope="module")
def shapes():
    return kinema.load_pipeline("shapes")


def test_a_long_video_is_windows_that_continue_each_other(shapes):
    """65 frames of a 33-frame model: the first window is the plain clip of the same seed, each later
    window continues the video so far, whose last 8 frames fade into the window's own rendering of
    them, and the same call gives the same video."""
    kw = dict(num_inference_steps=3, seed=4, progress_bar=False)
    stages = []
    out = shapes.long_video("a yellow circle moving right", num_frames=65, callback=lambda p: stages.append(p.stage), **kw)
    assert out.frames.shape == (1, 65, 64, 64, 3) and out.frames.dtype == np.uint8
    clip = shapes("a yellow circle moving right", num_frames=33, **kw).frames[0]
    assert np.array_equal(out.frames[0, :25], clip[:25])  # window 0 is the plain clip, up to the frames that fade
    two = shapes.extend(clip, "a yellow circle moving right", num_frames=16, num_inference_steps=3, seed=5, progress_bar=False)
    assert np.array_equal(two.frames[0, :33], clip) and two.past.shape == (1, 17, 64, 64, 3)  # extend itself keeps its input
    faded = fade_into(two.frames[0], two.past[0], 33)
    assert np.array_equal(out.frames[0, :41], faded[:41])  # window 1 continues it with seed + 1; 25-32 fade into its past
    assert not np.array_equal(faded[25:33], clip[25:33])
    assert np.array_equal(shapes.long_video("a yellow circle moving right", num_frames=65, **kw).frames, out.frames)
    assert stages.count("windows") == 4  # 0, 1, 2, 3 of 3 windows
    pt = shapes.long_video("a yellow circle moving right", num_frames=41, output_type="pt", **kw)
    assert tuple(pt.frames.shape) == (1, 41, 64, 64, 3) and np.array_equal(pt.frames[0, :25].numpy(), clip[:25])


def test_a_join_fades_into_the_next_window():
    """``fade_into``: the frames before a join move linearly towards the window's rendering of them
    (the last most), no further back than the rendering reaches, and never into a given video."""
    clip = np.zeros((20, 2, 2, 3), np.uint8)
    rendered = np.full((5, 2, 2, 3), 90, np.uint8)  # the window's decode of frames 11-15
    out = fade_into(clip, rendered, 16, frames=8)
    assert [int(v) for v in out[:, 0, 0, 0]] == [0] * 11 + [15, 30, 45, 60, 75] + [0] * 4  # 5 frames: all it rendered, k/(5+1) of the way
    assert np.array_equal(fade_into(clip, rendered, 16, frames=2)[:, 0, 0, 0], [0] * 14 + [30, 60] + [0] * 4)
    assert np.array_equal(fade_into(clip, rendered, 16, keep=14, frames=8)[:, 0, 0, 0], [0] * 14 + [30, 60] + [0] * 4)  # frames of a given video stay
    assert fade_into(clip, rendered, 16, keep=16) is clip and not clip.any()  # the join right after a given video: nothing to fade


def test_a_prompt_schedule_changes_the_prompt_at_its_frame(shapes):
    kw = dict(num_inference_steps=3, seed=0, progress_bar=False)
    out = shapes.long_video(prompt_schedule=[("a white square moving up", 17), ("a white square moving down", 16)], **kw)
    assert out.frames.shape[1] == 33
    assert np.array_equal(out.frames[0, :9], shapes("a white square moving up", num_frames=17, **kw).frames[0, :9])  # then 8 frames fade into the next window
    pairs = shapes.long_video([["a white square moving up", 17], ("a white square moving down", None)], num_frames=33, **kw)
    assert np.array_equal(pairs.frames, out.frames)  # a list of (prompt, frames) pairs as the prompt is the schedule
    same_text = shapes.long_video(prompt_schedule=[("a white square moving up", 17), ("a white square moving up", 16)], **kw)
    assert np.array_equal(same_text.frames[0, :9], out.frames[0, :9]) and not np.array_equal(same_text.frames, out.frames)
    with pytest.raises(KinemaError, match="output_type must be 'np' or 'pt'"):
        shapes.long_video("a", num_frames=65, output_type="latent", progress_bar=False)
    for kwargs, words in ((dict(), "needs prompt= .* or prompt_schedule="), (dict(prompt=["a", "b"], num_frames=65), "one video: give one prompt"),
                          (dict(prompt="a", num_frames=65, num_videos_per_prompt=2), "num_videos_per_prompt must be 1")):  # fmt: skip
        with pytest.raises(KinemaError, match=words):
            shapes.long_video(progress_bar=False, **kwargs)


def test_generate_the_command_line_and_a_replay(tmp_path, capsys):
    out = tmp_path / "seq.mp4"
    argv = ["generate", "--prompt", "a red triangle moving left", "--prompt", "a red triangle moving right", "--prompt-frames", "17,16",
            "--steps", "2", "-o", str(out), "-q"]  # fmt: skip
    assert main(argv) == 0
    frames, _ = read_video(out)
    assert frames.shape == (33, 64, 64, 3)
    request = read_metadata(out)["request"]
    assert request["prompt_schedule"] == [["a red triangle moving left", 17], ["a red triangle moving right", 16]] and request["window"] == 33
    assert main(["replay", str(out), "-o", str(tmp_path / "again.mp4"), "-q"]) == 0
    assert np.array_equal(read_video(tmp_path / "again.mp4")[0], frames)
    capsys.readouterr()
    assert main(["generate", "--prompt", "a", "--prompt", "b", "--prompt-frames", "17", "-q"]) == 2
    assert "--prompt-frames has 1 numbers for 2 --prompt" in capsys.readouterr().err
    assert main(["generate", "--prompt", "a", "--prompt", "b", "--prompt-frames", "17,x", "-q"]) == 2
    assert main(["generate", "a", "--prompt", "b", "-q"]) == 2
    assert main(["generate", "a", "--window", "30", "--frames", "65", "-q"]) == 2
    assert "--window must be 4k+1" in capsys.readouterr().err
    done = generate(GenerationRequest(prompt_schedule=[["a blue circle moving down", None], ["a blue circle moving up", None]],
                                      num_frames=41, num_inference_steps=2), write=False, progress_bar=False)  # fmt: skip
    assert done.request.prompt_schedule == [("a blue circle moving down", 21), ("a blue circle moving up", 20)]
    assert done.output.frames.shape == (1, 41, 64, 64, 3)


def test_extending_beyond_a_window_and_with_new_prompts(tmp_path, shapes):
    kw = dict(num_inference_steps=2, progress_bar=False)
    clip = shapes("a cyan square moving left", num_frames=17, seed=0, **kw).frames[0]
    source = tmp_path / "in.mp4"
    write_video(clip, source, fps=12)
    done = generate(GenerationRequest("a cyan square moving left", extend=str(source), num_frames=32, num_inference_steps=2, output=str(tmp_path / "o.mp4")),
                    progress_bar=False)  # fmt: skip
    assert done.request.window == 33 and done.request.long_plan(dataclasses.replace(shapes.rules)).steps == ((0, 16), (0, 16))
    frames, fps = read_video(tmp_path / "o.mp4")
    assert frames.shape == (49, 64, 64, 3) and fps == 12
    assert np.array_equal(done.output.frames[0, :17], read_video(source)[0])  # the input as read, unchanged (the mp4 itself is lossy)
    assert main(["extend", str(source), "--prompt", "a cyan square moving up", "--prompt", "a cyan square moving down", "--prompt-frames", "8,8",
                 "--steps", "2", "-o", str(tmp_path / "p.mp4"), "-q"]) == 0  # fmt: skip
    assert read_video(tmp_path / "p.mp4")[0].shape[0] == 33


def test_a_window_given_without_an_overlap_takes_a_past_that_fits_it(tmp_path, shapes):
    """The default past is the most the model sees that leaves a group of new frames in the window
    asked for (not an error about an overlap nobody gave)."""
    r = rules()
    assert [r.default_overlap(33, w) for w in (None, 33, 21, 13, 9, 5)] == [17, 17, 17, 9, 5, 1]
    assert r.default_overlap(7, 33) == 5 and r.default_overlap(33, 3) == 17  # a short video; a window too small is the plan's error
    assert rules(t=2, o=0, clip=8, context=4).default_overlap(8, 6) == 4
    kw = dict(num_inference_steps=2, progress_bar=False)
    clip = shapes("a cyan square moving left", num_frames=17, seed=0, **kw).frames[0]
    source = tmp_path / "in.mp4"
    write_video(clip, source, fps=16)
    done = generate(GenerationRequest("a cyan square moving left", extend=str(source), num_frames=8, window=13, num_inference_steps=2),
                    write=False, progress_bar=False)  # fmt: skip
    assert done.request.overlap == 9 and done.output.frames.shape == (1, 25, 64, 64, 3)
    out = shapes.long_video(prompt="a cyan square moving left", num_frames=8, video=clip, window=9, seed=0, **kw)
    assert out.frames.shape == (1, 25, 64, 64, 3) and np.array_equal(out.frames[0, :17], clip)
    for same in (clip[None], clip.astype(np.float32) / 255):  # the clip as a batch of one, or as floats: the same video
        again = shapes.long_video(prompt="a cyan square moving left", num_frames=8, video=same, window=9, seed=0, **kw)
        assert np.array_equal(again.frames, out.frames)  # (a batch of one was counted as 1 frame: its past shrank, its frames faded)
    with pytest.raises(KinemaError, match="window must be 4k\\+1 frames and hold at least one group of new frames"):
        shapes.long_video(prompt="a cyan square moving left", num_frames=8, video=clip, window=3, seed=0, **kw)


def test_a_first_prompt_shorter_than_the_past_is_all_the_next_window_sees(shapes):
    """A schedule whose first prompt has fewer frames than the overlap (default or given): the next
    window continues from all of them (it said 'overlap is 17 frames but the video has 1')."""
    kw = dict(num_inference_steps=2, progress_bar=False, seed=0)
    first = shapes("a red circle moving left", num_frames=5, **kw).frames[0]
    out = shapes.long_video(prompt_schedule=[("a red circle moving left", 5), ("a red circle moving up", 8)], overlap=17, **kw)
    assert out.frames.shape == (1, 13, 64, 64, 3)
    two = shapes.extend(first, "a red circle moving up", num_frames=8, overlap=5, num_inference_steps=2, seed=1, progress_bar=False)
    assert np.array_equal(out.frames[0], fade_into(two.frames[0], two.past[0], 5))  # all 5 frames seen, all 5 fade into the window's
    assert shapes.long_video(prompt_schedule=[("a red circle moving left", 1), ("a red circle moving up", 32)], **kw).frames.shape[1] == 33


def sliding(pipe):
    """The pipeline as a token model whose card says ``slide: true`` (trained on items longer than its window)."""
    pipe.defaults = dataclasses.replace(pipe.defaults, slide=True)
    pipe.__dict__.pop("rules", None)  # a cached property: read again from the defaults
    return pipe


def test_a_token_model_with_slide_makes_any_length_in_one_call(tmp_path):
    """A token model whose card says slide: true makes any length in one call (no windows of
    kinema's); a prompt schedule continues its clip with the next prompt."""
    pipe = sliding(kinema.load_pipeline("shapes-ar"))
    r = pipe.rules
    assert r.slides and r.window_frames is None and GenerationRequest("a", model="shapes-ar", num_frames=65).checked(r).long_plan(r) is None
    assert r.context_frames == 4 * 60 + 1  # as far back as its 4 temporal layers' 16-frame windows reach
    kw = dict(temperature=0, seed=0, progress_bar=False)
    out = pipe.long_video(prompt_schedule=[("a green circle moving right", 9), ("a green circle moving left", 8)], **kw)
    assert out.frames.shape == (1, 17, 64, 64, 3) and out.latents.shape[1] == 3 + 2
    assert np.array_equal(out.frames[0, :9], pipe("a green circle moving right", num_frames=9, **kw).frames[0])
    # Its own tokens carry on through the KV cache, never re-encoded: one prompt split in two is one call.
    split = pipe.long_video(prompt_schedule=[("a green circle moving right", 9), ("a green circle moving right", 8)], **kw)
    whole = pipe("a green circle moving right", num_frames=17, **kw)
    assert np.array_equal(split.latents, whole.latents) and np.array_equal(split.frames, whole.frames)
    unguided = pipe.long_video(prompt_schedule=[("a green circle moving right", 9), ("a green circle moving right", 8)], guidance_scale=1.0, **kw)
    assert np.array_equal(unguided.latents, pipe("a green circle moving right", num_frames=17, guidance_scale=1.0, **kw).latents)
    assert not np.array_equal(unguided.latents, whole.latents)  # the call's guidance, not the model's default
    clip = whole.frames[0, :9]
    more = pipe.long_video(prompt_schedule=[("a green circle moving left", 4), ("a green circle moving up", 4)], video=clip, **kw)
    assert more.frames.shape == (1, 17, 64, 64, 3) and np.array_equal(more.frames[0, :9], clip)


def test_the_shipped_token_model_makes_long_videos_in_windows_of_its_clip():
    """shapes-ar was trained on 33-frame clips, which its 16-frame window holds whole, so its card
    says slide: false: past 33 frames a long video is windows, each a continuation (extend) that
    re-reads half a clip of the video so far, as Wan's are; up to 33 frames it is one call."""
    from kinema.checkpoints.layouts import resolve_model

    r = resolve_model("shapes-ar").rules()
    assert not r.slides and r.window_frames == 33 and r.context_frames == 17
    assert GenerationRequest("a", model="shapes-ar", num_frames=33).checked(r).long_plan(r) is None
    plan = GenerationRequest("a", model="shapes-ar", num_frames=49).checked(r).long_plan(r)
    assert (plan.first, plan.steps) == (33, ((0, 16),))
    pipe = kinema.load_pipeline("shapes-ar")
    kw = dict(temperature=0, progress_bar=False)
    out = pipe.long_video("a green circle moving right", num_frames=49, seed=3, **kw)
    assert out.frames.shape == (1, 49, 64, 64, 3)
    clip = pipe("a green circle moving right", num_frames=33, seed=3, **kw).frames[0]
    assert np.array_equal(out.frames[0, :25], clip[:25])  # window 0 is the plain clip, up to the frames that fade
    two = pipe.extend(clip, "a green circle moving right", num_frames=16, overlap=17, seed=4, **kw)
    assert two.past.shape == (1, 17, 64, 64, 3) and two.latents.shape[1] == 5 + 4  # a 33-frame window: 17 read, 16 made
    assert np.array_equal(out.frames[0], fade_into(two.frames[0], two.past[0], 33))
    with pytest.raises(KinemaError, match="at most 17 frames"):
        GenerationRequest("a", model="shapes-ar", extend="in.mp4", overlap=21).checked(r)


def test_the_token_model_feeds_its_past_once_across_prompt_changes(monkeypatch):
    """A prompt change does not feed the frames before it through the model again: one KV cache
    goes from prompt to prompt, so a schedule costs the steps of its frames, however it is split;
    a continued video's frames are fed once, at the start."""
    pipe = sliding(kinema.load_pipeline("shapes-ar"))
    model, hw, steps = pipe.transformer, pipe.transformer.config.tokens_per_frame, []
    original = model.step
    monkeypatch.setattr(model, "step", lambda token, cache: (steps.append(cache.position), original(token, cache))[1])
    kw = dict(temperature=0, seed=0, progress_bar=False)
    schedule = [("a green circle moving right", 5), ("a green circle moving left", 4), ("a green circle moving up", 4)]
    out = pipe.long_video(prompt_schedule=schedule, **kw)
    assert out.latents.shape[1] == 4 and steps == list(range(4 * hw))  # each position once, in order
    steps.clear()
    pipe.long_video(prompt_schedule=schedule[1:], video=out.frames[0, :5], **kw)
    assert steps == list(range(4 * hw))  # the video's 2 latent frames fed once, then 2 made
