#!/usr/bin/env bash
# Builds every fuzz target (fuzz/build.sh) and runs each for SECONDS with libFuzzer (one per
# core at a time), starting from fuzz/corpus/TARGET (read only: new inputs go to a scratch
# folder). Fails on any crash, hang (-timeout=10 s per
# input), RSS over 2 GiB or single allocation over 1 GiB; the failing input is kept in
# fuzz/artifacts/TARGET/. Usage: fuzz/run.sh SECONDS [TARGET...]
set -euo pipefail
secs=${1:?usage: fuzz/run.sh SECONDS [TARGET...]}
shift
cd "$(dirname "$0")/.."
start=$(date +%s)
fuzz/build.sh
echo "fuzz: build $(($(date +%s) - start)) s"
bin=fuzz/target/$(rustc -vV | sed -n 's/^host: //p')/release
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(RUSTC_BOOTSTRAP=1 cargo fuzz list)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# One target per core at a time (each libFuzzer process is single-threaded).
jobs=$(nproc)
run_one() {
    local t=$1
    mkdir -p "$work/$t" "fuzz/artifacts/$t"
    if "$bin/$t" "$work/$t" "fuzz/corpus/$t" -max_total_time="$secs" -rss_limit_mb=2048 \
        -malloc_limit_mb=1024 -timeout=10 -print_final_stats=1 \
        -artifact_prefix="fuzz/artifacts/$t/" >"$work/$t.log" 2>&1; then
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/$t.log")
        rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$work/$t.log")
        cov=$(grep -o 'cov: [0-9]* ft: [0-9]*' "$work/$t.log" | tail -1)
        echo "fuzz: $t: ${secs} s, $runs runs, $rate exec/s, $cov, no crash"
    else
        echo "fuzz: $t FAILED; the end of its log:"
        tail -40 "$work/$t.log"
        touch "$work/$t.failed"
    fi
}
for t in "${targets[@]}"; do
    while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do sleep 1; done
    run_one "$t" &
done
wait
failed=()
for t in "${targets[@]}"; do
    [ -e "$work/$t.failed" ] && failed+=("$t")
done
echo "fuzz: total $(($(date +%s) - start)) s"
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz: failed: ${failed[*]} (inputs in fuzz/artifacts/)"
    exit 1
fi
