#!/usr/bin/env bash
# Reproduce the results table: every method file, with the variants of the published tables, x seeds x
# settings, each run writing results/<setting>/<method>/seed<k>.json; then results/RESULTS.md and plots.
#
#   bash run_all.sh                                  # JPEG CIFAR-10-LT R=100 from data/cifar10-jpeg, 3 seeds
#   SETTINGS="exp:100 exp:10 step:100" bash run_all.sh
#   DEADLINE=600 bash run_all.sh                     # end within 10 minutes (runs that would not: next time)
#   SMOKE=1 bash run_all.sh                          # every run tiny: synthetic data, 2 epochs, CPU (tests); its
#                                                    # defaults: SEEDS 0, SETTINGS exp:10, JOBS 2, FAST 0,
#                                                    # OUT results/scratch/smoke
#   bash run_all.sh --dry-run                        # the plan only: each run done, part-done or to run, the ETA
#   bash run_all.sh --help                           # this text
#
# Environment (a value first in parentheses is the default): DATA_DIR (data/cifar10-jpeg: an ImageFolder with
# train/ and test/) or DATA_FLAGS (e.g. "--dataset cifar10 --download" for the original CIFAR-10 through
# torchvision), SEEDS ("0 1 2"), SETTINGS ("exp:100"), JOBS (4: runs at once; 4 eager runs under MPS gave 3.6x the
# throughput of 1 on an H200: results/SPEED.md; with more than 1, each run gets OMP_NUM_THREADS=1 unless it is
# set), FAST (1: every run with --fast, one CUDA graph per training step, the same math 4.6x faster per epoch
# there; 0: the plain eager path; no effect on CPU), MPS (0: off; 1: run under a CUDA MPS daemon, started here and
# stopped at the end, so that the kernels of the JOBS runs can share the GPU at once instead of taking turns),
# DEADLINE (none; seconds: no run starts that is expected to end later, judged by the wall time of the same
# method's finished runs, or for a method never run as an ERM run (by the finished runs of every method but
# undersampling) times the passes its step needs (SAM 2, PCNSGD (1 + 2C) / 3), each scaled to the run's epochs,
# counting only runs made on the same path (the CPU, or on a GPU the same --fast or eager and precision; a PCNSGD
# row's the same PCN_CLASS_GRADS); the rest is left for the next invocation; a run still going at the deadline is
# stopped there),
# CHECKPOINT_EVERY (10: every run saves its state every 10 epochs under $OUT/checkpoints/ and resumes from it when
# run again, so a killed run loses at most 10 epochs; under DEADLINE, once every run that can end in time has
# started, a free slot trains a deferred run up to the checkpoints it can reach, so the GPU is not idle at the end
# of a window and a run longer than the whole window ends over several invocations; 0: off),
# OUT (results), PYTHON (python), EXTRA (none; flags added to every run, after its own; not --seed,
# --imbalance-type/-ratio or --out, which SEEDS, SETTINGS and OUT set; one that changes what the runs train, e.g.
# --epochs 5, needs an OUT of its own: a JSON in OUT of other training arguments stops run_all.sh before anything
# starts), ONLY (none: every row; else only the rows whose script or flags match this grep -E pattern), NEW_RUN_S
# (none; seconds of one ERM run, for DEADLINE and --dry-run while no finished run but undersampling's measures one,
# times the passes a row's step needs; 0: none; .ci/gpu-session sets it from the benchmark's projection),
# PCN_CLASS_GRADS (loop: the PCNSGD rows compute their C per-class gradients with C backward passes; batched: with
# one batched backward, the same numbers in fewer, larger kernels; .ci/gpu-session sets it from the benchmark, which
# times both on the GPU), IMBALANCE_REF_GIT_COMMIT (the commit to record where this folder is not a git checkout,
# as on a GPU machine the working tree was copied to).
# Order: the runs a checkpoint holds part of first, then setting by setting, seed 0 of every row first, so that a
# stopped run leaves a whole one-seed table.
# A run whose JSON already exists is skipped, so a killed or DEADLINE-stopped table run resumes where it stopped;
# delete a JSON to run it again. Logs are appended to, so a resumed run keeps its
# history. Each invocation appends a line to $OUT/run_all.jsonl (wall time, runs, JOBS/FAST/MPS/PCN_CLASS_GRADS),
# which the report sums. The training seed varies; the data seed stays 0, the subset of the official code.
set -euo pipefail
set -f  # no pathname expansion: DATA_FLAGS and EXTRA are split into words, as the plan reads them, never globbed
# Its settings come from the environment (above); the only arguments are --dry-run and --help.
DRY_RUN=0
for arg in "$@"; do
  case "$arg" in
    -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -n|--dry-run) DRY_RUN=1 ;;
    *) echo "run_all.sh: unknown argument '$arg': the settings are environment variables (e.g. SEEDS=0 JOBS=2" \
         "bash run_all.sh); the only arguments are --dry-run and --help" >&2; exit 1 ;;
  esac
done
cd "$(dirname "$0")"

SMOKE=${SMOKE:-0}
PYTHON=${PYTHON:-python}
EXTRA=${EXTRA:-}
ONLY=${ONLY:-}
DEADLINE=${DEADLINE:-}
if [ "$SMOKE" = 1 ]; then
  [ -z "${DATA_FLAGS:-}" ] || echo "run_all.sh: note: SMOKE=1 trains on its own synthetic set; DATA_FLAGS is not used" >&2
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
  MPS=${MPS:-0}
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

# Numbers and switches of the environment, checked before anything starts (bash's own message would not say which).
whole() {  # whole() NAME MIN: $NAME is a whole number >= MIN
  [[ "${!1}" =~ ^[0-9]+$ ]] && [ "${!1}" -ge "$2" ] ||
    { echo "run_all.sh: $1 must be a whole number >= $2, got '${!1}'" >&2; exit 1; }
}
CHECKPOINT_EVERY=${CHECKPOINT_EVERY:-10}
whole JOBS 1; whole CHECKPOINT_EVERY 0
[ -z "$DEADLINE" ] || whole DEADLINE 0
[ -z "${NEW_RUN_S:-}" ] || whole NEW_RUN_S 0
for v in SMOKE FAST MPS; do
  case "${!v:-0}" in 0|1) ;; *) echo "run_all.sh: $v must be 0 or 1, got '${!v}'" >&2; exit 1 ;; esac
done
PCN_CLASS_GRADS=${PCN_CLASS_GRADS:-loop}
case "$PCN_CLASS_GRADS" in loop|batched) ;; *) echo "run_all.sh: PCN_CLASS_GRADS must be loop or batched, got" \
  "'$PCN_CLASS_GRADS'" >&2; exit 1 ;; esac

# Several processes at once each with several CPU threads oversubscribe the cores and can run 10x slower
# (eager runs on a GPU are bound by one CPU thread's kernel launches anyway): one thread each by default.
if [ "$JOBS" -gt 1 ]; then export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}; fi
if [ "${FAST:-0}" = 1 ]; then EXTRA="--fast $EXTRA"; fi
# a run killed part-way (a deadline, a time limit) goes on from its last checkpoint next time
[ "$CHECKPOINT_EVERY" -gt 0 ] && EXTRA="--checkpoint-every $CHECKPOINT_EVERY --resume $EXTRA"

only_rc=0; grep -qE -- "$ONLY" <<<"" 2>/dev/null || only_rc=$?  # 1: no match, 2: not a pattern
[ "$only_rc" -le 1 ] || { echo "run_all.sh: ONLY='$ONLY' is not an extended regular expression (grep -E)" >&2; exit 1; }
for v in SEEDS SETTINGS; do [ -n "${!v// /}" ] || { echo "run_all.sh: $v is empty: nothing to run" >&2; exit 1; }; done
for seed in $SEEDS; do
  [[ "$seed" =~ ^[0-9]+$ ]] || { echo "run_all.sh: SEEDS='$SEEDS': each seed is a whole number, seeds separated by" \
    "spaces, e.g. SEEDS=\"0 1 2\"" >&2; exit 1; }
done
jobs_list=()
for setting in $SETTINGS; do  # TYPE:RATIO, e.g. exp:100
  [[ "$setting" =~ ^(exp|step|none):[^:,|]+$ ]] || { echo "run_all.sh: SETTINGS='$SETTINGS': each setting is" \
    "TYPE:RATIO (exp, step or none), settings separated by spaces, e.g. SETTINGS=\"exp:100 step:10\"" >&2; exit 1; }
  for seed in $SEEDS; do
    for row in "${ROWS[@]}"; do
      script=${row%% *}
      if [ -n "$ONLY" ] && ! grep -qE -- "$ONLY" <<<"$row"; then continue; fi  # rows not asked for need no file
      [ -f "methods/$script" ] || { echo "run_all.sh: methods/$script is missing" >&2; exit 1; }
      jobs_list+=("$row|${setting%%:*}|${setting##*:}|$seed")
    done
  done
done
if [ "${#jobs_list[@]}" -eq 0 ]; then
  echo "run_all.sh: ONLY='$ONLY' matches no row of the table; the rows:" >&2
  printf '  %s\n' "${ROWS[@]}" >&2
  exit 1
fi

# One line per job: "<done 0|1> <seconds the method's finished runs on this path took, scaled to its epochs, or
# what its own checkpoint's epochs took; -1: unknown> <epochs its checkpoint holds> <epochs> <seconds of an ERM
# run by every method's finished runs, -1: none> <the passes its step needs x 1000> <1: its run, once ended,
# measures an ERM run; 0: not, undersampling's> <results JSON>"; a run made with fewer than JOBS at once counts
# JOBS / its number times longer. This also checks every job's flags before anything trains.
# The plan gets the rows as they run (as_run): a PCNSGD run of the other --class-grads is no measure of its speed.
as_run() {  # a row as it runs: a PCNSGD row with PCN_CLASS_GRADS, which is not part of what it trains (the same g_l
  # either way: the same logs, results folder and checkpoints), only of its speed (the plan's estimates)
  if [ "${1%% *}" = pcn_sgd.py ] && [ "$PCN_CLASS_GRADS" != loop ]; then echo "$1 --class-grads $PCN_CLASS_GRADS"
  else echo "$1"; fi
}
# shellcheck disable=SC2086  # flags are meant to split into words
mapfile -t plan < <(for job in "${jobs_list[@]}"; do echo "$(as_run "${job%%|*}")|${job#*|}"; done |
  "$PYTHON" common.py plan --out "$OUT" --jobs "$JOBS" --extra="$EXTRA" -- $DATA_FLAGS)
[ "${#plan[@]}" -eq "${#jobs_list[@]}" ] || { echo "run_all.sh: could not plan the runs (see above)" >&2; exit 1; }

logname() { echo "$OUT/logs/$(tr -c 'A-Za-z0-9_.\n-' '_' <<<"${1}_${2}${3}_seed${4}" | sed 's/_\+/_/g').log"; }
total=${#jobs_list[@]}
todo=() partial=() done_before=0
declare -A est  # row|setting -> expected seconds of one run (from earlier runs, then from this invocation's)
declare -A left epochs_of erm_run passes measures  # job -> per mille of its epochs still to train (a checkpoint
# holds the rest); its epochs; an ERM run's seconds by the finished runs (-1: none); the passes its step needs x 1000;
# 1 where its run measures an ERM run
declare -A erm_live  # setting -> an ERM run's seconds by the whole runs of this invocation (the longest)
for i in "${!jobs_list[@]}"; do
  read -r done seconds epochs_done epochs erm_run[$i] passes[$i] measures[$i] _ <<<"${plan[$i]}"
  left[$i]=$(( 1000 * (epochs - epochs_done) / epochs )) epochs_of[$i]=$epochs
  IFS='|' read -r row itype ratio seed <<<"${jobs_list[$i]}"
  if [ "$done" = 1 ]; then done_before=$((done_before + 1))
  elif [ "$epochs_done" -gt 0 ]; then partial+=("$i")
  else todo+=("$i"); fi
  [ "$seconds" -ge 0 ] && { [ "${est["$row|$itype$ratio"]:--1}" -ge "$seconds" ] || est["$row|$itype$ratio"]=$seconds; }
done
# the runs a checkpoint holds part of go first: they end soonest, and their checkpoints (~3.8 MB each) do not pile up
todo=(${partial[@]+"${partial[@]}"} ${todo[@]+"${todo[@]}"})

hms() { printf '%d:%02d:%02d' $(($1 / 3600)) $(($1 / 60 % 60)) $(($1 % 60)); }
estimate() {  # seconds of a whole run of job $1: its method's earlier runs; else an ERM run (by every method's
  # finished runs: the plan's, or this invocation's in the setting, else in any setting, the longer; else NEW_RUN_S)
  # times the passes its step needs; else the longest run known
  local key whole e ref live
  IFS='|' read -r row itype ratio seed <<<"${jobs_list[$1]}"
  key="$row|$itype$ratio" whole=${est[$key]:-}
  if [ -z "$whole" ]; then
    ref=${erm_run[$1]} live=${erm_live[$itype$ratio]:--1}
    if [ "$live" -lt 0 ]; then for e in "${erm_live[@]}"; do [ "$e" -le "$live" ] || live=$e; done; fi  # any setting's
    if [ "$live" -gt "$ref" ]; then ref=$live; fi
    if [ "$ref" -lt 0 ] && [ "${NEW_RUN_S:-0}" -gt 0 ]; then ref=$NEW_RUN_S; fi
    if [ "$ref" -ge 0 ]; then whole=$(( ref * ${passes[$1]} / 1000 )); fi
  fi
  if [ -z "$whole" ]; then
    for e in "${est[@]}"; do [ "$e" -gt "${whole:--1}" ] && whole=$e; done
  fi
  echo "$whole"
}
if [ "$DRY_RUN" = 1 ]; then  # the plan only: nothing trains, no log, run_all.jsonl or report is written
  echo "[run_all] dry run: $total runs, $done_before done, ${#partial[@]} part-done (a checkpoint holds some epochs)," \
    "$(( ${#todo[@]} - ${#partial[@]} )) to run from the start, in this order ($JOBS at a time) -> $OUT"
  sum=0 known=0 longest=0
  for i in "${!jobs_list[@]}"; do
    IFS='|' read -r row itype ratio seed <<<"${jobs_list[$i]}"
    read -r done _ <<<"${plan[$i]}"
    [ "$done" = 1 ] && echo "  done      methods/$row --imbalance-type $itype --imbalance-ratio $ratio --seed $seed"
  done
  for i in "${todo[@]}"; do
    IFS='|' read -r row itype ratio seed <<<"${jobs_list[$i]}"
    read -r _ _ epochs_done epochs _ <<<"${plan[$i]}"
    w=$(estimate "$i") e="no estimate: no run on this path has ended yet"
    if [ -n "$w" ]; then
      w=$(( w * ${left[$i]} / 1000 )) known=$((known + 1))
      sum=$(( sum + w )) longest=$(( w > longest ? w : longest )) e="~$w s"
      if [ -n "${est["$row|$itype$ratio"]:-}" ]; then e+=", as this row's earlier runs"
      elif [ "${erm_run[$i]}" -ge 0 ] || [ "${NEW_RUN_S:-0}" -gt 0 ]; then
        e+=", as $([ "${erm_run[$i]}" -ge 0 ] && echo "the runs so far" || echo NEW_RUN_S) by the passes its step needs"
      else e+=", as the longest run known"; fi
    fi
    state="to run  " && [ "$epochs_done" -gt 0 ] && state="part-done"
    echo "  $state methods/$(as_run "$row") --imbalance-type $itype --imbalance-ratio $ratio --seed $seed " \
      "($([ "$epochs_done" -gt 0 ] && echo "epochs $epochs_done-$epochs" || echo "$epochs epochs"), $e)"
  done
  if [ "$known" -gt 0 ]; then
    echo "[run_all] expected wall time: $(hms $(( sum / JOBS > longest ? sum / JOBS : longest ))) at $JOBS at a time" \
      "(the sum of the estimates above over JOBS, or the longest if more; $(( ${#todo[@]} - known )) runs without one" \
      "count 0)"
  elif [ "${#todo[@]}" -gt 0 ]; then
    echo "[run_all] no estimate of the wall time: no run on this path (the CPU, or on a GPU the same --fast or eager" \
      "and precision) has ended yet (NEW_RUN_S=<seconds of one ERM run> sets one)"
  fi
  exit 0
fi

started=0 finished=0 failed=0 deferred=0 cut=0
t0=$(date +%s)
mkdir -p "$OUT/logs"
durations="$OUT/logs/.durations.$$"  # "<seconds> <1: from epoch 0> <passes x 1000, 0: no measure of an ERM run>
# <setting> <row|setting>" of each run of this invocation (the row last: it holds spaces)
: >"$durations"
trap 'rm -f "$durations"' EXIT  # (replaced by the MPS trap below, which removes it too)
progress() {
  local now=$(( $(date +%s) - t0 )) eta="?"
  [ "$finished" -gt 0 ] && eta=$(hms $(( now * (${#todo[@]} - deferred - finished) / finished )))
  echo "[run_all] $finished/$(( ${#todo[@]} - deferred )) done, $failed failed$([ "$cut" -gt 0 ] && echo ", $cut stopped at the deadline"), elapsed $(hms $now), eta $eta"
}
reap() {  # wait for one run to end
  local rc=0
  wait -n || rc=$?
  if [ "$rc" = 124 ]; then cut=$((cut + 1)); elif [ "$rc" != 0 ]; then failed=$((failed + 1)); fi
  finished=$((finished + 1))
  while read -r seconds whole per setting key; do  # whole runs only
    if [ "$whole" = 1 ]; then
      est["$key"]=$seconds
      if [ "$per" -gt 0 ] && [ $(( seconds * 1000 / per )) -gt "${erm_live[$setting]:--1}" ]; then
        erm_live[$setting]=$(( seconds * 1000 / per ))
      fi
    fi
  done <"$durations"
  progress
}
session() {  # append this invocation to $OUT/run_all.jsonl (the report sums them)
  printf '{"date_utc": "%s", "wall_s": %d, "runs_planned": %d, "runs_done_before": %d, "runs_finished": %d, "failed": %d, "cut_at_deadline": %d, "left_for_later": %d, "jobs": %d, "fast": %s, "mps": %s, "pcn_class_grads": "%s", "deadline_s": %s, "settings": "%s", "seeds": "%s", "git_commit": "%s", "smoke": %s}\n' \
    "$(date -u +%Y-%m-%dT%H:%M:%SZ)" $(( $(date +%s) - t0 )) "$total" "$done_before" "$finished" "$failed" "$cut" "$deferred" \
    "$JOBS" "$([ "${FAST:-0}" = 1 ] && echo true || echo false)" "$([ "$IMBALANCE_REF_MPS" = 1 ] && echo true || echo false)" \
    "$PCN_CLASS_GRADS" "${DEADLINE:-null}" "$SETTINGS" "$SEEDS" "$(git rev-parse --short HEAD 2>/dev/null || echo "${IMBALANCE_REF_GIT_COMMIT:-unknown}")" \
    "$([ "$SMOKE" = 1 ] && echo true || echo false)" >>"$OUT/run_all.jsonl"
}

export IMBALANCE_REF_RUNS_AT_ONCE=$JOBS IMBALANCE_REF_MPS=0  # recorded in every results JSON
if [ "${MPS:-0}" = 1 ] && [ "${#todo[@]}" -gt 0 ]; then
  if nvidia-cuda-mps-control -d </dev/null >/dev/null 2>&1; then
    trap 'echo quit | timeout -k 5 20 nvidia-cuda-mps-control >/dev/null 2>&1 || true; rm -f "${durations:-}"' EXIT
    if timeout -k 5 120 "$PYTHON" -c "import torch; torch.zeros(1, device='cuda'); torch.cuda.synchronize()"; then
      IMBALANCE_REF_MPS=1
      echo "[run_all] CUDA MPS daemon started (stopped at the end)"
    else  # e.g. a sandbox without MPS: every run would fail, or find no GPU (--device auto: the CPU)
      echo "[run_all] warning: no CUDA context through the MPS daemon; stopped it, the runs take turns on the GPU" >&2
      echo quit | timeout -k 5 20 nvidia-cuda-mps-control >/dev/null 2>&1 || true
    fi
  else
    echo "[run_all] warning: could not start the CUDA MPS daemon (nvidia-cuda-mps-control -d); the runs take turns on the GPU" >&2
  fi
fi

echo "[run_all] $total runs, $done_before done before, ${#todo[@]} to run ($JOBS at a time${DEADLINE:+, deadline ${DEADLINE} s}) -> $OUT; logs in $OUT/logs/"
start_run() {  # job $1 in the background; under DEADLINE it is stopped there (rc 124) and goes on from its checkpoint
  local i=$1 key log
  IFS='|' read -r row itype ratio seed <<<"${jobs_list[$i]}"
  key="$row|$itype$ratio"
  started=$((started + 1))
  log=$(logname "$row" "$itype" "$ratio" "$seed")
  row=$(as_run "$row")
  echo "[run_all] start $started/$(( ${#todo[@]} - deferred )): methods/$row --imbalance-type $itype --imbalance-ratio $ratio --seed $seed"
  (
    t=$(date +%s)
    limit=()
    [ -n "$DEADLINE" ] && limit=(timeout -k 10 $(( DEADLINE - t + t0 > 1 ? DEADLINE - t + t0 : 1 )))
    # shellcheck disable=SC2086  # flags are meant to split into words
    "${limit[@]}" "$PYTHON" "methods/${row%% *}" ${row#"${row%% *}"} $DATA_FLAGS --imbalance-type "$itype" \
      --imbalance-ratio "$ratio" --seed "$seed" --out "$OUT" --skip-existing $EXTRA >>"$log" 2>&1
    rc=$?
    [ "$rc" = 0 ] && echo "$(( $(date +%s) - t )) $([ "${left[$i]}" = 1000 ] && echo 1 || echo 0)" \
      "$(( measures[$i] ? passes[$i] : 0 )) $itype$ratio $key" >>"$durations"
    exit "$rc"
  ) &
}
later=()  # the runs that would end after the DEADLINE
for i in "${todo[@]}"; do
  while [ $((started - finished)) -ge "$JOBS" ]; do reap; done
  whole=$(estimate "$i")
  expect=${whole:+$(( whole * ${left[$i]} / 1000 ))}  # what its checkpoint leaves to train
  if [ -n "$DEADLINE" ] && [ -n "$expect" ] && [ $(( $(date +%s) - t0 + expect * 11 / 10 + 15 )) -gt "$DEADLINE" ]; then
    IFS='|' read -r row itype ratio seed <<<"${jobs_list[$i]}"
    deferred=$((deferred + 1)) later+=("$i")
    echo "[run_all] deadline: not starting methods/$row --imbalance-type $itype --imbalance-ratio $ratio --seed $seed (~$expect s, +10% +15 s of margin: more than the $(( DEADLINE - $(date +%s) + t0 )) s left)"
    continue
  fi
  start_run "$i"
done
# The window's tail: once every run that can end in time has started, a slot that would stay idle until the
# deadline trains a deferred run up to the checkpoints it can reach (its next CHECKPOINT_EVERY epochs plus 30 s
# of start-up, by the estimate), and the next invocation goes on from there. A run longer than the whole window
# ends this way, over several invocations.
if [ -n "$DEADLINE" ] && [ "$CHECKPOINT_EVERY" -gt 0 ]; then
  for i in "${later[@]}"; do
    while [ $((started - finished)) -ge "$JOBS" ]; do reap; done
    whole=$(estimate "$i") remaining=$(( DEADLINE - $(date +%s) + t0 ))
    [ -n "$whole" ] && [ $(( whole * CHECKPOINT_EVERY / epochs_of[$i] + 30 )) -lt "$remaining" ] || continue
    IFS='|' read -r row itype ratio seed <<<"${jobs_list[$i]}"
    deferred=$((deferred - 1))
    echo "[run_all] the window's tail: methods/$row --seed $seed (~$(( whole * ${left[$i]} / 1000 )) s to its end, $remaining s left) is trained up to the checkpoints it reaches"
    start_run "$i"
  done
fi
while [ "$finished" -lt "$started" ]; do reap; done
rm -f "$durations"
# a finished run deletes its checkpoint but not the folders (a run beside it may be saving there); none is running now
[ ! -d "$OUT/checkpoints" ] || find "$OUT/checkpoints" -depth -type d -empty -delete 2>/dev/null || true
if [ "$started" -gt 0 ] && [ "$failed" -eq "$started" ]; then  # nothing trained: no invocation to record, no report
  echo "[run_all] every run failed ($failed): nothing added to $OUT/run_all.jsonl, no report; see the logs:" \
    "grep -l '^error' $OUT/logs/*.log" >&2
  exit 1
fi
session

if compgen -G "$OUT/*/*/seed*.json" >/dev/null; then
  "$PYTHON" common.py report "$OUT"
else
  echo "[run_all] no run has ended yet: no report"
fi
echo "[run_all] $finished runs ended in $(hms $(( $(date +%s) - t0 ))): $(( finished - failed - cut )) completed, $failed failed, $done_before done before$([ "$cut" -gt 0 ] && echo ", $cut stopped at the deadline (they go on from their checkpoints)")$([ "$deferred" -gt 0 ] && echo ", $deferred left for the next invocation (DEADLINE)")"
if [ "$failed" -gt 0 ]; then
  echo "[run_all] see the logs of the failed runs: grep -l '^error' $OUT/logs/*.log" >&2
  exit 1
fi
