"""Golden outputs of the shipped models, pinned bit for bit.

The values in ``tests/golden/shipped.json`` were made before the one-seam-per-job redesign
(issue 14) and must not move: a refactor that changes a single bit of what ``shapes`` or
``shapes-ar`` generates fails here. Floating-point kernels differ between CPU instruction sets, so
the exact comparison applies on the kind of CPU the file was written on (torch's CPU capability and
the CPU's vendor, model and vector extensions, recorded beside the values; one thread: two
"AVX512" machines, an AMD and an Intel one, round the same float32 matmuls differently); elsewhere the frames must agree to within one grey level on almost
every pixel and the latents to float rounding.

Regenerate (only for an intended change of the models' output, saying why in the commit):
``KINEMA_WRITE_GOLDEN=1 python -m pytest tests/test_golden_shipped.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import kinema

GOLDEN = Path(__file__).parent / "golden" / "shipped.json"
WRITE = os.environ.get("KINEMA_WRITE_GOLDEN") == "1"

# name -> (model, call keywords): each a request a user could make
CASES = {
    "shapes-default": ("shapes", dict(prompt="a red circle moving left", seed=0)),
    "shapes-batch-euler": (
        "shapes",
        dict(prompt=["a blue square moving up", "a green triangle moving right"], negative_prompt="a red circle",
             num_inference_steps=6, sampler="euler", shift=2.0, guidance_scale=3.0, seed=7),
    ),  # fmt: skip
    "shapes-unguided": ("shapes", dict(prompt="a yellow circle moving down", num_inference_steps=5, guidance_scale=1.0, seed=11)),
    "shapes-ar-default": ("shapes-ar", dict(prompt="a red circle moving left", num_frames=9, seed=0)),
    "shapes-ar-greedy-unguided": (
        "shapes-ar",
        dict(prompt="a purple square moving right", num_frames=5, temperature=0.0, guidance_scale=1.0, seed=3),
    ),
    "shapes-ar-filters": (
        "shapes-ar",
        dict(prompt=["a cyan triangle moving up", "an orange circle moving down"], negative_prompt="a white square",
             num_frames=5, temperature=0.9, top_k=50, top_p=0.9, typical_p=0.95, guidance_scale=2.5, seed=5),
    ),  # fmt: skip
}


def _record(model: str, kwargs: dict) -> dict:
    pipe = kinema.load_pipeline(model, device="cpu")
    out = pipe(**kwargs)
    latents = out.latents
    record = {
        "frames_shape": list(out.frames.shape),
        "frames_sha256": hashlib.sha256(np.ascontiguousarray(out.frames).tobytes()).hexdigest(),
        "frames_sum": int(out.frames.astype(np.int64).sum()),
    }
    if latents.is_floating_point():
        record["latents_slice"] = [float(v).hex() for v in latents.flatten()[:: max(1, latents.numel() // 64)].tolist()]
    else:
        record["tokens"] = latents.flatten().tolist()
    return record, out


def cpu_kind() -> str:
    """The CPU as far as float rounding goes: vendor, model name and the vector extensions its
    kernels dispatch on (/proc/cpuinfo), or the platform's processor string elsewhere."""
    import platform

    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    fields = dict(line.split(":", 1) for line in info.split("\n\n")[0].splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    vector = sorted(f for f in fields.get("flags", "").split() if f.startswith(("avx", "amx", "fma", "f16c")))
    return " | ".join([fields.get("vendor_id", ""), fields.get("model name", ""), " ".join(vector)])


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Pin torch to one thread: a parallel reduction sums in another order with another thread
    count (the last bits of a float move), and the suite's other tests change the count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def golden() -> dict:
    if WRITE:
        data = {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu": cpu_kind(), "torch": torch.__version__, "cases": {}}
        for name, (model, kwargs) in CASES.items():
            data["cases"][name] = _record(model, kwargs)[0]
        GOLDEN.write_text(json.dumps(data, indent=1) + "\n")
    return json.loads(GOLDEN.read_text())


@pytest.mark.parametrize("name", list(CASES))
def test_shipped_model_output_is_unchanged(golden, name):
    model, kwargs = CASES[name]
    want = golden["cases"][name]
    got, out = _record(model, kwargs)
    exact = golden["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and golden.get("cpu") == cpu_kind()
    assert got["frames_shape"] == want["frames_shape"]
    if exact:
        assert got == want
        return
    # another instruction set: other summation orders, the same video
    if "tokens" in want:
        same = np.mean(np.array(got["tokens"]) == np.array(want["tokens"]))
        assert same >= 0.95
    else:
        ours = np.array([float.fromhex(v) for v in got["latents_slice"]])
        theirs = np.array([float.fromhex(v) for v in want["latents_slice"]])
        np.testing.assert_allclose(ours, theirs, atol=2e-3, rtol=2e-3)
    assert abs(got["frames_sum"] - want["frames_sum"]) <= 0.01 * out.frames.size
