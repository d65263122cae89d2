#!/usr/bin/env bash
# One short GPU session (the numbers go into benchmarks/RESULTS.md), each section under its own timeout (a
# failed or timed-out section never stops the next), ~7 minutes at most on an H200:
#   1. `starflow bench` of the image model on CUDA, float32 then bf16;
#   2. `starflow bench` of the video model (bench_t2v_small) on CUDA, float32 then bf16;
#   3. the official apple/ml-starflow code on the same GPU, the same way (benchmarks/official_baseline.py,
#      --device cuda, float32 then bf16 autocast), image and video model;
#   4. training MFU of the official 3B deep-block shape (benchmarks/mfu.py --try: variants in order);
#   5. the CUDA tests (pytest -m gpu).
# Uses the machine's own python and torch (no install, no network): the package runs from src/ via PYTHONPATH.
# What it reads, carried in .cache/ (git-ignored):
#   .cache/bench_models_bf16.{safetensors,json}  both bench models in bf16 (benchmarks/pack_bench_models.py
#       pack), unpacked here into float32 conformance-format files; float32 .pt files in $BENCH_DIR, .cache/,
#       shared/bench/ or ../shared/bench/ are used instead when there is no pack
#   .cache/ml-starflow   the official code (`git archive HEAD transformer_flow.py misc` of apple/ml-starflow)
#   .cache/pydeps        only if the machine lacks a pure-python module (it has them all today)
# Results in $OUT (or /tmp/gpu_check), at most 7 files: env.txt, bench_image.jsonl, bench_video.jsonl,
# official.jsonl, mfu.jsonl, pytest_gpu.txt, stderr.log; JSON lines on stdout too.
#
# SMOKE=1 bash benchmarks/gpu_check.sh: every section on the CPU, one thread, with the tiny conformance models
# of tests/assets packed and unpacked the same way and tiny settings, to catch script errors (< 2 minutes).
set -u
cd "$(dirname "$0")/.."
SMOKE=${SMOKE:-0}
PY=${PY:-python3}
OUT=${OUT:-/tmp/gpu_check}
WORK=${WORK:-/tmp/gpu_check_work}
OFFICIAL=${OFFICIAL:-.cache/ml-starflow}
mkdir -p "$OUT" "$WORK"
rm -f "$OUT"/{env.txt,bench_image.jsonl,bench_video.jsonl,official.jsonl,mfu.jsonl,pytest_gpu.txt,stderr.log}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
START=$SECONDS

if [ "$SMOKE" = 1 ]; then
  DEV=cpu; export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 CUDA_VISIBLE_DEVICES=""
  # tiny settings: each figure once, short videos, eager sequential steps (compiling on the CPU takes a minute)
  IMG_OPTS='{"repeats": 1, "sample_repeats": 1, "warmup": 0, "sequential_compile": false}'
  VID_OPTS='{"repeats": 1, "sample_repeats": 1, "warmup": 0, "sequential_compile": false, "video_frames": 4, "long_video_frames": [4, 8]}'
  OFF_IMG=(--repeats 1 --sample-repeats 1)
  OFF_VID=(--sample-repeats 1 --video-frames 4 --long-video-frames 4,8)
  MFU=(benchmarks/mfu.py --smoke --try base,cudnn,b16_tf32 --steps 2 --warmup 1)
  DEADLINE=${DEADLINE:-600}
else
  DEV=cuda
  # the issue's protocol (batches, guidance, thresholds, 8 video frames, long videos of 8/16/32) with fewer
  # repeats; sequential steps compiled in float32 (the recorded figure), eager in bf16 (compiling again for bf16
  # would cost the time the other sections need); no in-bench baselines (the official code is timed itself)
  IMG_OPTS='{"repeats": 5, "sample_repeats": 2, "warmup": 1, "compare_official": false}'
  VID_OPTS='{"repeats": 5, "sample_repeats": 2, "warmup": 1, "compare_official": false}'
  OFF_IMG=(--repeats 5 --sample-repeats 2)
  OFF_VID=(--sample-repeats 2)
  MFU=(benchmarks/mfu.py --try "${MFU_VARIANTS:-base,b16,b16_compile,b16_compile_cudnn,b16_cudnn}" --steps 5 --warmup 2)
  DEADLINE=${DEADLINE:-450}   # seconds for the whole script, within a 480 s call
fi

# limit_for LIMIT RESERVE: a section's time limit: its own LIMIT, cut so that RESERVE seconds stay for the sections
# after it before DEADLINE (a fast section leaves its slack to the next ones, a slow one never eats theirs)
limit_for() {
  local left=$((DEADLINE - (SECONDS - START) - $2))
  echo $(($1 < left ? $1 : left))
}

# section NAME LIMIT RESERVE OUTFILE CMD...: stdout to OUTFILE and the console, stderr to stderr.log (its tail on
# the console when the section fails); a failure, timeout or lack of time is reported and the script goes on
section() {
  local name=$1 limit t0=$SECONDS rc file=$4
  limit=$(limit_for "$2" "$3")
  shift 4
  if [ "$limit" -lt 10 ]; then
    echo "!! $name: skipped, ${limit}s left before the deadline"
    echo "{\"section\": \"$name\", \"error\": \"skipped: out of time\"}" >>"$file"
    return
  fi
  echo "== $name (limit ${limit}s, at $((SECONDS - START))s)"
  echo "== $name" >>"$OUT/stderr.log"
  timeout -k 5 "$limit" "$@" 2>"$WORK/stderr.txt" | tee -a "$file"
  rc=${PIPESTATUS[0]}
  cat "$WORK/stderr.txt" >>"$OUT/stderr.log"
  if [ "$rc" != 0 ]; then
    [ "$rc" = 124 ] && echo "!! $name: timed out after ${limit}s" || echo "!! $name: exit $rc"
    tail -n 6 "$WORK/stderr.txt" | cut -c1-300
    echo "{\"section\": \"$name\", \"error\": \"exit $rc$([ "$rc" = 124 ] && echo ' (timeout)')\"}" >>"$file"
  fi
  echo "== $name: $((SECONDS - t0))s"
}

{
  echo "date $(date -u +%FT%TZ) smoke=$SMOKE device=$DEV"
  echo "git $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  du -sh .cache .cache/* 2>/dev/null
  [ "$DEV" = cuda ] && nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv,noheader
  $PY - <<'EOF'
import sys, torch
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
      torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device")
EOF
} 2>&1 | tee "$OUT/env.txt"
if [ "$DEV" = cuda ] && ! $PY -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
  echo "no usable CUDA torch"; exit 1
fi

# pure-python dependencies the machine lacks: a carried .cache/pydeps (copied from a virtualenv's site-packages)
for mod in numpy einops yaml tqdm safetensors PIL; do
  if ! $PY -c "import $mod" 2>/dev/null; then
    if [ -e ".cache/pydeps/$mod" ]; then export PYTHONPATH="$PYTHONPATH:$PWD/.cache/pydeps"; echo "using carried $mod"
    else echo "missing python module $mod (carry it in .cache/pydeps/)"; fi
  fi
done | tee -a "$OUT/env.txt"

echo "== models (at $((SECONDS - START))s)"
MODELS=$WORK/models
mkdir -p "$MODELS"; rm -f "$MODELS"/*.pt
PACK=${PACK:-.cache/bench_models_bf16}
if [ "$SMOKE" = 1 ]; then
  PACK=$WORK/smoke_pack
  $PY benchmarks/pack_bench_models.py pack --out "$PACK" --t2i tests/assets/conformance/t2i_deep_shallow.pt \
    --t2v tests/assets/conformance/t2v_long_window.pt
fi
if [ -f "$PACK.safetensors" ]; then
  timeout 60 $PY benchmarks/pack_bench_models.py unpack --packed "$PACK" --dest "$MODELS" &&
    echo "bench weights: bf16-rounded (unpacked from $PACK.safetensors)" | tee -a "$OUT/env.txt"
else
  for name in bench_t2i_small bench_t2v_small; do
    for d in ${BENCH_DIR:-} .cache shared/bench ../shared/bench; do
      [ -f "$d/$name.pt" ] && [ ! -e "$MODELS/$name.pt" ] && ln -s "$(cd "$d" && pwd)/$name.pt" "$MODELS/$name.pt"
    done
  done
  echo "bench weights: the float32 originals" | tee -a "$OUT/env.txt"
fi
T2I=$MODELS/bench_t2i_small.pt T2V=$MODELS/bench_t2v_small.pt
ls -l "$MODELS"

# our bench, one JSON line per dtype (a timeout in bf16 keeps the float32 line)
BENCH_PY='
import json, sys, time
from starflow.evaluation.bench import BenchOptions, bench_model, load_bench_model
path, device, extra = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
t0 = time.time()
log = lambda s: print(f"[{time.time() - t0:6.1f}s] {s}", file=sys.stderr, flush=True)
model = load_bench_model(path)
for dtype in ("fp32", "bf16"):
    opts = dict(extra, device=device, dtype=dtype)
    if dtype == "bf16" and device != "cpu":
        opts["sequential_compile"] = False
    res = bench_model(model, BenchOptions.from_dict(opts), log)
    res["model"] = path
    print(json.dumps(res), flush=True)
'
if [ -f "$T2I" ]; then
  section "bench image ($DEV, fp32 + bf16)" 90 270 "$OUT/bench_image.jsonl" $PY -c "$BENCH_PY" "$T2I" "$DEV" "$IMG_OPTS"
else echo '{"error": "no image bench model"}' | tee "$OUT/bench_image.jsonl"; fi
if [ -f "$T2V" ]; then
  section "bench video ($DEV, fp32 + bf16)" 110 210 "$OUT/bench_video.jsonl" $PY -c "$BENCH_PY" "$T2V" "$DEV" "$VID_OPTS"
else echo '{"error": "no video bench model"}' | tee "$OUT/bench_video.jsonl"; fi

# the official code, the same way on the same device
if [ -f "$OFFICIAL/transformer_flow.py" ]; then
  OFF_PY='
import json, subprocess, sys
# float32, then bf16 autocast: one process each, so a failure in one keeps the other
for dtype in ("fp32", "bf16"):
    rc = subprocess.call([sys.executable, "benchmarks/official_baseline.py", "--dtype", dtype] + sys.argv[1:])
    if rc:
        print(json.dumps({"dtype": dtype, "model": sys.argv[4], "error": f"exit {rc}"}), flush=True)
'
  [ -f "$T2I" ] && section "official image ($DEV)" 60 180 "$OUT/official.jsonl" \
    $PY -c "$OFF_PY" --code "$OFFICIAL" --model "$T2I" --device "$DEV" "${OFF_IMG[@]}"
  [ -f "$T2V" ] && section "official video ($DEV)" 80 140 "$OUT/official.jsonl" \
    $PY -c "$OFF_PY" --code "$OFFICIAL" --model "$T2V" --device "$DEV" "${OFF_VID[@]}"
else
  echo "{\"error\": \"official code not found at $OFFICIAL\"}" | tee "$OUT/official.jsonl"
fi

# no new variant after the limit less a compiled variant's time (build, compile, steps: ~65 s)
L=$(limit_for 140 30)
section "training MFU, 3B deep block (bf16 autocast)" "$L" 30 "$OUT/mfu.jsonl" $PY "${MFU[@]}" \
  --budget-s "${MFU_BUDGET:-$((L > 85 ? L - 65 : 20))}"

GPU_TESTS=$(grep -rlE "pytest\.mark\.gpu" tests --include='test_*.py' | sort)
if $PY -c "import pytest" 2>/dev/null && [ -n "$GPU_TESTS" ]; then
  # only the files with GPU tests: collecting the rest would import optional packages this machine may lack
  section "pytest -m gpu" 60 0 "$OUT/pytest_gpu.txt" \
    $PY -m pytest -q -m gpu -p no:cacheprovider $GPU_TESTS
else
  echo "pytest not installed on this machine: skipped" | tee "$OUT/pytest_gpu.txt"
fi
echo "== done in $((SECONDS - START))s"
