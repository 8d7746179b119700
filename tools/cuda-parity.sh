#!/usr/bin/env bash
# Parity of the CUDA build against transformers, on a machine with an NVIDIA GPU and driver.
#
# Here (no GPU needed):   tools/cuda-parity.sh --build
#   builds, with ./build.sh --cuda's toolkit, the native test binary with --features cuda and
#   copies it to target/cuda/parity-tests (a single file, to carry to the GPU machine with the
#   repository's tests/ folder).
# There (from the repository root, no Rust needed):   tools/cuda-parity.sh
#   runs the parity tests (tests/native/parity.rs) on CUDA GPU 0: image features and logits of the
#   fixture models within 1e-3 of transformers' f32 outputs, generated token ids and text identical
#   (greedy, beam search, prompt); and the CLI's caption test. Needs CUDA 13's cuBLAS, cuRAND and
#   NVRTC libraries: target/cuda-toolkit's when present, else those of a CUDA 13 PyTorch or a
#   system toolkit (LD_LIBRARY_PATH).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BIN=target/cuda/parity-tests

if [ "${1:-}" = --build ]; then
    bash tools/build-cuda.sh >/dev/null # the toolkit and the environment it needs
    export CUDA_ROOT=$PWD/target/cuda-toolkit/nvidia/cu13 PATH=$PWD/target/cuda-toolkit/nvidia/cu13/bin:$PATH
    export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90} CUDARC_CUDA_VERSION=${CUDARC_CUDA_VERSION:-13040}
    built=$(cargo test --release --features cuda --test native --no-run --target-dir target/cuda \
        --message-format json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "native" and m.get("executable"):
        print(m["executable"])')
    cp "$built" "$BIN"
    strip "$BIN"
    ls -l "$BIN"
    exit 0
fi

[ -x "$BIN" ] || { echo "no $BIN: run tools/cuda-parity.sh --build first (on any machine with Rust)" >&2; exit 1; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || true
libs=()
[ -d target/cuda-toolkit/nvidia/cu13/lib ] && libs+=("$PWD/target/cuda-toolkit/nvidia/cu13/lib")
for dir in $(python3 -c 'import nvidia, os; print(" ".join(os.path.join(p, "cu13", "lib") for p in nvidia.__path__))' 2>/dev/null); do
    [ -d "$dir" ] && libs+=("$dir")
done
if [ ${#libs[@]} -gt 0 ]; then
    LD_LIBRARY_PATH=$(IFS=:; echo "${libs[*]}")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    export LD_LIBRARY_PATH
fi
GITCAP_REPO=$PWD GITCAP_TEST_DEVICE=cuda "$BIN" parity --test-threads 1 --nocapture
