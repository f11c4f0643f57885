#!/usr/bin/env bash
# `make demo`: prepare the seed data, fine-tune the bundled SmolLM2-135M on this CPU, predict comments for the 8
# test videos with the base model (beam) and the fine-tuned model (greedy, beam, beam-temperature, beam-sample,
# nucleus), and print a short table. Variables: DATA (seed data dir), OUT (output dir), VRP, PYTHON.
set -euo pipefail
DATA=${DATA:-../shared/data/uos2023/}
OUT=${OUT:-out/demo}
VRP=${VRP:-.venv/bin/vrp}
PYTHON=${PYTHON:-.venv/bin/python}
for f in train_dataset.xlsx test_dataset.xlsx; do
  [ -f "$DATA/$f" ] || { echo "error: $DATA/$f not found; set DATA=... (make demo DATA=/path/to/uos2023/)" >&2; exit 2; }
done
mkdir -p "$OUT"
start=$(date +%s)
echo "== 1/4 prepare: $DATA/train_dataset.xlsx -> $OUT/dataset"
"$VRP" prepare "$DATA/train_dataset.xlsx" --out "$OUT/dataset" --overwrite
echo "== 2/4 train: LoRA on the bundled smollm2-135m -> $OUT/run"
"$VRP" train --config configs/smollm2-cpu-demo.yaml --data "$OUT/dataset" --out "$OUT/run" --overwrite
echo "== 3/4 generate: base model, beam"
"$VRP" generate --model smollm2-135m --input "$DATA/test_dataset.xlsx" --preset beam \
  --max-prompt-tokens 512 --out "$OUT/predictions-base.jsonl" --overwrite
echo "== 4/4 generate: fine-tuned, five presets"
"$VRP" generate --run "$OUT/run" --input "$DATA/test_dataset.xlsx" \
  --preset greedy,beam,beam-temperature,beam-sample,nucleus --out "$OUT/predictions-finetuned.jsonl" --overwrite
"$PYTHON" - "$OUT" "$start" <<'PY'
import json, sys, time
from pathlib import Path
import pandas as pd
out, start = Path(sys.argv[1]), int(sys.argv[2])
df = pd.concat([pd.read_json(out / "predictions-base.jsonl", lines=True),
                pd.read_json(out / "predictions-finetuned.jsonl", lines=True)], ignore_index=True)
df["setup"] = df.apply(lambda r: ("fine-tuned " if r["adapter"] else "base ") + r["preset"], axis=1)
from vrp.predict import write_predictions  # spreadsheet-safe cells (vrp.sheets), as `vrp generate` writes them
for ext in ("csv", "xlsx", "jsonl"):
    write_predictions(df.to_dict("records"), out / f"predictions.{ext}")
m = json.loads((out / "run" / "metrics.json").read_text())
print("\n== predicted comments (first 70 characters), one row per test video")
table = df.pivot_table(index="video_id", columns="setup", values="comment", aggfunc="first")
for vid, row in table.iterrows():
    print(f"\n[{vid}]")
    for setup, text in row.items():
        print(f"  {setup:28s} {str(text)[:70]!r}")
summary = df.groupby("setup").agg(videos=("video_id", "nunique"), comments=("comment", "size"),
                                  finished_rate=("finished", "mean"), median_new_tokens=("new_tokens", "median"),
                                  mean_seconds=("seconds", "mean"))
print("\n== per setup (finished_rate: share of comments that ended with the end-of-turn token within "
      "max_new_tokens; new tokens include it)\n" + summary.round(2).to_string())
print(f"\nvalidation NLL/token: base {m['base_val_nll']:.4f} -> fine-tuned {m['final_val_nll']:.4f} "
      f"({m['val_videos']} videos); training {m['steps']} steps, {m['comments_seen']} comments, "
      f"{m['tokens_per_s']} tokens/s, peak memory {m['peak_rss_bytes'] / 1e9:.2f} GB (RSS; budget "
      f"{m.get('memory_plan', {}).get('budget_bytes', 0) / 1e9:.2f} GB)")
print(f"outputs: {out}/predictions.csv .xlsx .jsonl; run dir {out}/run; total {time.time() - start:.0f} s")
PY
