#!/usr/bin/env bash
# The benches on one CUDA GPU, in one go (well inside 8 minutes on an H200): text encoder full / truncated /
# shared prefix at 20/50/100/500 classes, trial cost (online reference step vs cached features, 20 and 50 base
# classes), each in fp32 and bf16 autocast with their numerical difference, the bare image-encoder rate and the
# decode rate per CPU core. Drives dept/ directly: no Ray, no MLflow needed (bench/gpu_bench.py).
#
# Run from the repository root:  bench/gpu.sh [OUTDIR]        (figures: OUTDIR/gpu_bench.{md,json,log})
# Dry run without a GPU:          PYTHON=.venv/bin/python bench/gpu.sh --cpu-dry-run   (tiny model, a minute)
#
# The device image has torch, timm, regex, pyarrow, fsspec, numpy, pillow but not open_clip, Ray or MLflow; this
# script installs open_clip_torch, ftfy and wcwidth from wheels in .whl/ (git-ignored). Two steps:
#   bash bench/gpu.sh --prepare          here, with pip access: downloads the wheels for the device's Python 3.12
#   device run, carry [".whl"]:          command: OUT=$OUT bench/gpu.sh "$OUT"      timeout_s: 540
# Checked on a bare Python here (tests/bench/test_bench_scripts.py): PYTHONPATH=bench/bare makes open_clip, Ray
# and MLflow unimportable except from the wheels' install folder ($DEPT_WHEEL_SITE, default /tmp/site).
#
# Trial populations (issue 16), a run of its own (about 5 minutes on an H200): bench/population.py at P = 1, 8, 32,
# 64, ViT-B-16 text tower (random weights), CoOp+DePT, 50 base classes; the fp32 exactness check first, then fp32
# and bf16 autocast (fp32 master weights). POP_COMPILE=reduce-overhead adds a run with the step under torch.compile
# (CUDA graphs).
#   command: OUT=$OUT bench/gpu.sh --population "$OUT"      timeout_s: 420
#   dry run: PYTHON=.venv/bin/python bench/gpu.sh --population --cpu-dry-run
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

if [[ "${1:-}" == "--population" ]]; then
    shift
    if [[ "${1:-}" == "--cpu-dry-run" ]]; then
        exec "$PY" bench/population.py --tiny
    fi
    out="${1:-${OUT:-bench/gpu-out}}"
    mkdir -p "$out"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 | tee "$out/nvidia-smi.txt" || true
    pop=(bench/population.py --device cuda --clock wall --model ViT-B-16 --pretrained none --classes 50 --shots 8
         --views 4 --seq-sample 3)
    timeout 150 "$PY" "${pop[@]}" --out "$out/fp32" 2>&1 | tee "$out/population_fp32.log" || echo "fp32 run failed ($?)"
    timeout 150 "$PY" "${pop[@]}" --amp --exact-members 2 --exact-epochs 1 --out "$out/bf16" 2>&1 | tee "$out/population_bf16.log" || echo "bf16 run failed ($?)"
    if [[ -n "${POP_COMPILE:-}" ]]; then
        timeout 150 "$PY" "${pop[@]}" --amp --compile "$POP_COMPILE" --exact-members 2 --exact-epochs 1 --out "$out/compiled" \
            2>&1 | tee "$out/population_compiled.log" || echo "compiled run failed ($?)"
    fi
    exit 0
fi
if [[ "${1:-}" == "--cpu-dry-run" ]]; then
    exec "$PY" bench/gpu_bench.py --device cpu --tiny
fi
out="${1:-${OUT:-bench/gpu-out}}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 | tee "$out/nvidia-smi.txt" || true
# 450 s: the whole script must end inside 8 minutes, leaving the pip install and start-up their share.
set -o pipefail
timeout 450 "$PY" bench/gpu_bench.py --device cuda --out "$out" 2>&1 | tee "$out/gpu_bench.log"
