#!/usr/bin/env bash
# A real-browser check of the MLflow UI over a tracking store, on loopback only:
#   bash scripts/ui_check.sh [STORE.db [OUT_DIR [EXPERIMENT]]]
# serves STORE.db (default: the quickstart's ./mlflow.db, made by scripts/quickstart.sh when missing) with
# `mlflow server --host 127.0.0.1 --workers 1`, opens in headless Chromium the runs table, one trial, a compare view
# of 3 trials and the parent run's figures, saves a PNG of each under OUT_DIR (default runs/ui_check), and checks in
# each page's DOM that the run names, the loss-weight and fusion-weight columns and metric values are there (the
# expected names and values are read from the store). OUT_DIR/checks.json lists every check; exit 1 if one fails.
# Chromium is Debian's `chromium` package, installed here when missing and run as root. Its traffic to anything
# but 127.0.0.1 goes to a dead proxy and unresolved names: nothing leaves the machine.
set -euo pipefail
# Paths given are the caller's; env.sh moves to the checkout, where the quickstart writes ./mlflow.db.
[ $# -ge 1 ] && store="$(realpath -m "$1")" || store=""
[ $# -ge 2 ] && out="$(realpath -m "$2")" || out=""
experiment="${3:-${DEPT_EXPERIMENT:-quickstart}}"
source "$(dirname "$0")/env.sh"
store="${store:-$PWD/mlflow.db}"
out="${out:-$PWD/runs/ui_check}"
if [ ! -f "$store" ]; then
    if [ $# -ge 1 ]; then
        echo "ui_check: no MLflow store at $store" >&2
        exit 2
    fi
    bash scripts/quickstart.sh
fi
browser="$(command -v chromium || command -v chromium-browser || true)"
if [ -z "$browser" ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "ui_check: Chromium is not installed (as root: apt-get install chromium)" >&2
        exit 3
    fi
    apt-get install -y -qq chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }
    browser="$(command -v chromium)"
fi
mkdir -p "$out"
port="$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
# Its own session, so that the server and its worker stop together.
MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false DO_NOT_TRACK=true MLFLOW_DISABLE_TELEMETRY=true \
    setsid mlflow server --host 127.0.0.1 --port "$port" --workers 1 --backend-store-uri "sqlite:///$store" \
    >"$out/server.log" 2>&1 &
server=$!
trap 'kill -- -"$server" 2>/dev/null || true' EXIT
python - "$browser" "$port" "$store" "$experiment" "$out" <<'PY'
import html.parser, json, os, re, subprocess, sys, tempfile, time, urllib.parse, urllib.request

browser, port, store, experiment, out = sys.argv[1:]
base = f"http://127.0.0.1:{port}"
budget = os.environ.get("DEPT_UI_CHECK_BUDGET_MS", "20000")  # virtual time for the React app to fetch and render
deadline = time.time() + 180
while True:
    try:
        with urllib.request.urlopen(f"{base}/health", timeout=2):
            break
    except OSError:
        if time.time() > deadline:
            sys.exit(f"ui_check: mlflow server did not answer on 127.0.0.1:{port} (see {out}/server.log)")
        time.sleep(1)

from mlflow import MlflowClient

client = MlflowClient(f"sqlite:///{store}")
exp = client.get_experiment_by_name(experiment)
if exp is None:
    sys.exit(f"ui_check: no experiment {experiment!r} in {store}")
runs = client.search_runs([exp.experiment_id], max_results=1000)
parent = next((r for r in runs if r.data.tags.get("role") == "parent"), None)
trials = sorted((r for r in runs if r.data.tags.get("role") == "trial" and r.data.tags.get("trial_status") == "completed"),
                key=lambda r: -r.data.metrics.get("test_hm", 0.0))
if parent is None or len(trials) < 3:
    sys.exit(f"ui_check: experiment {experiment!r} needs a parent run and 3 completed trials")
# The coefficient params as logged (their names may change): the ones that name the loss and the fusion weight.
coef = [next((k for k in sorted(trials[0].data.params) if word in k), None) for word in ("loss_weight", "fusion_weight")]
metric = next(k for k in ("test_hm", "val_hm") if k in trials[0].data.metrics)
try:  # the link the project prints
    from pipelines.tracking.client import runs_url as project_runs_url

    runs_url = project_runs_url(base, exp.experiment_id)
except ImportError:
    runs_url = f"{base}/#/experiments/{exp.experiment_id}/runs"
plots = [a.path for a in client.list_artifacts(parent.info.run_id, "plots") if a.path.endswith(".png")]
figure = next((p for p in plots if "loss_weight" in p), plots[0] if plots else "plots/none.png")
three = trials[:3]
ids = urllib.parse.quote(json.dumps([r.info.run_id for r in three], separators=(",", ":")))
ml = "workflowType=machine_learning"  # the UI's "Model training" side, not its GenAI one
pages = {
    "runs": (runs_url, trials),
    "trial": (f"{base}/#/experiments/{exp.experiment_id}/runs/{trials[0].info.run_id}?{ml}", trials[:1]),
    "compare": (f"{base}/#/compare-runs?runs={ids}&experiments=%5B%22{exp.experiment_id}%22%5D&{ml}", three),
    "figures": (f"{base}/#/experiments/{exp.experiment_id}/runs/{parent.info.run_id}/artifacts/{figure}?{ml}", []),
}
flags = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
         "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--proxy-server=http://127.0.0.1:9",
         "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", f"--virtual-time-budget={budget}"]


class Text(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.parts, self.skip = [], 0

    def handle_starttag(self, tag, attrs):
        self.skip += tag in ("script", "style")

    def handle_endtag(self, tag):
        self.skip -= tag in ("script", "style") and self.skip > 0

    def handle_data(self, data):
        if not self.skip and data.strip():
            self.parts.append(data.strip())


def chromium(*args):
    with tempfile.TemporaryDirectory(prefix="ui-check-chromium-") as profile:
        return subprocess.run([browser, *flags, f"--user-data-dir={profile}", *args], capture_output=True, text=True,
                              timeout=180).stdout


def on_page(value, numbers):
    """A metric value shown at any precision the UI rounds to."""
    return any(abs(n - value) <= 0.5 * 10 ** -len(s.split(".")[1]) + 1e-9 for s, n in numbers)


checks = []
for page, (url, expect) in pages.items():
    chromium("--window-size=1600,1000", f"--screenshot={out}/{page}.png", url)
    # A large window for the DOM: the runs table and compare view render only the rows and columns in sight.
    dom = chromium("--window-size=3000,4000", "--dump-dom", url)
    with open(f"{out}/{page}.html", "w") as f:
        f.write(dom)
    parser = Text()
    parser.feed(dom)
    text = "\n".join(parser.parts)
    numbers = [(s, float(s)) for s in re.findall(r"-?\d+\.\d+", text)]

    def check(what, ok):
        checks.append({"page": page, "check": what, "ok": bool(ok), "url": url})

    for r in expect:
        check(f"run name {r.info.run_name!r}", r.info.run_name in text)
    if page != "figures":
        for key in coef:
            check(f"column {key!r}", key is not None and key in parser.parts)
        for r in expect[:3]:
            check(f"{metric} of {r.info.run_name!r} = {r.data.metrics[metric]:.4f}",
                  on_page(r.data.metrics[metric], numbers))
    else:
        check(f"figure {figure!r} shown", re.search(r'<img alt="' + re.escape(figure) + r'" src="blob:', dom))
json.dump(checks, open(f"{out}/checks.json", "w"), indent=1)
failed = [c for c in checks if not c["ok"]]
for c in checks:
    print(f"{'ok  ' if c['ok'] else 'FAIL'} {c['page']:8s} {c['check']}")
print(f"ui_check: {len(checks) - len(failed)}/{len(checks)} checks passed; screenshots in {out}")
sys.exit(1 if failed else 0)
PY
