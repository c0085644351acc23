"""What every test shares.

The default precision ("auto") depends on the CPU: bfloat16 where it has native bf16 instructions,
float32 where not. The suite compares against references and golden values computed in float32,
so it pins the float32 answer for every test and every process a test starts
(``KINEMA_CPU_BF16=0``); the tests of the choice itself set the variable as they need.
"""

from __future__ import annotations

import os

os.environ["KINEMA_CPU_BF16"] = "0"
