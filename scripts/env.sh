# Sourced by the scripts here: a project virtualenv with the package installed, and Ray kept on loopback.
# No pip cache: CI machines can be short of disk, and the CUDA torch wheels would be kept twice.
# DEPT_VENV overrides where the virtualenv lives (default: .venv in the checkout).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV="${DEPT_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --no-cache-dir --disable-pip-version-check -e ".${DEPT_EXTRAS:-}" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
export PATH="$(cd "$VENV" && pwd)/bin:$PATH"
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0  # Ray listens on 127.0.0.1 only
export RAY_USAGE_STATS_ENABLED=0
