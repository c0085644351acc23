"""The README's Quickstart holds exactly two commands, and CI runs the second one verbatim (after
installing Debian's chromium for the browser tests, where it can)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_has_two_commands_and_ci_runs_the_test_command():
    readme = (ROOT / "README.md").read_text()
    quickstart = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)\n```", quickstart, flags=re.S)
    assert len(blocks) == 2 and all(len(b.strip().splitlines()) == 1 for b in blocks), blocks
    assert "kinema generate" in blocks[0]
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith(("#", "set ", "cd "))]
    assert ci == ["bash .ci/system-packages", blocks[1].strip()]  # Debian's chromium first (browser tests), then the command
