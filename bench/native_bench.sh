#!/usr/bin/env bash
# gitcap's native CLI beside transformers on the same machine and thread count, on a full-size
# git-large checkpoint with random weights (bench/make_large_checkpoint.py):
#   bench/native_bench.sh [MODEL_DIR] [IMAGE] [THREADS]
# Prints transformers' figures (JSON) and gitcap's --timings lines (median of 3 images each).
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-bench-out/git-large-random}
IMAGE=${2:-tests/images/chelsea.png}
THREADS=${3:-$(nproc)}
[ -f "$MODEL/model.safetensors" ] || .venv-ref/bin/python bench/make_large_checkpoint.py "$MODEL"
cargo build --release --features native -q
echo "== transformers ($THREADS threads)"
OMP_NUM_THREADS=$THREADS .venv-ref/bin/python bench/transformers_bench.py "$MODEL" "$IMAGE" "$THREADS" 3
echo "== gitcap greedy ($THREADS threads)"
RAYON_NUM_THREADS=$THREADS target/release/gitcap caption --timings --json --model "$MODEL" "$IMAGE" "$IMAGE" "$IMAGE" 2>&1 | grep timing
echo "== gitcap 4 beams"
RAYON_NUM_THREADS=$THREADS target/release/gitcap caption --timings --json --beams 4 --model "$MODEL" "$IMAGE" "$IMAGE" "$IMAGE" 2>&1 | grep timing
