"""The /ui experiment panel renders real statistics: the page's own script, run by Node.js against a
minimal DOM, fed the answer of ``GET /experiments/current`` built from real impressions and attributions
by ``components.experiments``. (The headless-browser test, tests/integration/test_web_page.py, covers the
rest of the page where Chromium is installed.)"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.experiments import experiment_stats
from components.settings import load_settings

PAGE = Path(__file__).resolve().parents[2] / "serving" / "static" / "index.html"
NODE = shutil.which("node")

SHIM = """
const vm = require("vm");
class El {
  constructor(tag) { this.tag = tag; this.children = []; this.attrs = {}; this.textContent = ""; this.hidden = false;
    this.className = ""; this.dataset = {}; this.disabled = false; this.value = "";
    this.classList = {items: new Set(), toggle(name, on) { on ? this.items.add(name) : this.items.delete(name); }}; }
  append(...c) { this.children.push(...c); }
  replaceChildren(...c) { this.children = c; }
  setAttribute(k, v) { this.attrs[k] = v; }
  addEventListener(type, handler) { this.attrs["on" + type] = handler; }
  querySelectorAll() { return []; }
}
const els = {};
global.document = {getElementById: (id) => els[id] || (els[id] = new El("div")),
  createElement: (t) => new El(t), createElementNS: (ns, t) => new El(t)};
global.sessionStorage = {getItem: () => null, setItem() {}};
global.setInterval = () => 0;
const payload = JSON.parse(require("fs").readFileSync(process.argv[2], "utf8"));
const answer = (path) => (path === "/info" ? {ready: false} : payload);
let panelFetches = 0;
global.fetch = async (path) => {
  if (path === "/experiments/current") panelFetches += 1;
  return {ok: true, status: 200, json: async () => answer(path)};
};
vm.runInThisContext(require("fs").readFileSync(process.argv[3], "utf8"));
let beforeKey = null;
setTimeout(() => { beforeKey = panelFetches; els["key-form"].attrs.onsubmit({preventDefault() {}}); }, 20);
setTimeout(() => {
  const rows = els["experiment-rows"].children.map((r) => r.children.map((c) => c.textContent));
  const plot = els["experiment-plot"];
  console.log(JSON.stringify({status: els["experiment-status"].textContent, rows, hidden: plot.hidden,
    shapes: plot.children.map((c) => [c.tag, c.attrs["data-arm"]]), decision: els["experiment-decision"].textContent,
    fetches: [beforeKey, panelFetches]}));
}, 50);
"""


@pytest.mark.skipif(NODE is None, reason="needs Node.js to run the page's script")
def test_the_experiment_panel_shows_arms_intervals_a_plot_and_the_decision(tmp_path):
    rng = np.random.default_rng(3)
    n = 400
    impressions = pd.DataFrame(
        {
            "recommendation_id": [f"r{i}" for i in range(n)],
            "arm": ["champion" if i % 2 else "challenger" for i in range(n)],
            "latency_ms": rng.uniform(2, 6, n),
            "error": 0,
            "created_at": 1_700_000_000 + np.arange(n, dtype=float),
            "teams": None,
        }
    )
    liked = [i for i in range(n) if rng.random() < (0.5 if i % 2 == 0 else 0.1)]
    attributions = pd.DataFrame(
        {
            "recommendation_id": [f"r{i}" for i in liked],
            "arm": [impressions["arm"][i] for i in liked],
            "event": "like",
            "created_at": [1_700_000_000 + i + 0.5 for i in liked],
        }
    )
    experiment = {
        "experiment_id": "exp-panel",
        "state": "promoted",
        "champion_version": "1",
        "challenger_version": "2",
        "mode": "split",
        "share": 0.5,
        "metric": "like_rate",
        "reason": "online experiment exp-panel: the challenger is better",
    }
    stats = experiment_stats(experiment, impressions, attributions, load_settings().experiments)
    answer = {"experiment": experiment, "stats": stats, "decision": {"action": "ended", "reason": ""}}
    shown = _render(tmp_path, answer)
    assert shown["status"].startswith("exp-panel (promoted): version 2 against champion 1, split, 50% of users")
    assert shown["fetches"] == [1, 2], "entering an API key reloads the panel at once"
    champion, challenger = shown["rows"]
    assert champion[:3] == ["champion", "1", "200"] and challenger[:3] == ["challenger", "2", "200"]
    assert float(challenger[4]) == pytest.approx(stats["arms"]["challenger"]["rate"], abs=1e-4)
    low, high = (float(v) for v in challenger[5].strip("[]").split(","))
    assert low < float(challenger[4]) < high  # the always-valid interval around the rate
    assert not shown["hidden"] and shown["shapes"] == [
        ["polygon", "champion"],
        ["polyline", "champion"],
        ["polygon", "challenger"],
        ["polyline", "challenger"],
    ]
    assert "decision: promoted: online experiment exp-panel" in shown["decision"]

    # interleaving has no share of users: every list shows both rankings
    interleaved = _render(tmp_path, {**answer, "experiment": {**experiment, "mode": "interleave"}})
    assert "interleave, every list mixes both rankings, metric like_rate" in interleaved["status"]
    assert "% of users" not in interleaved["status"]


def _render(tmp_path: Path, answer: dict) -> dict:
    """What the panel shows for ``answer`` (the body of ``GET /experiments/current``)."""
    (tmp_path / "answer.json").write_text(json.dumps(answer, default=float))
    page = PAGE.read_text()
    (tmp_path / "page.js").write_text(page[page.index("<script>") + 8 : page.index("</script>")])
    (tmp_path / "shim.js").write_text(SHIM)
    done = subprocess.run(
        [NODE, str(tmp_path / "shim.js"), str(tmp_path / "answer.json"), str(tmp_path / "page.js")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])
