"""`kinema serve` with bad flags: one line, exit 2, before it listens, and no queue folder made."""

from __future__ import annotations

import socket

import pytest

from .conftest import assert_cli_refuses


@pytest.mark.parametrize(
    "args, pattern",
    [
        (["--port", "-1"], "--port must be a port"),
        (["--port", "70000"], "--port must be a port"),
        (["--max-tries", "0"], "--max-tries must be at least 1"),
        (["--max-queued", "0"], "--max-queued must be at least 1"),
        (["--stop-after", "0"], "--stop-after must be a positive"),
        (["--stop-after", "nan"], "--stop-after must be a positive"),
        (["--cache-memory", "lots"], "--cache-memory must be a size"),
        (["--max-upload=-5MiB"], "--max-upload must be"),
        (["--max-upload", "0"], "--max-upload must be a positive"),
        (["--host", "0.0.0.0"], "--api-key"),
        (["--host", "192.168.1.20"], "--api-key"),
        (["--model", "{tmp}/no-such-model"], "neither a model directory nor a shipped model"),
        (["--model", "shapes", "--model", "{tmp}/empty"], "model"),
        (["--prompt-extend", "{tmp}/no-lm"], "not found|does not exist|no-lm"),
        (["--prompt-extend", "{tmp}/empty"], "config.json"),
        (["--queue", "{tmp}/a-file"], "is a file"),
    ],
)
def test_serve_refuses(args, pattern, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("KINEMA_API_KEY", raising=False)
    (tmp_path / "empty").mkdir()
    (tmp_path / "a-file").write_text("x")
    args = [a.format(tmp=tmp_path) for a in args]
    queue = ["--queue", str(tmp_path / "queue")] if "--queue" not in args else []
    assert_cli_refuses(["serve", "--port", "0", "--no-ui", *queue, *args], capsys, tmp_path, pattern)


def test_serve_refuses_a_port_in_use(tmp_path, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert_cli_refuses(["serve", "--port", str(port), "--no-ui", "--queue", str(tmp_path / "queue")], capsys, tmp_path, "cannot listen on 127.0.0.1")
