"""What quantised Wan checkpoints cost in quality: GGUF (Q8_0, Q5_K, Q4_K, F16) and FP8 (e4m3,
plain and scaled as ComfyUI ships them) against the bf16 weights they are made from.

``velocity``: a random Wan transformer (1.3B width by default, bf16 weights), written in each
format and loaded by kinema's real loader; prints the relative error of one step's velocity
against the bf16 weights (computed in float32 in every case), and the bytes its block weights hold
in memory. ``judge``: the shipped ``shapes`` model's transformer (float32) quantised the same way,
each variant judged on the evaluation prompts like the shipped model (``kinema eval``).

    python benchmarks/quantized_quality.py velocity                 # 1.3B width, 2 layers
    python benchmarks/quantized_quality.py judge --per-prompt 3      # seen prompts, 3 clips each

The gguf package has no K-quant quantiser; this script carries ggml's simple one (each 32-value
sub-block's range over 15 or 31 steps, the sub-block scales and minimums over 63 steps of a
float16 scale), so its Q5_K / Q4_K are a little worse than llama.cpp's iterative search would make.
Rows whose length is not a multiple of 256 (a K-quant super-block) fall back to Q8_0, as
converters do.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import gguf  # noqa: E402
from gguf import GGMLQuantizationType as T  # noqa: E402

FORMATS = ("bf16", "F16", "Q8_0", "Q5_K", "Q4_K", "fp8", "fp8-scaled")


# ------------------------------------------------------------------------------------------------
# ggml's simple K-quant quantiser (numpy), checked against the gguf package's dequantiser
# ------------------------------------------------------------------------------------------------
def _f16_bytes(v: np.ndarray) -> np.ndarray:
    return np.frombuffer(v.astype(np.float16).tobytes(), dtype=np.uint8).reshape(-1, 2)


def quantize_k(x: np.ndarray, bits: int) -> np.ndarray:
    """(rows, cols) float32, cols a multiple of 256 -> Q4_K (bits 4) or Q5_K (bits 5) bytes."""
    rows, cols = x.shape
    sb = x.reshape(-1, 8, 32).astype(np.float32)  # super-blocks of 8 sub-blocks
    n = sb.shape[0]
    top = (1 << bits) - 1
    mn = np.minimum(sb.min(axis=2), 0.0)
    mx = sb.max(axis=2)
    scale = (mx - mn) / top
    mins = -mn
    d = (scale.max(axis=1) / 63).astype(np.float16).astype(np.float32)
    dmin = (mins.max(axis=1) / 63).astype(np.float16).astype(np.float32)
    sc = np.clip(np.rint(np.divide(scale, d[:, None], out=np.zeros_like(scale), where=d[:, None] > 0)), 0, 63).astype(np.uint8)
    m = np.clip(np.rint(np.divide(mins, dmin[:, None], out=np.zeros_like(mins), where=dmin[:, None] > 0)), 0, 63).astype(np.uint8)
    step = d[:, None] * sc
    q = np.clip(np.rint(np.divide(sb + (dmin[:, None] * m)[..., None], step[..., None], out=np.zeros_like(sb), where=step[..., None] > 0)), 0, top).astype(np.uint8)
    packed = np.zeros((n, 12), dtype=np.uint8)
    packed[:, 0:4] = (sc[:, :4] & 63) | ((sc[:, 4:] >> 4) << 6)
    packed[:, 4:8] = (m[:, :4] & 63) | ((m[:, 4:] >> 4) << 6)
    packed[:, 8:12] = (sc[:, 4:] & 0x0F) | ((m[:, 4:] & 0x0F) << 4)
    low = (q & 0x0F).reshape(n, 4, 2, 32)
    qs = (low[:, :, 0] | (low[:, :, 1] << 4)).reshape(n, 128)
    parts = [_f16_bytes(d), _f16_bytes(dmin), packed]
    if bits == 5:
        high = (q >> 4) & 1  # (n, 8, 32): bit i of qh[l] is sub-block i's high bit
        qh = np.zeros((n, 32), dtype=np.uint8)
        for i in range(8):
            qh |= high[:, i] << i
        parts.append(qh)
    parts.append(qs)
    return np.concatenate(parts, axis=1).reshape(rows, -1)


def encode(a: np.ndarray, fmt: str) -> tuple[np.ndarray, T]:
    """A 2-D float32 weight in a GGUF format (K-quants fall back to Q8_0 for short rows)."""
    if fmt in ("Q5_K", "Q4_K") and a.shape[1] % 256 == 0:
        data = quantize_k(a, 5 if fmt == "Q5_K" else 4)
        return data, T[fmt]
    if fmt in ("Q5_K", "Q4_K", "Q8_0"):
        return gguf.quants.quantize(a, T.Q8_0), T.Q8_0
    return gguf.quants.quantize(a, T.F16), T.F16


# ------------------------------------------------------------------------------------------------
# Writing a transformer in each format
# ------------------------------------------------------------------------------------------------
def is_block_linear(name: str, t: torch.Tensor) -> bool:
    return name.startswith("blocks.") and name.endswith(".weight") and t.dim() == 2


def write(state: dict[str, torch.Tensor], config: dict, fmt: str, directory: Path) -> Path:
    """``state`` (original Wan names) as a transformer folder: config.json and the weights."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    if fmt == "bf16":
        save_file({k: v.to(torch.bfloat16).contiguous() for k, v in state.items()}, str(directory / "diffusion_pytorch_model.safetensors"))
    elif fmt.startswith("fp8"):
        out = {"scaled_fp8": torch.zeros(0, dtype=torch.float8_e4m3fn)} if fmt == "fp8-scaled" else {}
        for k, v in state.items():
            if is_block_linear(k, v):
                scale = v.float().abs().max() / 448.0 if fmt == "fp8-scaled" else torch.tensor(1.0)
                out[k] = (v.float() / scale).to(torch.float8_e4m3fn)
                if fmt == "fp8-scaled":
                    out[k[: -len("weight")] + "scale_weight"] = scale.reshape(1)
            else:
                out[k] = v.to(torch.bfloat16).contiguous()
        save_file(out, str(directory / "diffusion_pytorch_model.safetensors"))
    else:
        w = gguf.GGUFWriter(str(directory / f"transformer-{fmt}.gguf"), arch="wan")
        for k, v in state.items():
            a = v.float().numpy()
            if is_block_linear(k, v):
                data, qtype = encode(a, fmt)
                w.add_tensor(k, data, raw_dtype=qtype)
            else:
                if a.ndim > 4:
                    w.add_array(f"comfy.gguf.orig_shape.{k}", list(a.shape))
                    a = a.reshape(a.shape[0], -1)
                w.add_tensor(k, a)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return directory


def block_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.blocks.state_dict().values())


# ------------------------------------------------------------------------------------------------
def velocity(args) -> None:
    import dataclasses

    from kinema.checkpoints.wan import load_wan_transformer, to_original
    from kinema.models.wan import WAN_PRESETS, WanTransformer

    config = dataclasses.replace(WAN_PRESETS[args.preset](), num_layers=args.layers)
    torch.manual_seed(0)
    model = WanTransformer(config)
    model.init_weights()
    with torch.no_grad():  # Wan initialises the output projections and modulations to zero: give every weight a spread
        for name, p in model.named_parameters():
            if p.dim() >= 2 or "modulation" in name:
                p.normal_(0, 0.02)
    state = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    x = torch.randn((1, config.in_dim, 3, 16, 16), generator=g)
    t = torch.tensor([600.0])
    ctx = torch.randn((1, 64, config.text_dim), generator=g)
    print(f"{args.preset} width, {args.layers} layers, random weights stored in bf16; one step for 9 frames of 128x128, float32 compute")
    print(f"{'format':>11} {'velocity error':>15} {'block weights in memory':>24}")
    with tempfile.TemporaryDirectory() as tmp:
        ref = None
        for fmt in FORMATS:
            folder = write(state, to_original(config), fmt, Path(tmp) / fmt)
            loaded = load_wan_transformer(folder, dtype=torch.float32)
            with torch.no_grad():
                v = loaded(x, t, ctx)
            if ref is None:
                ref = v
            err = float((v - ref).norm() / ref.norm())
            stored = block_bytes(loaded) if fmt not in ("bf16", "F16") else sum(p.numel() * 2 for p in loaded.blocks.parameters())
            print(f"{fmt:>11} {err:15.2e} {stored / 2**20:20.1f} MiB")
            shutil.rmtree(folder)
    print("(velocity error: |v - v_bf16| / |v_bf16|; bf16 and F16 weights are held as float32 on this CPU (the load dtype), their rows count 2 bytes a weight)")


def judge(args) -> None:
    from safetensors.torch import load_file

    from kinema.pipelines.loading import shipped_model_path

    shipped = Path(shipped_model_path("shapes"))
    config = json.loads((shipped / "transformer" / "config.json").read_text())
    state = load_file(str(shipped / "transformer" / "diffusion_pytorch_model.safetensors"))
    print(f"shipped shapes model ({sum(v.numel() for v in state.values()) / 1e6:.1f} M parameters, stored float32), "
          f"split {args.split}, {args.per_prompt} clips a prompt, {args.steps or 'default'} steps")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in ("float32",) + FORMATS:
            model_dir = Path(tmp) / fmt
            shutil.copytree(shipped, model_dir)
            if fmt != "float32":
                shutil.rmtree(model_dir / "transformer")
                write(state, config, fmt, model_dir / "transformer")
            cmd = [sys.executable, "-m", "kinema.cli", "eval", "--model", str(model_dir), "--split", args.split, "--per-prompt", str(args.per_prompt)]
            if args.steps:
                cmd += ["--steps", str(args.steps)]
            done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
            if done.returncode:
                raise SystemExit(done.stderr[-2000:])
            report = json.loads(done.stdout.strip().splitlines()[-1])
            part = report.get(args.split if args.split != "all" else "all", {})
            summary = ", ".join(f"{k} {100 * v:.1f}%" for k, v in part.items() if isinstance(v, float))
            print(f"{fmt:>11}: {summary}", flush=True)
            shutil.rmtree(model_dir)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("velocity", "judge"))
    p.add_argument("--preset", default="wan2.1-t2v-1.3b")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--split", default="seen", choices=("all", "seen", "held_out"))
    p.add_argument("--per-prompt", type=int, default=3)
    p.add_argument("--steps", type=int, default=None)
    args = p.parse_args()
    velocity(args) if args.what == "velocity" else judge(args)


if __name__ == "__main__":
    main()
