#!/usr/bin/env bash
# Issue 15's quiet-machine measurements in one go (docs/training.md, "HVP cost"): run it with
# nothing else on the machine (check `uptime` first; the load is written beside every figure).
#   bash benchmarks/hvp_quiet_runs.sh OUT_DIR        # ≈ 45–60 min on the 2-core machine
# 1. the reference sweep (beads 5–200 × batch 16, 64 × k 1, 4, 8; 5 rounds; 2 threads), written
#    into docs/training.md between the hvp_step markers;
# 2. the crossover: edges and dense side by side (k 1, 4; 5 rounds) at batch 16 for every size
#    and at batch 64 up to 35 beads (the dense grid of 80–200 beads × 64 is too big to matter);
#    and the small sizes where the op count decides (5, 10, 20 beads × batch 16, 32, 64; k 1, 4, 8;
#    7 rounds), which set choose_hvp_method's DENSE_MIN_BEADS;
# 3. profiles of the k = 4 step at 5 × 16, 35 × 16 and 200 × 16 (which op, what fraction).
set -euo pipefail
out=${1:?usage: hvp_quiet_runs.sh OUT_DIR}
mkdir -p "$out"
here=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python}
uptime | tee "$out/uptime_before.txt"
OMP_NUM_THREADS=2 "$py" "$here/benchmarks/hvp_step.py" --rounds 5 --threads 2 \
    --json "$out/hvp_step.json" --docs "$here/docs/training.md" | tee "$out/hvp_step.txt"
OMP_NUM_THREADS=2 "$py" "$here/benchmarks/hvp_step.py" --batch 16 --probes 1,4 --methods edges,dense \
    --rounds 5 --threads 2 --json "$out/hvp_crossover.json" | tee "$out/hvp_crossover.txt"
OMP_NUM_THREADS=2 "$py" "$here/benchmarks/hvp_step.py" --beads 5,10,35 --batch 64 --probes 1,4 \
    --methods edges,dense --rounds 5 --threads 2 --json "$out/hvp_crossover_b64.json" | tee "$out/hvp_crossover_b64.txt"
OMP_NUM_THREADS=2 "$py" "$here/benchmarks/hvp_step.py" --beads 5,10,20 --batch 16,32,64 --probes 1,4,8 \
    --methods edges,dense --rounds 7 --threads 2 --json "$out/hvp_crossover_small.json" | tee "$out/hvp_crossover_small.txt"
for size in "5 16" "35 16" "200 16"; do
    set -- $size
    OMP_NUM_THREADS=2 "$py" "$here/benchmarks/hvp_step.py" --beads "$1" --batch "$2" --probes 4 \
        --methods edges,dense --rounds 3 --threads 2 --profile \
        --json "$out/hvp_profile_${1}x${2}.json" | tee "$out/hvp_profile_${1}x${2}.txt"
done
uptime | tee "$out/uptime_after.txt"
