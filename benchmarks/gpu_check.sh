#!/usr/bin/env bash
# One short GPU session (the numbers go into benchmarks/RESULTS.md):
#   1. `starflow bench` on CUDA, float32 then bf16, on the bench model;
#   2. training MFU of the official 3B deep-block shape (benchmarks/mfu.py);
#   3. the CUDA tests (pytest -m gpu), when pytest is there.
# Uses the machine's own python and torch (no install, no network): the package runs from src/ via
# PYTHONPATH. Pure-python dependencies the machine lacks are taken from a carried CPU virtualenv
# (.venv/lib/python3.*/site-packages/<name>) when present. Results: JSON lines on stdout, and files in
# $OUT (or /tmp/gpu_check) when set. The bench model is looked for in $BENCH_MODEL, .cache/ (an ignored
# folder, to carry a copy to a machine without ../shared), shared/bench/ and ../shared/bench/.
set -u
cd "$(dirname "$0")/.."
PY=${PY:-python3}
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"

$PY - <<'EOF' || { echo "no usable CUDA torch"; exit 1; }
import torch
assert torch.cuda.is_available(), "torch sees no CUDA device"
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name())
EOF

# dependencies: borrow the carried virtualenv's copy of any pure-python module the machine lacks
DEPS="$OUT/deps"; mkdir -p "$DEPS"
for mod in einops yaml tqdm safetensors; do
  if ! $PY -c "import $mod" 2>/dev/null; then
    src=$(ls -d .venv/lib/python3*/site-packages/$mod 2>/dev/null | head -1)
    if [ -n "$src" ]; then ln -sfn "$PWD/$src" "$DEPS/$mod"; echo "using carried $mod"; else echo "missing $mod"; fi
  fi
done
export PYTHONPATH="$PYTHONPATH:$DEPS"

MODEL=${BENCH_MODEL:-}
for m in .cache/bench_t2i_small.pt shared/bench/bench_t2i_small.pt ../shared/bench/bench_t2i_small.pt; do
  [ -z "$MODEL" ] && [ -f "$m" ] && MODEL=$m
done
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader || true

echo "== bench (cuda, fp32 + bf16)"
if [ -n "$MODEL" ]; then
  # 330 s: the sequential figure compiles its one-token steps first (3 graphs for fp32, 3 for bf16)
  timeout 330 $PY - "$MODEL" <<'EOF' | tee "$OUT/bench_cuda.json"
import json, sys
from starflow.evaluation.bench import BenchOptions, bench
res = bench(sys.argv[1], BenchOptions(device="cuda", repeats=10, sample_repeats=3))
print(json.dumps(res))
EOF
else
  echo '{"error": "bench model not found (shared/bench/bench_t2i_small.pt); set BENCH_MODEL"}' | tee "$OUT/bench_cuda.json"
fi

echo "== training MFU, 3B deep block (bf16 autocast)"
timeout 150 $PY benchmarks/mfu.py --batch 8 4 --steps 5 --warmup 2 | tee "$OUT/mfu.json"

echo "== pytest -m gpu"
GPU_TESTS=$(grep -rlE "pytest\.mark\.gpu" tests --include='test_*.py' | sort)
if $PY -c "import pytest" 2>/dev/null && [ -n "$GPU_TESTS" ]; then
  # only the files with GPU tests: collecting the rest would import optional packages this machine may lack
  timeout 120 $PY -m pytest -q -m gpu -p no:cacheprovider $GPU_TESTS 2>&1 | tail -15 | tee "$OUT/pytest_gpu.txt"
else
  echo "pytest not installed on this machine: skipped" | tee "$OUT/pytest_gpu.txt"
fi
echo "== done"
