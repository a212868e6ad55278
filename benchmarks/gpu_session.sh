#!/usr/bin/env bash
# One short GPU session, prepared in advance (a lent GPU comes for minutes, not hours):
#   1. 64³ phantoms with 512² DRRs, written by several processes;
#   2. the quality suite at 64³: configs/gpu-64.json (the cpu-small recipe on the optimized
#      model) against its baseline (the same recipe, optimizations off), equal training wall
#      time each, scored on the test split; every run's metrics.csv records samples/s and
#      peak CUDA memory;
#   3. the model suite on CUDA (parameters, train step, inference, peak memory at 32³ and 64³).
# Each stage has its own time limit, so a slow one cannot take the others' results with it.
#
#   bash benchmarks/gpu_session.sh OUT          # OUT: results (≤ 8 files, as the device tool returns)
#   env: BUDGET (s of training per variant, 100), N (phantoms, 400), WORKERS (16), PY (python3),
#        SITE (extra folder put on PYTHONPATH: a machine without nibabel and monai gets them as
#        `mkdir -p build/gpu_site && cp -r .venv/lib/python3.*/site-packages/{nibabel,monai} build/gpu_site`),
#        DEVICE (cuda), QUICK=1 (tiny sizes: a smoke run of this script on a CPU)
set -u
OUT=${1:?usage: gpu_session.sh OUT}
BUDGET=${BUDGET:-100}; N=${N:-400}; WORKERS=${WORKERS:-16}; PY=${PY:-python3}; DEVICE=${DEVICE:-cuda}
SIZE=64; XRAY=512; QUICK_FLAG=""
if [ -n "${QUICK:-}" ]; then SIZE=16; XRAY=32; QUICK_FLAG="--quick"; fi
WORK=$(mktemp -d)
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${SITE:+:$SITE}${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
X="$PY -m xray2ct.cli"
log() { echo "== $(date +%T) $*"; }

log "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/machine.txt"
$PY -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available())" \
    2>&1 | tee -a "$OUT/machine.txt"
cp docs/BENCHMARKS.md "$OUT/BENCHMARKS.md"

log "phantoms: $N at $SIZE³, $XRAY² DRRs, $WORKERS workers"
timeout 150 $X phantoms --out "$WORK/ph64" --n "$N" --size $SIZE --xray-size $XRAY --workers "$WORKERS" 2>&1 | tail -n 2

log "quality suite at $SIZE³: optimized vs baseline, $BUDGET s each"
# the limit leaves room for data loading: at 512² the baseline's steps outran 8 loader workers (H100)
timeout $((3 * BUDGET + 150)) $X benchmark --suite quality --device $DEVICE $QUICK_FLAG --data "$WORK/ph64" \
    --config configs/gpu-64.json --variants optimized,baseline --budget "$BUDGET" \
    --runs "$WORK/runs" --out "$OUT/BENCHMARKS.md" 2>&1

log "model suite on $DEVICE"
timeout 150 $X benchmark --suite model --device $DEVICE $QUICK_FLAG --out "$OUT/BENCHMARKS.md" 2>&1

log "collecting run files"
(cd "$WORK" && tar czf "$OUT/runs.tar.gz" --exclude='*.safetensors' --exclude='*.pt' --exclude='tensorboard' runs 2>/dev/null)
log "done"
