#!/usr/bin/env bash
# Installs the package with its test extras into .venv and runs the whole suite (slow tests included).
DEPT_EXTRAS="[test]" source "$(dirname "$0")/env.sh"
exec python -m pytest -q -p no:cacheprovider "$@"
