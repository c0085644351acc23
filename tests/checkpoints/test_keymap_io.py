"""Key maps and safe weight I/O."""

from __future__ import annotations

import pickle

import pytest
import torch
from torch import nn

from kinema.checkpoints.io import (
    atomic_path,
    build_on_meta,
    load_into,
    load_pickle_weights,
    load_safetensors,
    load_weights,
    save_safetensors,
)
from kinema.checkpoints.keymap import KeyMap
from kinema.errors import CheckpointError
from tests.helpers import Evil

MAP = KeyMap(
    "demo",
    [
        ("blocks.{i}.self_attn.q.{leaf}", "blocks.{i}.attn1.to_q.{leaf}"),
        ("blocks.{i}.norm3.{leaf}", "blocks.{i}.norm2.{leaf}"),
        ("head.{path}", "proj_out.{path}"),
        ("embed.weight", "embed.weight"),
    ],
)


def test_keymap_round_trip_and_order():
    theirs = {"blocks.0.attn1.to_q.weight": 1, "blocks.12.norm2.bias": 2, "proj_out.a.b.weight": 3, "embed.weight": 4}
    ours = MAP.to_ours(theirs)
    assert ours == {"blocks.0.self_attn.q.weight": 1, "blocks.12.norm3.bias": 2, "head.a.b.weight": 3, "embed.weight": 4}
    assert MAP.to_theirs(ours) == theirs


def test_keymap_unknown_keys_raise_and_are_named():
    with pytest.raises(CheckpointError, match=r"blocks\.0\.mystery\.weight"):
        MAP.to_ours({"blocks.0.mystery.weight": 0})
    with pytest.raises(ValueError, match="placeholders differ"):
        KeyMap("bad", [("a.{i}", "b")])


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 4)
        self.norm = nn.LayerNorm(4)


def test_meta_build_and_strict_fill(tmp_path):
    src = Tiny()
    save_safetensors(src.state_dict(), tmp_path / "w.safetensors")
    model = load_into(build_on_meta(Tiny), load_safetensors(tmp_path / "w.safetensors"))
    x = torch.randn(2, 3)
    assert torch.equal(model.norm(model.lin(x)), src.norm(src.lin(x)))
    bf = load_into(build_on_meta(Tiny), src.state_dict(), dtype=torch.bfloat16)
    assert bf.lin.weight.dtype == torch.bfloat16


def test_strict_fill_names_missing_unexpected_and_shapes():
    sd = Tiny().state_dict()
    extra = dict(sd, **{"lin.extra": torch.zeros(1)})
    with pytest.raises(CheckpointError, match=r"unexpected 1: lin\.extra"):
        load_into(build_on_meta(Tiny), extra)
    missing = {k: v for k, v in sd.items() if k != "norm.bias"}
    with pytest.raises(CheckpointError, match=r"missing 1: norm\.bias"):
        load_into(build_on_meta(Tiny), missing)
    bad = dict(sd, **{"lin.weight": torch.zeros(5, 3)})
    with pytest.raises(CheckpointError, match="wrong shapes"):
        load_into(build_on_meta(Tiny), bad)


def test_truncated_and_garbage_safetensors_are_one_line_errors(tmp_path):
    save_safetensors({"w": torch.randn(64, 64)}, tmp_path / "ok.safetensors")
    data = (tmp_path / "ok.safetensors").read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.safetensors").write_bytes(b"\x00garbage" * 10)
    for name in ("trunc", "junk"):
        with pytest.raises(CheckpointError, match="not a readable safetensors") as e:
            load_weights(tmp_path / f"{name}.safetensors")
        assert "\n" not in str(e.value)


def test_pth_that_needs_code_is_refused(tmp_path, capsys):
    torch.save({"w": torch.zeros(2), "evil": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="unpickle code"):
        load_pickle_weights(tmp_path / "evil.pth")
    assert "must never run" not in capsys.readouterr().out
    with open(tmp_path / "plain.pkl.pth", "wb") as f:
        pickle.dump({"w": Evil()}, f)
    with pytest.raises(CheckpointError):
        load_pickle_weights(tmp_path / "plain.pkl.pth")
    torch.save({"state_dict": {"w": torch.ones(2)}}, tmp_path / "ok.pth")
    assert torch.equal(load_pickle_weights(tmp_path / "ok.pth")["w"], torch.ones(2))


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_gives_the_usual_file_mode(tmp_path):
    import os

    with atomic_path(tmp_path / "a.bin") as tmp:
        tmp.write_bytes(b"x")
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o666 & ~mask
