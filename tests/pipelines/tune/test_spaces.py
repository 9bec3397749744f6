"""Search-space files: parsing, validation (one line naming file and key), and the Ray Tune objects they make."""
from __future__ import annotations

import sys
import textwrap

import pytest

from pipelines.trial.settings import Hyperparameters
from pipelines.tune.spaces import SpaceError, load_space, parse_space, seed_of
from tune_spaces import space_names

SHIPPED = ("paper", "dept-coefficients", "smoke")


def write(tmp_path, text: str, name: str = "space.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_spaces_load_and_cover_the_three_methods(name):
    space = load_space(name)
    assert space.name == name
    assert set(space.methods()) == {"coop", "cocoop", "kgcoop"}
    assert space.num_trials() >= 1
    assert space.description


def test_shipped_names_listed():
    assert set(SHIPPED) <= set(space_names())


def test_paper_space_is_the_papers_protocol():
    space = load_space("paper")
    fixed = {n: p.values[0] for n, p in space.params.items() if p.kind == "fixed"}
    assert fixed["loss_weight"] == 0.7 and fixed["fusion_weight"] == 0.7
    assert fixed["epochs"] == 10 and fixed["shots"] == 16
    assert space.seeds == (1, 2, 3)
    assert space.scheduler.kind == "none"
    assert space.params["dept"].values == (False, True)
    assert space.num_trials() == 3 * 2 * 3


def test_dept_coefficients_searches_both_weights_apart_and_lr():
    space = load_space("dept-coefficients")
    assert space.params["loss_weight"].kind == "uniform"
    assert space.params["fusion_weight"].kind == "uniform"
    assert space.params["lr"].kind == "loguniform"
    assert space.scheduler.kind == "asha"


def test_format_fixed_searched_seeds_scheduler_searcher(tmp_path):
    path = write(tmp_path, """
        description: test
        params:
          method: kgcoop
          loss_weight: {uniform: [0.1, 0.9]}
          lr: {loguniform: [1e-4, 1e-2]}     # YAML 1.1 reads 1e-4 as a string: accepted as a number
          n_ctx: {choice: [2, 4]}
          dept: {grid: [true, false]}
        seeds: [3, 5]
        num_samples: 3
        metric: val_base_acc
        mode: max
        scheduler: {type: asha, grace_period: 2, reduction_factor: 3, max_t: 4}
        searcher: {type: random, seed: 7}
    """)
    space = load_space(str(path))
    assert space.params["method"].kind == "fixed" and space.params["method"].values == ("kgcoop",)
    assert space.params["lr"].values == (1e-4, 1e-2)
    assert space.num_trials() == 3 * 2 * 2
    assert space.tune_num_samples() == 3
    ps = space.param_space()
    assert ps["method"] == "kgcoop"
    assert ps["seed"] == {"grid_search": [3, 5]}
    assert ps["dept"] == {"grid_search": [True, False]}
    sched = space.make_scheduler()
    assert type(sched).__name__ == "AsyncHyperBandScheduler"
    assert sched._time_attr == "epoch" and sched._max_t == 4
    alg = space.make_search_alg()
    assert type(alg).__name__ == "BasicVariantGenerator"
    assert alg._constant_grid_search is True  # a sampled configuration is the same for every seed


def test_random_sampled_values_are_shared_across_seeds(tmp_path):
    """Each sampled configuration runs once per seed: Tune's generator with constant grid search."""
    path = write(tmp_path, """
        params:
          lr: {loguniform: [1.0e-4, 1.0e-1]}
          loss_weight: {uniform: [0.0, 1.0]}
        seeds: [1, 2, 3]
        num_samples: 2
    """)
    space = load_space(str(path))
    alg = space.make_search_alg()
    def trainable(config):
        return None

    alg.add_configurations({"name": {"run": trainable, "config": space.param_space(), "num_samples": 2}})
    configs = []
    while True:
        trial = alg.next_trial()
        if trial is None:
            break
        configs.append(trial.config)
    assert len(configs) == 6
    by_lr: dict[float, set[int]] = {}
    for c in configs:
        by_lr.setdefault(c["lr"], set()).add(c["seed"])
    assert len(by_lr) == 2 and all(seeds == {1, 2, 3} for seeds in by_lr.values())


def test_scheduler_none_and_string_forms(tmp_path):
    path = write(tmp_path, """
        params: {method: coop}
        scheduler: none
        searcher: random
    """)
    space = load_space(str(path))
    assert type(space.make_scheduler()).__name__ == "FIFOScheduler"


@pytest.mark.parametrize(
    "body, key",
    [
        ("params: {lr: {uniform: [0.1]}}", "params.lr"),
        ("params: {lr: {uniform: [0.1, 0.01]}}", "params.lr"),
        ("params: {lr: {loguniform: [0, 0.1]}}", "params.lr"),
        ("params: {lr: -1}", "params.lr"),
        ("params: {loss_weight: 1.5}", "params.loss_weight"),
        ("params: {fusion_weight: {choice: [0.5, 2]}}", "params.fusion_weight"),
        ("params: {method: maple}", "params.method"),
        ("params: {epochs: 2.5}", "params.epochs"),
        ("params: {epochs: 0}", "params.epochs"),  # train takes 0; a Tune trial must report an epoch
        ("params: {kg_weight: -1}", "params.kg_weight"),
        ("params: {epochs: {uniform: [1, 3]}}", "params.epochs"),
        ("params: {dept: yes please}", "params.dept"),
        ("params: {n_ctx: [2, 4]}", "params.n_ctx"),
        ("params: {n_ctx: {sample: [2, 4]}}", "params.n_ctx"),
        ("params: {learning_rate: 0.1}", "params.learning_rate"),
        ("params: {seed: 3}", "params.seed"),
        ("params: {method: coop}\nseeds: []", "seeds"),
        ("params: {method: coop}\nseeds: [1, 1]", "seeds"),
        ("params: {method: coop}\nnum_samples: 0", "num_samples"),
        ("params: {method: coop}\nnum_samples: 4", "num_samples"),  # nothing sampled: 4 identical samples
        ("params: {method: coop}\nmetric: test_hm", "metric"),
        ("params: {method: coop}\nmetric: pseudo_hm", "metric"),
        ("params: {method: coop}\nmode: maximise", "mode"),
        ("params: {method: coop}\nobjective: peek", "objective"),
        ("params: {method: coop}\nscheduler: hyperband", "scheduler.type"),
        ("params: {method: coop}\nscheduler: {type: asha, grace: 1}", "scheduler.grace"),
        ("params: {method: coop, epochs: 3}\nscheduler: {type: asha, grace_period: 5}", "scheduler.grace_period"),
        ("params: {method: coop}\nsearcher: {type: bayes}", "searcher.type"),
        ("params: {method: coop}\nsurprise: 1", "surprise"),
        ("seeds: [1]", "params"),
        ("params: {method: coop}\npseudo_new_fraction: 0.5", "pseudo_new_fraction"),
        ("params: {logit_scale: 0}", "params.logit_scale"),
    ],
)
def test_malformed_space_is_one_line_naming_file_and_key(tmp_path, body, key):
    path = write(tmp_path, body + "\n")
    with pytest.raises(SpaceError) as info:
        load_space(str(path))
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    assert f": {key}:" in message, message


def test_not_yaml_and_missing_file_and_unknown_name(tmp_path):
    bad = write(tmp_path, "params: {method: [coop\n")
    with pytest.raises(SpaceError, match="not valid YAML"):
        load_space(str(bad))
    with pytest.raises(SpaceError, match="not found"):
        load_space(str(tmp_path / "nope.yaml"))
    with pytest.raises(SpaceError, match="unknown search space 'nope'.*smoke"):
        load_space("nope")


def test_optuna_searcher_needs_optuna_and_no_grid(tmp_path, monkeypatch):
    with_grid = write(tmp_path, "params: {dept: {grid: [true, false]}}\nsearcher: optuna\n", "grid.yaml")
    with pytest.raises(SpaceError, match="params.dept: grid values need searcher random"):
        load_space(str(with_grid))
    plain = write(tmp_path, "params: {lr: {loguniform: [1.0e-4, 1.0e-2]}}\nsearcher: optuna\nseeds: [1, 2]\n", "o.yaml")
    monkeypatch.setitem(sys.modules, "optuna", None)  # as if not installed
    with pytest.raises(SpaceError, match=r"searcher: optuna is not installed"):
        load_space(str(plain))


def test_optuna_searcher_repeats_each_suggestion_per_seed(tmp_path):
    pytest.importorskip("optuna")
    path = write(tmp_path, "params: {lr: {loguniform: [1.0e-4, 1.0e-2]}}\nsearcher: optuna\nseeds: [1, 2]\nnum_samples: 3\n")
    space = load_space(str(path))
    assert space.tune_num_samples() == 6
    assert type(space.make_search_alg()).__name__ == "Repeater"


def test_overrides_method_num_samples_objective():
    space = load_space("smoke").with_overrides(methods=["coop"], num_samples=3, objective="pseudo-new")
    assert space.methods() == ["coop"] and space.params["method"].kind == "fixed"
    assert space.num_samples == 3
    assert space.objective == "pseudo-new" and space.metric == "pseudo_hm"
    two = load_space("smoke").with_overrides(methods=["coop", "kgcoop"])
    assert two.params["method"].kind == "grid" and two.num_trials() == 2 * 2 * 2
    with pytest.raises(SpaceError, match="--method 'maple'"):
        load_space("smoke").with_overrides(methods=["maple"])


def test_seed_from_config_and_repeater_index():
    assert seed_of({"seed": 4}, (1, 2)) == 4
    assert seed_of({"__trial_index__": 1}, (7, 9)) == 9


def test_hyperparameter_defaults_resolve_per_method():
    coop = Hyperparameters(method="coop").resolved([16])
    assert (coop.lr, coop.batch_size, coop.n_ctx, coop.ctx_init, coop.shots) == (0.0035, 4, 16, "", 16)
    cocoop = Hyperparameters(method="cocoop").resolved([16])
    assert (cocoop.lr, cocoop.batch_size, cocoop.n_ctx, cocoop.ctx_init) == (0.002, 1, 4, "a photo of a")
    from dept.methods.kgcoop import KgCoOpOptions

    kg = Hyperparameters(method="kgcoop").resolved([16])
    assert kg.kg_weight == 2.0 and "kg_weight" in kg.as_params() and "class_specific" not in kg.as_params()
    kg_base = Hyperparameters(method="kgcoop", dept=False).resolved([16])
    assert kg_base.kg_weight == kg.kg_weight == KgCoOpOptions().kg_weight  # +DePT changes one thing
    # Without DePT both coefficients are 0: DePT at (0, 0) is the base method, so that is what is logged.
    assert (kg_base.loss_weight, kg_base.fusion_weight) == (0.0, 0.0)
    explicit = Hyperparameters(method="coop", lr=0.01, n_ctx=4, ctx_init="a photo of a").resolved([4])
    assert (explicit.lr, explicit.n_ctx, explicit.ctx_init) == (0.01, 4, "a photo of a")
    assert explicit.method_options() == {"n_ctx": 4, "ctx_init": "a photo of a", "class_specific": False}


def test_space_round_trips_to_a_plain_description():
    import yaml

    space = load_space("dept-coefficients")
    again = parse_space(yaml.safe_load(yaml.safe_dump(space.as_dict())), name="again", source="again.yaml")
    assert again.params == space.params and again.seeds == space.seeds and again.scheduler == space.scheduler
