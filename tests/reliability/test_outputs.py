"""Output paths are checked before any weights load: a folder where the file should go, a parent
that is a file, a name too long, a place that cannot be written. The same for ``eval``'s
``--json`` and ``--out``."""

from __future__ import annotations

import os

import pytest

from .conftest import assert_cli_refuses

LONG = "x" * 300


def _bad_output(tmp_path, case):
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "folder.mp4").mkdir()
    return {
        "folder": str(tmp_path),
        "folder-named-mp4": str(tmp_path / "folder.mp4"),
        "parent-is-file": str(tmp_path / "a_file" / "clip.mp4"),
        "grandparent-is-file": str(tmp_path / "a_file" / "sub" / "clip.mp4"),
        "name-too-long": str(tmp_path / f"{LONG}.mp4"),
        "folder-too-long": str(tmp_path / LONG / "clip.mp4"),
        "proc": "/proc/kinema-test.mp4",
        "empty": "",
        "gif": str(tmp_path / "clip.gif"),
        "no-suffix": str(tmp_path / "clip"),
    }[case]


OUTPUT_CASES = [
    ("folder", "must end in .mp4|is a folder"),
    ("folder-named-mp4", "is a folder; give a file name"),
    ("parent-is-file", "is a file, not a folder"),
    ("grandparent-is-file", "is a file, not a folder"),
    ("name-too-long", "too long|longer than"),
    ("folder-too-long", "too long|longer than"),
    ("proc", "cannot create a file in /proc"),
    ("empty", "--output must be a non-empty string"),
    ("gif", "must end in .mp4"),
    ("no-suffix", "must end in .mp4"),
]


@pytest.mark.parametrize("case, pattern", OUTPUT_CASES)
def test_generate_checks_the_output_before_loading(case, pattern, tmp_path, capsys, no_loading):
    output = _bad_output(tmp_path, case)
    assert_cli_refuses(["generate", "a red circle", "-q", "-o", output], capsys, tmp_path, pattern)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_generate_refuses_a_read_only_folder(tmp_path, capsys, no_loading):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        assert_cli_refuses(["generate", "a red circle", "-q", "-o", str(folder / "a.mp4")], capsys, tmp_path, "cannot create a file")
    finally:
        folder.chmod(0o700)


def test_generate_refuses_a_folder_it_may_not_write(tmp_path, capsys, no_loading):
    """/sys refuses new files to everyone, root included."""
    if os.access("/sys", os.W_OK) and os.path.isdir("/sys/kernel"):
        target = "/sys/kernel/kinema-test.mp4"
    else:
        target = "/sys/kinema-test.mp4"
    if not os.path.isdir("/sys"):
        pytest.skip("no /sys here")
    assert_cli_refuses(["generate", "a red circle", "-q", "-o", target], capsys, tmp_path, "cannot create a file|cannot write")


@pytest.mark.parametrize(
    "args, pattern",
    [
        (["--reference", "--json", "{folder}"], "--json .* is a folder"),
        (["--reference", "--json", "{file}/r.json"], "is a file, not a folder"),
        (["--reference", "--out", "{file}"], "--out .* is a file"),
        (["--reference", "--out", "{file}/clips"], "is a file, not a folder"),
        (["--reference", "--out", "{long}"], "too long|longer than"),
        (["--model", "shapes", "--out", "{file}"], "--out .* is a file"),
        (["--reconstruct", "shapes", "--json", "{folder}"], "--json .* is a folder"),
    ],
)
def test_eval_checks_its_outputs_first(args, pattern, tmp_path, capsys, no_loading):
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "folder").mkdir()
    values = {"folder": str(tmp_path / "folder"), "file": str(tmp_path / "a_file"), "long": str(tmp_path / LONG)}
    args = [a.format(**values) for a in args]
    assert_cli_refuses(["eval", *args, "--limit", "1"], capsys, tmp_path, pattern)
