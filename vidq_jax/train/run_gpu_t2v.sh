#!/usr/bin/env bash
# One device call (one GPU, alone) that trains the text-to-video STDiT3 sprite model, picks its CFG scale and
# scores its FP samples with the video feature network (subject / motion accuracy on the demo prompts, 4 and
# 32 captions of assets/t2v_prompts.npz and all 40 x 4 seeds), then tars the run into $OUT. Run from the
# repository root with `.whl/` carried (only animal-mnist is read; the captions' MiniLM features come from
# assets/t2v_prompts.npz, so no `runs/` caption cache is needed); see README.md beside this file.
#   OUT=<folder> bash vidq_jax/train/run_gpu_t2v.sh
# Knobs (environment): TIME_LIMIT (seconds of compile + training, default 320), MODEL_SIZE (m), BATCH (64),
# STEPS (planned schedule, shortened to fit TIME_LIMIT), LR (3e-4), GUIDANCE (CFG scales to choose from),
# INIT_FROM (an exported model folder to continue from: a second call resumes from the first one's export),
# MOTION_LOSS (weight of the frame-difference loss term, `--motion-loss`; unset = off), TIME_SAMPLING (`--time-sampling`:
# logit-normal | uniform | mixed (the default) | mixed-high),
# DEVICE_EVAL=0 (skip eval-t2v on the device: the whole call trains, and the CFG choice + accuracies run here on CPU with
# `python -m vidq_jax.train eval-t2v <model> --select-guidance 2,3,4,5,7 --write`),
# FEATURES=1 (also retrain the video feature network concurrently, into runs/feature_nets/video), TINY=1 (CPU
# smoke run: tiny model, 3 steps, 2 sampler steps in the evaluation), PYTHON (interpreter, python3).
set -u
OUT=${OUT:?set OUT}
RUN=${RUN:-runs/t2v}
TIME_LIMIT=${TIME_LIMIT:-320}
PY=${PYTHON:-python3}
MODEL_SIZE=${MODEL_SIZE:-m}
BATCH=${BATCH:-64}
STEPS=${STEPS:-60000}
LR=${LR:-3e-4}
GUIDANCE=${GUIDANCE:-2,3,4,5,7}
INIT_FROM=${INIT_FROM:-}
mkdir -p "$OUT"
if ! $PY -c "import animal_mnist" 2>/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONPATH=${PYTHONPATH:-$PWD} PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>&1 | sed 's/^/gpu: /' > "$OUT/t2v.log"
T0=$(date +%s)
if [ "${TINY:-0}" = 1 ]; then
  TRAIN=(--tiny); EVAL=(--steps 2)
else
  TRAIN=(--model-size "$MODEL_SIZE" --batch-size "$BATCH" --steps "$STEPS" --lr "$LR" --time-limit "$TIME_LIMIT"
         --fit-schedule --time-reserve 25); EVAL=()
fi
[ -n "$INIT_FROM" ] && TRAIN+=(--init-from "$INIT_FROM")
[ -n "${MOTION_LOSS:-}" ] && TRAIN+=(--motion-loss "$MOTION_LOSS")
[ -n "${TIME_SAMPLING:-}" ] && TRAIN+=(--time-sampling "$TIME_SAMPLING")
if [ "${FEATURES:-0}" = 1 ]; then
  $PY -m vidq_jax.train features --data video --steps "$([ "${TINY:-0}" = 1 ] && echo 3 || echo 3000)" \
      $([ "${TINY:-0}" = 1 ] && echo --tiny) --out runs/feature_nets/video > "$OUT/features_video.log" 2>&1 &
  PF=$!
fi
$PY -m vidq_jax.train t2v --out "$RUN" "${TRAIN[@]}" >> "$OUT/t2v.log" 2>&1
R1=$?
echo "train: exit $R1 after $(( $(date +%s) - T0 )) s"
RF=0; FEAT=video
if [ "${FEATURES:-0}" = 1 ]; then
  wait $PF; RF=$?; FEAT=runs/feature_nets/video
  echo "features: exit $RF"
  tar -cf "$OUT/feature_nets_video.tar" -C runs/feature_nets video
fi
R2=1
if [ $R1 = 0 ] && [ "${DEVICE_EVAL:-1}" = 0 ]; then
  R2=0; echo "eval: skipped (DEVICE_EVAL=0)"
elif [ $R1 = 0 ]; then
  $PY -m vidq_jax.train eval-t2v "$RUN/model" --select-guidance "$GUIDANCE" --write --features "$FEAT" \
      "${EVAL[@]}" > "$OUT/eval.log" 2>&1
  R2=$?
  grep "eval-t2v" "$OUT/eval.log"
fi
echo "eval: exit $R2 after $(( $(date +%s) - T0 )) s"
# the device tool returns at most 8 files of 16 MiB: the run in one archive (the bf16 export is ~18 MB, so
# it is split into parts below 16 MiB; rejoin with `cat t2v.tar.part* > t2v.tar`); with the logs, eval.json
# and eval_samples.png that is 6 files (8 with FEATURES=1)
cp "$OUT/t2v.log" "$RUN/train.log" 2>/dev/null
tar -cf "$OUT/t2v.tar" -C "$RUN" model loss.png record.json train.log \
    $(cd "$RUN" && ls samples.* eval.json eval_samples.png 2>/dev/null)
split -b 15m -d "$OUT/t2v.tar" "$OUT/t2v.tar.part" && rm "$OUT/t2v.tar"
cp "$RUN/eval.json" "$RUN/eval_samples.png" "$OUT/" 2>/dev/null
exit $(( R1 + R2 + RF ))
