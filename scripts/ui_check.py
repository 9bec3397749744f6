"""The browser half of scripts/ui_check.sh: drives headless Chromium (scripts/cdp.py) over a running MLflow UI as a
first-time user, by clicking, and writes OUT/checks.json and a 1600x1000 PNG per page.

    python scripts/ui_check.py CHROMIUM BASE_URL STORE.db EXPERIMENT OUT_DIR

Every check is a row {page, check, ok, url}; rows with "note" record what MLflow did where the project cannot
decide it (they never fail). Exit 1 if a check failed."""
from __future__ import annotations

import json
import re
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cdp import Browser, BrowserError
from mlflow import MlflowClient

from pipelines.tracking.client import comparison_axes, runs_url, view_metrics

WIDTH, HEIGHT = 1600, 1000
#: How long one page may take to fetch and render (the React app's first load compiles a few MB of JavaScript).
PAGE_S = 90


def by_text(text: str, tags: str = "a") -> str:
    """JavaScript: the last (innermost) element of ``tags`` whose whole text is ``text``."""
    return (f"[...document.querySelectorAll({json.dumps(tags)})].filter(e => e.textContent.trim() === "
            f"{json.dumps(text)}).pop()")


ASSISTANT_CLOSE = '[data-component-id="mlflow.assistant.chat_panel.close"]'
#: Where an experiment page landed: the runs table, or MLflow's GenAI side (overview / traces).
LANDED = ("(() => { const h = location.hash; if (/\\/runs/.test(h) && document.querySelector('.ag-row')) return 'runs';"
          " if (/\\/(overview|traces|chat-sessions)/.test(h)) return h.split('?')[0].split('/').pop() || 'genai';"
          " return null; })()")
#: Each header cell of the runs table: [col-id, left, right, label's needed width, label's width], and the visible
#: part of the grid's scrolling body (its left edge after the pinned columns, its right edge before a scrollbar).
GEOMETRY = """JSON.stringify((() => {
  const body = document.querySelector('.ag-center-cols-viewport').getBoundingClientRect();
  const scroller = document.querySelector('.ag-body-horizontal-scroll-viewport');
  const cells = [...document.querySelectorAll('.ag-header-cell')].map(e => {
    const r = e.getBoundingClientRect(); const l = e.querySelector('[data-testid^=sort-header]');
    const box = l ? l.parentElement : e;
    return [e.getAttribute('col-id'), r.left, r.right, box.scrollWidth, box.clientWidth]; });
  return {left: body.left, right: body.left + document.querySelector('.ag-center-cols-viewport').clientWidth,
          scrolled: scroller ? scroller.scrollLeft : 0, page: [document.documentElement.scrollWidth, innerWidth],
          cells};
})())"""


GATHER = """(async () => {
  const pause = () => new Promise(r => setTimeout(r, 400)), seen = [document.body.innerText];
  for (const m of document.querySelectorAll('main')) m.scrollTop = m.scrollHeight;
  await pause(); seen.push(document.body.innerText);
  for (const g of document.querySelectorAll('.ReactVirtualized__Grid')) {
    for (let y = 0; y <= g.scrollHeight; y += Math.max(50, g.clientHeight / 2)) {
      g.scrollTop = y; await pause(); seen.push(document.body.innerText); } }
  return seen.join('\\n'); })()"""


class Section:
    """A group of steps in one browser: a step that does not come (an element never shown) is one failed check
    with a screenshot, and the groups after it still run."""

    def __init__(self, check: Check, page: str, browser: Browser | None = None):
        self.check, self.page, self.browser = check, page, browser

    def __enter__(self):
        return self

    def __exit__(self, kind, error, tb):
        if isinstance(error, BrowserError):
            url = ""
            if self.browser is not None:
                try:
                    url = self.browser.js("location.href")
                    self.browser.screenshot(str(self.check.out / f"failed_{self.page}.png"))
                except BrowserError:
                    pass
            self.check(self.page, f"step done: {error}", False, url)
            return True
        return False


class Check:
    def __init__(self, out: Path):
        self.out, self.rows = out, []

    def __call__(self, page: str, what: str, ok, url: str = "") -> bool:
        self.rows.append({"page": page, "check": what, "ok": bool(ok), "url": url})
        return bool(ok)

    def note(self, page: str, what: str, url: str = "") -> None:
        self.rows.append({"page": page, "check": what, "ok": True, "note": True, "url": url})

    def write(self) -> int:
        (self.out / "checks.json").write_text(json.dumps(self.rows, indent=1))
        failed = [c for c in self.rows if not c["ok"]]
        for c in self.rows:
            mark = "note" if c.get("note") else "ok  " if c["ok"] else "FAIL"
            print(f"{mark} {c['page']:9s} {c['check']}")
        print(f"ui_check: {len(self.rows) - len(failed)}/{len(self.rows)} checks passed; screenshots in {self.out}")
        return 1 if failed else 0


def shown(value: float, text: str) -> bool:
    """A metric value on the page, at whatever precision the UI shows it (MLflow cuts long values with '…')."""
    for s in re.findall(r"-?\d+(?:\.\d+)?", text):
        decimals = len(s.split(".")[1]) if "." in s else 0
        if abs(float(s) - value) <= 10 ** -decimals:
            return True
    return False


def landing(b: Browser) -> str:
    try:
        where = b.wait_for(LANDED, PAGE_S, "an experiment page")
    except BrowserError:
        where = "nowhere: " + b.js("location.hash")
    b.settle()
    return where


def fits(check: Check, b: Browser, page: str, columns: list[str], url: str) -> None:
    """Each of ``columns`` wholly inside the visible grid, its header not cut, and no horizontal scrolling."""
    g = json.loads(b.js(GEOMETRY))
    cells = {c[0]: c for c in g["cells"]}
    check(page, f"no horizontal scrolling (page {g['page'][0]} px in a {g['page'][1]} px window, grid scrolled "
                f"{g['scrolled']} px)", g["page"][0] <= g["page"][1] and g["scrolled"] == 0, url)
    for col in columns:
        c = cells.get(col)
        check(page, f"column {col} in sight, header whole"
                    + (f" ({c[1]:.0f}-{c[2]:.0f} px; visible {g['left']:.0f}-{g['right']:.0f})" if c else ""),
              c is not None and c[1] >= g["left"] - 1 and c[2] <= g["right"] + 1 and c[3] <= c[4], url)


def main(chromium: str, base: str, store: str, experiment: str, out_dir: str) -> int:
    out = Path(out_dir)
    check = Check(out)
    deadline = time.time() + 180
    while True:
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2):
                break
        except OSError:
            if time.time() > deadline:
                sys.exit(f"ui_check: mlflow server did not answer at {base} (see {out}/server.log)")
            time.sleep(1)
    client = MlflowClient(f"sqlite:///{store}")
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        sys.exit(f"ui_check: no experiment {experiment!r} in {store}")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parent = next((r for r in runs if r.data.tags.get("role") == "parent"), None)
    metric = parent.data.tags.get("selection_metric", "val_hm") if parent else "val_hm"
    trials = sorted((r for r in runs if r.data.tags.get("role") == "trial"
                     and r.data.tags.get("trial_status") == "completed"),
                    key=lambda r: -r.data.metrics.get(metric, 0.0))
    if parent is None or len(trials) < 3:
        sys.exit(f"ui_check: experiment {experiment!r} needs a parent run and 3 completed trials")
    eid = exp.experiment_id
    metrics = list(view_metrics(metric))
    first = [f"params.`{k}`" for k in comparison_axes(metric)[0]] + [f"metrics.`{k}`" for k in metrics]
    # Beside the Assistant: the coefficients, the selection metric and the test scores; with it closed, all.
    beside_assistant, closed = first[:7], first
    printed = runs_url(base, eid)

    # 1. The printed link, in a first-time browser (MLflow's Assistant opens by itself on a local server).
    with Browser(chromium, WIDTH, HEIGHT) as b, Section(check, "printed", b):
        b.goto(printed)
        where = landing(b)
        check("printed", f"the printed link shows the runs table (landed on: {where})", where == "runs", printed)
        b.wait_for("!!document.querySelector('.ag-header-cell[col-id*=\"loss_weight\"]')", PAGE_S, "the view")
        b.settle()
        check("printed", "the Assistant panel is open, as MLflow opens it the first time on a local server",
              b.js(f"!!document.querySelector('{ASSISTANT_CLOSE}')"), printed)
        b.screenshot(str(out / "runs.png"))
        text = b.js("document.body.innerText")
        for r in trials[:3]:
            check("printed", f"run {r.info.run_name!r} listed", r.info.run_name[:12] in text, printed)
            cell = b.js(f"(() => {{ const row = [...document.querySelectorAll('.ag-center-cols-container .ag-row')]"
                        f".find(e => e.getAttribute('row-id') === {json.dumps(r.info.run_id)}); const c = row &&"
                        f" row.querySelector('[col-id=\"metrics.`{metric}`\"]'); return c ? c.textContent : ''; }})()")
            check("printed", f"{metric} of {r.info.run_name!r} = {r.data.metrics[metric]:.4f} (shown: {cell!r})",
                  shown(r.data.metrics[metric], cell), printed)
        fits(check, b, "printed", beside_assistant, printed)
        # The Assistant's close button (MLflow remembers it closed, in the browser's localStorage).
        b.click(f"document.querySelector('{ASSISTANT_CLOSE}')", "the Assistant's close button")
        time.sleep(1)
        b.settle()
        gone = not b.js(f"!!document.querySelector('{ASSISTANT_CLOSE}')")
        check("printed", "the Assistant closes with one click", gone, printed)
        fits(check, b, "assistant-closed", closed, printed)
        b.screenshot(str(out / "runs_assistant_closed.png"))

    # 2. Home and the experiments list, by clicking, in first-time browsers.
    name_link = by_text(experiment)
    for page, start in (("home", f"{base}/"), ("list", f"{base}/#/experiments")):
        with Browser(chromium, WIDTH, HEIGHT) as b, Section(check, page, b):
            b.goto(start)
            b.click(name_link, f"the experiment {experiment!r} on {page}", PAGE_S)
            where = landing(b)
            if where == "runs":
                check(page, f"clicking {experiment!r} opens the runs table", True, b.js("location.href"))
            else:
                check.note(page, f"a first-time browser: clicking {experiment!r} opens MLflow's GenAI side ({where});"
                                 " MLflow 3.17 decides it by the sidebar switch alone", b.js("location.href"))
            if page == "home":
                b.screenshot(str(out / "home_first_click.png"))
            if where != "runs":
                # The one click that remains, before opening the experiment (on the GenAI page a "Detect Issues"
                # popover covers the page until dismissed): the sidebar's "Model training" switch, kept in the
                # browser (localStorage mlflow.workflowType_v1).
                b.goto(start)
                b.click(by_text("Model training", "button, label, span, div"), "the Model training switch", PAGE_S)
                b.click(name_link, f"the experiment {experiment!r} on {page}", PAGE_S)
                where = landing(b)
                check(page, f"after one click on the sidebar's Model training switch, clicking {experiment!r} opens "
                            f"the runs table (landed on: {where})", where == "runs", b.js("location.href"))
            # A new visit in the same browser: the switch is remembered.
            b.goto(start)
            b.click(name_link, f"the experiment {experiment!r} on {page}", PAGE_S)
            where = landing(b)
            check(page, f"from then on, clicking {experiment!r} on {page} opens the runs table (landed on: "
                        f"{where})", where == "runs", b.js("location.href"))
            if page == "home":
                # Without the printed link the table has MLflow's own columns; the views menu has ours.
                b.click(by_text("Views", "button"), "the views menu")
                time.sleep(1)
                b.click(by_text(f"DePT trials by {metric}", "span, div, li, [role=menuitem], [role=option]"),
                        "the saved view in the views menu")
                b.wait_for("!!document.querySelector('.ag-header-cell[col-id*=\"loss_weight\"]')", PAGE_S,
                           "the saved view's columns")
                b.settle()
                check("home", "the views menu opens the saved view's columns", True, b.js("location.href"))

    # 3. One trial, the compare page of 3 trials, the chart view and the parent's figure (deep links).
    ml = "workflowType=machine_learning"
    ids = urllib.parse.quote(json.dumps([r.info.run_id for r in trials[:3]], separators=(",", ":")))
    plots = [a.path for a in client.list_artifacts(parent.info.run_id, "plots") if a.path.endswith(".png")]
    figure = next((p for p in plots if "loss_weight" in p), plots[0] if plots else "plots/none.png")
    pages = {
        "trial": f"{base}/#/experiments/{eid}/runs/{trials[0].info.run_id}?{ml}",
        "compare": f"{base}/#/compare-runs?runs={ids}&experiments=%5B%22{eid}%22%5D&{ml}",
        "charts": runs_url(base, eid, charts=True),
        "figures": f"{base}/#/experiments/{eid}/runs/{parent.info.run_id}/artifacts/{figure}?{ml}",
    }
    ready = {"trial": f"document.body.innerText.includes({json.dumps(trials[0].info.run_name)})",
             "compare": f"document.body.innerText.includes({json.dumps(trials[2].info.run_name)})",
             "charts": "document.querySelectorAll('svg text').length > 5",
             "figures": f"!!document.querySelector('img[alt={json.dumps(figure)}][src^=\"blob:\"]')"}
    with Browser(chromium, WIDTH, HEIGHT) as b:
        for page, url in pages.items():
            with Section(check, page, b):
                b.goto(url)
                b.wait_for(ready[page], PAGE_S, page)
                b.settle()
                b.screenshot(str(out / f"{page}.png"))
                # Below the fold (the compare page's metrics) rows render once scrolled to, and its long lists are
                # virtualized: the text is gathered while the page, then each list, is scrolled through.
                text = b.js(GATHER) if page in ("trial", "compare") else b.js("document.body.innerText")
                if page in ("trial", "compare"):
                    for r in trials[:1] if page == "trial" else trials[:3]:
                        check(page, f"run name {r.info.run_name!r}", r.info.run_name in text, url)
                        check(page, f"{metric} of {r.info.run_name!r} = {r.data.metrics[metric]:.4f}",
                              shown(r.data.metrics[metric], text), url)
                    for key in ("loss_weight", "fusion_weight"):
                        check(page, f"parameter {key!r} shown", key in text, url)
                if page == "compare":
                    axes = b.js("JSON.stringify([...document.querySelectorAll('.parcoords .axis-title')]"
                                ".map(t => t.textContent))")
                    check.note(page, f"MLflow's compare page picks its parallel-coordinates axes itself (the first 3 "
                                     f"differing params alphabetically, the first metric): {axes}", url)
                if page == "charts":
                    labels = json.loads(b.js("JSON.stringify([...document.querySelectorAll('svg text')]"
                                             ".map(t => t.textContent.trim()))"))
                    params, chart_metrics = comparison_axes(metric)
                    axes = [t for t in labels if t in (*params, *chart_metrics)]
                    check(page, f"the comparison chart's axes are {[*params, *chart_metrics]} (shown: {axes})",
                          axes[:len(params) + len(chart_metrics)] == [*params, *chart_metrics], url)
                if page == "figures":
                    check(page, f"figure {figure!r} shown", True, url)
    return check.write()


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
