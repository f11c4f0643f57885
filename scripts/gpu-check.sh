#!/usr/bin/env bash
# GPU check of `vrp train` on a CUDA machine: three short runs of the bundled SmolLM2-135M on the seed data,
#   1. QLoRA: 4-bit NF4 weights (bitsandbytes), bf16 autocast, paged AdamW 32-bit;
#   2. LoRA with bf16 autocast;
#   3. the same LoRA run launched by `torchrun --nproc-per-node 1` (the distributed code path: NCCL, DDP);
# then prints each run's validation NLL per comment token (base -> fine-tuned) and tokens/s (over all steps, and the
# median of the steps after the first). Runs 2 and 3 do the same optimizer steps, so their NLLs agree closely.
# Stops with an error, before anything is run, when torch sees no CUDA GPU or bitsandbytes is missing.
# Variables: DATA (the seed train_dataset.xlsx, or any source `vrp prepare` reads), OUT (output dir), STEPS
# (optimizer steps per run), BATCH (rows per step), PYTHON.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/uos2023/train_dataset.xlsx}
OUT=${OUT:-out/gpu-check}
STEPS=${STEPS:-30}
BATCH=${BATCH:-8}
PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3

"$PYTHON" - <<'PY' || exit 2
import importlib.util
import sys

import torch

if not torch.cuda.is_available():
    sys.exit(f"error: gpu-check needs a CUDA GPU: torch {torch.__version__} sees none (CUDA build: "
             f"{torch.version.cuda or 'no, a CPU-only torch'}); run it on a machine with an NVIDIA GPU "
             f"and a CUDA build of torch")
if importlib.util.find_spec("bitsandbytes") is None:
    sys.exit("error: the QLoRA run needs bitsandbytes: pip install bitsandbytes")
print(f"gpu-check: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
PY
if [ ! -e "$DATA" ]; then
  echo "error: $DATA not found; set DATA=... (the seed train_dataset.xlsx or any source vrp prepare reads)" >&2
  exit 2
fi

mkdir -p "$OUT"
echo "== prepare: $DATA -> $OUT/data"
"$PYTHON" -m vrp prepare "$DATA" --out "$OUT/data" --overwrite
common=(--data "$OUT/data" --model smollm2-135m --device cuda --batch-size "$BATCH" --max-steps "$STEPS"
        --eval-every "$STEPS" --save-every "$STEPS" --curve-videos 0 --seed 0 --overwrite)
echo "== 1/3 QLoRA (4-bit NF4, bf16) -> $OUT/qlora"
"$PYTHON" -m vrp train "${common[@]}" --out "$OUT/qlora" --quantization 4bit --precision bf16 \
  --optimizer paged_adamw_32bit
echo "== 2/3 LoRA (bf16) -> $OUT/lora-bf16"
"$PYTHON" -m vrp train "${common[@]}" --out "$OUT/lora-bf16" --precision bf16
echo "== 3/3 LoRA (bf16) under torchrun, 1 GPU -> $OUT/torchrun-1gpu"
"$PYTHON" -m torch.distributed.run --standalone --nproc-per-node 1 -m vrp train "${common[@]}" \
  --out "$OUT/torchrun-1gpu" --precision bf16

"$PYTHON" - "$OUT" <<'PY'
import json
import statistics
import sys
from pathlib import Path

out = Path(sys.argv[1])
print(f"\n{'run':16s} {'processes':>9s} {'steps':>5s} {'val NLL base':>12s} {'val NLL final':>13s} "
      f"{'tokens/s':>9s} {'tokens/s (median, steps 2+)':>28s}")
for name in ("qlora", "lora-bf16", "torchrun-1gpu"):
    m = json.loads((out / name / "metrics.json").read_text())
    steps = [json.loads(x) for x in (out / name / "metrics.jsonl").read_text().splitlines()]
    rates = [h["tokens_per_s"] for h in steps if "tokens_per_s" in h][1:]
    median = statistics.median(rates) if rates else float("nan")
    print(f"{name:16s} {m.get('world_size', 1):>9d} {m['steps']:>5d} {m['base_val_nll']:>12.4f} "
          f"{m['final_val_nll']:>13.4f} {m['tokens_per_s']:>9.0f} {median:>28.0f}")
PY
