"""Every stage at 1×, 10× (and, for the stages that fit, 100×) the size of ml-latest-small.

    python -m benchmarks.bench_scale [--scales 1 10] [--with-100] [--work DIR]
        [--candidates popularity lm_content ease lm_sasrec] [--max-epochs 2] [--serve-epochs 1]
        [--out-json docs/benchmarks/scale.json] [--out-md docs/benchmarks/scale.md] [--plot docs/benchmarks/scale.png]

For each scale the workload is generated with ``python -m benchmarks.workload`` (deterministic, so it is
cached under ``--work``; its own time is measured once, when generated) and a fresh data root is set to
read it through the generic contract. Then the stage functions of ``components.pipeline`` run in the
order of ``dags/lm_recsys_pipeline.py``, **each in its own fresh Python process**, so the wall time and
the peak resident memory (the process's ``VmHWM``) belong to that stage alone: ingest, validate, the
shard plan, each embedding shard, the merge, the training plan, each candidate, evaluate, register,
promote. Then the registered champion: its engine loaded as ``serving/champion.py`` loads it (time and
peak RSS), the bundle's size on disk, ``bentoml serve`` start-up to ``/readyz`` and the service tree's
RSS, ``/recommend`` with rankings cached and scored per request, and ``/feedback`` events/s into the
feedback store (counted in the store afterwards), with ``wrk`` as the load generator (as in
``benchmarks/bench_serving.py``, whose wrk runner and parser are reused).

The growth exponent of each stage is the least-squares slope of log(time) and of log(RSS) against
log(scale): 1 means linear. Results go to a JSON file, a Markdown table and a log-log plot.

The sequential candidates' epochs are capped (``--max-epochs``, ``--serve-epochs``), and each one's
seconds per epoch is reported, so the full cost (epochs × seconds per epoch) is readable. At
``--with-100`` only the workload, ingest and validation run at 100× (see docs/benchmarks/scale.md).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STAGES_AT_100 = ("workload", "ingest", "validate")
"""What ``--with-100`` runs at 100×: the embedding (~974k texts) and the training do not fit the time."""
BYTES_PER_SCALE = 400 * 2**20
"""Disk one unit of scale needs, rounded up from 1×: workload 4 MiB, snapshot, two copies of the item
vectors (cache and snapshot, 15 MiB each), the run folder, the bundle and its copy in MLflow."""
CACHED_USERS = 200
"""``/recommend`` with rankings cached: requests cycle over this many known users, each ranked once
in the warm-up."""

CACHED_LUA = """
local n = 0
local threads = 0
setup = function(thread)
  thread:set("offset", threads * 37)
  threads = threads + 1
end
request = function()
  n = n + 1
  local body = string.format('{"user_id": "u-%d", "k": 10}', ((n + offset) % %USERS%) + 1)
  return wrk.format("POST", "/recommend", {["Content-Type"] = "application/json"}, body)
end
"""
"""Users ``u-1`` .. ``u-USERS`` in turn (copy 0 of the first real users, present at every scale)."""

SCORED_LUA = """
math.randomseed(os.time())
request = function()
  local user = math.random(1, %BASE%)
  local copy = math.random(0, %SCALE% - 1)
  local id = copy == 0 and string.format("u-%d", user) or string.format("u-%d-%d", user, copy)
  local body = string.format('{"user_id": "%s", "k": 10, "exclude_seen": false}', id)
  return wrk.format("POST", "/recommend", {["Content-Type"] = "application/json"}, body)
end
"""
"""Any user of the workload; ``exclude_seen: false`` is a request the ranking cache cannot answer."""


class ScaleError(Exception):
    """A benchmark that cannot run as asked; the message names the problem."""


# --------------------------------------------------------------------------- growth exponents


def growth_exponent(scales, values) -> float | None:
    """The least-squares slope of log(value) against log(scale) (1: linear), over the positive pairs;
    None with fewer than two distinct scales."""
    pairs = [(math.log(s), math.log(v)) for s, v in zip(scales, values, strict=True) if s and v and s > 0 and v > 0]
    if len({x for x, _ in pairs}) < 2:
        return None
    mean_x = sum(x for x, _ in pairs) / len(pairs)
    mean_y = sum(y for _, y in pairs) / len(pairs)
    sxx = sum((x - mean_x) ** 2 for x, _ in pairs)
    return sum((x - mean_x) * (y - mean_y) for x, y in pairs) / sxx


# --------------------------------------------------------------------------- the child: one stage


def _vm_hwm_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise ScaleError("no VmHWM in /proc/self/status (Linux only)")  # pragma: no cover


def _child_call(stage: str, args: dict):
    """Run one stage in this process; returns its handle (JSON-able) and extra figures."""
    if stage == "workload":
        from benchmarks import workload

        argv = ["--scale", str(args["scale"]), "--out", args["out"]]
        if args.get("movielens"):
            argv += ["--movielens", args["movielens"]]
        record = workload.main(argv)
        return None, {"cpu_seconds": round(record["cpu_seconds"], 2), "synthetic": record["synthetic"]}
    if stage == "engine":
        return _child_engine()
    from components import pipeline
    from components.settings import load_settings

    settings = load_settings()
    if stage == "ingest":
        return pipeline.stage_ingest(settings), {}
    if stage == "validate":
        return pipeline.stage_validate(settings, args["snapshot_id"]), {}
    if stage == "plan_shards":
        return pipeline.stage_plan_shards(settings, args["snapshot_id"], settings.airflow.embed_shards), {}
    if stage == "embed_shard":
        return pipeline.stage_embed_shard(settings, args["snapshot_id"], args["shard"], args["shards"]), {}
    if stage == "embed":
        return pipeline.stage_embed(settings, args["snapshot_id"]), {}
    if stage == "plan_training":
        return pipeline.stage_plan_training(settings, args["snapshot_id"], args["embeddings_dir"], args["run_key"]), {}
    if stage == "train":
        handle = pipeline.stage_train_candidate(
            settings, args["snapshot_id"], args["embeddings_dir"], args["run_key"], args["name"]
        )
        fit = json.loads((Path(handle["run_dir"]) / args["name"] / "fit.json").read_text())
        extra = {key: fit[key] for key in ("status", "reason", "seconds", "serve_seconds") if key in fit}
        if "fit" in fit:
            extra.update({key: fit["fit"].get(key) for key in ("epochs_run", "best_epoch", "seconds_per_epoch")})
        return handle, extra
    if stage == "evaluate":
        run_dir = str(settings.runs_dir / args["run_key"])
        return pipeline.stage_evaluate(settings, run_dir, args["handles"]), {}
    if stage == "register":
        return pipeline.stage_register(settings, args["report_path"]), {}
    if stage == "promote":
        decision = pipeline.stage_promote(settings, args["registration"])
        return decision, {"decision": decision["decision"], "reason": decision.get("reason")}
    raise ScaleError(f"unknown stage {stage!r}")


def _child_engine():
    """The champion's engine, loaded and warmed up as ``serving/champion.py`` does."""
    from mlflow.tracking import MlflowClient

    from components.registry import CHAMPION, configure, get_alias_version, load_version_engine
    from components.settings import load_settings

    settings = load_settings()
    configure(settings)
    client = MlflowClient(settings.tracking_uri)
    current = get_alias_version(client, settings.registry.model_name, CHAMPION)
    if current is None:
        raise ScaleError("no champion is registered; the promote stage did not promote")
    started = time.perf_counter()
    engine = load_version_engine(client.get_model_version(settings.registry.model_name, current.version))
    loaded = time.perf_counter()
    engine.cache_users = settings.serving.cache_users
    engine.warm_up()
    done = time.perf_counter()
    extra = {
        "version": str(current.version),
        "model": engine.model.name,
        "load_seconds": round(loaded - started, 3),
        "warm_up_seconds": round(done - loaded, 3),
    }
    return None, extra


def child_main(stage: str, args_file: Path, result_file: Path) -> None:
    """``--child STAGE``: run one stage, write {handle, seconds, peak_rss_mb, ...} to ``result_file``."""
    from benchmarks.common import quiet_environment

    quiet_environment(MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false")
    args = json.loads(args_file.read_text())
    started, started_cpu = time.perf_counter(), time.process_time()
    handle, extra = _child_call(stage, args)
    seconds, cpu = time.perf_counter() - started, time.process_time() - started_cpu
    result = {"handle": handle, "seconds": round(seconds, 3), "cpu_seconds": round(cpu, 3), **extra}
    result["peak_rss_mb"] = round(_vm_hwm_mb(), 1)
    tmp = result_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, default=str))
    os.replace(tmp, result_file)


# --------------------------------------------------------------------------- the parent: one stage per process


def run_stage(stage: str, args: dict, env: dict, logs: Path, label: str | None = None) -> dict:
    """Run ``stage`` in a fresh ``python -m benchmarks.bench_scale --child`` process; returns its result
    with ``process_seconds`` (the whole process, imports included) and ``tree_peak_rss_mb`` (the
    largest of the process and its waited-for children, e.g. promote's smoke test)."""
    label = label or stage
    logs.mkdir(parents=True, exist_ok=True)
    args_file, result_file, log_file = logs / f"{label}.args.json", logs / f"{label}.result.json", logs / f"{label}.log"
    args_file.write_text(json.dumps(args))
    result_file.unlink(missing_ok=True)
    command = [sys.executable, "-m", "benchmarks.bench_scale", "--child", stage]
    command += ["--child-args", str(args_file), "--child-result", str(result_file)]
    started = time.perf_counter()
    with open(log_file, "wb") as log:
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=_project_root())
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0 or not result_file.exists():
        tail = log_file.read_text(errors="replace")[-3000:]
        raise ScaleError(f"stage {label} failed (exit {proc.returncode}); its log {log_file} ends:\n{tail}")
    result = json.loads(result_file.read_text())
    result["process_seconds"] = round(elapsed, 3)
    result["tree_peak_rss_mb"] = round(usage.ru_maxrss / 1024, 1)
    print(
        f"  {label:28s} {result['seconds']:9.2f} s (process {elapsed:7.2f} s)  "
        f"peak RSS {result['peak_rss_mb']:8.1f} MiB",
        flush=True,
    )
    return result


def _project_root() -> Path:
    return Path(__file__).resolve().parent.parent


def stage_env(root: Path, workload: Path, candidates: list[str], model_configs: dict, extra: dict | None = None):
    """The environment of every stage process at one scale: a fresh data root reading the workload."""
    from components.settings import TELEMETRY_OFF

    env = {k: v for k, v in os.environ.items() if not k.startswith("LMRECSYS_")}
    env.update(TELEMETRY_OFF)
    env.update(
        {
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
            "LMRECSYS_DATA_ROOT": str(root),
            "LMRECSYS_INGEST__SOURCE_FORMAT": "generic",
            "LMRECSYS_INGEST__ITEMS_PATH": str(workload / "items.csv"),
            "LMRECSYS_INGEST__INTERACTIONS_PATH": str(workload / "events.csv"),
            "LMRECSYS_TRAIN__CANDIDATES": json.dumps(candidates),
            "LMRECSYS_TRAIN__MODEL_CONFIGS": json.dumps(model_configs),
            "PYTHONPATH": str(_project_root()),
        }
    )
    env.update(extra or {})
    return env


def ensure_workload(scale: int, work: Path, env: dict, movielens: str | None) -> tuple[Path, dict]:
    """The cached workload of ``scale`` (generated, and its generation measured, when missing)."""
    folder, timing = work / "workloads" / f"x{scale}", work / "workloads" / f"x{scale}.timing.json"
    if (folder / "workload.json").exists() and timing.exists():
        measured = json.loads(timing.read_text())
        return folder, {**measured, "cached": True}
    if folder.exists():
        shutil.rmtree(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    result = run_stage("workload", {"scale": scale, "out": str(folder), "movielens": movielens}, env, work / "logs")
    result.pop("handle", None)
    timing.write_text(json.dumps(result))
    return folder, {**result, "cached": False}


def check_disk(work: Path, scales: list[int], with_100: bool) -> None:
    """Raise ``ScaleError`` before anything is written when the scales cannot fit the free disk."""
    probe = work.absolute()
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    need = sum(s * BYTES_PER_SCALE for s in scales) + (100 * 30 * 2**20 if with_100 else 0)
    if need > free:
        raise ScaleError(
            f"scales {scales}{' and 100× (ingest, validate)' if with_100 else ''} need about {need / 2**30:.1f} GiB "
            f"on disk but only {free / 2**30:.1f} GiB is free at {probe}"
        )


def pipeline_stages(scale: int, env: dict, logs: Path, only: tuple[str, ...] | None = None) -> dict:
    """Every stage of the DAG in order, each in its own process; returns {stage label: result}."""
    results: dict[str, dict] = {}

    def step(stage, args, label=None):
        if only is not None and (label or stage).split(":")[0] not in only:
            return None
        results[label or stage] = run_stage(stage, args, env, logs, label)
        return results[label or stage]["handle"]

    snapshot_id = step("ingest", {})
    if only is not None and "validate" not in only and "embed" not in only:
        return results
    step("validate", {"snapshot_id": snapshot_id})
    if only is not None and "embed" not in only:
        return results
    shards = step("plan_shards", {"snapshot_id": snapshot_id})
    for shard in shards:
        step("embed_shard", {"snapshot_id": snapshot_id, "shard": shard, "shards": len(shards)}, f"embed_shard:{shard}")
    embeddings_dir = step("embed", {"snapshot_id": snapshot_id})
    run_key = f"bench-x{scale}"
    base = {"snapshot_id": snapshot_id, "embeddings_dir": embeddings_dir, "run_key": run_key}
    candidates = step("plan_training", base)
    handles = [step("train", {**base, "name": name}, f"train:{name}") for name in candidates]
    report_path = step("evaluate", {"run_key": run_key, "handles": handles})
    registration = step("register", {"report_path": report_path})
    step("promote", {"registration": registration})
    results["_run_dir"] = {"path": str(Path(env["LMRECSYS_DATA_ROOT"]) / "runs" / run_key)}
    return results


# --------------------------------------------------------------------------- serving


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def serving_figures(scale: int, env: dict, logs: Path, run_dir: Path, seconds: int, connections: int) -> dict:
    """Engine load, bundle size, ``bentoml serve`` start-up and RSS, /recommend and /feedback under wrk."""
    from benchmarks.bench_serving import feedback_script, run_wrk, tree_rss_mb
    from components.feedback.store import FeedbackStore
    from devtools.stack import BentoServer

    out: dict = {"bundle_bytes": folder_bytes(run_dir / "bundle")}
    engine = run_stage("engine", {}, env, logs)
    out["engine"] = {key: engine[key] for key in engine if key != "handle"}
    root = Path(env["LMRECSYS_DATA_ROOT"])
    serve_env = {**env, "LMRECSYS_SERVING__POLL_INTERVAL_S": "3600"}
    started = time.perf_counter()
    bento = BentoServer(serve_env, logs / "bento", _project_root())
    try:
        bento.wait_ready(timeout=600)
        out["start_seconds"] = round(time.perf_counter() - started, 2)
        out["rss_mb_largest"], out["rss_mb_tree"] = (round(x, 1) for x in tree_rss_mb(bento))
        probe = bento.post("/recommend", {"user_id": "u-1", "k": 1}).json()
        item = probe["items"][0]["item_id"]
        base_users = 610 if scale >= 1 else 1
        cached = CACHED_LUA.replace("%USERS%", str(min(CACHED_USERS, base_users)))
        run_wrk(f"{bento.base}/recommend", cached, connections, max(2, seconds // 2))  # warm-up: each user ranked
        out["recommend_cached"] = run_wrk(f"{bento.base}/recommend", cached, connections, seconds)
        scored = SCORED_LUA.replace("%BASE%", str(base_users)).replace("%SCALE%", str(scale))
        run_wrk(f"{bento.base}/recommend", scored, connections, max(2, seconds // 2))
        out["recommend_scored"] = run_wrk(f"{bento.base}/recommend", scored, connections, seconds)
        store = FeedbackStore(f"sqlite:///{root / 'feedback.db'}")
        before = store.count()
        run = f"x{scale}-{os.getpid()}-{int(time.time())}"
        script = feedback_script(json.dumps(str(item)), run, base_users, user_format='"u-%d"')
        feedback = run_wrk(f"{bento.base}/feedback", script, connections, seconds)
        time.sleep(1)
        feedback["stored"] = store.count() - before
        feedback["lost"] = max(0, feedback["ok"] - feedback["stored"])
        feedback["stored_per_s"] = round(feedback["stored"] / seconds, 1)
        out["feedback"] = feedback
        out["rss_mb_largest_after"], out["rss_mb_tree_after"] = (round(x, 1) for x in tree_rss_mb(bento))
    finally:
        bento.stop()
    for name in ("recommend_cached", "recommend_scored", "feedback"):
        print(
            f"  {name:28s} {out[name]['rps']:9.1f} req/s  "
            f"p50 {out[name]['p50_ms']:.2f} ms  p99 {out[name]['p99_ms']:.2f} ms"
        )
    print(f"  bentoml serve start          {out['start_seconds']:9.2f} s  tree RSS {out['rss_mb_tree']:.0f} MiB")
    return out


# --------------------------------------------------------------------------- results


ROWS = (
    ("workload", "workload generation"),
    ("ingest", "ingest"),
    ("validate", "validate"),
    ("plan_shards", "embed: shard plan"),
    ("embed_shards", "embed: shards (sum)"),
    ("embed", "embed: assemble"),
    ("plan_training", "train: plan"),
)
TAIL_ROWS = (("evaluate", "evaluate"), ("register", "register"), ("promote", "promote (gate + smoke test)"))


def stage_table(results: dict) -> dict[str, dict[int, dict]]:
    """{row key: {scale: {"seconds", "peak_rss_mb", ...}}} from the per-scale results."""
    table: dict[str, dict[int, dict]] = {}
    for scale_text, result in results["scales"].items():
        scale, stages = int(scale_text), result["stages"]
        rows: dict[str, dict] = {}
        if result.get("workload"):
            rows["workload"] = result["workload"]
        for key, value in stages.items():
            if key.startswith("_"):
                continue
            if key.startswith("embed_shard:"):
                shard = rows.setdefault("embed_shards", {"seconds": 0.0, "peak_rss_mb": 0.0, "shards": 0})
                shard["seconds"] = round(shard["seconds"] + value["seconds"], 3)
                shard["peak_rss_mb"] = max(shard["peak_rss_mb"], value["peak_rss_mb"])
                shard["shards"] += 1
            else:
                rows[key] = value
        serving = result.get("serving") or {}
        if serving.get("engine"):
            rows["serving_engine"] = {
                "seconds": serving["engine"]["load_seconds"] + serving["engine"]["warm_up_seconds"],
                "peak_rss_mb": serving["engine"]["peak_rss_mb"],
            }
        if serving.get("start_seconds"):
            rows["serving_start"] = {"seconds": serving["start_seconds"], "peak_rss_mb": serving["rss_mb_tree"]}
        for key, value in rows.items():
            table.setdefault(key, {})[scale] = value
    return table


def exponents(table: dict) -> dict[str, dict]:
    out = {}
    for key, by_scale in table.items():
        scales = sorted(by_scale)
        trained = [s for s in scales if by_scale[s].get("status", "ok") == "ok"]
        out[key] = {
            "time": _round(growth_exponent(trained, [by_scale[s]["seconds"] for s in trained])),
            "rss": _round(growth_exponent(trained, [by_scale[s]["peak_rss_mb"] for s in trained])),
        }
    return out


def _round(value, digits: int = 2):
    return None if value is None else round(value, digits)


def row_order(table: dict) -> list[tuple[str, str]]:
    trains = sorted({k for k in table if k.startswith("train:")}, key=lambda k: list(table).index(k))
    rows = [r for r in ROWS if r[0] in table] + [(k, f"train: {k.split(':', 1)[1]}") for k in trains]
    rows += [r for r in TAIL_ROWS if r[0] in table]
    rows += [
        (k, label)
        for k, label in (
            ("serving_engine", "serving: engine load + warm-up"),
            ("serving_start", "serving: `bentoml serve` to ready (tree RSS)"),
        )
        if k in table
    ]
    return rows


def _fmt_s(value) -> str:
    if value is None:
        return "—"
    return f"{value:,.2f}" if value < 10 else f"{value:,.1f}" if value < 1000 else f"{value:,.0f}"


def _fmt_x(value) -> str:
    return "—" if value is None else f"{value:.2f}"


def markdown_table(results: dict) -> list[str]:
    table = stage_table(results)
    fits = exponents(table)
    scales = sorted(int(s) for s in results["scales"])
    head = " | ".join(f"{s}× s" for s in scales) + " | time exp. | " + " | ".join(f"{s}× MiB" for s in scales)
    lines = [f"| stage | {head} | RSS exp. |", "|---|" + "---:|" * (2 * len(scales) + 2)]
    for key, label in row_order(table):
        cells = []
        for s in scales:
            entry = table[key].get(s)
            if entry is None:
                cells.append("—")
            elif entry.get("status", "ok") != "ok":
                cells.append(f"{entry['status']} ({_fmt_s(entry['seconds'])})")
            else:
                cells.append(_fmt_s(entry["seconds"]))
        cells.append(_fmt_x(fits[key]["time"]))
        cells += [("—" if table[key].get(s) is None else f"{table[key][s]['peak_rss_mb']:,.0f}") for s in scales]
        cells.append(_fmt_x(fits[key]["rss"]))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def serving_table(results: dict) -> list[str]:
    scales = sorted(int(s) for s in results["scales"] if results["scales"][s].get("serving"))
    if not scales:
        return []
    served = {s: results["scales"][str(s)]["serving"] for s in scales}
    lines = ["| serving | " + " | ".join(f"{s}×" for s in scales) + " | exp. |", "|---|" + "---:|" * (len(scales) + 1)]

    def row(label, cells, values=None):
        fit = _fmt_x(_round(growth_exponent(scales, values))) if values else "—"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {fit} |")

    def numeric(label, values, fmt):
        row(label, [fmt(v) for v in values], values)

    row("model served", [served[s]["engine"]["model"] for s in scales])
    numeric("bundle on disk (MiB)", [served[s]["bundle_bytes"] / 2**20 for s in scales], lambda v: f"{v:,.1f}")
    load = [served[s]["engine"]["load_seconds"] + served[s]["engine"]["warm_up_seconds"] for s in scales]
    numeric("engine load + warm-up (s)", load, _fmt_s)
    numeric("engine peak RSS (MiB)", [served[s]["engine"]["peak_rss_mb"] for s in scales], lambda v: f"{v:,.0f}")
    numeric("`bentoml serve` to ready (s)", [served[s]["start_seconds"] for s in scales], _fmt_s)
    after = [served[s]["rss_mb_tree_after"] for s in scales]
    numeric("service tree RSS after the load (MiB)", after, lambda v: f"{v:,.0f}")
    for key, label in (
        ("recommend_cached", "/recommend, ranking cached"),
        ("recommend_scored", "/recommend, scored per request"),
        ("feedback", "/feedback"),
    ):
        numeric(f"{label}: req/s", [served[s][key]["rps"] for s in scales], lambda v: f"{v:,.0f}")
        cells = [f"{served[s][key]['p50_ms']:.1f} / {served[s][key]['p99_ms']:.1f}" for s in scales]
        row(f"{label}: p50 / p99 ms (exp. of p99)", cells, [served[s][key]["p99_ms"] for s in scales])
    cells = [f"{served[s]['feedback']['stored_per_s']:,.0f} ({served[s]['feedback']['lost']})" for s in scales]
    row("/feedback: events stored per s (lost)", cells, [served[s]["feedback"]["stored_per_s"] for s in scales])
    return lines


def epoch_table(results: dict) -> list[str]:
    lines = []
    for scale_text, result in sorted(results["scales"].items(), key=lambda kv: int(kv[0])):
        for key, value in result["stages"].items():
            if key.startswith("train:"):
                name = key.split(":", 1)[1]
                if value.get("status") != "ok":
                    reason = str(value.get("reason", value.get("status")))
                    lines.append(f"| {scale_text}× | {name} | {reason} | | |")
                elif value.get("seconds_per_epoch") is not None:
                    lines.append(
                        f"| {scale_text}× | {name} | {value['epochs_run']} evaluation-fit epochs, then serving epochs; "
                        f"{value['seconds']:,.1f} s in all (serving fit {value.get('serve_seconds', 0):,.1f} s) "
                        f"| {value['seconds_per_epoch']:,.2f} | {value['peak_rss_mb']:,.0f} |"
                    )
    if not lines:
        return []
    return ["| scale | candidate | what ran | s per epoch | peak RSS MiB |", "|---|---|---|---:|---:|", *lines]


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = stage_table(results)
    fits = exponents(table)
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 8))
    colours, markers = plt.cm.tab20.colors, "osD^v<>ph*"
    for index, (key, label) in enumerate(row_order(table)):
        scales = sorted(s for s in table[key] if table[key][s].get("status", "ok") == "ok")
        if not scales:
            continue
        exp_t, exp_r = fits[key]["time"], fits[key]["rss"]
        style = {"marker": markers[index % len(markers)], "color": colours[index % 20], "linewidth": 1.2}
        left.plot(scales, [table[key][s]["seconds"] for s in scales], label=f"{label} ({_fmt_x(exp_t)})", **style)
        right.plot(scales, [table[key][s]["peak_rss_mb"] for s in scales], label=f"{label} ({_fmt_x(exp_r)})", **style)
    for axis, title, unit in ((left, "wall time per stage", "seconds"), (right, "peak RSS per stage", "MiB")):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("scale (× ml-latest-small)")
        axis.set_ylabel(unit)
        axis.set_title(f"{title} (growth exponent)")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def portable_json(results: dict, work: Path) -> str:
    """The results as JSON, with the work folder written as ``<work>`` (no machine paths in the project)."""
    text = json.dumps(results, indent=2) + "\n"
    return text.replace(str(work.absolute()), "<work>").replace(str(work), "<work>")


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_scale",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 10], help="whole scales to run every stage at")
    parser.add_argument("--with-100", action="store_true", help="also 100×, for " + ", ".join(STAGES_AT_100) + " only")
    parser.add_argument(
        "--work",
        type=Path,
        default=Path(tempfile.gettempdir()) / "lmrecsys-bench-scale",
        help="cached workloads, data roots and logs",
    )
    parser.add_argument("--movielens", default=None, help="the ml-latest-small folder the workload multiplies")
    parser.add_argument("--candidates", nargs="+", default=["popularity", "lm_content", "ease", "lm_sasrec"])
    parser.add_argument("--max-epochs", type=int, default=2, help="cap of the sequential candidates' evaluation fit")
    parser.add_argument("--serve-epochs", type=int, default=1, help="the sequential candidates' serving epochs")
    parser.add_argument("--no-serving", action="store_true", help="skip the serving measurements")
    parser.add_argument("--serve-seconds", type=int, default=6, help="each wrk run's duration")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--out-json", type=Path, default=None)
    parser.add_argument("--out-md", type=Path, default=None, help="the Markdown table (a fragment, printed too)")
    parser.add_argument("--plot", type=Path, default=None)
    parser.add_argument("--render", type=Path, default=None, help="only write the table and plot of a result JSON")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-args", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-result", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is None:
        if any(s < 1 for s in args.scales):
            parser.error(f"--scales must be whole numbers of at least 1, got {args.scales}")
        if args.max_epochs < 1 or args.serve_epochs < 0:
            parser.error("--max-epochs must be at least 1 and --serve-epochs at least 0")
        if args.with_100 and 100 in args.scales:
            parser.error("--with-100 adds 100× for the stages that fit; do not also list 100 in --scales")
    return args


def run(args: argparse.Namespace) -> dict:
    """Every scale, every stage; returns the results (also written where asked)."""
    from benchmarks.common import machine_facts

    if not args.no_serving and shutil.which("wrk") is None:
        raise ScaleError("wrk is not installed (apt-get install -y wrk), or pass --no-serving")
    check_disk(args.work, args.scales, args.with_100)
    model_configs = {
        name: {"max_epochs": args.max_epochs, "serve_epochs": args.serve_epochs, "progress": False}
        for name in ("sasrec", "lm_sasrec")
    }
    results: dict = {
        "machine": machine_facts(),
        "command": "python -m benchmarks.bench_scale " + " ".join(sys.argv[1:]),
        "candidates": args.candidates,
        "model_configs": model_configs,
        "scales": {},
    }
    plan = [(s, None) for s in sorted(args.scales)] + ([(100, STAGES_AT_100)] if args.with_100 else [])
    for scale, only in plan:
        print(f"scale {scale}×" + (f" ({', '.join(only)} only)" if only else ""), flush=True)
        root = args.work / f"root-x{scale}"
        if root.exists():
            shutil.rmtree(root)  # a fresh data root per scale: no champion, no embedding cache
        logs = args.work / "logs" / f"x{scale}"
        env = stage_env(root, args.work / "workloads" / f"x{scale}", args.candidates, model_configs)
        started = time.perf_counter()
        workload_dir, workload_timing = ensure_workload(scale, args.work, env, args.movielens)
        shape = json.loads((workload_dir / "workload.json").read_text())["synthetic"]
        entry = {"shape": {k: shape[k] for k in ("users", "items", "interactions")}, "workload": workload_timing}
        entry["stages"] = pipeline_stages(scale, env, logs, tuple(s for s in only if s != "workload") if only else None)
        run_dir = entry["stages"].pop("_run_dir", None)
        if run_dir and not args.no_serving:
            entry["serving"] = serving_figures(
                scale, env, logs, Path(run_dir["path"]), args.serve_seconds, args.connections
            )
        entry["total_seconds"] = round(time.perf_counter() - started, 1)
        results["scales"][str(scale)] = entry
        if args.out_json:  # after every scale, so a later failure keeps what was measured
            write_atomic(args.out_json, portable_json(results, args.work))
    results["exponents"] = exponents(stage_table(results))
    if args.out_json:
        write_atomic(args.out_json, portable_json(results, args.work))
    report(results, args)
    return results


def report(results: dict, args: argparse.Namespace) -> None:
    """Print the tables; write them (``--out-md``) and the plot (``--plot``) where asked."""
    lines = markdown_table(results) + [""] + serving_table(results) + [""] + epoch_table(results)
    print("\n".join(lines))
    if args.out_md:
        write_atomic(args.out_md, "\n".join(lines) + "\n")
    if args.plot:
        plot(results, args.plot)


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    if args.child is not None:
        child_main(args.child, args.child_args, args.child_result)
        return None
    try:
        if args.render is not None:
            results = json.loads(args.render.read_text())
            report(results, args)
            return results
        return run(args)
    except ScaleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc


if __name__ == "__main__":
    main()
