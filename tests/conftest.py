"""What every test shares.

The default precision ("auto") depends on the CPU: bfloat16 where it has native bf16 instructions,
float32 where not. The suite compares against references and golden values computed in float32,
so it pins the float32 answer for every test and every process a test starts
(``KINEMA_CPU_BF16=0``); the tests of the choice itself set the variable as they need. The hash
cache of :mod:`kinema.replay` goes to a folder of the run's own.
"""

from __future__ import annotations

import os

os.environ["KINEMA_CPU_BF16"] = "0"

# Every generate() hashes its model into the user's cache (kinema.replay.HashCache): the suite keeps
# its own, so it neither reads a developer's nor leaves files in it. Processes tests start inherit it.
if "KINEMA_TEST_KEEP_CACHE" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="kinema-test-cache-")
    atexit.register(shutil.rmtree, os.environ["XDG_CACHE_HOME"], True)
