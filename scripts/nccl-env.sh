# shellcheck shell=bash
# Build environment for `cargo build --features nccl` (multi-GPU training) on a machine with no
# GPU: sources ../shared/tools/cuda-env.sh (nvcc, CUDA libraries, link dir), then adds a
# link-time stub libnccl.so (soname libnccl.so.2) holding every nccl* symbol that the cudarc
# crate declares. The real library is loaded at run time on the GPU machine, e.g. the one that
# ships with PyTorch:
#   export LD_LIBRARY_PATH=$(python3 -c 'import nvidia.nccl, os; print(os.path.dirname(nvidia.nccl.__path__[0] + "/lib/"))'):$LD_LIBRARY_PATH
# Usage (from the repository root):
#   source scripts/nccl-env.sh && CARGO_TARGET_DIR=target/cuda cargo build --release --features nccl
# shellcheck source=/dev/null
source "$(dirname "${BASH_SOURCE[0]}")/../../shared/tools/cuda-env.sh" || return 1
nccl_stub() {
  local link="${CUDA_ENV_DIR:-$HOME/.cache/cuda13-env}/link" src
  [ -f "$link/libnccl.so" ] && return 0
  src=$(ls -d "$HOME"/.cargo/registry/src/*/cudarc-*/src/nccl/sys 2>/dev/null | sort -V | tail -1)
  if [ -z "$src" ]; then echo "nccl-env: run 'cargo fetch' first (no cudarc source found)" >&2; return 1; fi
  grep -ohE "fn nccl[A-Za-z0-9_]+\(" "$src"/*.rs | sed 's/^fn //; s/($//' | sort -u \
    | awk '{print "void " $1 "(void){}"}' > "$link/nccl-stub.c"
  gcc -shared -fPIC -o "$link/libnccl.so" -Wl,-soname,libnccl.so.2 "$link/nccl-stub.c"
}
nccl_stub && echo "nccl-env: link stub $(ls "${CUDA_ENV_DIR:-$HOME/.cache/cuda13-env}"/link/libnccl.so)"
