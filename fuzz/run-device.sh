#!/usr/bin/env bash
# The 10-minute fuzz runs of issue 10 on a machine without Rust (x86-64 Linux, 16 cores): every
# target of .fuzzbin/ (release libFuzzer binaries built by `cargo fuzz build -O -a -s none`,
# debug assertions and overflow checks on, no sanitizer) runs IN PARALLEL for SECONDS (default
# 600) from the committed seed corpus, with -rss_limit_mb=2048 -malloc_limit_mb=1024 -timeout=10.
# Run from the repository root:  OUT=/some/dir .fuzzbin/run-device.sh [SECONDS]
# Results in $OUT/: summary.txt (one line per target: exit code, runs, exec/s, coverage, corpus
# size), TARGET/log-tail.txt (the last 80 lines of its log: the final pulse lines with exec/s
# and cov, the final stats, and any crash report), TARGET/crashes/ (crash, timeout and OOM
# inputs, if any) and TARGET/corpus.tar.xz (the grown corpus, if under 5 MB).
set -uo pipefail
secs=${1:-600}
: "${OUT:?set OUT to the results folder}"
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$OUT" "$work/bin" "$work/lib"
for f in "$here"/bin/*.xz; do
    t=$(basename "$f" .xz)
    xz -dc "$f" >"$work/bin/$t" && chmod +x "$work/bin/$t"
done
tar -xJf "$here/corpus.tar.xz" -C "$work"
targets=$(ls "$work/bin")
first=$(echo "$targets" | head -1)
# The binaries need libstdc++ with GLIBCXX_3.4.30 (g++ 12); if the system's is older, use the
# bundled one (from Debian 12).
if ! "$work/bin/$first" -help=1 >/dev/null 2>&1; then
    xz -dc "$here/lib/libstdc++.so.6.xz" >"$work/lib/libstdc++.so.6"
    export LD_LIBRARY_PATH="$work/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    echo "using the bundled libstdc++" | tee "$OUT/note.txt"
fi
echo "$(nproc) cores; $(echo $targets | wc -w) targets x $secs s in parallel; started $(date -u)"
for t in $targets; do
    mkdir -p "$OUT/$t/crashes" "$work/new/$t"
    (
        "$work/bin/$t" "$work/new/$t" "$work/corpus/$t" -max_total_time="$secs" \
            -rss_limit_mb=2048 -malloc_limit_mb=1024 -timeout=10 -print_final_stats=1 \
            -artifact_prefix="$OUT/$t/crashes/" >"$work/$t.log" 2>&1
        echo $? >"$work/$t.rc"
    ) &
done
wait
status=0
: >"$OUT/summary.txt"
for t in $targets; do
    rc=$(cat "$work/$t.rc")
    tail -80 "$work/$t.log" >"$OUT/$t/log-tail.txt"
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/$t.log")
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$work/$t.log")
    cov=$(grep -o 'cov: [0-9]* ft: [0-9]*' "$work/$t.log" | tail -1)
    n=$(ls "$work/new/$t" | wc -l)
    crashes=$(ls "$OUT/$t/crashes" | wc -l)
    echo "$t: rc $rc, ${secs} s, $runs runs, $rate exec/s, $cov, $n new corpus inputs, $crashes crash files" |
        tee -a "$OUT/summary.txt"
    [ "$rc" = 0 ] && [ "$crashes" = 0 ] || status=1
    if [ "$(du -sk "$work/new/$t" | cut -f1)" -lt 5000 ]; then
        tar -cJf "$OUT/$t/corpus.tar.xz" -C "$work/new" "$t"
    fi
done
echo "finished $(date -u); $([ $status = 0 ] && echo 'no crash' || echo 'FAILURES, see crashes/')" |
    tee -a "$OUT/summary.txt"
exit $status
