#!/usr/bin/env bash
# The GPU check (issue 9): on one CUDA device, in under 8 minutes,
#   1. the real-shape speed benchmark: OLMoE-1B-7B widths (16 layers) and Qwen3-30B-A3B widths (4 of 48 layers), bf16;
#   2. a real-width training run (OLMoE widths, 2 layers, checkpointing) with torch.cuda.max_memory_allocated
#      against `drlora estimate`, and the PEFT round trip of its adapter against drlora's merged weights;
#   3. one JSON and one markdown table: OUT/gpu_check.json, OUT/gpu_check.md.
# usage: scripts/gpu_check.sh [OUT_DIR]   (default runs/gpu-check; PYTHON=... to choose the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/gpu-check}
PY=${PYTHON:-python}
export PYTHONPATH=${PYTHONPATH:-$PWD}
mkdir -p "$OUT"
"$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else "no CUDA device visible: the GPU check needs one")'
"$PY" -c 'import peft' 2>/dev/null || { echo "the PEFT round trip needs peft: pip install -e '.[dev]'" >&2; exit 2; }
"$PY" - <<'PY'
import sys, torch
major, minor = (int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
sys.exit(0 if (major, minor) >= (2, 10) else f"torch {torch.__version__}: drlora needs >= 2.10 (docs/models.md)")
PY
start=$SECONDS
echo "== speed: real shapes (budget 240 s)"
timeout 240 "$PY" -m drlora_cli.main bench speed --shapes real --routing balanced --qwen-layers 4 \
    --seq-len 2048 --device cuda --rounds 8 --warmup 2 --json "$OUT/speed.json" | tee "$OUT/speed.txt" \
    || echo "speed benchmark did not finish in its budget; continuing" >&2
echo "== training run, memory against the estimate, PEFT round trip (budget 200 s)"
timeout 200 "$PY" -m bench.gpu_check train "$OUT" --layers 2 --batch-size 4 --seq-len 2048 --steps 6
"$PY" -m bench.gpu_check report "$OUT"
echo "== done in $((SECONDS - start)) s"
cat "$OUT/gpu_check.md"
