"""``dept-pipeline zero-shot``: CLIP zero-shot from the feature store equals a hand computation (pyarrow + open_clip)
and ``train --epochs 0 --method coop --ctx-init "a photo of a" --no-dept``; it is one MLflow run that ``report``
shows as the 'CLIP (zero-shot)' row; user errors are one line, before any work."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipelines.cli import main

TINY_MODEL = "dept-tiny-vit"


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def hand_zero_shot(features_url: str, dataset: str, checkpoint: Path, template: str):
    """Zero-shot written out from the parts: the store's test rows read with pyarrow alone, the prompts through
    open_clip's own tokenizer and ``encode_text``. Returns {"base"/"new": (image ids, labels, logits)}."""
    import numpy as np
    import open_clip
    import pyarrow.parquet as pq
    import torch
    import torch.nn.functional as F
    from safetensors.torch import load_file

    folder = Path(features_url) / dataset
    table = pq.ParquetDataset(sorted(str(p) for p in folder.glob("part-test-*.parquet"))).read()
    ids = table.column("image_id").to_pylist()
    labels = np.asarray(table.column("label").to_pylist())
    names = dict(zip(table.column("label").to_pylist(), table.column("classname").to_pylist()))
    emb = torch.tensor(np.asarray(table.column("embedding").to_pylist(), dtype=np.float32))
    num_base = math.ceil(len(names) / 2)  # the protocol: base = the first half of the sorted labels
    model = open_clip.create_model(TINY_MODEL, pretrained=None)
    model.load_state_dict(load_file(str(checkpoint)))
    model.eval()
    tokenizer = open_clip.get_tokenizer(TINY_MODEL)
    out = {}
    for part, classes in (("base", range(num_base)), ("new", range(num_base, len(names)))):
        classes = list(classes)
        with torch.no_grad():
            text = F.normalize(model.encode_text(tokenizer([template.format(names[c]) for c in classes])), dim=-1)
            keep = np.isin(labels, classes)
            logits = model.logit_scale.exp() * F.normalize(emb[keep], dim=-1) @ text.t()
        out[part] = ([i for i, k in zip(ids, keep) if k], torch.tensor(labels[keep] - classes[0]), logits)
    return out


# -- fast: no store needed -------------------------------------------------------------------------------------
def test_template_is_the_datasets_hand_crafted_one_and_must_hold_the_class_slot():
    from pipelines.trial.zero_shot import template_for

    assert template_for("DTD") == "{} texture."
    assert template_for("EuroSAT") == "a centered satellite photo of {}."
    assert template_for("miniature-disjoint") == "a photo of a {}."  # custom datasets: CoOp's default
    assert template_for("DTD", "a {} pattern.") == "a {} pattern."
    with pytest.raises(ValueError, match="must contain"):
        template_for("DTD", "a texture.")


def test_paper_zero_shot_rows_ship_with_the_package():
    from pipelines.metrics import harmonic_mean
    from pipelines.report.table import PAPER_DATASETS, PAPER_ZERO_SHOT, PaperRow, load_paper_results

    paper = load_paper_results()
    rows = [paper[(d, *PAPER_ZERO_SHOT)] for d in PAPER_DATASETS]
    assert paper[("DTD", "CLIP", "zero-shot")] == PaperRow(53.24, 59.90, 56.37)
    assert paper[("Average", "CLIP", "zero-shot")] == PaperRow(69.34, 74.22, 71.70)
    for r in rows:  # each printed HM is the HM of its printed base and new
        assert harmonic_mean(r.base, r.new) == pytest.approx(r.hm, abs=0.006)
    # CLIP's printed average is the mean of its own rows (unlike CoOp's)
    assert sum(r.base for r in rows) / 11 == pytest.approx(69.34, abs=0.006)
    assert sum(r.new for r in rows) / 11 == pytest.approx(74.22, abs=0.006)


def test_zero_shot_cli_errors_are_one_line_before_work(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = invoke("zero-shot", "--features", tmp_path / "nowhere", "--dataset", "demo", "--mlflow-uri", uri)
    assert result.exit_code == 2 and "no such folder" in result.output
    assert len(result.output.strip().splitlines()) == 1
    result = invoke("zero-shot", "--features", tmp_path, "--dataset", "demo", "--template", "no slot",
                    "--mlflow-uri", uri)
    assert result.exit_code == 2 and "must contain {} for the class name" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "mlflow.db").exists()  # refused before anything was written


# -- slow: on the featurized demo store ------------------------------------------------------------------------
@pytest.mark.slow
def test_zero_shot_equals_a_hand_computation_from_the_store_and_open_clip(demo_store, tiny_clip_checkpoint):
    from dept import evaluate_zero_shot, load_clip
    from pipelines.store import read_features
    from pipelines.trial.zero_shot import zero_shot

    hand = hand_zero_shot(demo_store, "demo", tiny_clip_checkpoint, "a photo of a {}.")
    result = zero_shot(demo_store, "demo")
    assert result.template == "a photo of a {}."
    for part in ("base", "new"):
        ids, labels, logits = hand[part]
        correct = int((logits.argmax(-1) == labels).sum())
        acc = result.metrics[f"test_{part}_acc"]
        assert round(acc * len(ids) / 100) == correct and acc == pytest.approx(100 * correct / len(ids), abs=1e-4)
        assert result.images[f"test_{part}"] == len(ids)
    # The logits themselves, image by image, through dept's function on the store's reader.
    clip = load_clip(TINY_MODEL, str(tiny_clip_checkpoint), text_only=True)
    base = read_features(demo_store, "demo", split="test", classes="base")
    new = read_features(demo_store, "demo", split="test", classes="new")
    res = evaluate_zero_shot(clip, "a photo of a {}.", base.features, base.labels, base.classnames,
                             new.features, new.labels, new.classnames)
    ids, labels, logits = hand["base"]
    order = [ids.index(i) for i in base.image_ids]
    assert (labels[order] == base.labels).all()
    # Logits are tau x cosine; the text tower's truncated path (dept.text_encoder) sums in another order than
    # encode_text's 77 tokens, so they agree to float32 rounding: 1e-6 on the cosine.
    tau = clip.model.logit_scale.exp().item()
    assert (res.base_itm_logits - logits[order]).abs().max().item() / tau < 1e-6
    assert res.base_cat_logits is None and res.new_acc == result.metrics["test_new_acc"]


@pytest.mark.slow
def test_zero_shot_cli_logs_one_run_equal_to_train_at_zero_epochs_and_report_shows_it(demo_store, tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = invoke("zero-shot", "--features", demo_store, "--dataset", "all", "--mlflow-uri", uri,
                    "--experiment", "zs")
    assert result.exit_code == 0, result.output
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("zs").experiment_id])
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    assert run.info.status == "FINISHED" and run.info.run_name == "CLIP zero-shot"
    assert tags["role"] == "zero-shot" and tags["method"] == "clip" and tags["dept"] == "false"
    for tag in ("dataset", "backbone", "pretrained", "weights_id", "feature_fingerprint", "features_url"):
        assert tags.get(tag), tag  # the trials' feature tags
    assert tags["backbone"] == TINY_MODEL and tags["template"] == "a photo of a {}."
    assert params["epochs"] == "0" and params["loss_weight"] == "0.0" and params["dept_effective"] == "false"
    assert set(metrics) == {"test_base_acc", "test_new_acc", "test_hm", "val_base_acc", "val_new_acc", "val_hm"}
    line = [ln for ln in result.output.splitlines() if ln.startswith("demo CLIP zero-shot")][0]
    assert f"base {metrics['test_base_acc']:.2f}  new {metrics['test_new_acc']:.2f}  HM {metrics['test_hm']:.2f}" in line

    # CoOp with its context set to the template's words and nothing trained is zero-shot CLIP, exactly.
    out = tmp_path / "epochs0.json"
    result = invoke("train", "--features", demo_store, "--dataset", "demo", "--method", "coop", "--no-dept",
                    "--ctx-init", "a photo of a", "--epochs", 0, "--out", out)
    assert result.exit_code == 0, result.output
    test = json.loads(out.read_text())["test"]
    assert (test["test_base_acc"], test["test_new_acc"]) == (metrics["test_base_acc"], metrics["test_new_acc"])

    result = invoke("report", "--mlflow-uri", uri, "--experiment", "zs")
    assert result.exit_code == 0, result.output
    b, n, h = metrics["test_base_acc"], metrics["test_new_acc"], metrics["test_hm"]
    # λ and lr (none for zero-shot), then seeds, base, new, HM.
    assert f"| demo | CLIP (zero-shot) | — | — | — | {b:.2f} | {n:.2f} | {h:.2f} |" in result.output
    assert f"| **Average** (1 dataset) | CLIP (zero-shot) | | | | {b:.2f} | {n:.2f} | **{h:.2f}** |" in result.output
