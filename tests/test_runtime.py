"""Thread count from the free cores."""

from __future__ import annotations

import os

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


# ------------------------------------------------------------------------------------------------
# The default precision
# ------------------------------------------------------------------------------------------------
def test_the_default_precision_follows_the_cpu(monkeypatch):
    import torch

    from kinema.pipelines.loading import component_dtypes
    from kinema.runtime import cpu_has_native_bf16, fast_dtype

    monkeypatch.setenv("KINEMA_CPU_BF16", "1")
    assert cpu_has_native_bf16() and fast_dtype("cpu") == torch.bfloat16
    picked = component_dtypes(None, torch.device("cpu"))
    assert picked == {"transformer": torch.bfloat16, "text_encoder": torch.bfloat16, "image_encoder": torch.bfloat16, "codec": torch.float32}
    monkeypatch.setenv("KINEMA_CPU_BF16", "0")
    assert not cpu_has_native_bf16() and fast_dtype("cpu") == torch.float32
    assert set(component_dtypes(None, torch.device("cpu")).values()) == {torch.float32}
    assert set(component_dtypes(torch.float16, torch.device("cpu")).values()) == {torch.float16}  # asked for: every component
    monkeypatch.delenv("KINEMA_CPU_BF16")
    flags = open("/proc/cpuinfo").read().split() if os.path.exists("/proc/cpuinfo") else []
    if flags:  # detection agrees with the kernel's flags (x86: avx512_bf16 / amx_bf16; Arm: bf16)
        assert cpu_has_native_bf16() == bool({"avx512_bf16", "amx_bf16", "bf16"} & set(flags))


def test_auto_on_a_bf16_cpu_loads_the_transformer_and_text_encoder_in_bf16_and_says_so(monkeypatch, tmp_path):
    import numpy as np
    import torch

    import kinema
    from kinema.generation import generate
    from kinema.request import GenerationRequest

    monkeypatch.setenv("KINEMA_CPU_BF16", "1")
    pipe = kinema.load_pipeline("shapes")
    assert pipe.dtypes == {"transformer": "bfloat16", "text_encoder": "bfloat16", "codec": "float32"}
    assert pipe.transformer.patch_embedding.weight.dtype == torch.float32  # _keep_in_fp32 holds
    assert pipe.transformer.blocks[0].ffn[0].weight.dtype == torch.bfloat16
    done = generate(GenerationRequest(prompt="a red circle moving left", num_frames=5, num_inference_steps=2), write=False, progress_bar=False)
    assert done.memory["dtypes"]["transformer"] == "bfloat16" and np.isfinite(done.output.latents.float().numpy()).all()
    forced = generate(GenerationRequest(prompt="a red circle moving left", num_frames=5, num_inference_steps=2, dtype="float32"),
                      write=False, progress_bar=False)  # fmt: skip
    assert forced.memory["dtypes"] == {"transformer": "float32", "text_encoder": "float32", "codec": "float32"}
    offloaded = kinema.load_pipeline("shapes", offload="block")  # the planner counts and converts in the picked dtype
    assert offloaded.memory_plan.sizes["transformer"].resident < pipe.transformer.num_parameters() * 4
    assert offloaded.dtypes == pipe.dtypes
