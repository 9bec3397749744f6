#!/usr/bin/env bash
# The main job on embedded defaults, end to end on one machine:
#   the miniature's generated few-shot dataset (shifted domain; base and new classes of disjoint shapes)
#   -> featurize with the shipped miniature CLIP (local Ray) -> tune with the demo space (CLIP zero-shot, then
#   CoOp, CoCoOp and KgCoOp each without and with DePT) -> report,
# with the MLflow store in ./mlflow.db and every folder under ./demo. Re-running reuses what is done.
source "$(dirname "$0")/env.sh"
EXPERIMENT="${DEPT_EXPERIMENT:-quickstart}"

dept-pipeline miniature data --out demo/miniature-disjoint --split disjoint
# Captured, then printed: `tee /dev/stderr` reopens stderr, and when that is a file opened without O_APPEND it
# writes from the file's start over what is there.
featurized=$(dept-pipeline featurize --dataset-dir demo/miniature-disjoint --out demo/features \
    --model dept-mini-vit --pretrained shipped --views 4 --shots 16 --seeds 1,2)
printf '%s\n' "$featurized"
features=$(sed -n 's/^features: //p' <<<"$featurized")
dept-pipeline tune --features "$features" --dataset all --space demo --experiment "$EXPERIMENT" \
    --storage demo/tune --mlflow-uri sqlite:///mlflow.db --resume  # a rerun skips the finished sweep
dept-pipeline report --mlflow-uri sqlite:///mlflow.db --experiment "$EXPERIMENT"
cat <<MSG

MLflow UI (the trials side by side, best validation HM first; Ctrl-C stops it):
  $(command -v dept-pipeline) ui --mlflow-uri sqlite:///$PWD/mlflow.db --experiment $EXPERIMENT
then open the link it prints (http://127.0.0.1:5000/#/experiments/<id>/runs?viewStateShareKey=dept-trials&...).
In your own shell, \`source $VENV/bin/activate\` first to call it as plain dept-pipeline (docs/install.md).
MSG
