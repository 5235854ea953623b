# Sourced by the device scripts that run packed binaries (`scripts/device/pack-layer.sh`): the
# CUDA runtime's libraries on LD_LIBRARY_PATH, and `unpack DIR [NAME ...]`, which unpacks
# DIR/NAME.xz (every DIR/*.xz when no NAME is given) into a fresh temporary folder as
# executables and sets W to that folder.
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib
unpack() {
  local dir=$1 f
  shift
  W=$(mktemp -d)
  [ $# -gt 0 ] || for f in "$dir"/*.xz; do set -- "$@" "$(basename "$f" .xz)"; done
  for f in "$@"; do xz -dc "$dir/$f.xz" > "$W/$f" && chmod +x "$W/$f"; done
}
