#!/usr/bin/env bash
# The whole GPU check of one lease, in one go, driving dept/ directly (no Ray, no MLflow on the device):
#   1. trial populations (bench/population.py): the exactness check first (members vs dept.train alone, fp32),
#      then trials/hour at P = 1 / 8 / 32 / 64, ViT-B-16 text tower (random weights), CoOp+DePT, 50 base classes,
#      in fp32 and in bf16 autocast (fp32 master weights);
#   2. bench/gpu_bench.py: text encoder full / truncated / shared prefix at 20/50/100/500 classes, the cached trial
#      vs the reference online step (20 and 50 base classes), the bare image-encoder rate, decode per CPU core,
#      each in fp32 and bf16 with their numerical difference.
# Each part runs under its own time budget (a hard timeout); the parts sum to 540 s (inside 10 minutes with the
# install), --quick to 220 s (P = 1 / 8, 50 and 500 classes, ViT-B-16 only: inside 4 minutes). The result is one
# OUT/gpu_result.{json,md} (bench/gpu_report.py) that bench/RESULTS.md takes as it is; a part over its budget is
# listed as timed out, the others still report.
#
#   bash bench/gpu.sh --prepare                       here, with pip access: the wheels the device lacks, into .whl/
#   device run, carry [".whl"]:   OUT=$OUT bench/gpu.sh [--quick] "$OUT"     timeout_s: 600 (--quick: 270)
#   dry run on this CPU:          PYTHON=.venv/bin/python bench/gpu.sh --cpu-dry-run [OUT]   (tiny model)
#   populations only:             bench/gpu.sh --population "$OUT"; POP_COMPILE=reduce-overhead adds a compiled run
#
# The device image has torch, timm, regex, pyarrow, fsspec, numpy, pillow but not open_clip, Ray or MLflow; this
# script installs open_clip_torch, ftfy and wcwidth from the wheels in .whl/ (git-ignored). Checked on a bare Python
# here (tests/bench/test_bench_scripts.py): PYTHONPATH=bench/bare makes open_clip, Ray and MLflow unimportable except
# from the wheels' install folder ($DEPT_WHEEL_SITE, default /tmp/site).
set -euo pipefail
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

# The parts, in order, each with its time budget (a hard timeout): exactness first (population.py checks members
# against dept.train alone before it times anything), then trials/hour in fp32 and bf16, then the step costs.
# Full: 540 s of parts + ~30 s install and start-up, inside 10 minutes; --quick: 220 s, inside 4 minutes.
quick=0; dry=0; only_population=0; out=""
for a in "$@"; do
    case "$a" in
        --quick) quick=1 ;;
        --cpu-dry-run) dry=1 ;;
        --population) only_population=1 ;;
        *) out="$a" ;;
    esac
done
out="${out:-${OUT:-bench/gpu-out}}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv >"$out/nvidia-smi.txt" 2>&1 || true
if [[ $dry == 1 ]]; then
    pop=(bench/population.py --tiny)
    bench=(bench/gpu_bench.py --device cpu --tiny)
    budgets=(300 300 300)  # the CPU is slower than any GPU: the dry run checks the parts, not the budget
elif [[ $quick == 1 ]]; then
    pop=(bench/population.py --device cuda --clock wall --model ViT-B-16 --pretrained none --classes 50 --shots 8
         --views 4 --seq-sample 2 --populations 1,8)
    bench=(bench/gpu_bench.py --device cuda --quick)
    budgets=(60 50 110)
else
    pop=(bench/population.py --device cuda --clock wall --model ViT-B-16 --pretrained none --classes 50 --shots 8
         --views 4 --seq-sample 3)
    bench=(bench/gpu_bench.py --device cuda)
    budgets=(150 120 270)
fi
names=(population-fp32 population-bf16 gpu-bench)
commands=("${pop[*]} --out $out/population_fp32"
          "${pop[*]} --amp --exact-members 2 --exact-epochs 1 --out $out/population_bf16"
          "${bench[*]} --out $out")
[[ $only_population == 1 ]] && names=("${names[@]:0:2}")
plan=(); rcs=()
for i in "${!names[@]}"; do
    echo "== ${names[$i]} (budget ${budgets[$i]} s)"
    rc=0
    # shellcheck disable=SC2086  # the command's words, split on purpose
    timeout "${budgets[$i]}" "$PY" ${commands[$i]} >"$out/${names[$i]}.log" 2>&1 || rc=$?
    tail -n 25 "$out/${names[$i]}.log"
    plan+=("${names[$i]}:${budgets[$i]}"); rcs+=("$rc")
done
if [[ -n "${POP_COMPILE:-}" && $dry == 0 ]]; then  # extra, outside the plan: the step under torch.compile
    timeout 150 "$PY" "${pop[@]}" --amp --compile "$POP_COMPILE" --exact-members 2 --exact-epochs 1 \
        --out "$out/compiled" >"$out/population_compiled.log" 2>&1 || echo "compiled run failed ($?)"
fi
# Extra, outside the plan: the orchestration ceiling (bench/orchestration_ceiling.py, short: P = 1 / 8, 3 epochs,
# budget 150 s) needs Ray and MLflow (the tune CLI), which the device image lacks: then it is skipped, in one line.
if "$PY" -c "import ray, mlflow" 2>/dev/null; then
    timeout 150 "$PY" bench/orchestration_ceiling.py --members 1,8 --epochs 3 --out "$out/ceiling" \
        >"$out/ceiling.log" 2>&1 || echo "ceiling run failed or timed out ($?)"
else
    echo "== ceiling: skipped (Ray / MLflow not importable here; bench/orchestration_ceiling.py drives the tune CLI)"
fi
IFS=,; exec "$PY" bench/gpu_report.py "$out" --plan "${plan[*]}" --rc "${rcs[*]}"
