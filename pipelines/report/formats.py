"""The report table as text: Markdown (the default), CSV and LaTeX (booktabs). Each opens with the CLIP zero-shot
rows when the experiment has them, and keeps the paper's numbers beside ours (:mod:`pipelines.report.table`)."""
from __future__ import annotations

import csv
import io
import math

from pipelines.report.sources import base_to_new_notes
from pipelines.report.table import ZERO_SHOT_LABEL, Block, Row
from pipelines.selection import TIE_RULE

#: How a winning row is marked in the Markdown table and the LaTeX one (CSV: its ``winner`` column).
WINNER_MARK = " (winner)"


def cell_number(x: float | None, std: float | None = None, *, missing: str = "—", pm: str = " ± ") -> str:
    """A mean with its spread (none for one seed: never "± 0.00"), or ``missing``."""
    if x is None or math.isnan(x):
        return missing
    if std is None or math.isnan(std):
        return f"{x:.2f}"
    return f"{x:.2f}{pm}{std:.2f}"


def setting_cells(r: Row, *, missing: str = "") -> tuple[str, str]:
    """The selected configuration's loss weight in effect and lr (empty for zero-shot and average rows)."""
    if r.zero_shot or math.isnan(r.lr):
        return missing, missing
    return (f"{r.loss_weight:.2f}" if not math.isnan(r.loss_weight) else missing), f"{r.lr:.1e}"


def winner_notes(blocks: list[Block]) -> list[str]:
    """The winner per dataset, then every tie broken within a cell, one line each."""
    rows = [r for b in blocks for r in b.rows]
    lines = [f"winner {r.winner_line}" for r in sorted(rows, key=lambda r: r.dataset) if r.winner]
    lines += [f"{r.dataset} {r.label}: {r.tie}" for r in rows if r.tie and not r.winner]
    return lines


def _rule_note() -> str:
    return ("Winner: per dataset, the configuration best on the mean selection metric (validation only) among all "
            f"methods, with every seed completed, as tune's summary names it. {TIE_RULE}")


def format_markdown(blocks: list[Block], *, experiment: str = "") -> str:
    lines = []
    if experiment:
        lines.append(f"Base-to-new results of MLflow experiment `{experiment}` (test accuracy, %; mean ± std over "
                     "seeds; HM of the means). Per cell, the configuration with the best mean selection metric "
                     "(validation only) is shown.")
        lines.append("")
    has_zero_shot = any(b.zero_shot for b in blocks)
    # Beside each HM, how far it is from zero-shot's on the same data: where tuning helps, where it hurts.
    vs = " HM vs zero-shot |" if has_zero_shot else ""

    def delta(r: Row) -> str:
        if not has_zero_shot:
            return ""
        return " |" if r.zero_shot else f" {'—' if math.isnan(r.vs_zero_shot) else f'{r.vs_zero_shot:+.2f}'} |"

    lines.append(f"| Dataset | Method | λ | lr | Seeds | Base | New | HM |{vs} Paper base | Paper new | Paper HM |")
    lines.append(f"| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |{' ---: |' if has_zero_shot else ''} ---: | ---: "
                 "| ---: |")
    notes = []
    for block in blocks:
        for r in block.rows:
            p = r.paper
            seeds = "—" if r.zero_shot else r.seeds_text
            lw, lr = setting_cells(r, missing="—")
            label = f"**{r.label}**{WINNER_MARK}" if r.winner else r.label
            lines.append(f"| {r.dataset} | {label} | {lw} | {lr} | {seeds} | {cell_number(r.base, r.base_std)} | {cell_number(r.new, r.new_std)} "
                         f"| {cell_number(r.hm)} |{delta(r)} {cell_number(p.base if p else None)} | {cell_number(p.new if p else None)} "
                         f"| {cell_number(p.hm if p else None)} |")
        a, pa = block.average, block.paper_average
        n = len(block.rows)
        lines.append(f"| **Average** ({n} dataset{'' if n == 1 else 's'}) | {a.label} | | | | {cell_number(a.base)} | {cell_number(a.new)} "
                     f"| **{cell_number(a.hm)}** |{delta(a)} {cell_number(pa.base if pa else None)} | {cell_number(pa.new if pa else None)} "
                     f"| {cell_number(pa.hm if pa else None)} |")
        if block.paper_printed is not None:
            pp, pr = block.paper_printed, block.paper_recomputed_all
            note = (f"{a.label}: the paper printed the 11-dataset average {pp.base:.2f} / {pp.new:.2f} / {pp.hm:.2f}")
            if pr is not None and (abs(pr.base - pp.base) >= 0.05 or abs(pr.new - pp.new) >= 0.05):
                note += (f"; the mean of its own per-dataset rows is {pr.base:.2f} / {pr.new:.2f} / {pr.hm:.2f} "
                         "(the printed row does not match it)")
            notes.append(note + ".")
    lines.append("")
    lines.append("Average rows: base and new averaged over the datasets shown, HM of those averages. The paper "
                 "column of an average row is recomputed the same way from the paper's rows of the same datasets "
                 "(blank when a dataset is not one of the paper's 11).")
    if has_zero_shot:
        lines.append(f"{ZERO_SHOT_LABEL}: the frozen model with the dataset's hand-crafted prompt, nothing trained "
                     "(no seeds; every test image); HM vs zero-shot: a row's HM minus zero-shot's on the same "
                     "dataset(s).")
    if any(not r.complete for b in blocks for r in b.rows):
        lines.append("Seeds marked incomplete (completed / expected): no configuration of that cell has every seed "
                     "completed, so none is selected; shown is the leading one's mean over its completed seeds.")
    lines.extend(base_to_new_notes(blocks))
    lines.append("λ: the loss weight in effect (0: the plain method); lr: the prompt learning rate. " + _rule_note())
    lines.extend(f"- {n}" for n in winner_notes(blocks) + notes)
    return "\n".join(lines) + "\n"


#: ``row``: ``dataset`` (one dataset's result; the zero-shot rows have method ``clip``), ``average`` (our average
#: over the datasets shown) or ``paper_printed`` (the paper's printed 11-dataset average; paper columns only).
#: ``paper_source``: where the paper columns come from (:mod:`pipelines.report.sources`).
CSV_COLUMNS = ("row", "dataset", "method", "dept", "loss_weight", "lr", "winner", "seeds", "base", "base_std", "new",
               "new_std", "hm", "selection_metric", "selection_value", "configs_compared", "hm_vs_zero_shot",
               "paper_base", "paper_new", "paper_hm", "note", "paper_source")


def csv_number(x: float | None) -> object:
    """A CSV cell: empty for a missing number or NaN, else rounded to 4 places."""
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else round(x, 4)


def format_csv(blocks: list[Block]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()

    for block in blocks:
        for r in list(block.rows) + [block.average]:
            p = r.paper if r is not block.average else block.paper_average
            if r is block.average:
                note = "HM of averaged base and new; paper recomputed over the same datasets"
            else:
                note = "CLIP zero-shot: nothing trained, no seeds" if block.zero_shot else ""
                if not r.complete:
                    note = f"incomplete: {r.seeds} of {r.seeds_expected} seeds completed; no configuration selected"
                note = "; ".join(n for n in (note, f"winner {r.winner_line}" if r.winner else r.tie) if n)
            lw, lr = setting_cells(r) if r is not block.average else ("", "")
            writer.writerow({
                "row": "average" if r is block.average else "dataset", "dataset": r.dataset, "method": block.method, "dept": str(block.dept).lower(),
                "loss_weight": lw, "lr": lr, "winner": str(r.winner).lower() if lw or lr else "",
                "seeds": "" if block.zero_shot else r.seeds,
                "base": csv_number(r.base), "base_std": csv_number(r.base_std), "new": csv_number(r.new),
                "new_std": csv_number(r.new_std), "hm": csv_number(r.hm), "selection_metric": r.selection_metric,
                "selection_value": csv_number(r.selection_value),
                "configs_compared": r.configs_compared if r is not block.average and not block.zero_shot else "",
                "hm_vs_zero_shot": csv_number(r.vs_zero_shot),
                "paper_base": csv_number(p.base) if p else "", "paper_new": csv_number(p.new) if p else "",
                "paper_hm": csv_number(p.hm) if p else "", "note": note, "paper_source": p.source if p else "",
            })
        if block.paper_printed is not None:
            pp = block.paper_printed
            writer.writerow({"row": "paper_printed", "dataset": "Average (paper printed, 11 datasets)", "method": block.method,
                             "dept": str(block.dept).lower(), "paper_base": pp.base, "paper_new": pp.new,
                             "paper_hm": pp.hm, "note": "as printed in the paper", "paper_source": pp.source})
    return buf.getvalue()


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def tex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(c, c) for c in str(text))


def tex_number(x: float | None, std: float | None = None) -> str:
    return cell_number(x, std, missing="--", pm=r" $\pm$ ")


def format_latex(blocks: list[Block], *, experiment: str = "") -> str:
    """A booktabs ``tabular``: the Markdown table's columns, a rule between method blocks, average rows in bold,
    the notes as LaTeX comments above it."""
    has_zero_shot = any(b.zero_shot for b in blocks)
    header = ["Dataset", "Method", "$\\lambda$", "lr", "Seeds", "Base", "New", "HM"]
    header += ["$\\Delta$HM vs ZS"] if has_zero_shot else []
    header += ["Paper base", "Paper new", "Paper HM"]
    lines = [f"% Base-to-new results of MLflow experiment {experiment}" if experiment else "% Base-to-new results",
             "% test accuracy (%), mean $\\pm$ std over seeds, HM of the means; average rows: HM of averaged base "
             "and new",
             *(f"% {n}" for n in base_to_new_notes(blocks)),
             "% requires \\usepackage{booktabs}",
             "% $\\star$: " + tex_escape(_rule_note()), *(f"% {tex_escape(line)}" for line in winner_notes(blocks)),
             "\\begin{tabular}{ll" + "r" * (len(header) - 2) + "}", "\\toprule",
             " & ".join(header) + " \\\\", "\\midrule"]

    def cells(r: Row, paper, average: bool) -> list[str]:
        lw, lr = ("", "") if average else setting_cells(r)
        label = tex_escape(r.label) + ("$^\\star$" if r.winner else "")
        out = [tex_escape(f"Average ({len(block.rows)})" if average else r.dataset), label, lw, lr,
               "" if average or r.zero_shot else tex_escape(r.seeds_text), tex_number(r.base, r.base_std),
               tex_number(r.new, r.new_std), tex_number(r.hm)]
        if has_zero_shot:
            out.append("" if r.zero_shot else "--" if math.isnan(r.vs_zero_shot) else f"{r.vs_zero_shot:+.2f}")
        out += [tex_number(paper.base if paper else None), tex_number(paper.new if paper else None),
                tex_number(paper.hm if paper else None)]
        return [f"\\textbf{{{c}}}" if average and c else c for c in out]

    for i, block in enumerate(blocks):
        if i:
            lines.append("\\midrule")
        for r in block.rows:
            lines.append(" & ".join(cells(r, r.paper, False)) + " \\\\")
        lines.append(" & ".join(cells(block.average, block.paper_average, True)) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


#: ``report --format`` -> formatter(blocks, experiment=...).
FORMATS = {"md": format_markdown, "csv": lambda blocks, experiment="": format_csv(blocks), "latex": format_latex}


def format_report(blocks: list[Block], fmt: str, *, experiment: str = "") -> str:
    return FORMATS[fmt](blocks, experiment=experiment)
