#!/usr/bin/env bash
# The main job on embedded defaults, end to end on one machine:
#   generated demo data -> featurize (local Ray) -> tune with the smoke space -> report,
# with the MLflow store in ./mlflow.db and every folder under ./demo. Re-running reuses what is done.
source "$(dirname "$0")/env.sh"
MODEL="${DEPT_MODEL:-dept-tiny-vit}"
PRETRAINED="${DEPT_PRETRAINED:-none}"
EXPERIMENT="${DEPT_EXPERIMENT:-quickstart}"

dept-pipeline demo-data --out demo/data
features=$(dept-pipeline featurize --dataset-dir demo/data --out demo/features --model "$MODEL" \
    --pretrained "$PRETRAINED" --views 4 --shots 16 --seeds 1,2 | tee /dev/stderr | sed -n 's/^features: //p')
dept-pipeline tune --features "$features" --dataset all --space smoke --experiment "$EXPERIMENT" \
    --storage demo/tune --mlflow-uri sqlite:///mlflow.db
dept-pipeline report --mlflow-uri sqlite:///mlflow.db --experiment "$EXPERIMENT"
cat <<MSG

MLflow UI: mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000
then open http://127.0.0.1:5000 -> "Model training" -> experiment "$EXPERIMENT".
MSG
