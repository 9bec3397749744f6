"""A trial opens its dataset's store once per worker and reads each file once; the next trial in the same worker
reads nothing (counted on a real store on disk through a counting fsspec filesystem)."""
from __future__ import annotations

import os

import pytest
import torch

from pipelines.store import StoreError, model_store_url, open_store, read_features, read_manifest
from pipelines.trial.context import TrialContext
from pipelines.trial.plan import read_trial_data
from pipelines.trial.settings import Hyperparameters
from tests.pipelines.store.toy_store import IDENTITY, OPENS, make_store


@pytest.fixture
def model_url(tmp_path):
    url = model_store_url(str(tmp_path / "features"), IDENTITY["model"], IDENTITY["weights_id"])
    make_store(url)
    return url


def context(url: str, objective: str = "val") -> TrialContext:
    return TrialContext(features_url="counting://" + url, dataset="toy", model=IDENTITY["model"], pretrained="x",
                        weights_id=IDENTITY["weights_id"], fingerprint=read_manifest(url, "toy").fingerprint,
                        store_shots=2, objective=objective, seeds=(1, 2))


def test_a_trial_reads_every_file_once_and_a_reused_worker_none(model_url):
    files = sorted(os.listdir(os.path.join(model_url, "toy")))
    ctx = context(model_url)
    OPENS.clear()
    data = read_trial_data(ctx, Hyperparameters(method="coop", seed=1, shots=2), IDENTITY)
    assert dict(OPENS) == {f: 1 for f in files}  # _manifest.json, _fewshot.json, each shard: once each

    OPENS.clear()
    again = read_trial_data(ctx, Hyperparameters(method="coop", seed=2, shots=2), IDENTITY)  # the next trial
    assert sum(OPENS.values()) == 0
    assert again.train.features.shape[0] == data.train.features.shape[0]  # same draw size, another seed's draw

    # The selections taken in memory equal separate reads of the store.
    for got, (split, classes, seed) in [(data.train, ("train", "base", 1)), (data.val_base, ("val", "base", 1)),
                                        (data.val_new, ("val", "new", 1)), (data.test_base, ("test", "base", None)),
                                        (data.test_new, ("test", "new", None))]:
        want = read_features(model_url, "toy", split=split, classes=classes, seed=seed,
                             shots=2 if seed else None)
        assert torch.equal(got.features, want.features) and torch.equal(got.labels, want.labels)
        assert got.classnames == want.classnames


def test_cache_is_per_fingerprint_and_refuses_a_changed_store(model_url):
    first = open_store(model_url, "toy", fingerprint=read_manifest(model_url, "toy").fingerprint)
    assert open_store(model_url, "toy", fingerprint=first.manifest.fingerprint) is first
    make_store(model_url, seeds=(1, 3))  # featurized again with other seeds: another fingerprint
    new_fp = read_manifest(model_url, "toy").fingerprint
    assert new_fp != first.manifest.fingerprint
    # A worker that already holds the store keeps serving the features the run was set up with; one that opens
    # it afresh (here: the same folder under another URL, so not in the cache) refuses the changed store.
    assert open_store(model_url + "/", "toy", fingerprint=first.manifest.fingerprint) is first
    with pytest.raises(StoreError, match="changed since this run was set up"):
        open_store("counting://" + model_url, "toy", fingerprint=first.manifest.fingerprint)
    second = open_store(model_url, "toy", fingerprint=new_fp)
    assert second is not first and second.manifest.seeds == (1, 3)
