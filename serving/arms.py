"""Online experiments in the service: which arm answers, both arms loaded, the impression log, the decision.

``Arms.refresh`` (every ``experiments.refresh_s``) reads the running experiment of the served model from
the feedback store, loads its challenger version beside the champion (checked against its bundle hash,
like every load) and, with ``experiments.auto_decide``, evaluates the decision
(``components.experiments``): a promotion moves the champion alias, and the service reloads at once.

Per request, ``Arms.answer`` picks the arm: in split mode the stable hash of (experiment, user or session
id) picks one model; in interleave mode both rank and their lists are merged by team draft. A
challenger that fails is counted (an error impression, for the guardrail) and the champion answers
instead. Every answer gets a ``recommendation_id``, its ``arm`` and ``model_version``; while an experiment
runs (or always, with ``serving.impressions: always``) the impression is written durably before the
answer goes out: on SQLite in one transaction per event-loop iteration on the loop itself, else (and
whenever the loop cannot) through a group-committing writer thread like feedback's. If that write fails the answer
still goes out, with ``recommendation_id`` None, so no id is handed out that the store does not hold.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid

from starlette.responses import Response

from serving.champion import Loaded
from serving.feedback_writer import ImpressionWriter

log = logging.getLogger("lmrecsys.serving")
CHAMPION, CHALLENGER, INTERLEAVED = "champion", "challenger", "interleaved"


def _failed(result) -> bool:
    return isinstance(result, Response) and result.status_code >= 500


class Arms:
    """The running experiment as this replica serves it, and the impression writer."""

    def __init__(self, settings, store, champion, health=None, on_load=None, forgotten=None) -> None:
        self.settings, self.store, self.champion = settings, store, champion
        self.on_load = on_load
        self.forgotten = forgotten
        """``forgotten(unit)``: is this user forgotten? Their impressions are logged without their id."""
        """Runs for a newly loaded challenger engine (the service drops forgotten users from its memory)."""
        self.writer = ImpressionWriter(store, health=health)
        self.running: dict | None = None
        self.challenger: Loaded | None = None
        self.last_decision: dict | None = None
        self._lock = threading.Lock()

    def close(self) -> None:
        self.writer.close()

    # ------------------------------------------------------------------ the experiment, both arms, the decision
    def refresh(self) -> None:
        """Re-read the running experiment, load its challenger if needed, and decide."""
        with self._lock:
            name = self.settings.registry.model_name
            found = self.store.experiments(state="running", model_name=name)
            experiment = found[0] if found else None
            if experiment is None:
                self.running, self.challenger = None, None
                return
            version = experiment["challenger_version"]
            if self.challenger is None or self.challenger.version != version:
                self.challenger = self._load(version)
            self.running = experiment
            if self.settings.experiments.auto_decide:
                self._decide(experiment)

    def _load(self, version: str) -> Loaded | None:
        from mlflow.tracking import MlflowClient

        from components.registry import load_version_engine

        name = self.settings.registry.model_name
        try:
            engine = load_version_engine(MlflowClient(self.settings.tracking_uri).get_model_version(name, version))
            engine.cache_users = self.settings.serving.cache_users
            engine.warm_up()
            if self.on_load is not None:
                self.on_load(engine)
        except Exception as exc:  # the champion keeps answering every request; the next refresh tries again
            log.error("experiment challenger version %s failed to load: %s: %s", version, type(exc).__name__, exc)
            return None
        log.info("experiment: challenger version %s loaded beside the champion", version)
        return Loaded(engine, version, time.time())

    def _decide(self, experiment: dict) -> None:
        from components.experiments import evaluate

        try:
            result = evaluate(self.settings, experiment)
        except Exception:
            log.exception("evaluating experiment %s failed; the next refresh tries again", experiment["experiment_id"])
            return
        self.last_decision = result["decision"]
        if result["decision"].get("changed"):
            self.running, self.challenger = None, None
            self.champion.reload()  # a promotion moved the alias: serve the new champion now

    def active(self, champion: Loaded | None):
        """(experiment, challenger) when both arms can answer, else None."""
        experiment, challenger = self.running, self.challenger
        if experiment is None or challenger is None or champion is None:
            return None
        if champion.version != experiment["champion_version"]:
            return None  # the champion moved under the experiment: its decision will say so
        return experiment, challenger

    # ------------------------------------------------------------------ answering
    def plan(self, unit, rec_id: str):
        """(experiment or None, [(arm, Loaded)] in the order to compute)."""
        from components.experiments import assign

        champion = self.champion.loaded
        active = self.active(champion)
        if active is None:
            return None, [(CHAMPION, champion)]
        experiment, challenger = active
        if experiment["mode"] == "interleave":
            return experiment, [(CHAMPION, champion), (CHALLENGER, challenger)]
        arm = assign(experiment["experiment_id"], str(unit) if unit is not None else rec_id, experiment["share"])
        return experiment, [(arm, champion if arm == CHAMPION else challenger)]

    async def answer(self, endpoint: str, unit, compute):
        """``await compute(loaded)`` for the arm(s) of this request, with the id, the arm and the impression."""
        rec_id = f"rec-{uuid.uuid4().hex}"
        experiment, steps = self.plan(unit, rec_id)
        outcomes = [await self._timed(endpoint, arm, loaded, compute) for arm, loaded in steps]
        if self._fall_back(steps, outcomes):
            outcomes.append(await self._timed(endpoint, CHAMPION, self.champion.loaded, compute))
        response, rows = self._finish(endpoint, unit, rec_id, experiment, outcomes)
        if rows:
            try:
                await self.writer.write(rows)
            except Exception as exc:
                return self._unlogged(response, exc)
        return response

    def answer_sync(self, endpoint: str, unit, compute):
        """``answer`` for an endpoint that runs in the thread pool (search)."""
        rec_id = f"rec-{uuid.uuid4().hex}"
        experiment, steps = self.plan(unit, rec_id)
        outcomes = [self._timed_sync(endpoint, arm, loaded, compute) for arm, loaded in steps]
        if self._fall_back(steps, outcomes):
            outcomes.append(self._timed_sync(endpoint, CHAMPION, self.champion.loaded, compute))
        response, rows = self._finish(endpoint, unit, rec_id, experiment, outcomes)
        if rows:
            try:
                self.writer.submit(rows).result(timeout=60)
            except Exception as exc:
                return self._unlogged(response, exc)
        return response

    @staticmethod
    async def _timed(endpoint, arm, loaded, compute) -> tuple:
        start = time.perf_counter()
        try:
            result = await compute(loaded)
        except Exception:
            log.exception("%s failed on the %s arm", endpoint, arm)
            result = None
        return arm, loaded, result, (time.perf_counter() - start) * 1000

    @staticmethod
    def _timed_sync(endpoint, arm, loaded, compute) -> tuple:
        start = time.perf_counter()
        try:
            result = compute(loaded)
        except Exception:
            log.exception("%s failed on the %s arm", endpoint, arm)
            result = None
        return arm, loaded, result, (time.perf_counter() - start) * 1000

    def _fall_back(self, steps, outcomes) -> bool:
        """A split request whose challenger failed is answered by the champion (the error is counted)."""
        return len(steps) == 1 and steps[0][0] == CHALLENGER and self._bad(outcomes[0][2])

    @staticmethod
    def _bad(result) -> bool:
        return result is None or _failed(result)

    @staticmethod
    def _unlogged(response, exc):
        log.error("an impression could not be written (%s); answering without a recommendation_id", exc)
        if isinstance(response, dict):
            return {**response, "recommendation_id": None, "impression_logged": False}
        return response

    def _logs(self, experiment) -> bool:
        mode = self.settings.serving.impressions
        return mode == "always" or (mode == "experiment" and experiment is not None)

    def _finish(self, endpoint, unit, rec_id, experiment, outcomes):
        """(the response, the impression rows to write) for the computed ``outcomes``."""
        from serving.schemas import error

        exp_id = experiment["experiment_id"] if experiment is not None else None
        anonymous = unit is None or (self.forgotten is not None and self.forgotten(unit))
        base = {"experiment_id": exp_id, "user_id": None if anonymous else str(unit), "endpoint": endpoint}
        rows = [
            {
                **base,
                "recommendation_id": f"{rec_id}-{arm}-error",
                "arm": arm,
                "model_version": loaded.version,
                "item_ids": [],
                "latency_ms": ms,
                "error": True,
            }
            for arm, loaded, result, ms in outcomes
            if self._bad(result) and experiment is not None
        ]
        good = [o for o in outcomes if not self._bad(o[2])]
        if not good:
            result = outcomes[-1][2]
            return (result if result is not None else error(500, f"{endpoint} failed; see the service log")), rows
        if isinstance(good[0][2], Response):  # a 4xx the endpoint built itself: no impression
            return good[0][2], rows
        if len(good) == 2 and experiment is not None and experiment["mode"] == "interleave":
            result, arm = self._interleaved(rec_id, good), INTERLEAVED
            teams = result.pop("_teams")
        else:
            arm, _, result, _ = good[0]
            teams = None
        latency = sum(ms for a, _, _, ms in good if arm == INTERLEAVED or a == arm)
        response = {**result, "recommendation_id": rec_id, "arm": arm, "experiment_id": exp_id}
        if self._logs(experiment):
            items = [i["item_id"] for i in result["items"]]
            rows.append(
                {
                    **base,
                    "recommendation_id": rec_id,
                    "arm": arm,
                    "model_version": str(result["model_version"]),
                    "item_ids": items,
                    "teams": teams,
                    "latency_ms": latency,
                    "error": False,
                }
            )
        return response, rows

    @staticmethod
    def _interleaved(rec_id: str, good: list) -> dict:
        from components.experiments import team_draft

        (_, champion, first, _), (_, challenger, second, _) = good
        by_id = {str(i["item_id"]): i for i in second["items"]} | {str(i["item_id"]): i for i in first["items"]}
        k = max(len(first["items"]), len(second["items"]))
        ids, teams = team_draft(
            [str(i["item_id"]) for i in first["items"]], [str(i["item_id"]) for i in second["items"]], k, rec_id
        )
        merged = {**first, "items": [by_id[i] for i in ids], "_teams": teams}
        merged["model_version"] = f"{champion.version}+{challenger.version}"
        merged["model"] = f"{first.get('model')}+{second.get('model')}"
        return merged
