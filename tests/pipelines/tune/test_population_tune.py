"""``tune --population P``: Tune and MLflow see one trial per configuration whether trials train alone or P at a time
(pipelines.trial.population); the numbers are the single trials' (float32 rounding apart); ASHA stops and retries
act per member."""
from __future__ import annotations

import math

import pytest
import yaml
from click.testing import CliRunner

from pipelines.cli import main
from tests.pipelines.tune.test_tune import runs_of, tune_args

SPACE = {
    "params": {"method": "coop", "dept": True, "loss_weight": {"uniform": [0.3, 0.9]},
               "lr": {"loguniform": [1.0e-3, 3.0e-2]}, "epochs": 3, "warmup_epochs": 0, "batch_size": 4, "n_ctx": 2,
               "ctx_init": ""},
    "seeds": [1],
    "num_samples": 4,
    "scheduler": "none",
    "searcher": {"type": "random", "seed": 0},
}


def run_cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def trials(uri: str, experiment: str) -> dict:
    """(lr, loss weight) -> (run, {metric: [values by epoch]}) of every trial run."""
    client, runs = runs_of(uri, experiment, "tags.role = 'trial'")
    out = {}
    for run in runs:
        key = (run.data.params["lr"], run.data.params["loss_weight"])
        assert key not in out, f"two runs of one configuration in {experiment}"
        histories = {m: [x.value for x in sorted(client.get_metric_history(run.info.run_id, m), key=lambda x: x.step)]
                     for m in ("train_loss", "val_hm", "val_base_acc", "val_new_acc")}
        out[key] = (run, histories)
    return out


def write_space(tmp_path, **changes):
    space = {**SPACE, **changes}
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


@pytest.fixture(scope="module")
def single(demo_store, tmp_path_factory, ray_cluster):
    """The space's 4 trials trained one by one (--population 1): the reference."""
    tmp = tmp_path_factory.mktemp("single")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    result = run_cli(*tune_args(demo_store, tmp, uri, "single", "--space", write_space(tmp), "--population", 1,
                                "--ray-address", ray_cluster.address))
    assert result.exit_code == 0, result.output
    return uri, trials(uri, "single")


def assert_same_numbers(pop: dict, ref: dict, keys) -> None:
    for key in keys:
        run, hist = pop[key]
        ref_run, ref_hist = ref[key]
        assert len(hist["train_loss"]) == len(ref_hist["train_loss"]) > 0
        for a, b in zip(hist["train_loss"], ref_hist["train_loss"]):
            assert math.isclose(a, b, rel_tol=1e-5), (key, hist["train_loss"], ref_hist["train_loss"])
        for m in ("val_hm", "val_base_acc", "val_new_acc"):
            assert hist[m] == pytest.approx(ref_hist[m], abs=1e-6), (key, m)
        for m in ("test_base_acc", "test_new_acc", "test_hm"):
            assert run.data.metrics[m] == pytest.approx(ref_run.data.metrics[m], abs=1e-6), (key, m)


@pytest.mark.slow
def test_population_trials_are_single_trials_to_tune_mlflow_and_report(demo_store, tmp_path, ray_cluster, single):
    ref_uri, ref = single
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_cli(*tune_args(demo_store, tmp_path, uri, "pop", "--space", write_space(tmp_path), "--population", 4,
                                "--ray-address", ray_cluster.address))
    assert result.exit_code == 0, result.output
    assert "4 completed, 0 stopped early, 0 failed" in result.output
    pop = trials(uri, "pop")
    assert set(pop) == set(ref) and len(pop) == 4
    # One population of the four (same shape: one method, seed, context), each member its own run.
    populations = {run.data.tags.get("population") for run, _ in pop.values()}
    assert len(populations) == 1 and None not in populations
    assert {run.data.tags["population_size"] for run, _ in pop.values()} == {"4"}
    assert not any("population" in run.data.tags for run, _ in ref.values())
    assert_same_numbers(pop, ref, pop)
    client, _ = runs_of(uri, "pop")
    for run, _ in pop.values():
        assert run.info.status == "FINISHED" and run.data.tags["trial_status"] == "completed"
        files = {a.path for a in client.list_artifacts(run.info.run_id, "learned_state")}
        assert {"learned_state/learned_state.safetensors", "learned_state/hyperparameters.json"} <= files
    # report reads both experiments into the same table (the population is only a tag).
    tables = []
    for u, name in ((uri, "pop"), (ref_uri, "single")):
        out = run_cli("report", "--mlflow-uri", u, "--experiment", name)
        assert out.exit_code == 0, out.output
        tables.append(out.output.replace(name, "EXPERIMENT"))
    assert tables[0] == tables[1]


@pytest.mark.slow
def test_members_stop_and_retry_one_by_one(demo_store, tmp_path, ray_cluster, single, monkeypatch):
    """ASHA stops some members after epoch 1; every member's first attempt fails after its first report (the test
    hook) and is retried from its checkpoint in a new population: no duplicate runs, the completed members' numbers
    are the single trials'."""
    _, ref = single
    marker_dir = tmp_path / "fail-once"
    marker_dir.mkdir()
    monkeypatch.setenv("DEPT_PIPELINE_TEST_FAIL_ONCE_DIR", str(marker_dir))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    space = write_space(tmp_path, scheduler={"type": "asha", "grace_period": 1, "reduction_factor": 2})
    result = run_cli(*tune_args(demo_store, tmp_path, uri, "asha", "--space", space, "--population", 4,
                                "--ray-address", ray_cluster.address))
    assert result.exit_code == 0, result.output
    pop = trials(uri, "asha")
    assert len(pop) == 4 and set(pop) == set(ref)
    statuses = {key: run.data.tags["trial_status"] for key, (run, _) in pop.items()}
    assert set(statuses.values()) <= {"completed", "stopped_early"} and "completed" in statuses.values()
    retried = 0
    for key, (run, hist) in pop.items():
        # ASHA's stop at epoch 1 comes before the hook's failure: a member stopped there never failed
        stopped_at_1 = statuses[key] == "stopped_early" and len(hist["train_loss"]) == 1
        assert run.data.tags["failures"] == ("0" if stopped_at_1 else "1")
        retried += not stopped_at_1
        assert run.data.tags["population"]
        if statuses[key] == "stopped_early":
            assert len(hist["train_loss"]) < 3 and "test_hm" not in run.data.metrics
    assert len(list(marker_dir.iterdir())) == retried >= 1
    completed = [k for k, s in statuses.items() if s == "completed"]
    assert_same_numbers(pop, ref, completed)
    stopped = [k for k, s in statuses.items() if s == "stopped_early"]
    for key in stopped:  # the epochs a stopped member did train are the single trial's too
        hist, ref_hist = pop[key][1], ref[key][1]
        for a, b in zip(hist["train_loss"], ref_hist["train_loss"]):
            assert math.isclose(a, b, rel_tol=1e-5)


def test_population_must_be_auto_or_a_count(tmp_path):
    result = run_cli("tune", "--features", tmp_path, "--dataset", "demo", "--population", "0")
    assert result.exit_code == 2
    assert "'--population': '0' is neither auto nor a whole number >= 1" in result.output


def test_population_key_groups_shape_not_coefficients():
    from pipelines.trial.population import default_population, population_key
    from pipelines.trial.settings import Hyperparameters

    def key(**kw):
        return population_key(Hyperparameters.from_config({"method": "coop", **kw}).resolved([4]))

    assert key(lr=0.01, loss_weight=0.5, weight_decay=0.1) == key(lr=0.002, loss_weight=0.7)
    assert key(seed=1) != key(seed=2)  # other few-shot images
    assert key(n_ctx=2) != key(n_ctx=4)  # other context shape
    assert key(loss_weight=0.5) != key(loss_weight=0.0)  # no CAT head at loss weight 0
    assert key() != population_key(Hyperparameters.from_config({"method": "kgcoop"}).resolved([4]))
    assert default_population(0) == 1 and default_population(0.5) == 8


@pytest.mark.slow
def test_interrupted_population_resumes_each_member_once(demo_store, tmp_path, ray_cluster, single, monkeypatch):
    """SIGINT while a population trains (every member paused at each epoch report, so the stop lands mid-run); the
    printed --resume continues each member from its own checkpoint in a new population: one run per member, the
    single trials' numbers."""
    import shlex
    import signal
    import time

    from pipelines.trial.context import EPOCH_PAUSE_ENV
    from tests.pipelines.tune.test_interrupts import _stopped
    from tests.pipelines.tune.test_tune import _driver, driver_running

    _, ref = single
    monkeypatch.setenv(EPOCH_PAUSE_ENV, "2")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = tune_args(demo_store, tmp_path, uri, "int", "--space", write_space(tmp_path), "--population", 4,
                     "--ray-address", ray_cluster.address)
    first_log = tmp_path / "first.log"
    with driver_running(args, first_log, tmp_path) as first:
        deadline = time.time() + 300
        while True:  # the first epoch of some member logged
            assert first.poll() is None, first_log.read_text()[-3000:]
            assert time.time() < deadline, "no epoch logged in time"
            try:
                client, runs = runs_of(uri, "int", "tags.role = 'trial'")
                if any(client.get_metric_history(r.info.run_id, "train_loss") for r in runs):
                    break
            except Exception:  # the store is being created by the driver
                pass
            time.sleep(0.5)
        command = _stopped(first, first_log, signal.SIGINT, 130)
    _, done = runs_of(uri, "int", "tags.trial_status = 'completed'")
    assert len(done) < 4

    resumed_log = tmp_path / "resumed.log"
    resumed = _driver(shlex.split(command)[1:], resumed_log, tmp_path)
    assert resumed.wait(timeout=600) == 0, resumed_log.read_text()[-3000:]
    pop = trials(uri, "int")
    assert set(pop) == set(ref) and len(pop) == 4
    assert all(run.data.tags["trial_status"] == "completed" for run, _ in pop.values())
    assert_same_numbers(pop, ref, pop)


@pytest.mark.slow
def test_pseudo_new_population_retrains_its_members_as_the_single_trials_do(demo_store, tmp_path, ray_cluster):
    """Under --objective pseudo-new a trial is retrained on every base class before its test scores: the
    population retrains its members as one population too, and the test numbers are the single trials'."""
    space = write_space(tmp_path, num_samples=2)
    logged = {}
    for name, population in (("pn-single", 1), ("pn-pop", 2)):
        uri = f"sqlite:///{tmp_path / name}.db"
        result = run_cli(*tune_args(demo_store, tmp_path / name, uri, name, "--space", space, "--objective",
                                    "pseudo-new", "--population", population, "--ray-address", ray_cluster.address))
        assert result.exit_code == 0, result.output
        _, runs = runs_of(uri, name, "tags.role = 'trial'")
        logged[name] = {(r.data.params["lr"], r.data.params["loss_weight"]): r for r in runs}
    assert len(logged["pn-pop"]) == 2 and set(logged["pn-pop"]) == set(logged["pn-single"])
    assert {r.data.tags["population_size"] for r in logged["pn-pop"].values()} == {"2"}
    for key, run in logged["pn-pop"].items():
        ref = logged["pn-single"][key].data.metrics
        for m in ("pseudo_hm", "test_base_acc", "test_new_acc", "test_hm"):
            assert run.data.metrics[m] == pytest.approx(ref[m], abs=1e-6), (key, m)
