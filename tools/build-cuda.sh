#!/usr/bin/env bash
# ./build.sh --cuda: the native CLI with candle's CUDA backend (`--features cuda`), built on a
# machine without a GPU, a driver or a system CUDA toolkit. Idempotent.
#
#   target/cuda/release/gitcap   the binary (its own target directory: switching the cuda feature
#                                on and off would otherwise rebuild candle for the CPU build too)
#   target/cuda/gitcap           a launcher: says what is missing when the NVIDIA driver is not
#                                installed, instead of the dynamic loader's error, and finds the
#                                toolkit's libraries; run this one
#
# The toolkit comes from PyPI's CUDA 13 wheels, unpacked into target/cuda-toolkit (about 1.5 GB):
# nvcc (the -cu12 wheel has only ptxas) with its crt headers and nvvm (cicc), the runtime, cccl
# (headers candle's kernels include), cuBLAS, cuRAND and NVRTC. cudarc 0.19.10 knows CUDA up to 13.4 and panics on 13.5's
# `nvcc --version`, hence CUDARC_CUDA_VERSION=13040 (the 13.4 API; 13.5's libraries provide it).
# The linker needs the driver's symbols, which only the driver installs: a stub libcuda.so with
# the soname libcuda.so.1 stands in for it at link time, as CUDA's own lib64/stubs does. Kernels
# are compiled for CUDA_COMPUTE_CAP (default 90, H100/H200); set it for other GPUs.
#
# Set CUDA_ROOT to use an installed toolkit instead of the wheels.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n== [build.sh --cuda %dm%02ds] %s\n' $((SECONDS / 60)) $((SECONDS % 60)) "$*"; }

OUT=target/cuda
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export CUDARC_CUDA_VERSION=${CUDARC_CUDA_VERSION:-13040}

if [ -z "${CUDA_ROOT:-}" ]; then
    TOOLKIT=$PWD/target/cuda-toolkit
    CUDA_ROOT=$TOOLKIT/nvidia/cu13
    if [ ! -x "$CUDA_ROOT/bin/nvcc" ] || [ ! -x "$CUDA_ROOT/nvvm/bin/cicc" ] || [ ! -e "$CUDA_ROOT/include/crt/host_config.h" ]; then
        step "CUDA 13 toolkit from PyPI wheels -> $TOOLKIT"
        python3 -m pip --version >/dev/null 2>&1 || {
            SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
            $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-pip
        }
        python3 -m pip install --quiet --no-deps --upgrade --target "$TOOLKIT" \
            "nvidia-cuda-nvcc==13.5.*" "nvidia-cuda-crt==13.5.*" "nvidia-nvvm==13.5.*" \
            "nvidia-cuda-runtime==13.5.*" "nvidia-cuda-cccl==13.*" "nvidia-cublas==13.*" \
            "nvidia-curand==10.*" "nvidia-cuda-nvrtc==13.5.*"
    fi
    # The linker looks for libcublas.so; the wheels ship only libcublas.so.13 and the like.
    for lib in "$CUDA_ROOT"/lib/lib*.so.*; do
        unversioned=${lib%%.so.*}.so
        [ -e "$unversioned" ] || ln -s "$(basename "$lib")" "$unversioned"
    done
fi
export CUDA_ROOT PATH=$CUDA_ROOT/bin:$PATH
nvcc --version | tail -2

# The stub driver library: every cu* function cudarc's driver bindings declare, doing nothing.
# Linking against it records "needs libcuda.so.1"; the real driver provides it at run time.
STUB=$CUDA_ROOT/lib/stubs/libcuda.so
if [ ! -e "$STUB" ]; then
    step "stub libcuda.so (link time only) -> $STUB"
    cargo fetch --quiet
    CUDARC=$(cargo metadata --format-version 1 --features cuda 2>/dev/null | python3 -c '
import json, sys
for p in json.load(sys.stdin)["packages"]:
    if p["name"] == "cudarc":
        print(p["manifest_path"].rsplit("/", 1)[0])')
    mkdir -p "$(dirname "$STUB")"
    grep -rhoE '\bfn cu[A-Za-z0-9_]+\(' "$CUDARC/src/driver/sys" | sed -E 's/^fn (cu[A-Za-z0-9_]+)\($/void \1(void) {}/' \
        | sort -u >"$OUT-stub.c"
    cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$STUB" "$OUT-stub.c"
    rm "$OUT-stub.c"
    echo "$(nm -D --defined-only "$STUB" | grep -c ' T cu') driver functions"
fi

step "cargo build --release --features cuda (compute capability $CUDA_COMPUTE_CAP, CUDA API $CUDARC_CUDA_VERSION)"
cargo build --release --features cuda --target-dir "$OUT"
ls -l "$OUT/release/gitcap"

step "launcher -> $OUT/gitcap"
cat >"$OUT/gitcap" <<EOF
#!/usr/bin/env bash
# gitcap's CUDA build (made by ./build.sh --cuda). The binary needs NVIDIA's driver library
# libcuda.so.1 to start at all, even for --device cpu; this says so instead of the loader.
here=\$(cd "\$(dirname "\${BASH_SOURCE[0]}")" && pwd)
toolkit_lib="$CUDA_ROOT/lib"
[ -d "\$toolkit_lib" ] && export LD_LIBRARY_PATH="\$toolkit_lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
found=0
if /sbin/ldconfig -p 2>/dev/null | grep -q 'libcuda\.so\.1 '; then
    found=1
else
    IFS=: read -ra dirs <<<"\${LD_LIBRARY_PATH:-}"
    for dir in "\${dirs[@]}" /usr/lib/x86_64-linux-gnu /usr/lib64 /usr/lib/wsl/lib; do
        [ "\$dir" != "\$toolkit_lib" ] && [ -e "\$dir/libcuda.so.1" ] && found=1
    done
fi
if [ "\$found" = 0 ]; then
    echo "gitcap: this is the CUDA build, and it needs NVIDIA's driver library libcuda.so.1, which is" >&2
    echo "not installed here (no NVIDIA driver). Install the driver for your GPU, or use the CPU build:" >&2
    echo "./build.sh, then target/release/gitcap." >&2
    exit 1
fi
exec "\$here/release/gitcap" "\$@"
EOF
chmod +x "$OUT/gitcap"
echo "run: $OUT/gitcap caption --device cuda IMAGE"
