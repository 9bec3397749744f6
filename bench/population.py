"""Trial populations: trials/hour at P = 1, 8, 32, 64 members trained as one batched step (``dept.train_population``)
against the same P trials trained one after another, side by side in one run, on one device.

First the exactness check: ``--exact-members`` members as one population against each trained alone with
``dept.train`` (fp32; losses and parameters within 1e-5 relative, test accuracies equal) — the run stops if it
fails. Then, for each P, in turn: ``--seq-sample`` trials one after another (each a population of one, which is
``dept.train``'s own code path, bit for bit — tests/dept/test_population.py; with the same ``--amp`` / ``--compile``
as the population) and the P-member population, each for ``--epochs`` epochs. Sequential cost = the sampled
trials' mean x P (trials are independent and of one shape). Trials/hour count trials of ``--trial-epochs`` epochs
(the reference's 10), scaled from the measured epochs. Members differ in loss weight, lr, head-lr multiplier,
weight decay, seed and (KgCoOp) kg weight, as a coefficient search's do.

Shape (default): the shipped miniature ``dept-mini-vit`` (text tower width 128, 4 layers, 32-token context),
CoOp+DePT (16-token context), 20 base classes, 8 shots x 4 stored views, batch 4; cached features are stand-in
values of the right shape (a step's cost does not depend on them). ``--model ViT-B-16 --pretrained none`` for the
paper's text tower with random weights.

    python bench/population.py --threads 1 --clock cpu                       # CPU (figures in bench/RESULTS.md)
    python bench/population.py --device cuda --clock wall --amp [--compile reduce-overhead]   # bench/gpu.sh
    python bench/population.py --tiny                                        # dry run, seconds
"""
from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from benchlib import machine_line
from dept import DePTConfig, PopulationOptions, TrainConfig, build_learner, evaluate_base_new, load_clip, train, train_population
from trial_cost import class_names, make_clock


@dataclass
class Options:
    model: str = "dept-mini-vit"
    pretrained: str = "shipped"
    method: str = "coop"
    classes: int = 20
    shots: int = 8
    views: int = 4
    batch_size: int = 4
    epochs: int = 1  # measured per side
    trial_epochs: int = 10  # a trial's epochs, for trials/hour
    populations: tuple[int, ...] = (1, 8, 32, 64)
    seq_sample: int = 4
    exact_members: int = 4
    exact_epochs: int = 2
    device: str = "cpu"
    clock: str = "cpu"  # cpu | wall
    threads: int = 1
    amp: bool = False
    compile: str | None = None


@dataclass
class Row:
    members: int
    population_s: float  # the P-member population, measured epochs
    sequential_s: float  # P trials one after another (sampled mean x P)
    sequential_sample: list[float] = field(default_factory=list)

    def trials_per_hour(self, opt: Options, sequential: bool = False) -> float:
        seconds = (self.sequential_s if sequential else self.population_s) * opt.trial_epochs / opt.epochs
        return 3600.0 * self.members / seconds

    @property
    def ratio(self) -> float:  # how many times cheaper the population is than the same trials in a row
        return self.sequential_s / self.population_s


def member_configs(opt: Options, p: int) -> tuple[DePTConfig, dict | None, TrainConfig]:
    """Member p of a coefficient search: varied loss weight, lr, head-lr multiplier, weight decay, seed."""
    dept = DePTConfig(loss_weight=(0.3, 0.5, 0.7, 0.9)[p % 4], fusion_weight=(0.5, 0.7, 0.9)[p % 3])
    options = {"kg_weight": (1.0, 2.0, 8.0)[p % 3]} if opt.method == "kgcoop" else None
    lr = (0.002, 0.0035, 0.005)[p % 3] * (1.0 if opt.method != "cocoop" else 0.6)
    config = TrainConfig(epochs=opt.epochs, batch_size=opt.batch_size, lr=lr, head_lr_mult=(6.5, 3.0)[p % 2],
                         weight_decay=(5e-4, 1e-3)[p % 2], seed=1 + p)
    return dept, options, config


def build(opt: Options, clip, base, p: int, epochs: int | None = None):
    dept, options, config = member_configs(opt, p)
    if epochs is not None:
        config = TrainConfig(**{**asdict(config), "epochs": epochs})
    return build_learner(opt.method, clip, base, dept=dept, method_options=options, seed=config.seed), config


def exactness(opt: Options, clip, base, x, y, log) -> dict:
    """Population vs each member alone (fp32, no compile): max relative differences; raises if over 1e-5."""
    rel = lambda a, b: ((a - b).norm() / b.norm().clamp_min(1e-30)).item()  # noqa: E731
    members = [build(opt, clip, base, p, opt.exact_epochs) for p in range(opt.exact_members)]
    results = train_population([m for m, _ in members], x, y, [c for _, c in members])
    xt, yt = x[:, 0], y
    worst = {"loss": 0.0, "params": 0.0, "accuracy_equal": True}
    for p, ((learner, config), r) in enumerate(zip(members, results)):
        alone, _ = build(opt, clip, base, p, opt.exact_epochs)
        hist = train(alone, x, y, config)
        worst["loss"] = max([worst["loss"]] + [abs(a.train_loss - b.train_loss) / abs(a.train_loss)
                                               for a, b in zip(hist, r.history)])
        worst["params"] = max([worst["params"]] + [rel(b, a) for a, b in zip(alone.state_dict().values(),
                                                                              learner.state_dict().values())
                                                   if a.is_floating_point()])
        ra, rb = (evaluate_base_new(m, xt, yt, xt[:0], yt[:0], []) for m in (alone, learner))
        worst["accuracy_equal"] &= ra.base_acc == rb.base_acc
    log(f"exactness, {opt.exact_members} members x {opt.exact_epochs} epochs vs dept.train alone: losses within "
        f"{worst['loss']:.1e}, parameters within {worst['params']:.1e} relative, base accuracies equal: "
        f"{worst['accuracy_equal']}")
    if not (worst["loss"] <= 1e-5 and worst["params"] <= 1e-5 and worst["accuracy_equal"]):
        raise SystemExit(f"exactness check failed: {worst}")
    return worst


def measure(opt: Options, log=print) -> dict:
    torch.set_num_threads(opt.threads)
    device = torch.device(opt.device)
    clock = make_clock(opt.clock, device)
    clip = load_clip(opt.model, opt.pretrained, device=device, text_only=True)
    base = class_names(opt.classes)
    # Class prototypes + noise: learnable, so training is well conditioned. On pure noise with arbitrary labels
    # a 1e-7 nudge to one trial's start grows to ~1e-1 in its parameters within 2 epochs of dept.train alone, and no
    # comparison at float rounding could hold.
    g = torch.Generator().manual_seed(0)
    n = opt.classes * opt.shots
    y = torch.arange(n) % opt.classes
    x = (2.0 * torch.randn(opt.classes, clip.embed_dim, generator=g)[y].unsqueeze(1)
         + torch.randn(n, opt.views, clip.embed_dim, generator=g)).to(device)
    y = y.to(device)
    log(f"{opt.model} ({opt.pretrained}) text tower, {opt.method}+DePT, {opt.classes} classes, {n} images x "
        f"{opt.views} views, batch {opt.batch_size}, {opt.device}, clock {opt.clock}, threads {opt.threads}, "
        f"amp {opt.amp}, compile {opt.compile}; {machine_line()}")
    worst = exactness(opt, clip, base, x, y, log)
    pop_options = PopulationOptions(amp=opt.amp, compile=opt.compile)

    def timed(members) -> float:
        start = clock()
        train_population([m for m, _ in members], x, y, [c for _, c in members], options=pop_options)
        return clock() - start

    timed([build(opt, clip, base, 0)])  # warm-up: first-call costs (class tokens, allocator, compile) off the clock
    rows = []
    for P in opt.populations:
        sample = [timed([build(opt, clip, base, p)]) for p in range(min(opt.seq_sample, P))]
        population = timed([build(opt, clip, base, p) for p in range(P)])
        row = Row(P, population, statistics.mean(sample) * P, sample)
        rows.append(row)
        log(f"P={P:3d}: population {row.population_s:8.2f} s, {P} trials in a row {row.sequential_s:8.2f} s "
            f"(sampled {len(sample)}: {', '.join(f'{s:.2f}' for s in sample)}), ratio {row.ratio:5.2f}x, "
            f"trials/hour {row.trials_per_hour(opt):9.1f} vs {row.trials_per_hour(opt, True):9.1f}")
    p1 = next((r for r in rows if r.members == 1), None)
    return {"options": asdict(opt), "machine": machine_line(), "exactness": worst,
            "rows": [{**asdict(r), "ratio": r.ratio, "trials_per_hour": r.trials_per_hour(opt),
                      "trials_per_hour_sequential": r.trials_per_hour(opt, True),
                      "trials_per_hour_vs_p1": r.trials_per_hour(opt) / p1.trials_per_hour(opt) if p1 else None}
                     for r in rows]}


def markdown(result: dict) -> str:
    lines = ["| P | population (s) | P trials in a row (s) | in a row / population | trials/hour | vs P = 1 |",
             "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in result["rows"]:
        vs = f"{r['trials_per_hour_vs_p1']:.2f}x" if r["trials_per_hour_vs_p1"] is not None else "-"
        lines.append(f"| {r['members']} | {r['population_s']:.2f} | {r['sequential_s']:.2f} | {r['ratio']:.2f}x | "
                     f"{r['trials_per_hour']:.0f} | {vs} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    d = Options()
    for name in ("model", "pretrained", "method", "device", "clock"):
        ap.add_argument(f"--{name}", default=getattr(d, name))
    for name in ("classes", "shots", "views", "batch_size", "epochs", "trial_epochs", "seq_sample", "exact_members",
                 "exact_epochs", "threads"):
        ap.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(d, name))
    ap.add_argument("--populations", default=",".join(map(str, d.populations)), help="comma-separated P values")
    ap.add_argument("--amp", action="store_true", help="bf16 autocast, fp32 master weights")
    ap.add_argument("--compile", default=None, help="torch.compile mode for the step (reduce-overhead: CUDA graphs)")
    ap.add_argument("--tiny", action="store_true", help="dry run on the tiny random model, 6 classes, P = 1, 4")
    ap.add_argument("--out", type=Path, default=None, help="folder for population.json")
    a = ap.parse_args(argv)
    opt = Options(model=a.model, pretrained=a.pretrained, method=a.method, classes=a.classes, shots=a.shots,
                  views=a.views, batch_size=a.batch_size, epochs=a.epochs, trial_epochs=a.trial_epochs,
                  populations=tuple(int(p) for p in a.populations.split(",")), seq_sample=a.seq_sample,
                  exact_members=a.exact_members, exact_epochs=a.exact_epochs, device=a.device, clock=a.clock,
                  threads=a.threads, amp=a.amp, compile=a.compile)
    if a.tiny:
        opt = Options(**{**asdict(opt), "model": "dept-tiny-vit", "pretrained": "none", "classes": 6, "shots": 2,
                         "populations": (1, 4), "seq_sample": 2, "exact_members": 2, "exact_epochs": 1})
    result = measure(opt)
    table = markdown(result)
    print(table)
    if a.out is not None:
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "population.json").write_text(json.dumps({**result, "table": table}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
