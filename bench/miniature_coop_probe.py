"""Why CoOp ends below zero-shot on the miniature's base classes: per-epoch train / test accuracy of plain CoOp on
cached features, with the calibration of its ITM logits before and after training.

Trains CoOp (no DePT) with ``dept.train`` on one seed's few-shot base images (all stored views, as ``train``
does) and prints, per epoch, the training loss and the ITM head's accuracy on the train images (view 0) and the
base test images; before and after training: the cross-entropy split into right / wrong train images, the mean
top softmax probability, the mean logit spread (max - min) and the mean cosine between the class text features.

    python bench/miniature_coop_probe.py --features runs/diag/features-v0 \
        --dataset miniature-disjoint --seed 1 --tau 24.1 --tau 100 --ctx-init "a photo of a"
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from dept import TrainConfig, accuracy, build_learner, load_clip, train
from pipelines.store import DatasetStore, resolve_features


def calibration(learner, x: torch.Tensor, y: torch.Tensor) -> str:
    with torch.no_grad():
        s = learner.base_scores(x)
        t = F.normalize(learner.text_features(learner.base_classnames), dim=-1)
    right = s.argmax(-1) == y
    ce = F.cross_entropy(s, y, reduction="none")
    cos = (t @ t.t())[~torch.eye(len(t), dtype=torch.bool)]
    wrong_ce = ce[~right].mean().item() if (~right).any() else float("nan")
    return (f"CE {ce.mean():.2f} (right {ce[right].mean():.2f}, wrong {wrong_ce:.2f}), acc {100 * right.float().mean():.1f}, "
            f"top prob {s.softmax(-1).max(-1).values.mean():.2f}, logit spread "
            f"{(s.max(-1).values - s.min(-1).values).mean():.1f}, text-text cos {cos.mean():.2f}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--features", required=True, help="feature store root (featurize's --out) or model folder")
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--model", default="dept-mini-vit")
    ap.add_argument("--pretrained", default="shipped", help="the weights the store was made with")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--tau", type=float, action="append", help="ITM temperature(s); default: the model's learned one")
    ap.add_argument("--ctx-init", default="", help='CoOp context init ("" = 16 random tokens)')
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    clip = load_clip(args.model, args.pretrained, text_only=True)
    model_url = resolve_features(args.features, dataset=args.dataset, model=args.model, pretrained=args.pretrained)
    store = DatasetStore.open(model_url, args.dataset, expected_identity=clip.identity)
    train_split = store.features("train", seed=args.seed, classes="base")
    test_split = store.features("test", classes="base")
    x0, y = train_split.features[:, 0], train_split.labels
    options = {"n_ctx": len(args.ctx_init.split()), "ctx_init": args.ctx_init} if args.ctx_init else {}

    def base_accuracy(learner, x, labels) -> float:
        with torch.no_grad():
            return accuracy(learner.base_scores(x), labels)

    for tau in args.tau or [None]:
        learner = build_learner("coop", clip, train_split.classnames, dept=None, method_options=options,
                                seed=args.seed, logit_scale=tau)
        print(f"CoOp, ctx {args.ctx_init or '16 random'}, tau {learner.logit_scale:.1f}, seed {args.seed}")
        print(f"  before: {calibration(learner, x0, y)}; test base {base_accuracy(learner, test_split.features, test_split.labels):.1f}")

        def validate(lr):
            return {"train": base_accuracy(lr, x0, y), "test": base_accuracy(lr, test_split.features, test_split.labels)}

        for st in train(learner, train_split.features, y, TrainConfig(epochs=args.epochs, seed=args.seed),
                        validate=validate):
            print(f"  epoch {st.epoch:2d}: loss {st.train_loss:.2f}, train acc {st.metrics['train']:.1f}, "
                  f"test base {st.metrics['test']:.1f}")
        print(f"  after:  {calibration(learner, x0, y)}")


if __name__ == "__main__":
    main()
