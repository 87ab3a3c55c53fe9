#!/usr/bin/env bash
# The GPU check of pyrovae: run it on a machine with a CUDA GPU, then copy the figures it prints
# into BENCHMARKS.md ("Scaling to several processes", GPU). CI has no GPU; this script is how the CUDA
# paths get exercised.
#
#   benchmarks/gpu_check.sh            # from the repository root; needs MNIST (PYROVAE_DATA_DIR or the cache)
#   EPOCHS=5 IW=5000 benchmarks/gpu_check.sh
#   DEVICE=cpu EPOCHS=1 IW=20 TEST_SIZE=100 SETS="--set data.subset=2000" benchmarks/gpu_check.sh   # a dry run of the script on a CPU
#
# It: (1) makes .venv with `make install` if it is missing; (2) runs the tests marked `cuda`
# (pytest -m cuda); (3) trains the demo VAE on MNIST on the GPU for $EPOCHS epochs twice,
# train.precision = float32 and bf16, timing each; (4) scores both runs' test sets with the
# IWAE bound, k = $IW (5000: the standard log-likelihood estimate), on the GPU, in chunks;
# (5) with 2+ GPUs, trains once more with torchrun over all of them. Everything goes to
# $OUT (default runs/gpu_check); the summary is printed at the end and kept in $OUT/figures.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

EPOCHS=${EPOCHS:-5}
IW=${IW:-5000}
TEST_SIZE=${TEST_SIZE:-1000}
OUT=${OUT:-runs/gpu_check}
DEVICE=${DEVICE:-cuda}
SETS=${SETS:-}  # more --set options for both trainings
PY=.venv/bin/python

[ -x "$PY" ] || make install
[ "$DEVICE" = cpu ] || "$PY" -c 'import torch, sys; ok = torch.cuda.is_available(); print("torch", torch.__version__, "cuda", torch.version.cuda,
      torch.cuda.get_device_name(0) if ok else "NO GPU"); sys.exit(0 if ok else 1)' \
  || { echo "gpu_check: no CUDA GPU visible to torch; nothing to check" >&2; exit 1; }
mkdir -p "$OUT"
FIG="$OUT/figures.txt"
: > "$FIG"

echo "== pytest -m cuda ($DEVICE)" | tee -a "$FIG"
"$PY" -m pytest -q -p no:cacheprovider -m cuda tests 2>&1 | tail -n 3 | tee -a "$FIG"

train() {  # name precision [launcher...]
  local name=$1 precision=$2; shift 2
  local start end
  start=$(date +%s.%N)
  "$@" -m pyrovae train --config examples/configs/mnist.toml --out "$OUT/$name" --force \
    --set train.epochs="$EPOCHS" --set train.device="$DEVICE" --set train.precision="$precision" $SETS >"$OUT/$name.log" 2>&1
  end=$(date +%s.%N)
  "$PY" - "$OUT/$name" "$start" "$end" <<'PYEOF' | tee -a "$FIG"
import csv, json, sys
run, start, end = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
rows = list(csv.DictReader(open(f"{run}/metrics.csv")))
summary = json.load(open(f"{run}/summary.json"))
epoch_s = [float(r["seconds"]) for r in rows]
n = summary["n_train"]
print(f"{run}: {summary['precision']}, {summary['processes']} process(es) on {summary['device']}; "
      f"{len(rows)} epochs of {n} images; epoch seconds {', '.join(f'{s:.2f}' for s in epoch_s)}; "
      f"{n * len(rows) / sum(epoch_s):.0f} images/s over the epochs (first epoch included), "
      f"{n * (len(rows) - 1) / max(sum(epoch_s[1:]), 1e-9):.0f} without it; "
      f"test ELBO {float(rows[-1]['test_elbo']):.2f}; wall {end - start:.1f} s (start-up and plots included)")
PYEOF
}

evaluate() {  # name
  local start end
  start=$(date +%s.%N)
  "$PY" -m pyrovae evaluate "$OUT/$1" --iw-samples "$IW" --test-size "$TEST_SIZE" --batch-size 100 --json \
    >"$OUT/$1.evaluation.json" 2>"$OUT/$1.evaluate.log"
  end=$(date +%s.%N)
  "$PY" - "$OUT/$1.evaluation.json" "$start" "$end" "$IW" <<'PYEOF' | tee -a "$FIG"
import json, sys
result, start, end, k = json.load(open(sys.argv[1])), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
e = result["estimators"]
iw = e[f"iwae_bound(k={k})"]
print(f"  evaluate ({result['n']} test images, float32): ELBO {e['mc_elbo']['mean']:.2f} ± {e['mc_elbo']['se']:.2f}, "
      f"IWAE(k={k}) {iw['mean']:.2f} ± {iw['se']:.2f} nats; {end - start:.1f} s wall")
PYEOF
}

echo "== MNIST, examples/configs/mnist.toml, $EPOCHS epochs on the GPU" | tee -a "$FIG"
train float32 float32 "$PY"
evaluate float32
train bf16 bf16 "$PY"
evaluate bf16

GPUS=$("$PY" -c 'import torch; print(torch.cuda.device_count())')
[ "$DEVICE" = cuda ] || GPUS=0
if [ "$GPUS" -ge 2 ]; then
  echo "== torchrun over $GPUS GPUs (NCCL), float32" | tee -a "$FIG"
  train "ddp$GPUS" float32 .venv/bin/torchrun --standalone --nproc_per_node="$GPUS"
fi
echo "== figures in $FIG"
