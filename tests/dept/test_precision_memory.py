"""The training step's precision (bf16 autocast, fp32 master weights) and a population split by its measured
activation memory: the split gives the unsplit population's numbers, the measurement scales with the members."""
import pytest
import torch

from dept import PopulationOptions, train, train_population
from dept.config import resolve_precision
from dept.population import activation_bytes, members_per_step
from tests.dept.test_population import MEMBERS, assert_same_member, data, member, rel

# bf16 keeps 8 bits of mantissa: a 2-epoch training's loss and prompts stay within these of fp32's.
BF16_LOSS_RTOL = 0.05
BF16_STATE_RTOL = 2e-2


def test_precision_auto_is_bf16_on_a_gpu_fp32_on_cpu():
    assert resolve_precision("auto", "cuda") == resolve_precision("auto", "cuda:1") == "bf16"
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("fp32", "cuda") == "fp32" and resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16"):
        resolve_precision("fp16", "cpu")
    assert PopulationOptions.for_precision("bf16").amp and not PopulationOptions.for_precision("fp32").amp


def test_dept_train_in_bf16_is_within_tolerance_of_fp32_and_really_bf16(clip):
    x, y = data(clip, "coop")
    (a, config), (b, _) = member(clip, "coop", MEMBERS[0]), member(clip, "coop", MEMBERS[0])
    exact = train(a, x, y, config)
    low = train(b, x, y, config, options=PopulationOptions.for_precision("bf16"))
    assert all(q.dtype == torch.float32 for q in b.parameters())  # master weights
    for e, l in zip(exact, low):
        assert abs(l.train_loss - e.train_loss) <= BF16_LOSS_RTOL * abs(e.train_loss)
    assert rel(b.method.ctx, a.method.ctx) <= BF16_STATE_RTOL
    assert rel(b.cat_head.classifier.weight, a.cat_head.classifier.weight) <= BF16_STATE_RTOL
    # Autocast was on: the numbers are not fp32's.
    assert [e.train_loss for e in exact] != [l.train_loss for l in low]


def step_bytes(clip, method, x, y, p):
    learners = [member(clip, method, MEMBERS[i % 3])[0] for i in range(p)]
    return activation_bytes(learners, x[:4, 0].expand(p, -1, -1), y[:4].expand(p, -1))


@pytest.mark.parametrize("method", ["coop", "kgcoop", "cocoop"])
def test_activation_bytes_are_a_shared_part_plus_one_part_per_member(clip, method):
    x, y = data(clip, method)
    sizes = {p: step_bytes(clip, method, x, y, p) for p in (1, 2, 4)}
    per_member = sizes[2] - sizes[1]
    assert per_member > 0
    # Linear in the members (frozen weights not counted): 2 more members hold twice one more member's bytes.
    assert abs((sizes[4] - sizes[2]) - 2 * per_member) <= 0.1 * (sizes[4] - sizes[2])


def test_a_population_over_its_memory_budget_runs_in_chunks_with_the_same_numbers(clip):
    x, y = data(clip, "coop")
    one, two = step_bytes(clip, "coop", x, y, 1), step_bytes(clip, "coop", x, y, 2)
    budget = int(two + 0.5 * (two - one))  # two members fit, three do not
    members = [member(clip, "coop", MEMBERS[i % 3]) for i in range(5)]
    options = PopulationOptions(memory_budget_bytes=budget)
    assert members_per_step([m for m, _ in members], x, y, 4, options, torch.device("cpu")) == 2
    assert members_per_step([m for m, _ in members], x, y, 4, PopulationOptions(), torch.device("cpu")) == 5
    whole = [member(clip, "coop", MEMBERS[i % 3]) for i in range(5)]
    split = train_population([m for m, _ in members], x, y, [c for _, c in members], options=options)
    ref = train_population([m for m, _ in whole], x, y, [c for _, c in whole])
    for (m, _), r, (mw, _), rw in zip(members, split, whole, ref):
        assert r.status == rw.status == "done"
        assert_same_member(mw, rw.history, m, r.history, clip)


def test_a_budget_below_one_member_trains_one_member_per_step(clip):
    x, y = data(clip, "coop")
    members = [member(clip, "coop", MEMBERS[i])[0] for i in range(3)]
    assert members_per_step(members, x, y, 4, PopulationOptions(memory_budget_bytes=1), torch.device("cpu")) == 1
    with pytest.raises(ValueError, match="memory budget must be > 0"):
        PopulationOptions(memory_budget_bytes=0)
