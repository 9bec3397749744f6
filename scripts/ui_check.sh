#!/usr/bin/env bash
# A real-browser check of the MLflow UI over a tracking store, on loopback only:
#   bash scripts/ui_check.sh [STORE.db [OUT_DIR [EXPERIMENT]]]
# serves STORE.db (default: the quickstart's ./mlflow.db, made by scripts/quickstart.sh when missing) with
# `mlflow server --host 127.0.0.1 --workers 1` and drives headless Chromium at 1600x1000 as a first-time user
# (scripts/ui_check.py, by clicking): the printed link, Home and the experiments list each lead to the runs table;
# the saved view's coefficient and score columns fit beside MLflow's Assistant panel; one trial, a compare page of
# 3 trials, the comparison chart's axes and the parent run's figure. A PNG of each page goes to OUT_DIR (default
# runs/ui_check), every check to OUT_DIR/checks.json (names and values read from the store); exit 1 if one fails.
# Chromium is Debian's `chromium` package, installed here when missing and run as root. Its traffic to anything
# but 127.0.0.1 goes to a dead proxy and unresolved names: nothing leaves the machine.
set -euo pipefail
# Paths given are the caller's; env.sh moves to the checkout, where the quickstart writes ./mlflow.db.
[ $# -ge 1 ] && store="$(realpath -m "$1")" || store=""
[ $# -ge 2 ] && out="$(realpath -m "$2")" || out=""
experiment="${3:-${DEPT_EXPERIMENT:-quickstart}}"
source "$(dirname "$0")/env.sh"
store="${store:-$PWD/mlflow.db}"
out="${out:-$PWD/runs/ui_check}"
if [ ! -f "$store" ]; then
    if [ $# -ge 1 ]; then
        echo "ui_check: no MLflow store at $store" >&2
        exit 2
    fi
    bash scripts/quickstart.sh
fi
browser="$(command -v chromium || command -v chromium-browser || true)"
if [ -z "$browser" ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "ui_check: Chromium is not installed (as root: apt-get install chromium)" >&2
        exit 3
    fi
    apt-get install -y -qq chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }
    browser="$(command -v chromium)"
fi
mkdir -p "$out"
port="$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
# Its own session, so that the server and its worker stop together.
MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false DO_NOT_TRACK=true MLFLOW_DISABLE_TELEMETRY=true \
    setsid mlflow server --host 127.0.0.1 --port "$port" --workers 1 --backend-store-uri "sqlite:///$store" \
    >"$out/server.log" 2>&1 &
server=$!
trap 'kill -- -"$server" 2>/dev/null || true' EXIT
python scripts/ui_check.py "$browser" "http://127.0.0.1:$port" "$store" "$experiment" "$out"
