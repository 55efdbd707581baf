#!/bin/bash
# Device run 1 (2026-11-28): the matrix at 754200d on the 16-core box.
source "$(dirname "$0")/setup.sh"
t0=$(date +%s)
nproc; node --version; python3 -c 'import torch; print("torch", torch.__version__)'
lscpu | grep -E 'Model name|^CPU\(s\)|Thread|Socket'; free -g | head -2; uname -r
echo "== allreduce $(date +%T)"
timeout 270 node --import tsx bench/allreduce.bench.ts --workers 2,4 --wire fp32,bf16 --shards 1,2 --hosted yes --steps 5 --python python3 2>&1 | tee $OUT/allreduce.txt
echo "== scaling 290 $(date +%T)"
timeout 170 node --import tsx bench/scaling.bench.ts --workers 1,2,4 --steps 5 2>&1 | tee $OUT/scaling290.txt
echo "== scaling 98 $(date +%T)"
timeout 90 node --import tsx bench/scaling.bench.ts --workers 1,2,4 --steps 5 --compute-ms 98 --hosted true --overlap true 2>&1 | tee $OUT/scaling98.txt
echo "== done $(date +%T), $(( $(date +%s) - t0 )) s"
