#!/usr/bin/env bash
# tune --population on one machine (issue 16, item 3): the same 8 CoOp+DePT configurations of one shape (loss weight
# and lr sampled, seed 1, FIFO: every trial runs all its epochs), tuned three ways in turn, ROUNDS times, each run in
# a fresh folder (own local Ray, MLflow store, Tune storage):
#   A  --population 1 --cpus-per-trial 1      single trials, one per core at once (the CPU default)
#   B  --population 1 --cpus-per-trial CORES  single trials, one at a time on every core
#   C  --population 8 --cpus-per-trial CORES  one population host on every core
# Prints each run's wall seconds and the ratios A/C and B/C; the summed train_seconds of the single trials beside
# the population's; and how far B's and C's numbers are from A's (final train_loss, relative; test HM, points): B
# differs from A by thread count alone (the same code, other rounding), which sizes what rounding does here.
#
# Run from the repository root:  bash bench/tune_population.sh FEATURES [ROUNDS [EPOCHS]]
#   FEATURES: a featurized model folder, e.g. the quickstart's demo/features/dept-mini-vit/<weights>
source "$(dirname "$0")/../scripts/env.sh"
set -euo pipefail
FEATURES="$(cd "$OLDPWD" && cd "${1:?usage: bench/tune_population.sh FEATURES [ROUNDS [EPOCHS]]}" && pwd)"
ROUNDS="${2:-2}"
EPOCHS="${3:-5}"
CORES="$(nproc)"
WORK="$(mktemp -d /tmp/tune-population.XXXXXX)"
cat > "$WORK/space.yaml" <<YAML
params:
  method: coop
  dept: true
  loss_weight: {uniform: [0.3, 0.9]}
  lr: {loguniform: [1.0e-3, 3.0e-2]}
  epochs: $EPOCHS
  warmup_epochs: 0
seeds: [1]
num_samples: 8
scheduler: none
searcher: {type: random, seed: 0}
YAML

one_run() {  # $1 = population, $2 = cpus per trial, $3 = run folder; prints wall seconds
    local t0 t1
    mkdir -p "$3"
    t0=$(date +%s.%N)
    dept-pipeline tune --features "$FEATURES" --dataset all --space "$WORK/space.yaml" --population "$1" \
        --cpus-per-trial "$2" --storage "$3/tune" --mlflow-uri "sqlite:///$3/mlflow.db" \
        --experiment bench > "$3/tune.log" 2>&1
    t1=$(date +%s.%N)
    python -c "print(f'{$t1 - $t0:.1f}')"
}

compare() {  # $1 = reference run folder, $2.. = run folders: their numbers against the reference's
    python - "$@" <<'PY'
import sys
from mlflow import MlflowClient

def trials(folder):
    c = MlflowClient(f"sqlite:///{folder}/mlflow.db")
    exp = c.get_experiment_by_name("bench")
    return {(r.data.params["lr"], r.data.params["loss_weight"]): r.data.metrics
            for r in c.search_runs([exp.experiment_id], "tags.role = 'trial'")}

ref = trials(sys.argv[1])
for name, folder in zip("BC", sys.argv[2:]):
    runs = trials(folder)
    assert set(runs) == set(ref) and len(runs) == 8, folder
    loss = max(abs(runs[k]["train_loss"] - ref[k]["train_loss"]) / abs(ref[k]["train_loss"]) for k in ref)
    hm = max(abs(runs[k]["test_hm"] - ref[k]["test_hm"]) for k in ref)
    train = sorted({round(m["train_seconds"], 3) for m in runs.values()})
    summed = sum(m["train_seconds"] for m in runs.values())
    print(f"  {name} vs A: final train_loss within {loss:.1e} relative, test HM within {hm:.2f} points; "
          f"train_seconds summed over trials {summed:.1f} ({len(train)} distinct)")
print(f"  A: train_seconds summed over trials {sum(m['train_seconds'] for m in ref.values()):.1f}")
PY
}

echo "features $FEATURES; $ROUNDS rounds; 8 trials x $EPOCHS epochs; $CORES cores; work in $WORK"
ac=(); bc=()
for round in $(seq 1 "$ROUNDS"); do
    a=$(one_run 1 1 "$WORK/r$round-a")
    b=$(one_run 1 "$CORES" "$WORK/r$round-b")
    c=$(one_run 8 "$CORES" "$WORK/r$round-c")
    ac+=("$(python -c "print($a / $c)")"); bc+=("$(python -c "print($b / $c)")")
    echo "round $round: A ${a}s, B ${b}s, C ${c}s; A/C $(python -c "print(f'{$a / $c:.2f}')")x, B/C $(python -c "print(f'{$b / $c:.2f}')")x"
    compare "$WORK/r$round-a" "$WORK/r$round-b" "$WORK/r$round-c"
done
python - "${ac[*]}" "${bc[*]}" <<'PY'
import statistics, sys
ac, bc = ([float(x) for x in arg.split()] for arg in sys.argv[1:])
print(f"median A/C {statistics.median(ac):.2f}x, B/C {statistics.median(bc):.2f}x (> 1: the population is faster)")
PY
