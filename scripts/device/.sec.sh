mkdir -p $OUT/r; . scripts/device/unpack.sh; unpack cuda-bin/layer; N=$W
$N/itest cuda:: --test-threads 1 > $OUT/r/tests.log 2>&1; echo "tests exit $?"; grep -E "test result|panicked" $OUT/r/tests.log
for lam in 0.5 6; do
ncu -k regex:"clamp_fix_g" -c 2 --section SpeedOfLight --section Occupancy --section WarpStateStats --section SchedulerStats --section SourceCounters --section LaunchStats $N/train_layer --device cuda --dtype bf16 --dims 4096 --tokens 4096 --paths fused --warmup 0 --reps 1 --out-bound $lam > $OUT/r/sec_$lam.txt 2>&1
grep -E "clamp_fix_g|Duration|Throughput|Occupancy|Registers|Warp Cycles Per Issued|Issued Warp|No Eligible|Stall|stall" $OUT/r/sec_$lam.txt | head -60
done
cd $OUT && tar czf r.tgz r && rm -rf r
