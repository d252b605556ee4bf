#!/usr/bin/env bash
# The pending GPU measurements (pallas_kernels/NOTES.md, "Pending on the GPU"), one stage per device call: each stage
# fits the device tool's 10-minute limit and returns at most 8 files under $OUT. Run from the repository root on the
# GPU machine:  OUT=<folder> bash benchmarks/gpu_batch.sh <stage>   (carry .gpufix for the XL stages; see below)
#
#   baseline   the fair bf16 question: the PixArt-XL step and three linears with XLA's default GEMM path and with
#              XLA_FLAGS=--xla_gpu_enable_cublaslt=true (bias in a cuBLASLt epilogue); two processes, same call
#   steps      issue 14's rows in one call: STDiT-XL bf16, viditq-w4a8, viditq-w8a8-qattn (Mosaic attention by auto),
#              viditq-fp8; PixArt-XL bf16 / w8a8 / viditq-w8a8 /
#              viditq-w8a8-qattn / viditq-fp8, and the FP8 linears at M = 32768
#   linear32k  bench_linear at M = 32768 (the half session 7 did not reach) with the group-GEMM rows
#   quality    fused-path quality (simulate vs pallas, viditq-w8a8) on both issue-12 models (t2i, t2v) in one call; the
#              log's phase lines say where the time went; a cut run keeps its finished rows
#   quality-<t2i|t2v|c2i>   the same on one bundled model
#   qvdit      the Q-VDiT vs ViDiT-Q table at size on the bundled video model (32 videos; distillation steps planned
#              to finish within the call, the same for both presets; rows written as they finish)
#   rotate     the rotation kernel's latency tilings (lat_*: prefetch, persistent grids, pipelined row loops) at
#              K = 1152 and 4608 + their device tests; winners go into pallas_kernels/ops/rotate_quantize/configs.json
#   qdit       Q-DiT's group GEMM: gpu_check group_act, the tiling sweep (prints BEST triton_group {...} for
#              pallas_kernels/ops/w4a8_linear/configs.json), then the split rows (quantizer alone, GEMM alone)
#   checks     the kernel checks of everything changed since the last device run (gpu_check --quick + pytest -m gpu)
#   producer   session 9: the fused producers' device tests (LayerNorm + adaLN prologue and bf16 smoothing in the
#              rotating quantizer, the linear on it), the one-GEMM qkv check, the PixArt-XL step A/B in one run with
#              --profile (bf16, w8a8, viditq-w8a8 as in session 8 = producers as XLA passes and three qkv GEMMs, with
#              the fused producers, and with the one-GEMM qkv too), then the qkv GEMM timings
#   producer-stdit   the same A/B on the STDiT-XL step (no profile), then the producer kernels against the passes
#              they replace (bench_rotate --producer)
#   producer2  the producer kernels at K = 1152 again (one-pass LayerNorm statistics, hoisted affine), then the PixArt
#              and STDiT steps (bf16, w8a8, viditq-w8a8) with them
#   tiles8k   session 10: the Mosaic GEMM tile sweep on this GPU at M = 8192 (the H100 had no rows of its own: every shape ran
#              the default (2x128, 128) tile), winners stored into int8_matmul/configs.json as found (--store; the file
#              comes back), then the PixArt-XL step with them: bf16, w8a8, viditq-w8a8 on the default tiles
#              (@gemm_tiles=default) and on the stored ones, viditq-w4a8
#   tiles32k  the same at M = 32768 (fewer candidates) and the STDiT-XL step
#   profile   the kernel-time profile of the PixArt-XL step on the current tables (bf16, w8a8, viditq-w8a8 and
#              viditq-w8a8-fold: the proj inputs' rotation folded offline), then the STDiT-XL step with the M-bucket
#              rotation row (bf16, viditq-w8a8, viditq-w8a8-fold)
#   rotate-tiles   on a GPU without its own rotating-quantizer rows (the H200): the producers on the lat_ tilings at
#              K = 1152 and 4608 (winners go into rotate_quantize/configs.json by hand, as in session 10)
#   peers     the torchao rows of bench_peers (int8 dynamic, FP8 row-wise) compiled per transformer block (regional
#              compilation; their whole-model compile ran past a call in session 8), then compile_bf16 again;
#              carry .whl-peers (diffusers, torchao and their dependencies: pip takes what the machine lacks) and .gpufix
#   close12   session 11, one call: the PixArt-XL profile (bf16, viditq-w8a8, -fold), then the torchao rows
#   close12s  the same in less time (session 12): the profile, cuDNN's FP8 attention rows, the FP8 torchao row alone
#   attn-fp8  session 12: cuDNN's FP8 attention (head 72 padded to 80) against its bf16 flash attention at the model
#              shapes (bench_attention --variants cudnn_fp8), then the STDiT-XL profile (bf16, viditq-w8a8, -fold)
#
# Every command has its own timeout; stdout/stderr go to a log per command; a stage that is cut keeps what it
# measured (the benchmarks write their JSON after every model / shape, or print one JSON line per row).
set -u
OUT=${OUT:?set OUT}
STAGE=${1:?stage: close12 | close12s | attn-fp8 | tiles8k | tiles32k | profile | rotate-tiles | peers | producer | producer-stdit | producer2 | final | quality | qvdit | baseline | steps | linear32k | rotate | qdit | quality-t2i | quality-t2v | quality-c2i | checks}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
[ -d .gpufix ] && export VIDQ_FIXTURES=${VIDQ_FIXTURES:-$PWD/.gpufix}
mkdir -p "$OUT"
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; $PY -c "import jax; print('jax', jax.__version__)"
  date -u; git rev-parse --short HEAD 2>/dev/null; } > "$OUT/env.txt" 2>&1

step() {  # step <seconds> <log name> <command...>
  local t=$1 log=$2; shift 2
  echo "+ $*" >> "$OUT/$log.log"
  timeout "$t" "$@" >> "$OUT/$log.log" 2>&1
  echo "rc=$? after $SECONDS s" >> "$OUT/$log.log"
}

case "$STAGE" in
  baseline)
    LIN=(-m benchmarks.bench_linear --ms 8192 --kns 1152,3456 1152,4608 4608,1152 --only xla_bf16 xla_bf16_nobias pallas_w8a8)
    step 70 linear_default $PY "${LIN[@]}" --json "$OUT/linear_default.json" --md /dev/null
    XLA_FLAGS="--xla_gpu_enable_cublaslt=true ${XLA_FLAGS:-}" step 70 linear_cublaslt $PY "${LIN[@]}" \
      --json "$OUT/linear_cublaslt.json" --md /dev/null
    E2E=(-m benchmarks.bench_e2e --models pixart --variants bf16,w8a8)
    step 215 e2e_default $PY "${E2E[@]}" --out "$OUT/e2e_default.json"
    XLA_FLAGS="--xla_gpu_enable_cublaslt=true ${XLA_FLAGS:-}" step 215 e2e_cublaslt $PY "${E2E[@]}" \
      --out "$OUT/e2e_cublaslt.json"
    rm -f "$OUT"/e2e_*.md ;;
  steps)
    step 300 e2e_stdit $PY -m benchmarks.bench_e2e --models stdit \
      --variants bf16,viditq-w4a8,viditq-w8a8-qattn,viditq-fp8 --out "$OUT/e2e_stdit.json"
    step 190 e2e_pixart $PY -m benchmarks.bench_e2e --models pixart \
      --variants bf16,w8a8,viditq-w8a8,viditq-w8a8-qattn,viditq-fp8 --out "$OUT/e2e_pixart.json"
    step 75 linear32k_fp8 $PY -m benchmarks.bench_linear --ms 32768 --only xla_bf16 pallas_w8a8 pallas_fp8 xla_fp8 \
      --json "$OUT/linear32k_fp8.json" --md /dev/null
    rm -f "$OUT"/e2e_*.md ;;
  linear32k)
    step 540 linear32k $PY -m benchmarks.bench_linear --ms 32768 --only xla_bf16 xla_bf16_nobias pallas_w8a8 \
      pallas_w8a8_zp pallas_w8a8_rot_zp pallas_w4a8 pallas_fp8 xla_fp8 qdit_w4a8_pallas \
      --json "$OUT/linear32k.json" --md "$OUT/linear32k.md" ;;
  qvdit)
    step 585 qvdit $PY -m benchmarks.quality_qvdit --videos 32 --time-limit 530 --no-progress \
      --out "$OUT/quality_qvdit" ;;
  quality|quality-t2i|quality-t2v|quality-c2i)
    M=${STAGE#quality}; M=${M#-}; M=${M:-t2i t2v}
    step 560 "quality_${M// /_}" $PY -m benchmarks.quality_backends --models $M --presets viditq-w8a8 \
      --backends simulate pallas --images 16 --videos 4 --per-class 2 --sqnr-samples 4 \
      --out "$OUT/quality_backends_gpu_${M// /_}" ;;
  rotate)
    step 100 rotate_gpu_tests $PY -m pytest -q -p no:cacheprovider -m gpu tests/kernels/test_rotate_quantize.py \
      -k "prefetch or packed"
    step 220 rotate1152 $PY -m benchmarks.bench_rotate --only lat_ --k 1152 --out "$OUT/rot1152"
    step 240 rotate4608 $PY -m benchmarks.bench_rotate --only lat_ --k 4608 --out "$OUT/rot4608"
    rm -f "$OUT"/rot*/rotate.md ;;
  qdit)
    step 120 group_check $PY -m pallas_kernels.gpu_check --only group_act --log "$OUT/group_check.log"
    step 300 group_sweep $PY -m benchmarks.bench_linear --group-sweep --ms 8192 32768
    step 150 group_rows $PY -m benchmarks.bench_linear --ms 8192 --only qdit_w4a8_pallas qdit_w4a8_gemm \
      qdit_quantize_xla qdit_w4a8_xla pallas_w4a8 --json "$OUT/linear_qdit.json" --md "$OUT/linear_qdit.md" ;;
  producer)
    step 120 producer_tests $PY -m pytest -q -p no:cacheprovider -m gpu tests/kernels/test_rotate_quantize.py \
      tests/kernels/test_linear.py -k "fused_producer"
    step 70 qkv3_check $PY -m pallas_kernels.gpu_check --only qkv3 --log "$OUT/qkv3.log"
    step 300 e2e_pixart $PY -m benchmarks.bench_e2e --models pixart --profile 2 \
      --variants bf16,w8a8,viditq-w8a8@fuse_producer=0+fuse_splits=0,viditq-w8a8@fuse_splits=0,viditq-w8a8 \
      --out "$OUT/e2e_pixart.json"
    step 60 qkv3_timing $PY -m benchmarks.bench_qkv_split
    rm -f "$OUT"/e2e_*.md ;;
  producer-stdit)
    step 440 e2e_stdit $PY -m benchmarks.bench_e2e --models stdit \
      --variants bf16,viditq-w8a8@fuse_producer=0+fuse_splits=0,viditq-w8a8@fuse_splits=0,viditq-w8a8 \
      --out "$OUT/e2e_stdit.json"
    step 120 producer_bench $PY -m benchmarks.bench_rotate --producer --out "$OUT/producer"
    rm -f "$OUT"/e2e_*.md ;;
  producer2)  # session 9, after the first measurements: one-pass LayerNorm statistics, the K = 1152 affine hoisted
    step 75 producer_bench $PY -m benchmarks.bench_rotate --producer --k 1152 --out "$OUT/producer"
    step 190 e2e_pixart $PY -m benchmarks.bench_e2e --models pixart --variants bf16,w8a8,viditq-w8a8 \
      --out "$OUT/e2e_pixart.json"
    step 300 e2e_stdit $PY -m benchmarks.bench_e2e --models stdit --variants bf16,viditq-w8a8,w8a8 \
      --out "$OUT/e2e_stdit.json"
    rm -f "$OUT"/e2e_*.md ;;
  final)  # session 9's last call: the producers on other tilings (K = 1152; exact checks now), then the fused-path
    # quality on the final kernels
    step 230 producer_sweep $PY -m benchmarks.bench_rotate --producer --k 1152 --only bm4_fast,bm16_fast,_pf \
      --out "$OUT/producer"
    step 250 quality_final $PY -m benchmarks.quality_backends --models t2i t2v --presets viditq-w8a8 \
      --backends simulate pallas --images 16 --videos 4 --per-class 2 --sqnr-samples 4 \
      --out "$OUT/quality_backends_gpu_t2i_t2v" ;;
  tiles8k|tiles32k)
    CANDS=(ws:64,128,128,3,0,chain ws:64,192,128,3,0,chain ws:64,192,128,4,0,chain ws:128,128,128,3,0,chain
           ws:128,192,128,2,1)
    if [ "$STAGE" = tiles8k ]; then
      M=8192; T=(300 290); CANDS+=(ws:64,128,128,4,1 ws:64,192,128,4,1 ws:64,256,128,3,0,chain ws:128,128,128,4,1
                                   ws:64,96,128,4,1 ws:64,64,128,4,1 ws:64,192,64,6,0,chain ws:64,128,64,6,0,chain)
      # (the last four, added after session 10: narrower tiles and tk = 64 for K = N = 1152, still at 514 TOPS)
      E2E=(--models pixart --variants bf16,w8a8,viditq-w8a8@gemm_tiles=default,viditq-w8a8,viditq-w4a8)
    else
      M=32768; T=(150 430)
      E2E=(--models stdit --variants bf16,w8a8,viditq-w8a8@gemm_tiles=default,viditq-w8a8,viditq-w4a8)
    fi
    step "${T[0]}" "gemm_sweep$M" $PY -m benchmarks.bench_linear --sweep --ms $M --cands "${CANDS[@]}" --store \
      --sweep-json "$OUT/gemm_sweep$M.json"
    cp pallas_kernels/ops/int8_matmul/configs.json "$OUT/int8_matmul_configs.json"
    step "${T[1]}" "e2e_$M" $PY -m benchmarks.bench_e2e "${E2E[@]}" --out "$OUT/e2e_$M.json"
    rm -f "$OUT"/e2e_*.md ;;
  profile)
    step 260 e2e_pixart $PY -m benchmarks.bench_e2e --models pixart --profile 2 \
      --variants bf16,w8a8,viditq-w8a8,viditq-w8a8-fold --out "$OUT/e2e_pixart.json"
    step 320 e2e_stdit $PY -m benchmarks.bench_e2e --models stdit --profile 1 --variants bf16,viditq-w8a8,viditq-w8a8-fold \
      --out "$OUT/e2e_stdit.json"
    rm -f "$OUT"/e2e_*.md ;;
  attn-fp8)
    step 150 attn_fp8 $PY -m benchmarks.bench_attention --variants cudnn_fp8 \
      --shapes pixart1024,stdit-spatial,pixart2048,stdit3-720p --out "$OUT/attn"
    rm -f "$OUT"/attn/*.md
    step 400 e2e_stdit $PY -m benchmarks.bench_e2e --models stdit --profile 1 --variants bf16,viditq-w8a8,viditq-w8a8-fold \
      --out "$OUT/e2e_stdit.json"
    rm -f "$OUT"/e2e_*.md ;;
  rotate-tiles)
    step 250 p1152 $PY -m benchmarks.bench_rotate --producer --k 1152 --only bm4_fast,lat_ --out "$OUT/p1152"
    step 250 p4608 $PY -m benchmarks.bench_rotate --producer --k 4608 --only lat_,merge --out "$OUT/p4608"
    rm -f "$OUT"/p*/rotate.md ;;
  peers|close12|close12s)
    # close12 (session 11, one call when machines are scarce): the PixArt-XL profile (bf16, viditq-w8a8 and its fold
    # variant) first, then the torchao rows in what is left of the call; close12s (session 12, under 9 minutes of
    # device time left): the profile, cuDNN's FP8 attention at two shapes, then the FP8 torchao row alone
    if [ "$STAGE" != peers ]; then
      step 230 e2e_pixart $PY -m benchmarks.bench_e2e --models pixart --profile 1 \
        --variants bf16,viditq-w8a8,viditq-w8a8-fold --out "$OUT/e2e_pixart.json"
      rm -f "$OUT"/e2e_*.md; PEERS=(330 compile_fp8row,compile_int8dq 300 --project-bf16-from "$OUT/e2e_pixart.json")
      [ -s "$OUT/e2e_pixart.json" ] || PEERS=("${PEERS[@]:0:3}")
      if [ "$STAGE" = close12s ]; then
        step 90 attn_fp8 $PY -m benchmarks.bench_attention --variants cudnn_fp8 --shapes pixart1024,stdit-spatial \
          --iters 5 --out "$OUT/attn"
        rm -f "$OUT"/attn/*.md; PEERS_BUDGET=${PEERS_BUDGET:-150}; PEERS_METHODS=${PEERS_METHODS:-compile_fp8row}
      fi
    else
      PEERS=(580 compile_fp8row,compile_int8dq,compile_bf16 540)
    fi
    # a shorter call (little device time left): PEERS_BUDGET=<s> [PEERS_METHODS=a,b]
    [ -n "${PEERS_BUDGET:-}" ] && PEERS=($((PEERS_BUDGET + 40)) "${PEERS_METHODS:-${PEERS[1]}}" "$PEERS_BUDGET" "${PEERS[@]:3}")
    # into the machine's own environment (bare, given back after the session): pip takes from .whl-peers only what
    # that environment lacks; if its resolver finds something missing, the older way: diffusers, torchao and every
    # carried wheel whose distribution is not installed, without dependency checks, on PYTHONPATH
    if ! $PY -m pip install -q --no-index --no-compile --no-cache-dir --find-links .whl-peers diffusers torchao \
        > "$OUT/peers_install.log" 2>&1; then
      for w in .whl-peers/*.whl; do
        d=$(basename "$w" | cut -d- -f1)
        case "$d" in diffusers|torchao) ;; *) $PY -c "import importlib.metadata as m; m.version('$d')" 2>/dev/null && continue ;; esac
        $PY -m pip install -q --no-deps --no-compile --no-cache-dir --target /tmp/peers "$w" >> "$OUT/peers_install.log" 2>&1
      done
      export PYTHONPATH="/tmp/peers:${PYTHONPATH:-}"
    fi
    step "${PEERS[0]}" peers $PY -m benchmarks.bench_peers \
      --methods "${PEERS[1]}" --budget "${PEERS[2]}" "${PEERS[@]:3}" --out "$OUT/peers.json" ;;
  checks)
    step 240 checks $PY -m pallas_kernels.gpu_check --quick --log "$OUT/gpu_check.log"
    step 240 pytest_gpu $PY -m pytest -q -p no:cacheprovider -m gpu tests/kernels ;;
  *) echo "unknown stage $STAGE"; exit 2 ;;
esac
ls "$OUT"
