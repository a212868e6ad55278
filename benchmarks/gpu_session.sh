#!/usr/bin/env bash
# One short GPU session for issue #19, prepared in advance (a lent GPU comes for minutes,
# not hours; the whole script is meant to finish in under 8 minutes on one H100/H200):
#   1. 64³ phantoms with 512² DRRs, written by several processes (rendered on the CPU: the
#      on-the-fly GPU DRR path of the acquisition issue has not landed);
#   2. both models at 64³ / 512², batch 2, bf16: training step (forward, backward, AdamW) and
#      inference, eager and as one captured CUDA graph, peak memory, ops/step; the 128³
#      config (gpu-128.json) at batch 2 for memory (benchmarks/gpu_path.py steps);
#   3. trains configs/gpu-64.json on the phantoms for TRAIN_S seconds;
#   4. evaluates it on the held-out phantoms against the bundled 32³ model upsampled to 64³
#      (benchmarks/gpu_path.py compare);
#   5. `reconstruct --batch` of 8 held-out pairs, eager and with --cuda-graphs (bundled model,
#      no refinement): seconds per batch and the largest difference between the two volumes;
#   6. the model suite on CUDA (fp32, batch 1: the table docs/BENCHMARKS.md "model (cuda)").
#   QUALITY=1 adds the quality suite at 64³ (optimized vs baseline at equal time, 3 × BUDGET s).
# Each stage has its own time limit, so a slow one cannot take the others' results with it, and
# no limit reaches past TOTAL_S seconds from the start (a stage with under 10 s left is skipped).
# OUT receives a few small files (≤ 25 MB with the trained weights):
#   machine.txt, steps.json, compare.json, reconstruct.txt, gpu64.safetensors (+ gpu64.json config, gpu64.csv metrics),
#   BENCHMARKS.md (the model suite written into a copy), runs.tar.gz (QUALITY=1 only), session.log
#
#   bash benchmarks/gpu_session.sh OUT
#   env: TRAIN_S (s of gpu-64 training, 90), N (phantoms, 300), WORKERS (16), PY (python3),
#        TOTAL_S (s for the whole session without QUALITY: 450, QUICK 1500),
#        BUDGET (s per variant of the QUALITY=1 suite, 100),
#        SITE (extra folder put on PYTHONPATH: a machine without nibabel and monai gets them as
#        `mkdir -p build/gpu_site && cp -r .venv/lib/python3.*/site-packages/{nibabel,monai} build/gpu_site`),
#        DEVICE (cuda), QUICK=1 (tiny sizes: a smoke run of this script on a CPU)
set -u
OUT=${1:?usage: gpu_session.sh OUT}
TRAIN_S=${TRAIN_S:-90}; BUDGET=${BUDGET:-100}; N=${N:-300}; WORKERS=${WORKERS:-16}; PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
SIZE=64; XRAY=512; QUICK_FLAG=""; REPEATS=10; MEM128="--mem128"; TRAIN_SET=(); STEPS_LIMIT=150
if [ -n "${QUICK:-}" ]; then
    # a shared 2-core CPU runs the full-width models' steps in seconds each, not milliseconds
    SIZE=16; XRAY=32; QUICK_FLAG="--quick"; REPEATS=1; MEM128=""; STEPS_LIMIT=600
    # the tiny model of the engine tests, so the smoke run trains in seconds
    TRAIN_SET=(--set model.volume_size=16 --set model.xray_img_size=32 --set model.voxel_dim=32
               --set model.num_heads=2 --set model.xray_feature_dim=32 --set "model.encoder_channels=[8,16,16,32]"
               --set "model.decoder_channels=[16,8]" --set model.key_dim=8 --set training.batch_size=2
               --set data.num_workers=0)
fi
TOTAL_S=${TOTAL_S:-$([ -n "${QUICK:-}" ] && echo 1500 || echo 450)}
WORK=$(mktemp -d)
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${SITE:+:$SITE}${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
X="$PY -m xray2ct.cli"
log() { echo "== $(date +%T) $*"; }
# lim S: S, or what is left of TOTAL_S if less (bash's SECONDS counts from the start)
lim() { local left=$((TOTAL_S - SECONDS)); echo $(( left < $1 ? left : $1 )); }
enough() { [ "$(lim 10)" -ge 10 ] || { log "skipped, under 10 s of TOTAL_S=$TOTAL_S left: $*"; false; }; }
exec > >(tee "$OUT/session.log") 2>&1

log "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/machine.txt"
$PY -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available())" \
    2>&1 | tee -a "$OUT/machine.txt"
cp docs/BENCHMARKS.md "$OUT/BENCHMARKS.md"

log "phantoms: $N at $SIZE³, $XRAY² DRRs, $WORKERS workers"
timeout $(lim 100) $X phantoms --out "$WORK/ph64" --n "$N" --size $SIZE --xray-size $XRAY --workers "$WORKERS" 2>&1 | tail -n 2

log "steps: baseline and optimized at $SIZE³ / $XRAY², batch 2, eager and CUDA graph; gpu-128 memory"
enough steps && timeout $(lim $STEPS_LIMIT) $PY benchmarks/gpu_path.py steps "$OUT/steps.json" --size $SIZE --xray $XRAY --batch 2 \
    --repeats $REPEATS --device $DEVICE $MEM128 2>&1 | grep -v USDT

log "training configs/gpu-64.json for $TRAIN_S s"
enough training && timeout $(lim $((TRAIN_S + 60))) $X train --config configs/gpu-64.json --data "$WORK/ph64" --out "$WORK/gpu64" \
    --device $DEVICE --time-budget "$TRAIN_S" "${TRAIN_SET[@]}" 2>&1 | tail -n 5
for f in last.safetensors best.safetensors config.json metrics.csv; do  # -> gpu64.{safetensors,json,csv}
    [ -f "$WORK/gpu64/$f" ] && cp "$WORK/gpu64/$f" "$OUT/gpu64.${f#*.}"  # best, when there is one, wins
done

log "held-out phantoms: gpu-64 vs the bundled 32³ model upsampled"
enough compare && timeout $(lim 45) $PY benchmarks/gpu_path.py compare "$WORK/gpu64" "$WORK/ph64" "$OUT/compare.json" --device $DEVICE 2>&1 \
    | grep -v USDT

log "reconstruct --batch of 8 held-out pairs on $DEVICE: eager, then --cuda-graphs"
$PY - "$WORK/ph64" "$WORK/pairs" <<'PY'
import json, pathlib, sys
data, pairs = map(pathlib.Path, sys.argv[1:])
pairs.mkdir()
for cid in json.load(open(data / "splits.json"))["test"][:8]:  # the DRRs and their acquisition sidecars
    for f in (data / cid).glob(f"{cid}_*_drr.*"):
        (pairs / f.name).symlink_to(f)
PY
for mode in eager graphs; do
    flag=$([ $mode = graphs ] && echo --cuda-graphs)
    start=$(date +%s%N)
    # the graphs' first call compiles the model (inductor) before it records
    enough "reconstruct $mode" && timeout $(lim $([ $mode = graphs ] && echo 90 || echo 40)) $X reconstruct --batch "$WORK/pairs" --out "$WORK/rec_$mode" \
        --format npy --no-refine --device $DEVICE $flag 2>&1 | tail -n 2
    echo "reconstruct $mode: $(( ($(date +%s%N) - start) / 1000000 )) ms for the batch, model load included" \
        | tee -a "$OUT/reconstruct.txt"
done
$PY -c "import glob, numpy as np; e = sorted(glob.glob('$WORK/rec_eager/*.npy')); \
print('max |graphs - eager| HU over', len(e), 'volumes:', max((abs(np.load(f).astype(float) - \
np.load(f.replace('rec_eager', 'rec_graphs')).astype(float)).max() for f in e), default=None))" 2>&1 \
    | tee -a "$OUT/reconstruct.txt"

log "model suite on $DEVICE"
enough "model suite" && timeout $(lim 90) $X benchmark --suite model --device $DEVICE $QUICK_FLAG --out "$OUT/BENCHMARKS.md" 2>&1

if [ -n "${QUALITY:-}" ]; then
    log "quality suite at $SIZE³: optimized vs baseline, $BUDGET s each"
    # the limit leaves room for data loading: at 512² the baseline's steps outran 8 loader workers (H100)
    timeout $((3 * BUDGET + 150)) $X benchmark --suite quality --device $DEVICE $QUICK_FLAG --data "$WORK/ph64" \
        --config configs/gpu-64.json --variants optimized,baseline --budget "$BUDGET" \
        --runs "$WORK/runs" --out "$OUT/BENCHMARKS.md" 2>&1
    (cd "$WORK" && tar czf "$OUT/runs.tar.gz" --exclude='*.safetensors' --exclude='*.pt' --exclude='tensorboard' runs 2>/dev/null)
fi
du -sh "$OUT"
log "done"
