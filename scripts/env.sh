# Sourced by the scripts here: a project virtualenv with the package installed, and Ray kept on loopback.
# No pip cache: CI machines can be short of disk, and the CUDA torch wheels would be kept twice.
#   DEPT_VENV              where the virtualenv lives (default: .venv in the checkout)
#   DEPT_TORCH_INDEX_URL   a package index to take torch from first, e.g. https://download.pytorch.org/whl/cpu for
#                          a CPU-only torch (without the 3.2 GB of CUDA libraries); the rest from pip's usual index
#   DEPT_ENV_DRY_RUN=1     print what would be run (venv, pip commands) and change nothing
# docs/install.md says more (size, time, activating the virtualenv).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV="${DEPT_VENV:-.venv}"
_dept_dry="${DEPT_ENV_DRY_RUN:-0}"
_dept_pip=("$VENV/bin/python" -m pip install --no-cache-dir --disable-pip-version-check)

_dept_run() {  # a command, or its line under DEPT_ENV_DRY_RUN=1
    if [ "$_dept_dry" = 1 ]; then printf 'would run:'; printf ' %q' "$@"; echo; else "$@"; fi
}

# pip's own lines (Collecting / Downloading / Installing) as progress, and a line a minute while it is silent
# (unpacking and installing the torch and CUDA wheels takes minutes).
_dept_pip_with_progress() {
    if [ "$_dept_dry" = 1 ]; then _dept_run "${_dept_pip[@]}" --progress-bar on "$@"; return; fi
    local started=$SECONDS ticker
    ( while sleep 60; do echo "env.sh: pip still working ($(( (SECONDS - started) / 60 )) min)"; done ) &
    ticker=$!
    local rc=0
    "${_dept_pip[@]}" --progress-bar on "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2) || rc=$?
    kill "$ticker" 2>/dev/null || true
    wait "$ticker" 2>/dev/null || true
    return "$rc"
}

if [ ! -x "$VENV/bin/python" ]; then
    _dept_run python3 -m venv "$VENV"
fi
if [ "$_dept_dry" != 1 ] && "$VENV/bin/python" -c "import torch, dept, pipelines" >/dev/null 2>&1; then
    # Installed before: a quick re-check of the requirements (and the editable install), quietly.
    "${_dept_pip[@]}" -q -e ".${DEPT_EXTRAS:-}" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
else
    echo "env.sh: installing dept-pipeline${DEPT_EXTRAS:-} and its dependencies (torch, open_clip, Ray, MLflow) into $VENV"
    if [ -n "${DEPT_TORCH_INDEX_URL:-}" ]; then
        echo "env.sh: torch from ${DEPT_TORCH_INDEX_URL} first (DEPT_TORCH_INDEX_URL)"
    else
        echo "env.sh: about 6.5 GB with the CUDA torch wheels (3-7 min); a CPU-only torch where your index has one:"
        echo "env.sh:   DEPT_TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu (docs/install.md)"
    fi
    if [ -n "${DEPT_TORCH_INDEX_URL:-}" ]; then
        # torch first from that index; the package's install below then finds it satisfied and keeps it.
        _dept_pip_with_progress --extra-index-url "$DEPT_TORCH_INDEX_URL" "torch>=2.4,<3" "torchvision>=0.19"
    fi
    _dept_pip_with_progress -e ".${DEPT_EXTRAS:-}"
    [ "$_dept_dry" = 1 ] || echo "env.sh: installed; activate it in your shell with: source $VENV/bin/activate"
fi
unset -f _dept_run _dept_pip_with_progress
unset _dept_dry _dept_pip
case "$VENV" in /*) ;; *) VENV="$PWD/$VENV" ;; esac
export PATH="$VENV/bin:$PATH"
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0  # Ray listens on 127.0.0.1 only
export RAY_USAGE_STATS_ENABLED=0
