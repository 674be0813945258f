#!/usr/bin/env bash
# The 5-epoch CPU check that made this folder: the rows of run_all.sh's table that no GPU has run yet (and ERM and
# ERM-DRW beside them), each trained for 5 epochs instead of 200 on the JPEG CIFAR-10-LT R=100, eager, fp32, on a CPU.
# It shows that each method file trains on the real data and which way it moves the accuracy from ERM after a short
# schedule; it is not the table (results/RESULTS.md), and its numbers are not comparable with the published ones.
# The schedule is the protocol's shrunk 40x where it can be: lr 0.1 (a 1-epoch warm-up is none), x0.01 from epoch 4
# of 5 (160 of 200; the second decay, at 180, has no whole epoch left), and the DRW switch at epoch 4 where a row
# has one (160 of 200). One seed each, two runs at a time with one thread each.
#
#   bash results/cpu-check-5ep/run.sh     # from the repository's root, JPEG CIFAR-10 in data/cifar10-jpeg
#
# About 2 hours on 2 cores (PCNSGD's two rows, 10 backward passes per step, 45 minutes each, side by side). It ends
# with `python common.py report results/cpu-check-5ep`, which writes RESULTS.md and its plots beside this script.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-results/cpu-check-5ep}
DATA_DIR=${DATA_DIR:-data/cifar10-jpeg}
ROWS=(
  "pcn_sgd.py --variant pcnsgd"           # the longest first
  "pcn_sgd.py --variant pcnsgd_o"
  "sam.py --base ce_drw --drw-epoch 4"
  "sam.py --base ldam_drw --drw-epoch 4"
  "erm.py"
  "ldam_drw.py --loss ce --drw-epoch 4"   # ERM-DRW
  "ldam_drw.py --no-drw"                  # LDAM
  "ldam_drw.py --drw-epoch 4"             # LDAM-DRW
  "mm_drw.py --drw-epoch 4"
  "mm_drw.py --ldam --drw-epoch 4"
  "logit_adjust.py"
  "cdt.py"
  "vs_loss.py"
  # sam_ce_drw ended at chance above (every test image one class); these two tell the radius from the warm-up:
  "sam.py --base ce_drw --drw-epoch 4 --rho 0.1 --name sam_ce_drw_rho0.1"   # CE+SAM's radius instead of 0.5
  "sam.py --base ce_drw --warmup-epochs 5 --drw-epoch 160 --name sam_ce_drw_first5"  # the protocol's first 5 epochs
  "erm.py --warmup-epochs 5 --name erm_first5"                              # ... and ERM's, beside it
)
mkdir -p "$OUT/logs"
one() {  # one row, its log in $OUT/logs/
  local row=$1 script=${1%% *} log
  log="$OUT/logs/$(tr -c 'A-Za-z0-9_.\n-' '_' <<<"$row" | sed 's/_\+/_/g').log"
  # shellcheck disable=SC2086  # the row's flags (last: they may override the schedule) are meant to split into words
  OMP_NUM_THREADS=1 python "methods/$script" --dataset imagefolder --data-dir "$DATA_DIR" --imbalance-ratio 100 \
    --epochs 5 --warmup-epochs 1 --lr-decay-epochs 4 --eval-every 1 --device cpu --out "$OUT" ${row#"$script"} \
    >"$log" 2>&1 && echo "done: $row" || echo "FAILED: $row (see $log)"
}
running=0
for row in "${ROWS[@]}"; do
  if [ "$running" -ge 2 ]; then wait -n; running=$((running - 1)); fi
  one "$row" &
  running=$((running + 1))
done
wait
python common.py report "$OUT"
