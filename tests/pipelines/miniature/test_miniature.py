"""The miniature: generated pairs, the downstream dataset, pretraining, and the shipped checkpoint."""
from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from dept.miniature import (
    MODEL_NAME,
    SPLITS,
    DownstreamConfig,
    MiniatureError,
    PairStream,
    Tokens,
    build_probe,
    class_split,
    encode_text,
    write_miniature_dataset,
)
from dept.miniature.render import class_tint_offsets, render, sample_downstream_scenes, sample_pretrain_scenes
from dept.miniature.world import COLOUR_NAMES, HELD_OUT, SHAPES, held_out_compositions, seen_compositions
from pipelines.cli import main

SMALL = dict(train_per_class=16, val_per_class=4, test_per_class=2)


@pytest.fixture(scope="module")
def mini():
    import open_clip

    torch.manual_seed(0)
    model = open_clip.create_model(MODEL_NAME).eval()
    return model, open_clip.get_tokenizer(MODEL_NAME)


def _tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


# -- generated pairs ---------------------------------------------------------------------------------------------
def test_pair_stream_is_a_function_of_seed_and_step(mini):
    model, tokenizer = mini
    tokens = Tokens(tokenizer, model.context_length)
    a, b = PairStream(tokens, seed=3, batch_size=32), PairStream(tokens, seed=3, batch_size=32)
    first = a.batch(7)
    a.batch(8)  # drawing other batches in between changes nothing
    again = b.batch(7)
    assert np.array_equal(first.images, again.images) and first.captions == again.captions
    assert torch.equal(first.tokens, again.tokens)
    assert not np.array_equal(first.images, PairStream(tokens, seed=4, batch_size=32).batch(7).images)
    assert first.images.shape == (32, 32, 32, 3) and first.images.dtype == np.uint8
    held = {k.name for k in held_out_compositions()}
    for text, comp in zip(first.captions, first.compositions):
        name = seen_compositions()[comp].name
        assert name in text, (name, text)  # each caption names its image's colour and shape
        assert name not in held


def test_held_out_compositions_reuse_seen_words():
    seen = seen_compositions()
    for c, s in HELD_OUT:
        assert any(k.colour == c for k in seen) and any(k.shape == s for k in seen)
    assert len(seen) + len(HELD_OUT) == len(COLOUR_NAMES) * len(SHAPES)


def test_truncated_text_forward_equals_encode_text(mini):
    model, tokenizer = mini
    captions = ["a photo of a red circle.", "a tiny blue star on a striped background.", "cyan ring."]
    full = tokenizer(captions)
    cut = full[:, : int(full.argmax(dim=-1).max()) + 1]
    with torch.no_grad():
        torch.testing.assert_close(encode_text(model, cut), model.encode_text(full), rtol=1e-5, atol=1e-5)


def test_downstream_domain_is_shifted_from_pretraining():
    """Downstream backgrounds are tinted (pretraining's are grey) and its shapes semi-transparent."""
    rng = np.random.default_rng(0)
    colour, shape = np.zeros(64, dtype=int), np.zeros(64, dtype=int)
    pre = sample_pretrain_scenes(rng, colour, shape)
    down = sample_downstream_scenes(rng, colour, shape)
    assert set(np.unique(pre.background)).isdisjoint(np.unique(down.background))
    assert np.ptp(pre.bg_a, axis=1).max() == 0 and np.ptp(down.bg_a, axis=1).mean() > 20
    assert (pre.alpha == 1).all() and (down.alpha < 1).all()
    assert np.array_equal(render(pre), render(pre))


def test_class_tint_moves_each_class_by_its_own_fixed_offset():
    """The class-specific shift: one RGB offset per colour x shape (the same in every draw), none at 0."""
    from dept.miniature import Shift

    colour, shape = np.array([0, 0, 0, 1]), np.array([2, 2, 2, 2])
    plain = sample_downstream_scenes(np.random.default_rng(3), colour, shape)
    same = sample_downstream_scenes(np.random.default_rng(3), colour, shape, Shift(class_tint=0.0))
    tinted = sample_downstream_scenes(np.random.default_rng(3), colour, shape, Shift(class_tint=60.0))
    assert np.array_equal(render(plain), render(same))  # 0: the shipped dataset, pixel for pixel
    offsets = class_tint_offsets(colour, shape, 60.0)
    assert np.array_equal(offsets[0], offsets[1]) and np.array_equal(offsets[1], offsets[2])  # one per class
    assert not np.allclose(offsets[0], offsets[3]) and np.abs(offsets).max() <= 60.0
    assert np.array_equal(class_tint_offsets(colour[3:], shape[3:], 60.0), offsets[3:])  # whatever else is drawn
    assert np.allclose(tinted.rgb, np.clip(plain.rgb + offsets, 0, 255))
    assert np.array_equal(tinted.bg_a, plain.bg_a) and np.array_equal(tinted.cast, plain.cast)  # only the object
    settings = DownstreamConfig(**SMALL).settings()["shift"]
    assert "class_tint" not in settings  # folders written before the option keep their settings
    assert DownstreamConfig(shift=Shift(class_tint=60.0), **SMALL).settings()["shift"]["class_tint"] == 60.0


# -- downstream dataset ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("split", sorted(SPLITS))
def test_downstream_split_follows_the_sorted_label_rule(tmp_path, split):
    from dept.datasets import base_new_split, load_custom_dataset

    out = write_miniature_dataset(tmp_path / f"mini-{split}", DownstreamConfig(split=split, **SMALL))
    ds = load_custom_dataset(out)
    design = class_split(split)
    base, new = base_new_split(ds.num_classes)
    assert [ds.classnames[i] for i in base] == [k.name for k in design.base]
    assert [ds.classnames[i] for i in new] == [k.name for k in design.new]
    assert all(re.fullmatch(r"[a-z]+ [a-z]+", c) for c in ds.classnames)  # "red circle"
    base_shapes = {k.shape for k in design.base}
    new_shapes = {k.shape for k in design.new}
    if split == "disjoint":
        assert base_shapes.isdisjoint(new_shapes)
    else:
        assert base_shapes == new_shapes and {k.colour for k in design.base}.isdisjoint({k.colour for k in design.new})
    for part, n in (("train", 16), ("val", 4), ("test", 2)):
        counts = np.bincount([it.label for it in getattr(ds, part)], minlength=ds.num_classes)
        assert (counts == n).all(), part


def test_downstream_writer_is_deterministic_and_never_clobbers(tmp_path):
    cfg = DownstreamConfig(split="disjoint", seed=5, **SMALL)
    a = write_miniature_dataset(tmp_path / "a", cfg)
    b = write_miniature_dataset(tmp_path / "b", cfg)
    digest = _tree_digest(a)
    assert digest == _tree_digest(b) and len(digest) == 24 * 22 + 2
    assert write_miniature_dataset(a, cfg) == a and _tree_digest(a) == digest  # same settings: completes, same bytes
    with pytest.raises(MiniatureError, match="other settings"):
        write_miniature_dataset(a, DownstreamConfig(split="disjoint", seed=6, **SMALL))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(MiniatureError, match="not empty"):
        write_miniature_dataset(foreign, cfg)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    other_seed = write_miniature_dataset(tmp_path / "c", DownstreamConfig(split="disjoint", seed=6, **SMALL))
    assert _tree_digest(other_seed)["split.json"] == digest["split.json"]  # same layout ...
    assert _tree_digest(other_seed) != digest  # ... other pixels


def test_cli_data_and_one_line_errors(tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["miniature", "data", "--out", str(tmp_path / "d"), "--split", "shared",
                               "--train-per-class", "16", "--val-per-class", "4", "--test-per-class", "1"])
    assert res.exit_code == 0, res.output
    assert "24 base + 24 new" in res.output
    assert len(json.loads((tmp_path / "d" / "split.json").read_text())["test"]) == 48
    res = runner.invoke(main, ["miniature", "data", "--out", str(tmp_path / "e"), "--train-per-class", "8"])
    assert res.exit_code == 2 and res.output.strip().count("\n") == 0 and "at least 16" in res.output
    assert not (tmp_path / "e").exists()
    res = runner.invoke(main, ["miniature", "pretrain", "--out", str(tmp_path / "p"), "--mlflow-uri", f"sqlite:///{tmp_path}/m.db"])
    assert res.exit_code == 2 and "--minutes or --steps" in res.output
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / f"{MODEL_NAME}.safetensors").write_bytes(b"x")
    res = runner.invoke(main, ["miniature", "pretrain", "--out", str(tmp_path / "p"), "--steps", "2"])
    assert res.exit_code == 2 and "already exists" in res.output
    assert (tmp_path / "p" / f"{MODEL_NAME}.safetensors").read_bytes() == b"x"


# -- pretraining -------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_pretraining_is_deterministic_for_a_seed_and_ships(tmp_path):
    from safetensors.torch import load_file

    from pipelines.miniature.pretrain import PretrainConfig, pretrain

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    runs = [
        pretrain(PretrainConfig(out=str(tmp_path / name), steps=3, seed=2, batch_size=16, warmup_steps=2,
                                mlflow_uri=uri, threads=1, progress=False))
        for name in ("a", "b")
    ]
    a, b = (load_file(str(r.checkpoint)) for r in runs)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    untrained = load_file(str(pretrain(PretrainConfig(out=str(tmp_path / "c"), steps=1, seed=2, batch_size=16, lr=1e-12,
                                                      warmup_steps=1, mlflow_uri=uri, threads=1, progress=False)).checkpoint))
    assert not torch.equal(a["visual.conv1.weight"], untrained["visual.conv1.weight"])  # it did train

    # shipping: the smallest precision within tolerance, the temperature kept exact, nothing overwritten
    from dept import load_clip
    from pipelines.miniature.ship import FP16_TOLERANCE, ship

    record = ship(tmp_path / "a", tmp_path / "assets")
    shipped = load_file(str(tmp_path / "assets" / f"{MODEL_NAME}.safetensors"))
    tried = record["feature_change"]["tried"]
    assert record["dtype"] == tried[-1]["precision"]
    assert all(max(t["image_max"], t["text_max"]) > FP16_TOLERANCE for t in tried[:-1])
    assert shipped["logit_scale"].dtype == torch.float32 and torch.equal(shipped["logit_scale"], a["logit_scale"])
    assert shipped["token_embedding.weight"].dtype == torch.float16
    clip = load_clip(MODEL_NAME, str(tmp_path / "assets" / f"{MODEL_NAME}.safetensors"))
    assert clip.weights_id == "sha256:" + record["sha256"]
    assert set(record["downstream_zero_shot"]) == set(SPLITS)
    with pytest.raises(MiniatureError, match="already exists"):
        ship(tmp_path / "b", tmp_path / "assets")


@pytest.mark.slow
def test_fast_pretraining_zero_shot_beats_chance_on_held_out_compositions(tmp_path):
    """About a minute of pretraining (through the CLI): zero-shot on compositions never seen in pretraining is
    several times chance, while the same probe on the untrained model is at chance. MLflow holds the curves;
    the checkpoint loads like any CLIP and reproduces the probe."""
    from mlflow import MlflowClient

    from dept import load_clip

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["miniature", "pretrain", "--out", str(out), "--steps", "100", "--warmup-steps", "10",
                                    "--probe-every", "50", "--seed", "0", "--threads", "1", "--no-progress",
                                    "--mlflow-uri", uri, "--experiment", "mini-test"])
    assert res.exit_code == 0, res.output
    record = json.loads((out / "pretrain.json").read_text())
    chance = record["probe"]["chance"]
    assert math.isclose(chance, 100 / 88)
    assert record["untrained"]["zs_heldout"] < 3 * chance and record["untrained"]["zs_seen"] < 3 * chance
    assert record["final"]["zs_heldout"] > 5 * chance, record["final"]
    assert record["final"]["zs_seen"] > 5 * chance, record["final"]
    assert record["final"]["loss"] < math.log(128) - 0.3  # below the loss of a model that cannot tell pairs apart

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(record["mlflow"]["run_id"])
    assert run.info.status == "FINISHED"
    held = client.get_metric_history(run.info.run_id, "zs_heldout")
    assert [m.step for m in held] == [0, 50, 100]
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 10
    assert len(client.get_metric_history(run.info.run_id, "logit_scale")) == 10

    clip = load_clip(MODEL_NAME, str(out / f"{MODEL_NAME}.safetensors"))
    assert clip.weights_id == "sha256:" + record["sha256"]
    probe = build_probe(clip.mean, clip.std)
    again = probe.evaluate(clip.model, clip.tokenizer)
    assert again["zs_heldout"] == pytest.approx(record["final"]["zs_heldout"], abs=1e-6)
    assert again["zs_seen"] == pytest.approx(record["final"]["zs_seen"], abs=1e-6)


# -- the shipped checkpoint --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_shipped_checkpoint_reproduces_its_recorded_zero_shot(tmp_path):
    from dept import load_clip
    from dept.miniature import shipped_checkpoint, shipped_record, zero_shot_base_new

    record = shipped_record()
    clip = load_clip(MODEL_NAME, str(shipped_checkpoint()))
    assert clip.weights_id == "sha256:" + record["sha256"]
    for split, recorded in record["downstream_zero_shot"].items():
        cfg = DownstreamConfig(**{k: v for k, v in recorded["dataset"].items() if k != "shift"})
        folder = write_miniature_dataset(tmp_path / split, cfg)
        if split == "disjoint":  # once through the CLI, with its default model and weights
            res = CliRunner().invoke(main, ["miniature", "zero-shot", "--dataset-dir", str(folder)])
            assert res.exit_code == 0, res.output
            printed = re.search(r"base ([0-9.]+)\s+new ([0-9.]+)\s+HM ([0-9.]+)", res.output)
            assert printed, res.output
            assert float(printed.group(1)) == pytest.approx(recorded["base_acc"], abs=0.2)
            assert float(printed.group(2)) == pytest.approx(recorded["new_acc"], abs=0.2)
        got = zero_shot_base_new(clip, folder, template=recorded["template"])
        for key in ("base_acc", "new_acc", "hm", "all_acc"):
            assert got[key] == pytest.approx(recorded[key], abs=0.2), (split, key, got, recorded)
    # far from what the same architecture gives with random weights
    random_clip = load_clip(MODEL_NAME, None)
    rand = zero_shot_base_new(random_clip, tmp_path / "disjoint")
    assert record["downstream_zero_shot"]["disjoint"]["hm"] > rand["hm"] + 20
