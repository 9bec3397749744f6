"""The transfer protocols' heads (dept.transfer): the cut CAT head for class subsets, ITM-only cross-dataset targets,
the fused domain-generalisation targets, and the checks that refuse a target whose classes are not the source's."""
import pytest
import torch

from dept import DePTConfig, TrainConfig, build_learner, train
from dept.evaluate import accuracy, itm_logits
from dept.head import fuse
from dept.transfer import (
    CROSS_DATASET,
    DOMAIN_GENERALIZATION,
    TransferTarget,
    cut_cat_logits,
    evaluate_transfer,
    source_accuracy,
    target_scores,
)
from tests.dept.conftest import clustered_features

SOURCE = ["red circle", "blue square", "green triangle", "yellow star", "purple heart", "orange moon"]
OTHER = ["black cross", "white ring", "grey arrow"]


@pytest.fixture(scope="module")
def trained(clip):
    """CoOp+DePT trained on every source class: the CAT head's rows are trained, so cutting them matters."""
    x, y = clustered_features(clip.embed_dim, len(SOURCE), 8, seed=0, views=2)
    learner = build_learner("coop", clip, SOURCE, dept=DePTConfig(0.7, 0.6), seed=1)
    train(learner, x, y, TrainConfig(epochs=2, batch_size=4, lr=0.01))
    return learner


def _test_images(clip, classes: int, seed: int):
    return clustered_features(clip.embed_dim, classes, 5, seed=seed)


def test_cut_head_equals_full_head_restricted_to_the_subset(trained, clip):
    x, _ = _test_images(clip, len(SOURCE), 3)
    columns = [4, 1, 5]
    full = cut_cat_logits(trained, x, None)
    assert torch.equal(full, trained.cat_logits(x).detach())
    cut = cut_cat_logits(trained, x, columns)
    assert cut.shape == (len(x), 3)
    torch.testing.assert_close(cut, full[:, columns], rtol=1e-5, atol=1e-5)  # other matmul shapes: rounding only
    # the fused subset scores: the ITM over the subset's names mixed with the restricted CAT columns
    names = [SOURCE[c] for c in columns]
    target = TransferTarget("subset", DOMAIN_GENERALIZATION, x, torch.zeros(len(x), dtype=torch.long), names, columns)
    expected = fuse(itm_logits(trained, x, names), full[:, columns], 0.6, "logits")
    torch.testing.assert_close(target_scores(trained, target), expected, rtol=0, atol=1e-5)
    # not the argmax of the full head: a subset's prediction is always one of its own classes
    assert set(target_scores(trained, target).argmax(-1).tolist()) <= {0, 1, 2}


def test_cross_dataset_targets_never_touch_the_cat_head(trained, clip):
    x, y = _test_images(clip, len(OTHER), 4)
    calls = []
    hooks = [m.register_forward_hook(lambda *a: calls.append(1)) for m in trained.cat_head.modules()]
    try:
        scores = target_scores(trained, TransferTarget("other", CROSS_DATASET, x, y, OTHER))
    finally:
        for h in hooks:
            h.remove()
    assert calls == []
    assert torch.equal(scores, itm_logits(trained, x, OTHER))
    # the same learner's source scores do run the head (the hook would have seen it)
    hook = trained.cat_head.classifier.register_forward_hook(lambda *a: calls.append(1))
    try:
        trained.cat_logits(x)
    finally:
        hook.remove()
    assert calls == [1]


def test_domain_target_with_all_classes_is_fused_like_the_source(trained, clip):
    x, y = _test_images(clip, len(SOURCE), 5)
    res = evaluate_transfer(trained, x, y, [TransferTarget("same", DOMAIN_GENERALIZATION, x, y, list(SOURCE))])
    assert res.target_acc["same"] == pytest.approx(source_accuracy(trained, x, y), abs=1e-9)
    fused = fuse(itm_logits(trained, x, SOURCE), trained.cat_logits(x).detach(), 0.6, "logits")
    assert res.source_acc == accuracy(fused, y)
    assert res.metrics() == {"test_acc": res.source_acc, "test_acc/same": res.target_acc["same"],
                             "test_target_avg": res.target_acc["same"]}
    # the CAT head really takes part: the fused scores are not the ITM scores
    assert not torch.allclose(target_scores(trained, TransferTarget("same", DOMAIN_GENERALIZATION, x, y, list(SOURCE))),
                              itm_logits(trained, x, SOURCE))


def test_domain_target_with_other_class_names_is_refused(trained, clip):
    x, y = _test_images(clip, 3, 6)
    bad = TransferTarget("wrong", DOMAIN_GENERALIZATION, x, y, ["red circle", "white ring", "green triangle"], [0, 1, 2])
    with pytest.raises(ValueError, match=r"target wrong: class 'white ring' is 'blue square' in the source"):
        target_scores(trained, bad)
    out_of_range = TransferTarget("far", DOMAIN_GENERALIZATION, x, y, SOURCE[:3], [0, 1, 9])
    with pytest.raises(ValueError, match="target far: its 3 classes do not map"):
        evaluate_transfer(trained, x, y, [out_of_range])


def test_plain_method_targets_are_itm_only(clip):
    x, y = clustered_features(clip.embed_dim, len(SOURCE), 4, seed=7)
    plain = build_learner("coop", clip, SOURCE, dept=None, seed=1)
    target = TransferTarget("sub", DOMAIN_GENERALIZATION, x[:8], y[:8] % 2, [SOURCE[0], SOURCE[2]], [0, 2])
    assert torch.equal(target_scores(plain, target), itm_logits(plain, x[:8], [SOURCE[0], SOURCE[2]]))
    assert source_accuracy(plain, x, y) == accuracy(itm_logits(plain, x, SOURCE), y)
