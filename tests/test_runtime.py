"""Thread count from the free cores."""

from __future__ import annotations

import torch

from kinema import runtime
from kinema.cli import main


def test_free_cores_counts_what_others_leave(monkeypatch):
    monkeypatch.setattr(runtime, "usable_cores", lambda: 4)
    for busy, free in [(0, 4), (1, 3), (2.6, 1), (3, 1), (9, 1)]:
        monkeypatch.setattr(runtime, "busy_cores", lambda b=busy: b)
        assert runtime.free_cores() == free
    assert 0 <= runtime.busy_cores() and 1 <= runtime.free_cores() <= runtime.usable_cores()


def test_configure_threads(monkeypatch):
    before = torch.get_num_threads()
    try:
        assert runtime.configure_threads(1) == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        torch.set_num_threads(2)
        assert runtime.configure_threads(None) == 2  # the user's OMP_NUM_THREADS stands: torch's choice is left alone
        monkeypatch.delenv("OMP_NUM_THREADS")
        monkeypatch.setattr(runtime, "free_cores", lambda: 1)  # the load does not decide: the result must not depend on it
        assert runtime.configure_threads(None) == runtime.usable_cores()
    finally:
        torch.set_num_threads(before)


def test_contention_hint_names_the_free_cores(monkeypatch):
    monkeypatch.setattr(runtime, "usable_cores", lambda: 4)
    monkeypatch.setattr(runtime, "busy_cores", lambda: 0)
    assert runtime.contention_hint(4) is None
    monkeypatch.setattr(runtime, "busy_cores", lambda: 3)
    assert "--threads 1 may run much faster" in runtime.contention_hint(4)
    assert runtime.contention_hint(1) is None


def test_bad_thread_count_is_one_line(capsys, tmp_path):
    assert main(["generate", "a red circle moving left", "--threads", "0", "-o", str(tmp_path / "x.mp4")]) == 2
    assert capsys.readouterr().err.strip() == f"error: --threads must be a whole number from 1 to {4 * runtime.usable_cores()} ({runtime.usable_cores()} usable cores here); got 0"


def test_cap_heap_growth_is_idempotent():
    runtime.cap_heap_growth()
    runtime.cap_heap_growth()
    assert runtime._heap_capped
