#!/usr/bin/env bash
# One short GPU check for a lent CUDA machine (about 10 min): identities first, then the HVP
# step benchmark at batch 200 on CUDA, then ~1000 FM+AA+Cov training steps at batch 200 on the
# demo's chignolin data, timed, then a CPU-vs-CUDA check of the atomistic trainer. Results go to $OUT (default ./device-check); copy the figures
# into docs/benchmarks/ with the date, the GPU model and `nvidia-smi` load.
#
#   bash benchmarks/device_check.sh            # after: pip install -e ".[all]" with a CUDA torch
set -euo pipefail
OUT=${OUT:-device-check}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,utilization.gpu --format=csv > "$OUT/gpu.csv" || true
# 1. GPU training is trusted only once the identities pass.
hessid verify --all --json "$OUT/verify.json" > "$OUT/verify.txt"
# 2. HVP step cost, batch 200, absolute times on CUDA.
python benchmarks/hvp_step.py --device cuda --batch 200 --beads 10,35,80,200 --probes 1,4 \
    --methods auto,edges,dense --rounds 3 --json "$OUT/hvp_step_cuda.json" | tee "$OUT/hvp_step_cuda.txt"
# 3. The demo's protein with 2000 frames (AA MD and Term 1 on CUDA), then 1000 FM+AA+Cov steps
#    at batch 200 (the ci demo has only 120 frames, fewer than one batch).
hessid data build --sequence GYDPETGTWG --name chignolin --root "$OUT" > "$OUT/data.txt" 2>&1
hessid data simulate chignolin --root "$OUT" --steps 500000 --stride 250 --platform CUDA \
    --no-progress >> "$OUT/data.txt" 2>&1
hessid targets chignolin --root "$OUT" --probes 4 --platform CUDA --no-progress >> "$OUT/data.txt" 2>&1
DATA="$OUT/chignolin/chignolin.h5"
/usr/bin/time -v hessid train --config examples/train_small.yaml --data.datasets "$DATA" \
    --name gpu-fm-aa-cov --out "$OUT/runs" --data.batch-size 200 --trainer.max-steps 1000 \
    --trainer.early-stopping-patience 0 --trainer.accelerator gpu --no-progress \
    > "$OUT/train.txt" 2> "$OUT/train_time.txt"
tail -n 3 "$OUT/runs/gpu-fm-aa-cov/metrics.csv" > "$OUT/train_last_rows.txt"
# 4. Atomistic mode on CUDA (never run on a GPU here before): 40 GFN2-xTB ethanol structures,
#    E-F-HVP (random, k = 4) for 50 steps on CPU and on CUDA from the same seed; the two
#    metrics.csv files should agree to float32 rounding (compare the last rows).
hessid qm build --smiles CCO --name ethanol --configs 40 --root "$OUT/qm" --workers 4 > "$OUT/qm_build.txt" 2>&1
for dev in cpu cuda; do
    hessid qm train --name "ef_hvp_$dev" --out "$OUT/qm_runs" --data.datasets ethanol --data.root "$OUT/qm" \
        --data.n-train 24 --data.n-val 8 --data.n-test 8 --loss.mode ef_hvp --loss.probe-kind random \
        --loss.n-probes 4 --optim.max-steps 50 --optim.max-epochs 100 --device "$dev" \
        > "$OUT/qm_train_$dev.txt" 2>&1
    tail -n 2 "$OUT/qm_runs/ef_hvp_$dev/metrics.csv" > "$OUT/qm_last_rows_$dev.txt"
done
echo "device check written to $OUT"
