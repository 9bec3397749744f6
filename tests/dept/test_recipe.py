"""The reference recipe, exactly (issue 12, items 1-4): Dassl's lr schedule, KgCoOp's knowledge-guidance weight
and templates as the DePT reference runs them, and DePT at loss weight 0 being the plain method bit for bit."""
import math

import pytest
import torch

from dept import DePTConfig, TrainConfig, build_learner, evaluate_base_new, load_clip, load_state, save_state, train
from dept.config import applied_dept
from dept.datasets import dataset_names, get_spec, kgcoop_template, zero_shot_template
from dept.methods.kgcoop import DEPT_KGCOOP_WEIGHT, ORIGINAL_KGCOOP_WEIGHT, KgCoOpOptions
from tests.conftest import TINY_MODEL

BASE = ["red circle", "blue square", "green triangle", "yellow star", "purple heart", "orange moon"]
NEW = ["black cross", "white ring", "grey arrow"]


@pytest.fixture(scope="module")
def clip():
    return load_clip(TINY_MODEL, None, text_only=True)


# -- 1. the schedule: Dassl's ConstantWarmupScheduler(CosineAnnealingLR(T_max=epochs)), stepped per epoch --------
class DasslConstantWarmup(torch.optim.lr_scheduler.LRScheduler):
    """Dassl's constant warmup wrapper, by its behaviour (dassl/optim/lr_scheduler.py): while its own epoch count is
    below ``warmup_epochs`` every group runs at ``warmup_lr``; once past, ``step`` steps the successor instead of
    itself, and the lrs are the successor's."""

    def __init__(self, optimizer, successor, warmup_epochs, warmup_lr):
        self.successor, self.warmup_epochs, self.warmup_lr = successor, warmup_epochs, warmup_lr
        super().__init__(optimizer)

    def get_lr(self):
        if self.last_epoch >= self.warmup_epochs:
            return self.successor.get_last_lr()
        return [self.warmup_lr for _ in self.base_lrs]

    def step(self, epoch=None):
        if self.last_epoch >= self.warmup_epochs:
            self.successor.step(epoch)
            self._last_lr = self.successor.get_last_lr()
        else:
            super().step(epoch)


def reference_lrs(cfg: TrainConfig, base_lrs: list[float]) -> list[list[float]]:
    """Per epoch, every group's lr under a real SGD + CosineAnnealingLR wrapped as Dassl does (a wrapper only with
    warmup epochs), stepped once at the end of each epoch as Dassl's trainers do."""
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in base_lrs]
    opt = torch.optim.SGD([{"params": [p], "lr": lr} for p, lr in zip(params, base_lrs)], lr=base_lrs[0], momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=float(cfg.epochs))
    if cfg.warmup_epochs > 0:
        sched = DasslConstantWarmup(opt, sched, cfg.warmup_epochs, cfg.warmup_lr)
    out = []
    for _ in range(cfg.epochs):
        out.append([g["lr"] for g in opt.param_groups])
        opt.step()  # no gradients: changes nothing, keeps the scheduler's step order as in training
        sched.step()
    return out


@pytest.mark.parametrize("epochs, warmup_epochs", [(10, 1), (5, 2), (4, 0), (3, 1)])
def test_schedule_is_dassls_constant_warmup_then_cosine_per_group(epochs, warmup_epochs):
    cfg = TrainConfig(epochs=epochs, lr=0.0035, head_lr_mult=6.5, warmup_epochs=warmup_epochs, warmup_lr=1e-5)
    bases = [cfg.lr, cfg.lr * cfg.head_lr_mult]  # prompts, CAT head
    want = reference_lrs(cfg, bases)
    got = [[cfg.lr_at(e, b) for b in bases] for e in range(epochs)]
    for e in range(epochs):
        assert got[e] == pytest.approx(want[e], rel=1e-12, abs=1e-15), (e, got[e], want[e])
    assert cfg.lr_schedule() == [g[0] for g in got]
    assert cfg.lr_schedule(bases[1]) == [g[1] for g in got]


def test_schedule_figures_of_the_reference_recipe():
    cfg = TrainConfig()  # 10 epochs, lr 0.0035, one warmup epoch at 1e-5, CAT head 6.5x
    listed = [1.000e-05, 3.500e-03, 3.414e-03, 3.166e-03, 2.779e-03, 2.291e-03, 1.750e-03, 1.209e-03, 7.214e-04,
              3.342e-04]
    assert cfg.lr_schedule() == pytest.approx(listed, rel=6e-4)
    head = cfg.lr_schedule(cfg.lr * cfg.head_lr_mult)
    assert head[0] == 1e-5  # the warmup lr is the same constant for every group, not 6.5x
    assert head[1] == pytest.approx(0.02275) and head[-1] == pytest.approx(6.5 * 3.342e-4, rel=6e-4)
    # The cosine runs one epoch behind: the last epoch is not the formula's cos(pi * 9 / 10) point (8.6e-5).
    assert not math.isclose(cfg.lr_schedule()[-1], 0.0035 * 0.5 * (1 + math.cos(math.pi * 9 / 10)), rel_tol=0.1)


def test_trainer_runs_the_schedule(clip):
    cfg = TrainConfig(epochs=4, batch_size=4, lr=0.01, warmup_epochs=1)
    x, y = features(clip.embed_dim, 2, seed=0)
    learner = build_learner("coop", clip, BASE, method_options={"n_ctx": 2}, seed=0)
    history = train(learner, x, y, cfg)
    want = reference_lrs(cfg, [cfg.lr, cfg.lr * cfg.head_lr_mult])
    assert [h.lr for h in history] == pytest.approx([w[0] for w in want], rel=1e-12)


# -- 2. KgCoOp's knowledge-guidance weight: one default, the same with and without DePT ----------------------------
def test_kgcoop_weight_defaults_in_one_place_same_with_and_without_dept(clip):
    assert KgCoOpOptions().kg_weight == DEPT_KGCOOP_WEIGHT == 2.0
    with_dept = build_learner("kgcoop", clip, BASE, dataset="DTD", dept=DePTConfig(), seed=1)
    without = build_learner("kgcoop", clip, BASE, dataset="DTD", dept=None, seed=1)
    assert with_dept.method.options.kg_weight == without.method.options.kg_weight == DEPT_KGCOOP_WEIGHT
    assert with_dept.config()["method_options"]["kg_weight"] == without.config()["method_options"]["kg_weight"] == 2.0


def test_original_kgcoop_weight_is_an_explicit_option_and_is_used(clip):
    assert ORIGINAL_KGCOOP_WEIGHT == 8.0
    default = build_learner("kgcoop", clip, BASE, dataset="DTD", dept=None, seed=1)
    original = build_learner("kgcoop", clip, BASE, dataset="DTD", dept=None, seed=1,
                             method_options={"kg_weight": ORIGINAL_KGCOOP_WEIGHT})
    assert original.method.options.kg_weight == 8.0
    # Move the prompts off their init so the guidance term is not 0, identically in both.
    with torch.no_grad():
        shift = torch.randn(default.method.ctx.shape, generator=torch.Generator().manual_seed(5)) * 0.5
        default.method.ctx.add_(shift)
        original.method.ctx.add_(shift)
    x, y = features(clip.embed_dim, 1, seed=2)
    with torch.no_grad():
        _, d = default.training_loss(x[:4], y[:4])
        _, o = original.training_loss(x[:4], y[:4])
    assert d["regularizer"] > 0 and o["regularizer"] == pytest.approx(4.0 * d["regularizer"], rel=1e-5)
    with pytest.raises(ValueError, match="kg_weight"):
        KgCoOpOptions(kg_weight=-1.0)


# -- 3. templates: KgCoOp's (KgCoOp's and DePT's kgcoop.py) vs CoOp's zero-shot (CoOp's zsclip.py) -------------------
#: CoOp's zero-shot CUSTOM_TEMPLATES, under our dataset names (CoOp: OxfordFlowers, DescribableTextures).
COOP_ZERO_SHOT = {
    "OxfordPets": "a photo of a {}, a type of pet.",
    "Flowers102": "a photo of a {}, a type of flower.",
    "FGVCAircraft": "a photo of a {}, a type of aircraft.",
    "DTD": "{} texture.",
    "EuroSAT": "a centered satellite photo of {}.",
    "StanfordCars": "a photo of a {}.",
    "Food101": "a photo of {}, a type of food.",
    "SUN397": "a photo of a {}.",
    "Caltech101": "a photo of a {}.",
    "UCF101": "a photo of a person doing {}.",
    "ImageNet": "a photo of a {}.",
    "ImageNetSketch": "a photo of a {}.",
    "ImageNetV2": "a photo of a {}.",
    "ImageNetA": "a photo of a {}.",
    "ImageNetR": "a photo of a {}.",
}
#: KgCoOp's target prompts: the same table but for DTD.
KGCOOP = {**COOP_ZERO_SHOT, "DTD": "a photo of a {}, a type of texture."}


def test_dtd_templates():
    assert kgcoop_template("DTD") == "a photo of a {}, a type of texture."
    assert zero_shot_template("DTD") == "{} texture."
    assert get_spec("dtd").kgcoop_prompt == kgcoop_template("DTD")


def test_every_dataset_has_the_references_templates():
    assert set(dataset_names()) == set(COOP_ZERO_SHOT)
    for name in dataset_names():
        assert zero_shot_template(name) == COOP_ZERO_SHOT[name], name
        assert kgcoop_template(name) == KGCOOP[name], name
    assert [n for n in dataset_names() if kgcoop_template(n) != zero_shot_template(n)] == ["DTD"]
    assert kgcoop_template("my_custom_set") == zero_shot_template("my_custom_set") == "a photo of a {}."


def test_kgcoop_on_dtd_targets_its_own_template(clip):
    learner = build_learner("kgcoop", clip, ["banded", "blotchy"], dataset="DTD", dept=None, seed=0)
    assert learner.method.template == "a photo of a {}, a type of texture."


# -- 4. loss weight 0 is the plain method -----------------------------------------------------------------------
def features(dim, views, seed, per_class=4, classes=len(BASE)):
    """Learnable class structure: fixed class prototypes + noise (samples depend on ``seed``)."""
    protos = torch.randn(classes, dim, generator=torch.Generator().manual_seed(1234)) * 2.0
    labels = torch.arange(classes).repeat_interleave(per_class)
    x = protos[labels].unsqueeze(1) + torch.randn(len(labels), views, dim, generator=torch.Generator().manual_seed(seed))
    return (x.squeeze(1) if views == 1 else x), labels


def test_effective_config():
    assert DePTConfig(loss_weight=0.0, fusion_weight=0.7).effective() is None
    assert not DePTConfig(loss_weight=0.0).uses_cat_head
    kept = DePTConfig(loss_weight=0.4, fusion_weight=0.0)  # trained head, not fused: still DePT training
    assert kept.effective() is kept and kept.uses_cat_head
    assert applied_dept(DePTConfig(0.0, 0.7)) == applied_dept(None) == {
        "dept_effective": False, "loss_weight_effective": 0.0, "fusion_weight_effective": 0.0}
    assert applied_dept(DePTConfig(0.7, 0.3)) == {
        "dept_effective": True, "loss_weight_effective": 0.7, "fusion_weight_effective": 0.3}


def run(clip, method, dept, x, y, nx, ny, bx, by):
    opts = {"n_ctx": 2}
    learner = build_learner(method, clip, BASE, dataset="DTD", method_options=opts, dept=dept, seed=7)
    history = train(learner, x, y, TrainConfig(epochs=3, batch_size=4 if method != "cocoop" else 2, lr=0.01, seed=3))
    res = evaluate_base_new(learner, bx, by, nx, ny, NEW)
    return learner, history, res


@pytest.mark.parametrize("method", ["coop", "kgcoop", "cocoop"])
def test_loss_weight_zero_is_the_base_method_bit_for_bit(clip, method):
    x, y = features(clip.embed_dim, 3, seed=0)
    bx, by = features(clip.embed_dim, 1, seed=1, per_class=2)
    nx, ny = features(clip.embed_dim, 1, seed=2, per_class=2, classes=len(NEW))
    base_l, base_h, base_r = run(clip, method, None, x, y, nx, ny, bx, by)
    zero_l, zero_h, zero_r = run(clip, method, DePTConfig(loss_weight=0.0, fusion_weight=0.7), x, y, nx, ny, bx, by)

    assert zero_l.cat_head is None and zero_l.dept is None and zero_r.base_cat_logits is None
    assert [h.train_loss for h in zero_h] == [h.train_loss for h in base_h]  # exact, every epoch
    assert torch.equal(zero_r.base_itm_logits, base_r.base_itm_logits)
    with torch.no_grad():
        assert torch.equal(zero_l.base_scores(bx), base_l.base_scores(bx))
        assert torch.equal(zero_l.itm_logits(nx, NEW), base_l.itm_logits(nx, NEW))
    assert (zero_r.base_acc, zero_r.new_acc, zero_r.hm, zero_r.fusion_weight) == (
        base_r.base_acc, base_r.new_acc, base_r.hm, 0.0)
    assert zero_r.fusion_sweep([0.0, 0.5, 1.0]) == base_r.fusion_sweep([0.0, 0.5, 1.0])
    for name, p in base_l.method.state_dict().items():
        assert torch.equal(zero_l.method.state_dict()[name], p), name
    # What was asked is recorded; what was applied says "plain method".
    assert zero_l.config()["dept"]["loss_weight"] == 0.0 and zero_l.config()["dept"]["fusion_weight"] == 0.7
    assert zero_l.applied_params() == base_l.applied_params() == {
        "dept_effective": False, "loss_weight_effective": 0.0, "fusion_weight_effective": 0.0}

    # The comparison can fail: a positive loss weight gives other numbers.
    _, dept_h, dept_r = run(clip, method, DePTConfig(loss_weight=0.7), x, y, nx, ny, bx, by)
    assert [h.train_loss for h in dept_h] != [h.train_loss for h in base_h]
    assert not torch.equal(dept_r.base_itm_logits, base_r.base_itm_logits)


def test_loss_weight_zero_state_round_trips(clip, tmp_path):
    learner = build_learner("coop", clip, BASE, method_options={"n_ctx": 2}, dept=DePTConfig(loss_weight=0.0), seed=0)
    path = save_state(learner, tmp_path / "lw0.safetensors")
    again = load_state(path, clip)
    assert again.cat_head is None and again.dept_requested == DePTConfig(loss_weight=0.0)
    v = torch.randn(3, clip.embed_dim)
    with torch.no_grad():
        assert torch.equal(again.base_scores(v), learner.base_scores(v))
