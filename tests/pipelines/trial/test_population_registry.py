"""When a population forms (pipelines.trial.population.PopulationRegistry): at P members, once every trial Tune runs
at once has joined (no other can start before one ends), else after a quiet period; read from the registry's record
of its formations, not from timings."""
from __future__ import annotations

import dataclasses

import pytest

from pipelines.store import list_datasets
from pipelines.trial.context import make_context
from pipelines.trial.population import registry_name, start_registry

CONFIG = {"method": "coop", "dept": True, "lr": 0.01, "epochs": 1, "warmup_epochs": 0, "batch_size": 4, "n_ctx": 2,
          "ctx_init": ""}
#: Far longer than the test takes: a population that formed by the quiet period instead says so in its record.
LONG_WAIT_S = 600.0


@pytest.fixture
def context(demo_store):
    ctx = make_context(demo_store, list_datasets(demo_store)[0], shots=[None], seeds=[1])
    return dataclasses.replace(ctx, population=8, population_group=registry_name("test/registry"))


def join_all(registry, n: int) -> list:
    import ray

    refs = [registry.join.remote(f"t{i}", {**CONFIG, "loss_weight": 0.3 + 0.1 * i}, None) for i in range(n)]
    return ray.get(refs, timeout=LONG_WAIT_S / 2)  # a hang here is the quiet period being waited for


def test_a_population_forms_once_every_trial_tune_runs_at_once_joined(context, ray_cluster):
    import ray

    registry = start_registry(context, experiment_key="test/registry", gpus=0.0, join_wait_s=LONG_WAIT_S, slots=3)
    try:
        joined = join_all(registry, 3)
        [formed] = ray.get(registry.formations.remote())
    finally:
        ray.kill(registry)
    assert sorted(formed["members"]) == ["t0", "t1", "t2"]  # one population of all three, not 8 nor a split
    assert formed["why"].startswith("every trial Tune runs at once (3)"), formed
    assert {population_id for population_id, _, _ in joined} == {formed["id"]}
    assert {size for _, _, size in joined} == {3}


def test_without_a_trial_count_a_lone_member_forms_after_the_quiet_period(context, ray_cluster):
    import ray

    registry = start_registry(context, experiment_key="test/registry", gpus=0.0, join_wait_s=0.1)
    try:
        join_all(registry, 1)
        [formed] = ray.get(registry.formations.remote())
    finally:
        ray.kill(registry)
    assert formed["members"] == ["t0"]
    assert formed["why"] == "no member joined for 0.1 s"
