#!/usr/bin/env bash
# The peer benchmark, end to end: GIT's image encoder (CLIP ViT-L/14 + projection, 224 px) timed
# in ONNX Runtime (native, fp32 and int8), ONNX Runtime Web (wasm in headless Chromium, fp32 and
# int8), transformers, and gitcap (native CLI and page, f32 and q8_0), on this machine, in one
# run, at the same thread counts, engines taking turns round by round. Then the int8 accuracy
# figure and, if asked, the ORT text decoder timing. See bench/peer/README.md.
#
#   bench/peer/run.sh [--threads 1,2] [--rounds 3] [--engines id,...]   (passed to run.mjs)
#   PEER_SKIP_ACCURACY=1 / PEER_DECODER=1 to skip the accuracy step / add the decoder timing.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=.venv-ref/bin/python
CKPT=${PEER_CHECKPOINT:-bench-out/git-large-random}
GGUF=${PEER_GGUF:-bench-out/git-large-random-q8_0.gguf}
OUT=bench-out/peer

step() { printf '\n== %s\n' "$*" >&2; }
lscpu | grep -E '^Model name' >&2
for f in avx512f avx512_vnni amx_int8; do
    grep -qw "$f" /proc/cpuinfo && echo "  $f: yes" >&2 || echo "  $f: no" >&2
done

step "checkpoint $CKPT"
[ -f "$CKPT/model.safetensors" ] || "$PY" bench/make_large_checkpoint.py "$CKPT"
step "ONNX export + int8 copy ($OUT)"
"$PY" bench/peer/prepare.py "$CKPT" "$OUT" tests/images/chelsea.png >/dev/null
step "gitcap CLI and q8_0 model"
[ -x target/release/gitcap ] || cargo build --release --features native
[ -f "$GGUF" ] || target/release/gitcap quantize --model "$CKPT" --out "$GGUF" --type q8_0
step "gitcap page (www/pkg, www/pkg-threads)"
{ [ -f www/pkg/gitcap.js ] && [ -f www/pkg-threads/gitcap.js ]; } || bash build.sh --wasm-only
[ -d node_modules/onnxruntime-web ] && [ -d node_modules/playwright-core ] || npm ci

step "timings"
node bench/peer/run.mjs --checkpoint "$CKPT" --gguf "$GGUF" --peer-dir "$OUT" "$@"

if [ "${PEER_SKIP_ACCURACY:-0}" != 1 ]; then
    step "ONNX Runtime int8 vs fp32 image features"
    "$PY" bench/peer/accuracy.py "$OUT" "$CKPT"
fi
if [ "${PEER_DECODER:-0}" = 1 ]; then
    step "ONNX Runtime text decoder with its key/value cache (20-token greedy caption)"
    "$PY" bench/peer/decoder.py "$CKPT" "$OUT"
fi
