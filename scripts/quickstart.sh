#!/usr/bin/env bash
# The main job on embedded defaults, end to end on one machine:
#   the miniature's generated few-shot dataset (shifted domain; base and new classes of disjoint shapes)
#   -> featurize with the shipped miniature CLIP (local Ray) -> tune with the smoke space -> report,
# with the MLflow store in ./mlflow.db and every folder under ./demo. Re-running reuses what is done.
source "$(dirname "$0")/env.sh"
EXPERIMENT="${DEPT_EXPERIMENT:-quickstart}"

dept-pipeline miniature data --out demo/miniature-disjoint --split disjoint
features=$(dept-pipeline featurize --dataset-dir demo/miniature-disjoint --out demo/features \
    --model dept-mini-vit --pretrained shipped --views 4 --shots 16 --seeds 1,2 \
    | tee /dev/stderr | sed -n 's/^features: //p')
dept-pipeline tune --features "$features" --dataset all --space smoke --experiment "$EXPERIMENT" \
    --storage demo/tune --mlflow-uri sqlite:///mlflow.db
dept-pipeline report --mlflow-uri sqlite:///mlflow.db --experiment "$EXPERIMENT"
cat <<MSG

MLflow UI: mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000
then open http://127.0.0.1:5000 -> "Model training" -> experiment "$EXPERIMENT".
MSG
