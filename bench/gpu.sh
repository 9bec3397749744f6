#!/usr/bin/env bash
# The whole GPU check of one lease, in one go, driving dept/ directly:
#   1. trial populations (bench/population.py): the exactness check first (members vs dept.train alone, fp32,
#      2 members x 1 epoch), then trials/hour at P = 1 / 8 / 32 / 64, ViT-B-16 text tower (random weights),
#      CoOp+DePT, 50 base classes, 2 trials in a row sampled per P, in fp32 and in bf16 autocast (fp32 master weights);
#   2. bench/gpu_bench.py --skip decode: text encoder full / truncated / shared prefix at 20/50/100/500 classes, the
#      cached trial vs the reference online step (20 and 50 base classes), the bare image-encoder rate, fp32 and bf16
#      with their numerical difference (the decode rate is a CPU figure: left out);
#   3. the orchestration ceiling (bench/orchestration_ceiling.py, stand-in side, P = 8, 3 epochs); it drives the tune
#      CLI, so without Ray / MLflow (the device image) it is skipped, in one line.
# The plan (parts, budgets, commands) is bench/gpu_estimate.py's --budgets, so the estimate and the run cannot
# disagree; a plan that does not fit the lease is refused before anything runs. Its estimate for one H100 (no GPU has
# run this yet): fp32 matmuls at 30 % of 67 TFLOP/s (TF32 off), bf16 at 20 % of 990 TFLOP/s, the image encoder at
# 40 %, plus 15 us per eager op (x1.4 under autocast) and fixed costs (process start, CUDA init, model builds, Ray and
# tune start-up); each budget (a hard timeout) is at least 1.5x its part's estimate:
#   full:    estimates 116 + 76 + 92 + 83 s, budgets 175 + 115 + 140 + 125 s, + 30 s install = 585 s of the 600 s lease
#   --quick: P = 1 / 8, gpu_bench --quick; estimates 41 + 36 + 62 s, budgets 62 + 54 + 94 s, + 30 s = 240 s of 240 s;
#            the ceiling is outside the --quick plan (no room left in the lease).
# The result is one OUT/gpu_result.{json,md} (bench/gpu_report.py): per part its estimate, budget, measured wall
# seconds and status, and the plan total, which bench/RESULTS.md takes as it is; a part over its budget is listed as
# timed out, the others still report.
#
#   bash bench/gpu.sh --estimate [--quick]           the plan, per part estimate and budget, total vs lease; runs nothing
#   bash bench/gpu.sh --prepare                       here, with pip access: the wheels the device lacks, into .whl/
#   device run, carry [".whl"]:   OUT=$OUT bench/gpu.sh [--quick] "$OUT"     timeout_s: 600 (--quick: 240)
#   dry run on this CPU:          PYTHON=.venv/bin/python bench/gpu.sh --cpu-dry-run [OUT]   (tiny model, every part)
#   populations only:             bench/gpu.sh --population "$OUT"; POP_COMPILE=reduce-overhead adds a compiled run
#   GPU_LEASE_S=S: the lease's limit if not the usual (the plan is checked against it)
#
# The device image has torch, timm, regex, pyarrow, fsspec, numpy, pillow but not open_clip, Ray or MLflow; this
# script installs open_clip_torch, ftfy and wcwidth from the wheels in .whl/ (git-ignored). Checked on a bare Python
# here (tests/bench/test_bench_scripts.py): PYTHONPATH=bench/bare makes open_clip, Ray and MLflow unimportable except
# from the wheels' install folder ($DEPT_WHEEL_SITE, default /tmp/site).
set -euo pipefail
started=$(date +%s.%N)  # the whole run, install included, against the plan total
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"  # PYTHON=.venv/bin/python for a local dry run
WHEELS="${DEPT_WHEELS:-.whl}"
SITE="${DEPT_WHEEL_SITE:-/tmp/site}"
# The wheels' versions: the ones this project is tested with (open_clip's pretrained names and tokenizer).
WHEEL_PINS=(open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.5)

if [[ "${1:-}" == "--prepare" ]]; then
    mkdir -p "$WHEELS"
    echo "downloading ${WHEEL_PINS[*]} into $WHEELS/ (about 2.4 MB) for the device's Python 3.12"
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --disable-pip-version-check -d "$WHEELS" "${WHEEL_PINS[@]}"
    ls "$WHEELS"
    echo "ready: carry [\"$WHEELS\"] with the device run of bench/gpu.sh"
    exit 0
fi

# Which mode, and the plan: the parts, their budgets, output folders and commands come from bench/gpu_estimate.py
# --budgets (it refuses, one line, a plan whose budgets do not fit the lease), before anything is installed or run.
mode=full; estimate=0; only_population=0; out=""
for a in "$@"; do
    case "$a" in
        --quick) mode=quick ;;
        --cpu-dry-run) mode=cpu-dry-run ;;
        --estimate) estimate=1 ;;
        --population) only_population=1 ;;
        -*) echo "bench/gpu.sh: unknown option $a (--quick, --cpu-dry-run, --estimate, --population, --prepare)" >&2
            exit 2 ;;
        *) out="$a" ;;
    esac
done
est_args=()
[[ $mode != full ]] && est_args+=("--$mode")
[[ -n "${GPU_LEASE_S:-}" ]] && est_args+=(--lease "$GPU_LEASE_S")  # a lease shorter (or longer) than the usual
if [[ $estimate == 1 ]]; then  # the plan, each part's estimate and budget, the total against the lease; runs nothing
    exec "$PY" bench/gpu_estimate.py "${est_args[@]}"
fi
plan_lines=$("$PY" bench/gpu_estimate.py "${est_args[@]}" --budgets) || exit 1
names=(); budgets=(); folders=(); commands=()
while read -r name budget folder command; do
    [[ $only_population == 1 && $name != population-* ]] && continue
    names+=("$name"); budgets+=("$budget"); folders+=("$folder"); commands+=("$command")
done <<<"$plan_lines"
out="${out:-${OUT:-bench/gpu-out}}"
mkdir -p "$out"
"$PY" bench/gpu_estimate.py "${est_args[@]}" --json "$out/gpu_plan.json"  # the table, before anything runs

if ! "$PY" -c "import open_clip" 2>/dev/null; then
    if ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
        echo "open_clip is not installed and there are no wheels in $WHEELS/: run bash bench/gpu.sh --prepare first" >&2
        exit 2
    fi
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --disable-pip-version-check \
        --target "$SITE" "$WHEELS"/*.whl
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    "$PY" -c "import open_clip" || { echo "open_clip does not import from $SITE" >&2; exit 2; }
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv >"$out/nvidia-smi.txt" 2>&1 || true

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
ran=()  # name:rc:wall_s per part, in run order, for the report
for i in "${!names[@]}"; do
    name=${names[$i]}
    # The ceiling drives the tune CLI, which needs Ray and MLflow; the device image lacks both: skipped, one line.
    if [[ $name == ceiling ]] && ! "$PY" -c "import ray, mlflow" 2>/dev/null; then
        echo "== ceiling: skipped (Ray / MLflow not importable here; bench/orchestration_ceiling.py drives the tune CLI)"
        ran+=("$name:skipped:0"); continue
    fi
    echo "== $name (budget ${budgets[$i]} s)"
    rc=0; t0=$(now)
    # shellcheck disable=SC2086  # the command's words, split on purpose
    timeout "${budgets[$i]}" "$PY" ${commands[$i]} --out "$out/${folders[$i]}" >"$out/$name.log" 2>&1 </dev/null || rc=$?
    wall=$(since "$t0")
    tail -n 25 "$out/$name.log"
    echo "== $name: rc $rc, $wall s of ${budgets[$i]} s"
    ran+=("$name:$rc:$wall")
done
if [[ $mode == quick ]] && [[ " ${names[*]} " != *" ceiling "* ]]; then
    echo "== ceiling: outside the --quick plan (no room in its lease: bench/gpu_estimate.py --quick), not run"
fi
if [[ -n "${POP_COMPILE:-}" && $mode != cpu-dry-run ]]; then
    # Extra, outside the plan and its budgets (no room for it next to the full plan): use it with --population.
    # shellcheck disable=SC2086
    timeout 150 "$PY" ${commands[1]} --compile "$POP_COMPILE" --out "$out/compiled" \
        >"$out/population_compiled.log" 2>&1 </dev/null || echo "compiled run failed ($?)"
fi
IFS=,; exec "$PY" bench/gpu_report.py "$out" --plan-json "$out/gpu_plan.json" --ran "${ran[*]}" \
    --total-wall "$(since "$started")"
