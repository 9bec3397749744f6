#!/usr/bin/env bash
# Issue 8 item 4: the base-to-new benchmark on the shipped miniature CLIP, run with the project's own commands.
# For each class split (disjoint shapes, shared shapes): write the shifted downstream dataset, featurize it with
# dept-mini-vit (16 shots, VIEWS views), zero-shot, then `dept-pipeline train` for every method with and without DePT
# and every seed, each run logged to one MLflow experiment; `report` prints the table (mean +- std over seeds).
# Extra arguments after the work folder are `train` options for every run (a recipe, e.g. a trade-off attempt).
#
#   bash bench/miniature.sh [WORK [train options...]]       # WORK default: runs/miniature-bench
#   EXPERIMENT=fixed-tau METHODS=coop bash bench/miniature.sh runs/miniature-bench --logit-scale 100
# Environment: METHODS ("coop kgcoop cocoop"), SEEDS ("1 2 3"), SPLITS ("disjoint shared"), EXPERIMENT
# (miniature-bench; also the results subfolder), FEATURES (WORK/features; a store holds one set of seeds and views),
# VIEWS (10: augmented views per train image; 0: the test view only), CROP_SCALE_MIN (0.08, the papers'),
# PRETRAINED (shipped: the package's checkpoint; or a dept-mini-vit checkpoint path from `miniature pretrain`),
# CLASS_TINT (0: the shipped dataset; > 0: `miniature data --class-tint`, datasets named miniature-SPLIT-tintT).
# Rerunning skips finished runs (one JSON per run under WORK/results/EXPERIMENT/).
source "$(dirname "$0")/../scripts/env.sh"
WORK="${1:-runs/miniature-bench}"
shift || true
METHODS="${METHODS:-coop kgcoop cocoop}"
SEEDS="${SEEDS:-1 2 3}"
SPLITS="${SPLITS:-disjoint shared}"
EXPERIMENT="${EXPERIMENT:-miniature-bench}"
FEATURES="${FEATURES:-$WORK/features}"
VIEWS="${VIEWS:-10}"
CROP_SCALE_MIN="${CROP_SCALE_MIN:-0.08}"
PRETRAINED="${PRETRAINED:-shipped}"
CLASS_TINT="${CLASS_TINT:-0}"
URI="sqlite:///$WORK/mlflow.db"
RESULTS="$WORK/results/$EXPERIMENT"
mkdir -p "$RESULTS"
echo "model: dept-mini-vit $PRETRAINED; data: class tint $CLASS_TINT; features: views $VIEWS, crop scale min $CROP_SCALE_MIN; train options for every run: ${*:-(defaults)}" > "$RESULTS/recipe.txt"

for split in $SPLITS; do
    name="miniature-$split"
    [ "$CLASS_TINT" != 0 ] && name="$name-tint$CLASS_TINT"
    data="$WORK/data/$name"
    dept-pipeline miniature data --out "$data" --split "$split" --class-tint "$CLASS_TINT"
    features=$(dept-pipeline featurize --dataset-dir "$data" --out "$FEATURES" --model dept-mini-vit \
        --pretrained "$PRETRAINED" --views "$VIEWS" --crop-scale-min "$CROP_SCALE_MIN" --shots 16 --seeds "${SEEDS// /,}" --no-progress | sed -n 's/^features: //p')
    dept-pipeline miniature zero-shot --dataset-dir "$data" --pretrained "$PRETRAINED" | tee "$RESULTS/zero-shot-$split.txt"
    for method in $METHODS; do
        for dept in --no-dept --dept; do
            for seed in $SEEDS; do
                out="$RESULTS/$split-$method-${dept#--}-seed$seed.json"
                [ -s "$out" ] && continue
                dept-pipeline train --features "$features" --dataset "$name" --method "$method" $dept \
                    --seed "$seed" --mlflow-uri "$URI" --experiment "$EXPERIMENT" --out "$out.tmp" "$@"
                mv "$out.tmp" "$out"
            done
        done
    done
done
dept-pipeline report --mlflow-uri "$URI" --experiment "$EXPERIMENT" | tee "$RESULTS/report.md"
