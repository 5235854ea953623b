#!/usr/bin/env bash
# On the device, call K of scripts/device/pack.sh's pieces: keeps cuda-bin/cK's piece in /tmp/w.
set -euo pipefail
mkdir -p /tmp/w/pieces && cp cuda-bin/c"$1"/piece.* /tmp/w/pieces/ && ls /tmp/w/pieces
