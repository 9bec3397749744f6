"""Trial populations (dept.population): each member equals its own dept.train run, a population of one is
dept.train bit for bit, members stop and fail independently, mismatched members are refused up front."""
import pytest
import torch

from dept import DePTConfig, PopulationOptions, TrainConfig, build_learner, evaluate_base_new, train, train_population
from dept.population import batched_losses
from tests.dept.conftest import BASE, NEW, clustered_features

RTOL = 1e-5
# Per-member coefficients: loss weight, fusion weight, lr, head-lr multiplier, weight decay, seed, KgCoOp weight.
MEMBERS = [
    (0.7, 0.7, 0.0035, 6.5, 5e-4, 1, 2.0),
    (0.3, 0.4, 0.002, 3.0, 1e-3, 2, 8.0),
    (0.9, 0.9, 0.01, 1.0, 0.0, 3, 1.0),
]


def member(clip, method, coefs, epochs=2):
    lw, fw, lr, mult, wd, seed, kg = coefs
    learner = build_learner(method, clip, BASE, dept=DePTConfig(loss_weight=lw, fusion_weight=fw), seed=seed,
                            method_options={"kg_weight": kg} if method == "kgcoop" else None)
    config = TrainConfig(epochs=epochs, batch_size=2 if method == "cocoop" else 4, lr=lr, head_lr_mult=mult,
                         weight_decay=wd, seed=seed)
    return learner, config


def data(clip, method):
    per_class = 1 if method == "cocoop" else 2  # 3 steps an epoch: CoCoOp's batch is 2, the others' 4
    return clustered_features(clip.embed_dim, len(BASE), per_class, seed=0, views=3)


def rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def assert_same_member(single, single_hist, pop, pop_hist, clip):
    assert len(pop_hist) == len(single_hist)
    for a, b in zip(single_hist, pop_hist):
        assert abs(a.train_loss - b.train_loss) <= RTOL * abs(a.train_loss) and a.lr == b.lr
    for (name, a), b in zip(single.state_dict().items(), pop.state_dict().values()):
        if a.is_floating_point():
            assert rel(b, a) <= RTOL, name
    xt, yt = clustered_features(clip.embed_dim, len(BASE), 5, seed=1)
    xn, yn = torch.randn(9, clip.embed_dim), torch.arange(9) % len(NEW)
    ra, rb = (evaluate_base_new(m, xt, yt, xn, yn, NEW) for m in (single, pop))
    assert (ra.base_acc, ra.new_acc) == (rb.base_acc, rb.new_acc)


@pytest.mark.parametrize("method", ["coop", "kgcoop", "cocoop"])
def test_each_member_equals_training_it_alone(clip, method):
    x, y = data(clip, method)
    singles = []
    for coefs in MEMBERS:
        learner, config = member(clip, method, coefs)
        singles.append((learner, train(learner, x, y, config)))
    pop = [member(clip, method, coefs) for coefs in MEMBERS]
    results = train_population([m for m, _ in pop], x, y, [c for _, c in pop])
    assert [r.status for r in results] == ["done"] * 3
    for (single, hist), (learner, _), r in zip(singles, pop, results):
        assert_same_member(single, hist, learner, r.history, clip)
    # The members really differ (a population that trained one member three times would fail above anyway).
    assert len({round(r.history[-1].train_loss, 6) for r in results}) == 3


@pytest.mark.parametrize("method", ["coop", "cocoop"])
def test_population_of_one_is_dept_train_bit_for_bit(clip, method):
    x, y = data(clip, method)
    a, config = member(clip, method, MEMBERS[1])
    b, _ = member(clip, method, MEMBERS[1])
    seen = []
    hist = train(a, x, y, config, validate=lambda l: {"n": float(len(l.base_classnames))})
    [r] = train_population([b], x, y, [config], on_epoch=lambda p, s: seen.append((p, s.epoch)),
                           validate=lambda p, l: {"n": float(len(l.base_classnames))})
    assert [(h.train_loss, h.lr, h.metrics) for h in hist] == [(h.train_loss, h.lr, h.metrics) for h in r.history]
    assert all(torch.equal(u, v) for u, v in zip(a.state_dict().values(), b.state_dict().values()))
    assert seen == [(0, 1), (0, 2)]


def test_batched_path_at_one_member_matches_training_loss(clip):
    """The batched computation itself, forced at P = 1, agrees with the learner's own loss and gradients."""
    x, y = clustered_features(clip.embed_dim, len(BASE), 1, seed=0)
    learner, _ = member(clip, "kgcoop", MEMBERS[0])
    loss, _ = learner.training_loss(x[:4], y[:4])
    grads = torch.autograd.grad(loss, list(learner.parameters()))
    batched = batched_losses([learner], x[None, :4], y[None, :4])
    bgrads = torch.autograd.grad(batched.sum(), list(learner.parameters()))
    assert rel(batched[0], loss) <= 1e-6
    assert all(rel(g, h) <= 1e-5 for g, h in zip(bgrads, grads))


def test_stopped_and_failed_members_leave_the_step_others_unchanged(clip):
    x, y = data(clip, "coop")
    epochs = 2
    singles = []
    for coefs in (MEMBERS[0], MEMBERS[2]):
        learner, config = member(clip, "coop", coefs, epochs)
        singles.append((learner, train(learner, x, y, config)))
    pop = [member(clip, "coop", coefs, epochs) for coefs in MEMBERS] + [member(clip, "coop", MEMBERS[0], epochs)]
    with torch.no_grad():
        pop[3][0].cat_head.classifier.bias.fill_(float("inf"))  # member 3 fails at its first step
    failed_start = {k: v.clone() for k, v in pop[3][0].state_dict().items()}
    snapshot = {}

    def on_epoch(p, stats):
        if p == 1 and stats.epoch == 1:  # ASHA's decision for member 1 after its first epoch
            snapshot.update({k: v.clone() for k, v in pop[1][0].state_dict().items()})
            return True
        return None

    results = train_population([m for m, _ in pop], x, y, [c for _, c in pop], on_epoch=on_epoch)
    assert [r.status for r in results] == ["done", "stopped", "done", "failed"]
    assert [r.epochs_done for r in results] == [2, 1, 2, 0]
    assert "non-finite loss" in results[3].reason and "epoch 1, step 1" in results[3].reason
    # Masked out: the stopped and the failed member's parameters never moved again and got no gradient.
    for p, before in ((1, snapshot), (3, failed_start)):
        assert all(torch.equal(before[k], v) for k, v in pop[p][0].state_dict().items())
        assert all(q.grad is None for q in pop[p][0].parameters())
    assert all(q.grad is not None for q in pop[0][0].parameters())
    for (single, hist), p in zip(singles, (0, 2)):
        assert_same_member(single, hist, pop[p][0], results[p].history, clip)


def test_bf16_autocast_keeps_fp32_master_weights(clip):
    x, y = data(clip, "coop")
    pop = [member(clip, "coop", coefs, 1) for coefs in MEMBERS[:2]]
    ref = [member(clip, "coop", coefs, 1) for coefs in MEMBERS[:2]]
    results = train_population([m for m, _ in pop], x, y, [c for _, c in pop], options=PopulationOptions(amp=True))
    exact = train_population([m for m, _ in ref], x, y, [c for _, c in ref])
    for r, e, (m, _), (mr, _) in zip(results, exact, pop, ref):
        assert r.status == "done" and all(q.dtype == torch.float32 for q in m.parameters())
        assert abs(r.history[0].train_loss - e.history[0].train_loss) < 0.05 * abs(e.history[0].train_loss)
        assert rel(m.method.ctx, mr.method.ctx) < 1e-2


def test_mismatched_members_refused_before_work(clip):
    x, y = data(clip, "coop")
    a, ca = member(clip, "coop", MEMBERS[0])
    b, cb = member(clip, "coop", MEMBERS[1])
    k, ck = member(clip, "kgcoop", MEMBERS[1])
    plain = build_learner("coop", clip, BASE, dept=DePTConfig(loss_weight=0.0), seed=4)
    cases = [
        ([a, b], [ca, TrainConfig(batch_size=8)], "batch size"),
        ([a, b], [ca, TrainConfig(epochs=3)], "epochs"),
        ([a, k], [ca, ck], "method"),
        ([a, plain], [ca, cb], "CAT head"),
        ([a, a], [ca, cb], "same learner object"),
        ([a, b], [ca], "2 learners but 1 training configs"),
    ]
    before = a.method.ctx.detach().clone()
    for learners, configs, words in cases:
        with pytest.raises(ValueError, match=words) as e:
            train_population(learners, x, y, configs)
        assert "\n" not in str(e.value)
    assert torch.equal(a.method.ctx, before)
