#!/usr/bin/env bash
# Reproduce the results table: every method file, with the variants of the published tables, x seeds x
# settings, each run writing results/<setting>/<method>/seed<k>.json; then results/RESULTS.md and plots.
#
#   bash run_all.sh                                  # JPEG CIFAR-10-LT R=100 from data/cifar10-jpeg, 3 seeds
#   SETTINGS="exp:100 exp:10 step:100" bash run_all.sh
#   SMOKE=1 bash run_all.sh                          # every run tiny: synthetic data, 2 epochs, CPU (tests)
#
# Environment: DATA_DIR (an ImageFolder with train/ and test/) or DATA_FLAGS (e.g. "--dataset cifar10
# --download" for the original CIFAR-10 through torchvision), SEEDS ("0 1 2"), SETTINGS ("exp:100"),
# JOBS (runs at once; 4 eager runs on one GPU give about 3x the throughput of 1), FAST (1: every run with --fast,
# one CUDA graph per training step, the same math ~4x faster on a GPU; 0: the plain eager path; no effect on CPU),
# OUT (results), PYTHON, EXTRA (flags added to every run), ONLY (run only the rows whose script or flags match this
# grep pattern).
# A run whose JSON already exists is skipped, so a killed table run resumes where it stopped; delete a
# JSON (or add EXTRA=--overwrite) to run it again. Logs are appended to, so a resumed run keeps its history. The training seed varies; the data seed stays 0, the
# subset of the official code.
set -euo pipefail
cd "$(dirname "$0")"

SMOKE=${SMOKE:-0}
PYTHON=${PYTHON:-python}
EXTRA=${EXTRA:-}
ONLY=${ONLY:-}
if [ "$SMOKE" = 1 ]; then
  SEEDS=${SEEDS:-0}
  SETTINGS=${SETTINGS:-exp:10}
  JOBS=${JOBS:-2}
  OUT=${OUT:-results/scratch/smoke}
  DATA_FLAGS="--dataset synthetic --epochs 2 --batch-size 64 --eval-every 1 --device cpu"
else
  SEEDS=${SEEDS:-0 1 2}
  SETTINGS=${SETTINGS:-exp:100}
  JOBS=${JOBS:-4}
  FAST=${FAST:-1}
  OUT=${OUT:-results}
  DATA_DIR=${DATA_DIR:-data/cifar10-jpeg}
  DATA_FLAGS=${DATA_FLAGS:-"--dataset imagefolder --data-dir $DATA_DIR"}  # or "--dataset cifar10 --download"
fi

# One row of the table per line: the script in methods/ and its flags (the paper's row in the comment).
ROWS=(
  "erm.py"                                # ERM
  "ldam_drw.py --loss ce"                 # ERM-DRW (CE, class-balanced weights from epoch 160)
  "oversampling.py"                       # RS: class-balanced re-sampling from the start
  "oversampling.py --start-epoch 160"     # DRS: deferred re-sampling
  "undersampling.py"                      # random class-balanced under-sampling
  "class_weights.py"                      # RW: inverse-frequency weights
  "focal.py"                              # Focal, gamma 1
  "class_balanced.py --loss softmax"      # CB softmax, beta 0.9999
  "class_balanced.py --loss focal"        # CB focal, beta 0.9999, gamma 1
  "ldam_drw.py --no-drw"                  # LDAM
  "ldam_drw.py"                           # LDAM-DRW
  "mm_drw.py"                             # MM-DRW
  "mm_drw.py --ldam"                      # MM-LDAM-DRW
  "logit_adjust.py"                       # LA
  "cdt.py"                                # CDT
  "vs_loss.py"                            # VS
  "pcn_sgd.py --variant pcnsgd"           # PCNSGD
  "pcn_sgd.py --variant pcnsgd_o"         # PCNSGD+O
  "sam.py --base ce_drw"                  # CE-DRW + SAM
  "sam.py --base ldam_drw"                # LDAM-DRW + SAM
)

# Several processes at once each with several CPU threads oversubscribe the cores and can run 10x slower
# (eager runs on a GPU are bound by one CPU thread's kernel launches anyway): one thread each by default.
if [ "$JOBS" -gt 1 ]; then export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}; fi
if [ "${FAST:-0}" = 1 ]; then EXTRA="--fast $EXTRA"; fi

jobs_list=()
for row in "${ROWS[@]}"; do
  script=${row%% *}
  if [ -n "$ONLY" ] && ! grep -qE -- "$ONLY" <<<"$row"; then continue; fi  # rows not asked for need no file
  [ -f "methods/$script" ] || { echo "run_all.sh: methods/$script is missing" >&2; exit 1; }
  for setting in $SETTINGS; do
    for seed in $SEEDS; do
      jobs_list+=("$row|${setting%%:*}|${setting##*:}|$seed")
    done
  done
done

total=${#jobs_list[@]}
started=0 finished=0 failed=0
t0=$(date +%s)
mkdir -p "$OUT/logs"
hms() { printf '%d:%02d:%02d' $(($1 / 3600)) $(($1 / 60 % 60)) $(($1 % 60)); }
progress() {
  local now=$(( $(date +%s) - t0 )) eta="?"
  [ "$finished" -gt 0 ] && eta=$(hms $(( now * (total - finished) / finished )))
  echo "[run_all] $finished/$total done, $failed failed, elapsed $(hms $now), eta $eta"
}
reap() {  # wait for one run to end
  if wait -n; then :; else failed=$((failed + 1)); fi
  finished=$((finished + 1))
  progress
}

echo "[run_all] $total runs ($JOBS at a time) -> $OUT; logs in $OUT/logs/"
for job in "${jobs_list[@]}"; do
  IFS='|' read -r row itype ratio seed <<<"$job"
  while [ $((started - finished)) -ge "$JOBS" ]; do reap; done
  started=$((started + 1))
  log="$OUT/logs/$(tr -c 'A-Za-z0-9_.\n-' '_' <<<"${row}_${itype}${ratio}_seed${seed}" | sed 's/_\+/_/g').log"
  echo "[run_all] start $started/$total: methods/$row --imbalance-type $itype --imbalance-ratio $ratio --seed $seed"
  # shellcheck disable=SC2086  # flags are meant to split into words
  "$PYTHON" "methods/${row%% *}" ${row#"${row%% *}"} $DATA_FLAGS --imbalance-type "$itype" \
    --imbalance-ratio "$ratio" --seed "$seed" --out "$OUT" --skip-existing $EXTRA >>"$log" 2>&1 &
done
while [ "$finished" -lt "$started" ]; do reap; done

"$PYTHON" common.py report "$OUT"
echo "[run_all] finished $total runs in $(hms $(( $(date +%s) - t0 ))), $failed failed"
if [ "$failed" -gt 0 ]; then
  echo "[run_all] see the logs of the failed runs: grep -l '^error' $OUT/logs/*.log" >&2
  exit 1
fi
