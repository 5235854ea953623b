#!/usr/bin/env bash
# Packs the fuzz targets for a long run on a machine without Rust: builds them (fuzz/build.sh),
# then writes DIR/bin/TARGET.xz (stripped), DIR/corpus.tar.xz (the seed corpus),
# DIR/lib/libstdc++.so.6.xz (this machine's, for hosts with an older one) and DIR/run-device.sh.
# There: `OUT=/results DIR/run-device.sh 600` runs every target in parallel for 600 s.
# Usage: fuzz/package.sh DIR
set -euo pipefail
dir=${1:?usage: fuzz/package.sh DIR}
cd "$(dirname "$0")/.."
fuzz/build.sh
bin=fuzz/target/$(rustc -vV | sed -n 's/^host: //p')/release
mkdir -p "$dir/bin" "$dir/lib"
for t in $(RUSTC_BOOTSTRAP=1 cargo fuzz list); do
    strip -o "$dir/bin/$t" "$bin/$t"
    xz -f -6 "$dir/bin/$t"
done
tar -cJf "$dir/corpus.tar.xz" -C fuzz corpus
xz -6 -c "$(g++ -print-file-name=libstdc++.so.6)" >"$dir/lib/libstdc++.so.6.xz"
cp fuzz/run-device.sh "$dir/"
echo "packed $(ls "$dir/bin" | wc -l) targets into $dir ($(du -sh "$dir" | cut -f1))"
