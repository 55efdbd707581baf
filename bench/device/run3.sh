#!/bin/bash
# Device run 3 (written in the ninth session, not run yet: no device was lent): early commit on 16 cores,
# where a core is idle during the compute; the 2-core box could not say whether it pays (README, "early commit").
# Tenth session: bench:scaling makes a tfjs-node worker's host copies by default; the early-commit runs keep
# them off (their question is the all-reduce), and one more run measures the copies on these cores.
source "$(dirname "$0")/setup.sh"
t0=$(date +%s); nproc; git log --oneline -1 2>/dev/null
q() { grep -v '"level":' ; }
echo "== scaling, overlap, early commit off and on, 290 ms compute $(date +%T)"
timeout 200 node --import tsx bench/scaling.bench.ts --workers 1,2,4 --overlap true --hosted true,false --early-commit false,true --host-copies false --steps 3 2>&1 | q | tee $OUT/scaling-early-290.txt
echo "== the same at 98 ms (an H200's fp32 step) $(date +%T)"
timeout 120 node --import tsx bench/scaling.bench.ts --workers 2,4 --overlap true --hosted true --early-commit false,true --host-copies false --steps 3 --compute-ms 98 2>&1 | q | tee $OUT/scaling-early-98.txt
echo "== scaling with a worker's host copies (heap setting on, then VGG_HEAP_REUSE=false) $(date +%T)"
timeout 100 node --import tsx bench/scaling.bench.ts --workers 1,4 --overlap true --hosted true --host-copies true --steps 3 2>&1 | q | tee $OUT/scaling-host-copies.txt
VGG_HEAP_REUSE=false timeout 100 node --import tsx bench/scaling.bench.ts --workers 1 --overlap true --hosted true --host-copies true --steps 3 2>&1 | q | tee $OUT/scaling-host-copies-no-reuse.txt
echo "== allreduce bf16 (stage-room broadcasts) $(date +%T)"
timeout 60 node --import tsx bench/allreduce.bench.ts --workers 2,4 --wire bf16 --shards 1 --hosted no --steps 3 --python python3 2>&1 | q | tee $OUT/allreduce-bf16.txt
echo "== done $(date +%T), $(( $(date +%s) - t0 )) s"
