"""Every video replayable from its own file: the metadata ``generate`` writes, ``kinema info`` on a
video, ``kinema replay`` (bit-identical files), the model hash cache, and replays refused in one line."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from kinema.checkpoints.layouts import DEFAULT_MODEL, SHIPPED_MODELS, resolve_model
from kinema.cli import main
from kinema.replay import (
    FORMAT,
    NOT_RECORDED,
    HashCache,
    model_files,
    model_sha256,
    read_metadata,
    replay,
)
from kinema.video import read_video, write_video

PROMPT = "a red circle moving left"


@pytest.fixture(autouse=True)
def user_cache(tmp_path_factory, monkeypatch) -> Path:
    """The model hash cache in a folder of this module's own, never the user's."""
    folder = tmp_path_factory.getbasetemp() / "replay-user-cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(folder))
    return folder / "kinema" / "file-sha256.json"


def tiny_flags(model: str) -> list[str]:
    """The quickest clip ``model`` makes: the fewest frames it allows, its own size, 2 steps, no guidance."""
    rules = resolve_model(model).rules()
    frames = rules.frames_offset or rules.temporal_multiple
    height, width = rules.frame_size or (rules.defaults.height, rules.defaults.width)
    flags = ["--model", model, "--frames", str(frames), "--size", f"{width}x{height}", "--guidance", "1", "-q"]
    if "num_inference_steps" in rules.sampling_options:
        flags += ["--steps", "2"]
    return flags


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def refuses(args: list[str], capsys, folder: Path, pattern: str) -> str:
    """``kinema ARGS`` exits 2 with one ``error: ...`` line matching ``pattern`` and writes nothing in ``folder``."""
    before = files_under(folder)
    code = main(args)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-2000:]
    assert "Traceback" not in err
    assert re.search(pattern, lines[0], re.IGNORECASE), lines[0]
    assert files_under(folder) == before
    return lines[0]


def info_of(path: Path, capsys) -> dict:
    capsys.readouterr()
    assert main(["info", str(path)]) == 0
    return json.loads(capsys.readouterr().out)


def assert_same_video(a: Path, b: Path) -> None:
    assert a.read_bytes() == b.read_bytes()
    (frames_a, fps_a), (frames_b, fps_b) = read_video(a), read_video(b)
    assert fps_a == fps_b and frames_a.shape == frames_b.shape
    np.testing.assert_array_equal(frames_a, frames_b)


def generate_cli(tmp_path: Path, capsys, model: str = DEFAULT_MODEL, name: str = "clip.mp4", *extra: str) -> Path:
    out = tmp_path / name
    assert main(["generate", PROMPT, *tiny_flags(model), "-o", str(out), *extra]) == 0, capsys.readouterr().err
    capsys.readouterr()
    return out


def flip_a_weight(root: Path) -> Path:
    """Change a byte in the middle of ``root``'s largest weight file (its tensors' data: it still loads)."""
    weight = max((p for _, p in model_files(root) if p.suffix == ".safetensors"), key=lambda p: p.stat().st_size)
    with open(weight, "r+b") as f:
        f.seek(weight.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    return weight


def forbid_loading(monkeypatch) -> None:
    """From here on, loading any weights fails the test: what follows must be refused before."""

    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded before the input was refused")

    from kinema.pipelines import loading

    monkeypatch.setattr(loading, "load_pipeline", refuse)


@pytest.fixture
def no_loading(monkeypatch):
    forbid_loading(monkeypatch)


# ------------------------------------------------------------------------------------------------
# Every shipped model: generate, info, replay
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", sorted(SHIPPED_MODELS))
def test_every_shipped_model_replays_bit_identically(model, tmp_path, capsys):
    out = generate_cli(tmp_path, capsys, model)
    meta = info_of(out, capsys)
    rules = resolve_model(model).rules()
    assert meta["format"] == FORMAT and meta["kinema_version"]
    assert meta["request"]["prompt"] == PROMPT and not set(NOT_RECORDED) & set(meta["request"])
    assert meta["request"]["num_frames"] == (rules.frames_offset or rules.temporal_multiple)
    assert meta["request"]["height"] is not None and meta["request"]["guidance_scale"] is not None  # filled in
    assert meta["model"] == {"name": model, "path": str(resolve_model(model).root.resolve()), "sha256": model_sha256(resolve_model(model).root)}
    assert meta["device"] == "cpu" and meta["dtypes"] and meta["threads"] >= 1
    assert (meta["batch"], meta["index"], meta["inputs"], meta["extra"]) == (1, 0, {}, {})
    assert meta["fps"] == read_video(out)[1]
    assert meta == read_metadata(out)

    assert main(["replay", str(out), "-q"]) == 0
    err = capsys.readouterr().err
    assert "note:" not in err, err
    replayed = tmp_path / "clip-replay.mp4"
    assert_same_video(out, replayed)
    assert info_of(replayed, capsys) == meta


def test_a_run_under_a_memory_budget_records_it_and_replays_with_it(tmp_path, capsys):
    out = generate_cli(tmp_path, capsys, DEFAULT_MODEL, "budget.mp4", "--offload", "model", "--max-memory", "16GiB")
    meta = info_of(out, capsys)
    assert (meta["request"]["offload"], meta["request"]["max_memory"]) == ("model", "16GiB")
    again = tmp_path / "again.mp4"
    assert main(["replay", str(out), "-o", str(again), "-q"]) == 0
    assert_same_video(out, again)


def test_the_two_shipped_models_hash_differently():
    hashes = {model_sha256(resolve_model(name).root) for name in SHIPPED_MODELS}
    assert len(hashes) == len(SHIPPED_MODELS)


def test_a_batch_replays_the_index_of_its_file_and_keeps_the_callers_extra(tmp_path):
    from kinema import GenerationRequest, generate

    rules = resolve_model(DEFAULT_MODEL).rules()
    request = GenerationRequest(
        PROMPT, model=DEFAULT_MODEL, num_frames=rules.frames_offset or rules.temporal_multiple, num_inference_steps=2,
        num_videos_per_prompt=2, seed=7, output=str(tmp_path / "batch.mp4"),
    )  # fmt: skip
    done = generate(request, progress_bar=False, metadata={"job_id": "job-1", "original_prompt": "circle"})
    first, second = tmp_path / "batch-0.mp4", tmp_path / "batch-1.mp4"
    assert done.paths == [first, second]
    meta = read_metadata(second)
    assert (meta["batch"], meta["index"]) == (2, 1) and read_metadata(first)["index"] == 0
    assert meta["extra"] == {"job_id": "job-1", "original_prompt": "circle"}
    assert meta["request"]["num_videos_per_prompt"] == 2 and meta["request"]["seed"] == 7
    assert done.metadata[1] == meta
    assert not np.array_equal(read_video(first)[0], read_video(second)[0])  # the index matters

    out = replay(second, progress_bar=False)
    assert out == tmp_path / "batch-1-replay.mp4"
    assert_same_video(second, out)
    assert out.read_bytes() != first.read_bytes()


def test_a_matroska_file_replays_too(tmp_path, capsys):
    out = generate_cli(tmp_path, capsys, DEFAULT_MODEL, "clip.mkv")
    assert info_of(out, capsys)["model"]["name"] == DEFAULT_MODEL
    assert main(["replay", str(out), "-o", str(tmp_path / "again.mkv"), "-q"]) == 0
    assert_same_video(out, tmp_path / "again.mkv")


def test_generate_refuses_metadata_that_is_not_json(tmp_path, no_loading):
    from kinema import GenerationRequest, KinemaError, generate

    for bad in ({"x": float("nan")}, {"x": object()}, {1: "a"}, ["a"]):
        with pytest.raises(KinemaError, match="metadata must") as info:
            generate(GenerationRequest(PROMPT, output=str(tmp_path / "x.mp4")), metadata=bad)
        assert "\n" not in str(info.value)
    assert not (tmp_path / "x.mp4").exists()


# ------------------------------------------------------------------------------------------------
# The model hash and its cache
# ------------------------------------------------------------------------------------------------
def test_the_model_hash_is_cached_per_file_and_a_changed_file_is_hashed_again(tmp_path, monkeypatch, user_cache):
    import kinema.replay as replay_module

    root = tmp_path / "model"
    shutil.copytree(resolve_model(DEFAULT_MODEL).root, root)  # copies keep their (old) modification times
    read = []
    real_sha256 = replay_module.file_sha256
    monkeypatch.setattr(replay_module, "file_sha256", lambda path: read.append(Path(path).name) or real_sha256(path))

    names = [name for name, _ in model_files(root)]
    assert "kinema.json" in names and any(n.endswith(".safetensors") for n in names)
    first = model_sha256(root)
    assert len(read) == len(names) and user_cache.is_file()  # every file read once, into the user's cache
    assert first == model_sha256(resolve_model(DEFAULT_MODEL).root)  # the content, not the place

    read.clear()
    assert model_sha256(root) == first and read == []  # the second hash reads only the cache

    cache = json.loads(user_cache.read_text())  # the cache is what answers: a wrong entry is believed
    entry = cache["files"][os.path.realpath(root / "kinema.json")]
    entry["sha256"] = "0" * 64
    user_cache.write_text(json.dumps(cache))
    assert model_sha256(root) != first and read == []
    entry["stamp"][1] -= 1  # ... until the file's stamp no longer matches
    user_cache.write_text(json.dumps(cache))
    assert model_sha256(root) == first and read == ["kinema.json"]

    read.clear()
    weight = flip_a_weight(root)  # a changed file is read again, the others come from the cache
    changed = model_sha256(root)
    assert changed != first and read == [weight.name]
    read.clear()
    assert model_sha256(root) == changed and read == [weight.name]  # changed just now: not trusted to the cache yet


def test_the_hash_cache_survives_a_corrupt_or_unwritable_cache(tmp_path):
    root = resolve_model(DEFAULT_MODEL).root
    expected = model_sha256(root)
    bad = tmp_path / "cache.json"
    bad.write_text("{not json")
    assert model_sha256(root, HashCache(bad)) == expected
    blocked = tmp_path / "a-file"
    blocked.write_text("x")
    cache = HashCache(blocked / "cache.json")  # its folder is a file: nothing can be written there
    assert model_sha256(root, cache) == expected
    cache.save()


# ------------------------------------------------------------------------------------------------
# Refused in one line
# ------------------------------------------------------------------------------------------------
def test_info_and_replay_refuse_files_without_good_metadata(tmp_path, capsys, no_loading):
    frames = np.zeros((1, 32, 32, 3), dtype=np.uint8)
    (tmp_path / "text.mp4").write_text("not a video at all")
    write_video(frames, tmp_path / "plain.mp4", 16)
    write_video(frames, tmp_path / "corrupt.mp4", 16, metadata={"kinema": '{"format": 1, "request": '})
    write_video(frames, tmp_path / "newer.mp4", 16, metadata={"kinema": json.dumps({"format": FORMAT + 1})})
    write_video(frames, tmp_path / "partial.mp4", 16, metadata={"kinema": json.dumps({"format": FORMAT, "kinema_version": "0", "device": "cpu"})})
    write_video(frames, tmp_path / "list.mp4", 16, metadata={"kinema": "[1, 2]"})
    cases = {
        "text.mp4": "is not a video file kinema can read",
        "plain.mp4": "carries no kinema metadata",
        "corrupt.mp4": "kinema metadata is not valid JSON",
        "newer.mp4": f"format {FORMAT + 1}, from a newer kinema",
        "partial.mp4": "kinema metadata is malformed: request must be an object",
        "list.mp4": "not a JSON object",
        "missing.mp4": "video file not found",
    }
    for name, pattern in cases.items():
        refuses(["info", str(tmp_path / name)], capsys, tmp_path, pattern)
        refuses(["replay", str(tmp_path / name)], capsys, tmp_path, pattern)


def test_replay_refuses_changed_weights_and_takes_the_model_where_it_moved(tmp_path, capsys):
    root = tmp_path / "models" / "mine"
    shutil.copytree(resolve_model(DEFAULT_MODEL).root, root)
    videos = tmp_path / "videos"
    videos.mkdir()
    out = generate_cli(videos, capsys, str(root))
    recorded = read_metadata(out)["model"]
    assert recorded["name"] == str(root) and recorded["path"] == str(root.resolve())

    moved = tmp_path / "models" / "moved"
    root.rename(moved)
    refuses(["replay", str(out)], capsys, videos, r"no longer at .*mine; pass --model PATH")
    assert main(["replay", str(out), "--model", str(moved), "-q"]) == 0
    assert_same_video(out, videos / "clip-replay.mp4")
    (videos / "clip-replay.mp4").unlink()

    flip_a_weight(moved)
    now = model_sha256(moved)
    line = refuses(["replay", str(out), "--model", str(moved)], capsys, videos, "the model's weights differ from the ones")
    assert now[:12] in line and recorded["sha256"][:12] in line and now != recorded["sha256"]
    other = next((n for n in sorted(SHIPPED_MODELS) if n != DEFAULT_MODEL), None)
    if other is not None:
        refuses(["replay", str(out), "--model", other], capsys, videos, "the model's weights differ")


def test_changed_weights_are_refused_before_any_load(tmp_path, capsys, monkeypatch):
    root = tmp_path / "model"
    shutil.copytree(resolve_model(DEFAULT_MODEL).root, root)
    out = generate_cli(tmp_path, capsys, str(root))
    flip_a_weight(root)
    forbid_loading(monkeypatch)
    refuses(["replay", str(out)], capsys, tmp_path, "weights differ")


def test_replay_refuses_its_own_source_as_output(tmp_path, capsys, monkeypatch):
    out = generate_cli(tmp_path, capsys)
    forbid_loading(monkeypatch)
    before = out.read_bytes()
    for same in (str(out), str(tmp_path / "." / "clip.mp4")):
        refuses(["replay", str(out), "-o", same], capsys, tmp_path, "is the video being replayed")
    os.symlink(out, tmp_path / "link.mp4")
    refuses(["replay", str(out), "-o", str(tmp_path / "link.mp4")], capsys, tmp_path, "is the video being replayed")
    refuses(["replay", str(out), "-o", str(tmp_path / "clip.gif")], capsys, tmp_path, "must end in .mp4")
    assert out.read_bytes() == before


@pytest.fixture(scope="module")
def tiny_i2v_dir(tmp_path_factory) -> Path:
    from tests.helpers import save_diffusers_wan_i2v_pipeline

    root = tmp_path_factory.mktemp("replay-i2v") / "wan-i2v"
    save_diffusers_wan_i2v_pipeline(root)
    return root


def test_image_to_video_replays_and_refuses_a_changed_or_gone_picture(tiny_i2v_dir, tmp_path, capsys, monkeypatch):
    from PIL import Image

    picture = tmp_path / "first.png"
    Image.fromarray(np.arange(48 * 48 * 3, dtype=np.uint8).reshape(48, 48, 3)).save(picture)
    out = tmp_path / "i2v.mp4"
    flags = ["--model", str(tiny_i2v_dir), "--image", str(picture), "--size", "32x32", "--frames", "1", "--steps", "2", "-q"]
    assert main(["generate", PROMPT, *flags, "-o", str(out)]) == 0, capsys.readouterr().err
    meta = info_of(out, capsys)
    from kinema.replay import file_sha256

    assert meta["inputs"] == {"image": {"path": str(picture), "sha256": file_sha256(picture)}}
    assert main(["replay", str(out), "-q"]) == 0
    assert_same_video(out, tmp_path / "i2v-replay.mp4")
    (tmp_path / "i2v-replay.mp4").unlink()

    Image.fromarray(np.zeros((48, 48, 3), dtype=np.uint8)).save(picture)
    line = refuses(["replay", str(out)], capsys, tmp_path, r"the input image .*first\.png changed since the video was made")
    assert meta["inputs"]["image"]["sha256"][:12] in line
    picture.unlink()
    forbid_loading(monkeypatch)
    refuses(["replay", str(out)], capsys, tmp_path, r"the input image the video was made from is gone: .*first\.png")
