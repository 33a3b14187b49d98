#!/usr/bin/env bash
# Train GiMeFive on one CUDA GPU inside a fixed time slot (the `device` tool's H200 here),
# then measure the torch CUDA backend (benchmarks/gpu_check.py, short budget).
#
#   gimefive pack-data --data-dir $D/train --csv $D/train_labels.csv -o .gpu/train.pack.npz \
#       --quality 88                                    # on the CPU machine, once
#   bash benchmarks/gpu_train.sh                        # on the GPU machine
#
# Needs only torch, numpy, opencv, safetensors, pyyaml, click and tqdm there: the package
# is imported from this checkout (no pip install). Epochs are set from the throughput
# measured first, so training ends inside TRAIN_BUDGET_S; a SIGINT at the hard limit
# makes the trainer save its state and stop cleanly. Results go to $OUT: the best fp32
# weights split into 15 MB parts (join with `cat best.safetensors.part-* > best.safetensors`),
# run_small.tar (config.yaml, metrics.csv/json, train_throughput.json) and the log.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-runs/gpu_out}"
PACK="${PACK:-.gpu/train.pack.npz}"
RUN="${RUN:-runs/gpu}"
TRAIN_BUDGET_S="${TRAIN_BUDGET_S:-400}"
mkdir -p "$OUT" && OUT="$(cd "$OUT" && pwd)"
exec > >(tee "$OUT/gpu_train.log") 2>&1
export PYTHONUNBUFFERED=1

# import gimefive.train / .export / .pipeline from this checkout, as setup.cfg maps them
for sub in train export pipeline; do ln -sfn "../$sub" "gimefive/$sub"; done
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
gimefive() { python -c 'from gimefive.cli import main; main()' "$@"; }
python -c 'import gimefive.train.loop as m, torch; print("gimefive from", m.__file__,
    "| torch", torch.__version__, "| cuda", torch.cuda.is_available())' || exit 4
command -v nvidia-smi >/dev/null && nvidia-smi -L

t0=$(date +%s)
csv=$(gimefive unpack-data "$PACK" -o /tmp/gimefive_data/train) || exit 5
echo "unpacked to $csv in $(( $(date +%s) - t0 )) s"

python benchmarks/train_throughput.py --steps "${THROUGHPUT_STEPS:-20}" --warmup "${THROUGHPUT_WARMUP:-5}" \
    --batch-size 256 --modes bf16+channels_last,fp32+channels_last \
    -o "$OUT/train_throughput.json" || exit 6
faces=$(python -c "import sys; print(sum(1 for l in open(sys.argv[1]) if l.strip()))" "$csv")
# epochs that fit: budget / (one pass at 85% of the measured rate + 1 s per epoch for
# validation and checkpoints)
EPOCHS="${EPOCHS:-$(python - "$OUT/train_throughput.json" "$faces" "$TRAIN_BUDGET_S" <<'PY'
import json, sys
rate = json.load(open(sys.argv[1]))["results"][0]["images_per_s_median"]
faces, budget = int(sys.argv[2]) * 0.95, float(sys.argv[3])
print(max(1, min(300, int(budget / (faces / (0.85 * rate) + 1.0)))))
PY
)}"
echo "training $EPOCHS epochs in a ${TRAIN_BUDGET_S} s budget"
rm -rf "$RUN"
timeout --signal=INT --kill-after=30 $(( TRAIN_BUDGET_S + 45 )) \
  python -c 'from gimefive.cli import main; main()' train --data-dir "$(dirname "$csv")" \
    --train-csv "$csv" --config configs/train_gpu.yaml --out "$RUN" --epochs "$EPOCHS" \
    ${TRAIN_ARGS:-}
echo "train exit status $? after $(( $(date +%s) - t0 )) s"
# at most 8 files come back from the device tool: the small ones travel as one tar
tar -cf "$OUT/run_small.tar" -C "$RUN" config.yaml metrics.csv metrics.json \
  -C "$OUT" train_throughput.json && rm -f "$OUT/train_throughput.json"
split -b 15M "$RUN/best.safetensors" "$OUT/best.safetensors.part-" || exit 7

if [ "${GPU_CHECK_BUDGET_S:-60}" -gt 0 ] && command -v nvidia-smi >/dev/null; then
  GPU_CHECK_BUDGET_S="${GPU_CHECK_BUDGET_S:-60}" timeout --signal=INT 90 \
    python benchmarks/gpu_check.py || echo "gpu_check exit status $?"
fi
echo "done after $(( $(date +%s) - t0 )) s"
