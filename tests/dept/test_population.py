"""Trial populations (dept.population): each member equals its own dept.train run, a population of one is
dept.train bit for bit, members stop and fail independently, mismatched members are refused up front."""
import math

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


@pytest.mark.parametrize("method", ["coop", "cocoop"])
def test_dept_train_and_a_population_of_one_give_equal_tensors_and_epoch_states(clip, method):
    """dept.train runs through train_population: losses, parameters and every epoch's TrainResume (learned
    tensors, SGD momentum) are torch.equal to a direct population of one."""
    x, y = data(clip, method)
    a, config = member(clip, method, MEMBERS[0])
    b, _ = member(clip, method, MEMBERS[0])
    hist = train(a, x, y, config, resumable=True)
    [r] = train_population([b], x, y, [config], resumable=True)
    assert r.status == "done" and len(hist) == len(r.history) == config.epochs
    assert torch.equal(torch.tensor([h.train_loss for h in hist]), torch.tensor([h.train_loss for h in r.history]))
    assert all(torch.equal(u, v) for u, v in zip(a.state_dict().values(), b.state_dict().values()))
    for s, t in zip(hist, r.history):
        assert s.state.epoch == t.state.epoch == s.epoch
        assert s.state.learned.keys() == t.state.learned.keys()
        assert all(torch.equal(s.state.learned[k], t.state.learned[k]) for k in s.state.learned)
        so, to = s.state.optimizer, t.state.optimizer
        assert so["param_groups"] == to["param_groups"] and so["state"].keys() == to["state"].keys()
        assert all(torch.equal(so["state"][i]["momentum_buffer"], to["state"][i]["momentum_buffer"]) for i in so["state"])


def test_a_resumed_population_equals_the_uninterrupted_one_bit_for_bit(clip):
    """Every member resumed from the population's own epoch-1 states (through a file, as a Tune checkpoint is)
    runs epoch 2 exactly as the uninterrupted population did."""
    import io

    from dept.schedule import TrainResume

    x, y = data(clip, "coop")
    whole = [member(clip, "coop", coefs) for coefs in MEMBERS[:2]]
    full = train_population([m for m, _ in whole], x, y, [c for _, c in whole], resumable=True)
    states = []
    for r in full:
        buf = io.BytesIO()
        torch.save({"epoch": r.history[0].state.epoch, "learned": r.history[0].state.learned,
                    "optimizer": r.history[0].state.optimizer}, buf)
        buf.seek(0)
        d = torch.load(buf, weights_only=True)
        states.append(TrainResume(d["epoch"], d["learned"], d["optimizer"]))
    retried = [member(clip, "coop", coefs) for coefs in MEMBERS[:2]]
    rest = train_population([m for m, _ in retried], x, y, [c for _, c in retried], resume=states)
    for (w, _), (m, _), f, r in zip(whole, retried, full, rest):
        assert [s.epoch for s in r.history] == [2]
        assert [(s.train_loss, s.lr) for s in r.history] == [(s.train_loss, s.lr) for s in f.history[1:]]
        assert all(torch.equal(u, v) for u, v in zip(w.state_dict().values(), m.state_dict().values()))


def test_members_resumed_at_different_epochs_join_when_their_epoch_comes(clip):
    """One member resumed after epoch 1 of its dept.train, one fresh, in one population: each equals its own
    uninterrupted dept.train; the resumed one only trains epochs 2.. (its history starts there)."""
    x, y = data(clip, "coop")
    alone = [member(clip, "coop", coefs, epochs=3) for coefs in MEMBERS[:2]]
    hists = [train(m, x, y, c, resumable=True) for m, c in alone]
    pop = [member(clip, "coop", coefs, epochs=3) for coefs in MEMBERS[:2]]
    seen = []
    results = train_population([m for m, _ in pop], x, y, [c for _, c in pop], resume=[hists[0][0].state, None],
                               on_epoch=lambda p, s: seen.append((p, s.epoch)))
    assert [r.status for r in results] == ["done", "done"]
    assert [s.epoch for s in results[0].history] == [2, 3] and [s.epoch for s in results[1].history] == [1, 2, 3]
    assert seen == [(1, 1), (0, 2), (1, 2), (0, 3), (1, 3)]
    assert_same_member(alone[0][0], hists[0][1:], pop[0][0], results[0].history, clip)
    assert_same_member(alone[1][0], hists[1], pop[1][0], results[1].history, clip)


def test_population_resume_errors_are_one_line_before_work(clip):
    x, y = data(clip, "coop")
    pop = [member(clip, "coop", coefs) for coefs in MEMBERS[:2]]
    state = train(member(clip, "coop", MEMBERS[0])[0], x, y, pop[0][1], resumable=True)[0].state
    before = [m.method.ctx.detach().clone() for m, _ in pop]
    from dept.schedule import TrainResume

    cases = [
        ([state], "2 learners but 1 resume states"),
        ([state, TrainResume(3, state.learned, state.optimizer)],
         "population member 1: cannot resume after epoch 3 of a 2-epoch training"),
    ]
    for resume, words in cases:
        with pytest.raises(ValueError, match=words) as e:
            train_population([m for m, _ in pop], x, y, [c for _, c in pop], resume=resume)
        assert "\n" not in str(e.value)
    assert all(torch.equal(m.method.ctx, b) for (m, _), b in zip(pop, before))


def test_a_non_finite_loss_fails_a_member_but_dept_train_trains_on(clip):
    """The two behaviours for a non-finite loss: a population member is marked failed and leaves the step (a
    search goes on without it); dept.train, as it always has, runs every epoch and reports the non-finite loss."""
    x, y = data(clip, "coop")
    a, config = member(clip, "coop", MEMBERS[0])
    b, _ = member(clip, "coop", MEMBERS[0])
    for m in (a, b):
        with torch.no_grad():
            m.cat_head.classifier.bias.fill_(float("inf"))
    hist = train(a, x, y, config)
    assert [h.epoch for h in hist] == [1, 2] and not any(math.isfinite(h.train_loss) for h in hist)
    [r] = train_population([b], x, y, [config])
    assert r.status == "failed" and r.history == [] and "epoch 1, step 1" in r.reason


def test_after_epoch_stops_members_once_all_have_reported(clip):
    """The hook Tune's decisions come through (pipelines.trial.population): called after every member's on_epoch of
    an epoch, never after the last; the members it returns are stopped there, the others are unchanged by it."""
    x, y = data(clip, "coop")
    epochs = 3
    learner, config = member(clip, "coop", MEMBERS[0], epochs)
    single = (learner, train(learner, x, y, config))
    pop = [member(clip, "coop", coefs, epochs) for coefs in MEMBERS]
    calls, reported = [], []

    def after_epoch(epoch, members):
        calls.append((epoch, list(members), sorted(p for p, e in reported if e == epoch)))
        return [1] if epoch == 1 else [2, 7] if epoch == 2 else []  # 7: no such member, ignored

    results = train_population([m for m, _ in pop], x, y, [c for _, c in pop], after_epoch=after_epoch,
                               on_epoch=lambda p, s: reported.append((p, s.epoch)))
    assert calls == [(1, [0, 1, 2], [0, 1, 2]), (2, [0, 2], [0, 2])]
    assert [r.status for r in results] == ["done", "stopped", "stopped"]
    assert [r.epochs_done for r in results] == [3, 1, 2]
    assert_same_member(*single, pop[0][0], results[0].history, clip)
