"""The parent run's plots: base / new / HM against the loss weight and the fusion weight. A leaf module (it imports
nothing of ``pipelines``), so ``tracking`` and ``report`` can both use it without importing each other."""
from __future__ import annotations

import statistics
from pathlib import Path


def plot_coefficients(configs, best, outdir: Path, dataset: str = "") -> list[Path]:
    """Two PNGs: test base / new / HM (mean over seeds of each configuration) against the loss weight and against
    the fusion weight; the second also draws the best configuration's post-training fusion sweep.

    ``configs``: the configurations with a finished seed (``pipelines.tracking.summary.ConfigSummary``: ``params``,
    ``mean(key)``, ``completed()``); ``best``: one of them, or None."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(configs)
    if not groups:
        return []
    paths = []
    series = (("test_base_acc", "base (fused)", "tab:blue"), ("test_new_acc", "new (ITM)", "tab:orange"),
              ("test_hm", "HM", "tab:green"))
    for coef, fname in (("loss_weight", "metrics_vs_loss_weight.png"), ("fusion_weight", "metrics_vs_fusion_weight.png")):
        fig, ax = plt.subplots(figsize=(6, 4))
        xs = [float(g.params[coef]) for g in groups]
        for key, label, colour in series:
            ax.scatter(xs, [g.mean(key) for g in groups], label=f"{label}, per config", color=colour, s=18)
        if coef == "fusion_weight" and best is not None:
            weights = None
            curves: dict[str, list[list[float]]] = {}
            for t in best.completed():
                weights = t.result.get("sweep_fusion_weights") or weights
                for key in ("sweep_test_base_acc", "sweep_test_hm"):
                    if t.result.get(key):
                        curves.setdefault(key, []).append(t.result[key])
            if weights:
                for key, label, colour in (("sweep_test_base_acc", "base, best config swept", "tab:blue"),
                                           ("sweep_test_hm", "HM, best config swept", "tab:green")):
                    if key in curves:
                        mean = [statistics.fmean(v) for v in zip(*curves[key])]
                        ax.plot(weights, mean, color=colour, linestyle="--", label=label)
        ax.set_xlabel(coef.replace("_", " "))
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{dataset} base / new / HM vs {coef.replace('_', ' ')} (mean over seeds)".strip())
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = outdir / fname
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths
