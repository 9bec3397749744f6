#!/usr/bin/env bash
# The paper's two transfer tables on the miniature (issue 17): the transfer suite (`miniature data --suite
# transfer`: mini-source, 24 classes, and its targets: 4 shifted domains, 2 datasets of other classes) -> featurize
# with the shipped miniature CLIP (16 shots, seeds 1-3, 4 views) -> tune --protocol cross-dataset and
# --protocol domain-generalization with the transfer-demo space (CoOp, CoCoOp, KgCoOp, each without and with DePT,
# 3 seeds; CLIP zero-shot logged beside them) -> report --protocol for each. Everything under OUTDIR (default
# /tmp/transfer-tables); about 15 minutes on 2 cores. Rerunning reuses what is done (featurize skips finished shards,
# tune --resume skips finished trials).
#
# Run from the repository root:  bash bench/transfer_tables.sh [OUTDIR]
source "$(dirname "$0")/../scripts/env.sh"
set -euo pipefail
OUT="$(mkdir -p "${1:-/tmp/transfer-tables}" && cd "${1:-/tmp/transfer-tables}" && pwd)"
URI="sqlite:///$OUT/mlflow.db"
EXPERIMENT=transfer-tables

dept-pipeline miniature data --suite transfer --out "$OUT/suite"
dirs=()
for d in "$OUT"/suite/mini-*/; do dirs+=(--dataset-dir "${d%/}"); done
featurized=$(dept-pipeline featurize "${dirs[@]}" --out "$OUT/features" --model dept-mini-vit --pretrained shipped \
    --views 4 --shots 16 --seeds 1,2,3 --no-progress)
printf '%s\n' "$featurized"
features=$(sed -n 's/^features: //p' <<<"$featurized")
for protocol in cross-dataset domain-generalization; do
  dept-pipeline tune --features "$features" --protocol "$protocol" --source mini-source --space transfer-demo \
      --experiment "$EXPERIMENT" --storage "$OUT/tune" --mlflow-uri "$URI" --resume
done
for protocol in cross-dataset domain-generalization; do
  echo
  dept-pipeline report --mlflow-uri "$URI" --experiment "$EXPERIMENT" --protocol "$protocol" | tee "$OUT/report-$protocol.md"
done
