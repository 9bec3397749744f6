#!/usr/bin/env bash
# Installs the package with its test extras into .venv and runs the tests: all of them (slow ones included) by default.
#   bash scripts/test.sh             everything, quiet
#   bash scripts/test.sh --fast      without the slow end-to-end tests (-m "not slow")
#   bash scripts/test.sh -v [ARGS]   any other arguments go to pytest (-v verbose, -x, a test path, ...)
DEPT_EXTRAS="[test]" source "$(dirname "$0")/env.sh"
args=()
fast=0
for a in "$@"; do
    if [ "$a" = "--fast" ]; then fast=1; else args+=("$a"); fi
done
if [ "$fast" = 1 ]; then
    args=(-m "not slow" "${args[@]}")
fi
# Quiet unless the caller chose a verbosity.
verbosity=(-q)
for a in "${args[@]}"; do
    case "$a" in -v|-vv|-vvv|--verbose|-q|-qq|--quiet) verbosity=() ;; esac
done
exec python -m pytest "${verbosity[@]}" -p no:cacheprovider "${args[@]}"
