#!/usr/bin/env bash
# M2 with 100 labels for 90 wall-clock minutes: pyrovae's shipped config and Pyro's
# examples/vae/ss_vae_M2.py side by side, one torch thread each on the 2-core machine, each stopped
# by SIGINT at the budget (pyrovae's checkpoint holds every finished epoch). Two watchers record when
# each epoch's line appears (Pyro's example logs no times). Then benchmarks/m2_curves.py draws them.
#
#   bash benchmarks/m2_90min.sh PYRO_EXAMPLE_DIR OUT_DIR [SECONDS]
#
# PYRO_EXAMPLE_DIR: a copy of pyro's examples/vae whose utils/.data/MNISTCached/raw holds the four
# unzipped MNIST files (downloads fail here), with `from visdom import Visdom` and the pyro version
# assert taken out. PYROVAE_DATA_DIR must point at the MNIST files for pyrovae.
set -euo pipefail
example=$(cd "$1" && pwd); out=$2; budget=${3:-5400}
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"; out=$(cd "$out" && pwd)
date -u +%Y-%m-%dT%H:%M:%S > "$out/start.txt"
OMP_NUM_THREADS=1 timeout -s INT "$budget" pyrovae train --config "$root/examples/configs/mnist-m2.toml" \
  --out "$out/pyrovae" --set train.epochs=1000 > "$out/pyrovae.log" 2>&1 &
ours=$!
(cd "$example" && OMP_NUM_THREADS=1 timeout -s INT "$budget" python -u ss_vae_M2.py --seed 0 --aux-loss -alm 46 \
  -enum parallel -sup 100 -zd 50 -hl 500 -lr 0.00042 -b1 0.95 -bs 100 -n 1000 -log "$out/pyro_m2.log" \
  > "$out/pyro_m2.out" 2>&1) &
theirs=$!
watch() {  # watch FILE PATTERN RECORDS: "TIME COUNT" each time the count of PATTERN lines grows
  local n=0 m
  while kill -0 "$ours" 2>/dev/null || kill -0 "$theirs" 2>/dev/null; do
    m=$(grep -c "$2" "$1" 2>/dev/null || true)
    if [ "${m:-0}" -gt "$n" ]; then echo "$(date -u +%Y-%m-%dT%H:%M:%S) $m" >> "$3"; n=$m; fi
    sleep 5
  done
}
watch "$out/pyrovae/metrics.csv" '^[0-9]' "$out/pyrovae_times.txt" &
watch "$out/pyro_m2.log" 'epoch:' "$out/pyro_m2_times.txt" &
wait "$ours" "$theirs" || true
wait
