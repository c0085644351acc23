#!/usr/bin/env bash
# The single-GPU paths of kinema's distributed code, on a CUDA machine (nccl with one rank), in one
# run: the fused attention kernels the ring merge reads (their log-sum-exp against float64 maths), a
# sequence-parallel transformer step at full Wan sizes (benchmarks/parallel_step.py under torchrun),
# and FSDP training under torchrun. Needs torch with CUDA, einops, safetensors, transformers, tqdm,
# pyyaml; run from the repository root:  bash benchmarks/parallel_gpu.sh [OUT_DIR]
set -u
out=${1:-/tmp/kinema-gpu}
mkdir -p "$out"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, torch.version.cuda)"

echo "== fused attention kernels with their log-sum-exp (CUDA), against float64 =="
python3 - <<'PY'
import torch
from kinema.parallel.attention import attention_with_lse
torch.manual_seed(0)
for dtype, hkv in ((torch.bfloat16, 8), (torch.float16, 8), (torch.float32, 8), (torch.bfloat16, 2), (torch.float32, 2)):
    q = torch.randn(2, 8, 1000, 128, device="cuda", dtype=dtype)
    k = torch.randn(2, hkv, 777, 128, device="cuda", dtype=dtype)
    v = torch.randn(2, hkv, 777, 128, device="cuda", dtype=dtype)
    out, lse = attention_with_lse(q, k, v)
    kk, vv = (t.double().repeat_interleave(8 // hkv, dim=1) for t in (k, v))
    logits = q.double() @ kk.transpose(-1, -2) / 128 ** 0.5
    ref_lse = torch.logsumexp(logits, -1)
    ref = torch.softmax(logits, -1) @ vv
    print(f"{str(dtype):>15} kv heads {hkv}: out {tuple(out.shape)} {out.dtype}, lse {tuple(lse.shape)}; "
          f"max |out - ref| {(out.double() - ref).abs().max():.2e}, max |lse - ref| {(lse.double() - ref_lse).abs().max():.2e}")
PY

echo "== a transformer step (cond + uncond) on one GPU, nccl, one rank =="
for spec in "1536 8960 12 30 480 832 wan-1.3b" "5120 13824 40 40 720 1280 wan-14b"; do
  set -- $spec
  echo "-- $7 at ${6}x${5}, 81 frames, bf16"
  timeout 300 torchrun --nproc-per-node 1 benchmarks/parallel_step.py --device cuda --dtype bfloat16 --dim $1 --ffn-dim $2 --heads $3 --layers $4 \
    --text-len 512 --frames 81 --height $5 --width $6 --repeats 2 2>&1 | grep -v "^W[0-9]* " | tail -3
done

echo "== FSDP training, nccl, one rank (shapes transformer size, synthetic clips, bf16 autocast) =="
python3 - "$out" <<'PY'
import sys, yaml
from pathlib import Path
out = Path(sys.argv[1])
base = yaml.safe_load(Path("configs/tiny-transformer.yaml").read_text())
base.update(architecture={**base["architecture"], "dim": 192, "ffn_dim": 768, "num_heads": 3, "num_layers": 6, "in_dim": 16, "out_dim": 16, "freq_dim": 256, "text_dim": 64, "text_len": 16},
            vae="kinema/assets/shapes/vae", data={"kind": "synthetic", "size": 64, "frames": 33, "length": 256}, batch_size=32, steps=60,
            checkpoint_every=30, precision="bf16", parallel={"fsdp": True}, out_dir=str(out / "fsdp-run"), threads=None)
(out / "fsdp.yaml").write_text(yaml.safe_dump(base))
PY
start=$(date +%s.%N)
timeout 240 torchrun --nproc-per-node 1 -m kinema train "$out/fsdp.yaml" --device cuda --no-progress 2>&1 | grep -v "^W[0-9]* \|UserWarning\|warnings.warn" | tail -4
echo "wall $(python3 -c "import time; print(round(time.time() - $start, 1))") s for 60 steps (load, caches and 2 checkpoints included)"
python3 - "$out" <<'PY'
import json, sys
from pathlib import Path
lines = [json.loads(l) for l in (Path(sys.argv[1]) / "fsdp-run/metrics.jsonl").read_text().splitlines()]
print(f"steps logged {len(lines)}, loss first {lines[0]['loss']:.4f} last {lines[-1]['loss']:.4f}")
PY
ls "$out/fsdp-run/checkpoints" 2>&1 | head
