#!/bin/bash
# Device run 2 (2026-11-28): the kernel pool (VGG_UPDATE_THREADS 4 vs 1) and the first-touch reduce.
source "$(dirname "$0")/setup.sh"
t0=$(date +%s); nproc; git log --oneline -1 2>/dev/null
q() { grep -v '"level":' ; }
echo "== allreduce threads 4 $(date +%T)"
VGG_UPDATE_THREADS=4 timeout 110 node --import tsx bench/allreduce.bench.ts --workers 2,4 --wire fp32 --shards 1,2 --hosted yes --steps 5 --python python3 2>&1 | q | tee $OUT/allreduce-t4.txt
echo "== allreduce threads 1 $(date +%T)"
VGG_UPDATE_THREADS=1 timeout 110 node --import tsx bench/allreduce.bench.ts --workers 2,4 --wire fp32 --shards 1,2 --hosted yes --steps 5 --python python3 2>&1 | q | tee $OUT/allreduce-t1.txt
echo "== allreduce bf16 hosted threads 4 $(date +%T)"
VGG_UPDATE_THREADS=4 timeout 50 node --import tsx bench/allreduce.bench.ts --workers 2,4 --wire bf16 --hosted only --steps 5 --python python3 2>&1 | q | tee $OUT/allreduce-bf16-t4.txt
echo "== scaling threads 4 $(date +%T)"
VGG_UPDATE_THREADS=4 timeout 130 node --import tsx bench/scaling.bench.ts --workers 1,2,4 --steps 5 2>&1 | q | tee $OUT/scaling-t4.txt
echo "== done $(date +%T), $(( $(date +%s) - t0 )) s"
