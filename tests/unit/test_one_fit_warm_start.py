"""Sequential candidates are fitted once per run and warm-started from the champion's
evaluation-side fit; incompatible champions, diverging candidates and unknown names are handled."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from components.data.dataset import leave_last_out
from components.data.snapshots import list_snapshots
from components.errors import LmRecsysError
from components.evaluation.metrics import per_user_metrics, target_ranks
from components.models import load_model
from components.pipeline import run_pipeline
from components.settings import load_settings
from tests.unit._data_fixtures import write_movielens

MOVIES = "movieId,title,genres\n" + "".join(
    f"{i},Film {i} (2001),{['Comedy', 'Drama', 'Action'][i % 3]}\n" for i in range(1, 31)
)
RATINGS = "userId,movieId,rating,timestamp\n" + "".join(
    f"{u},{(u * 7 + k * 3) % 30 + 1},4.0,{1_000_000_000 + u * 100 + k}\n" for u in range(1, 21) for k in range(8)
)
SMALL = {"hidden": 16, "max_len": 8, "max_epochs": 6, "patience": 2, "progress": False, "text_dim": 8}


def _settings(tmp_path: Path, candidates=("lm_sasrec",), configs=None, **train):
    source = write_movielens(tmp_path / "ml", movies=MOVIES, ratings=RATINGS, tags=None)
    configs = configs or {"lm_sasrec": SMALL}
    return load_settings(
        data_root=tmp_path / "root",
        ingest={"source": str(source)},
        train={"candidates": list(candidates), "bootstrap_samples": 20, "model_configs": configs, **train},
    )


@pytest.fixture(scope="module")
def warm_pair(tmp_path_factory):
    """Two runs on the same snapshot: a cold first champion, then a warm-started challenger. The
    served model trains 30 epochs past the evaluation fit, so served and evaluation weights differ
    clearly."""
    settings = _settings(tmp_path_factory.mktemp("warm"), configs={"lm_sasrec": {**SMALL, "serve_epochs": 30}})
    return settings, run_pipeline(settings, "first"), run_pipeline(settings, "second")


def _vectors(settings, run_key: str) -> np.ndarray:
    from components.embed import ItemEmbeddings

    meta = json.loads((settings.runs_dir / run_key / "train.json").read_text())
    return ItemEmbeddings.load(Path(meta["embeddings_dir"])).vectors


def _fit(settings, run_key: str) -> dict:
    return json.loads((settings.runs_dir / run_key / "lm_sasrec" / "fit.json").read_text())


def _report(settings, run_key: str) -> dict:
    return json.loads((settings.runs_dir / run_key / "report.json").read_text())


def test_defaults_put_the_language_model_recommender_in_the_running():
    settings = load_settings()
    assert "lm_sasrec" in settings.train.candidates and settings.train.warm_start


def test_a_sequential_candidate_is_fitted_once_and_served_from_that_fit(warm_pair):
    settings, _, _ = warm_pair
    folder = settings.runs_dir / "first" / "lm_sasrec"
    assert sorted(p.name for p in folder.iterdir()) == ["eval", "fit.json", "full"]
    fit = _fit(settings, "first")
    assert fit["sides"] == {"val": "eval", "test": "eval", "serve": "full"}
    assert fit["warm_start"] == {"used": False, "reason": "there is no champion"}
    evaluated, served = load_model(folder / "eval"), load_model(folder / "full")
    # the served model continued from the evaluation fit: same best epoch, weights moved on
    assert served.best_epoch == evaluated.best_epoch == fit["fit"]["best_epoch"]
    assert not np.allclose(served.state()["net.item_embedding.weight"], evaluated.state()["net.item_embedding.weight"])
    # the gate's validation score is what the saved evaluation fit gives
    data = _data(settings)
    split = leave_last_out(data)
    ranks = target_ranks(evaluated.score(split.val_histories), split.val_histories, split.val_targets)
    assert float(per_user_metrics(ranks)["ndcg@10"].mean()) == pytest.approx(
        _report(settings, "first")["candidates"]["lm_sasrec"]["val"]["ndcg_at_10"]
    )


def test_serve_epochs_zero_serves_the_evaluation_fit(warm_pair):
    from components.models import build_model

    settings = warm_pair[0]
    data = _data(settings)
    model = build_model("lm_sasrec", {**SMALL, "max_epochs": 2, "serve_epochs": 0}).fit(
        data, _vectors(settings, "first")
    )
    before = model.state()["net.item_embedding.weight"].copy()
    np.testing.assert_array_equal(model.continue_training(data).state()["net.item_embedding.weight"], before)


def _data(settings):
    from components.data.dataset import InteractionData

    snapshot = list_snapshots(settings.snapshots_dir)[-1]
    return InteractionData.from_frames(snapshot.items(), snapshot.interactions())


def test_warm_start_comes_from_the_champions_evaluation_fit_not_the_served_weights(warm_pair):
    """The leak check: on the same snapshot the warm start's score before any training must be
    exactly the champion's validation score, which its evaluation-side fit gives. The served
    weights (trained further on every interaction, held-out items included) score higher."""
    settings, first, second = warm_pair
    assert first["decision"] == "promoted" and second["model_kind"] == "lm_sasrec"
    fit = _fit(settings, "second")
    assert fit["warm_start"]["used"] is True and fit["warm_start"]["champion_version"] == first["version"]
    report = _report(settings, "second")
    champion_val = report["champion"]["val"]["ndcg_at_10"]
    assert fit["fit"]["warm_start_score"] == pytest.approx(champion_val, abs=1e-9)
    # the discriminating half: the served weights would have started visibly higher
    split = leave_last_out(_data(settings))
    served = load_model(settings.runs_dir / "first" / "lm_sasrec" / "full")
    ranks = target_ranks(served.score(split.val_histories), split.val_histories, split.val_targets)
    assert float(per_user_metrics(ranks)["ndcg@10"].mean()) > champion_val + 0.05
    # the gate sees a challenger at least as good as the champion it started from
    assert report["candidates"]["lm_sasrec"]["val"]["ndcg_at_10"] >= champion_val
    tags = MlflowClient(settings.tracking_uri).get_model_version("recommender", second["version"]).tags
    assert tags["warm_start.used"] == "True" and tags["warm_start.detail"] == f"from version {first['version']}"


def test_warm_start_keeps_known_item_rows_and_starts_new_items_from_text(warm_pair):
    from components.data.dataset import InteractionData
    from components.models import build_model

    settings, _, _ = warm_pair
    source = load_model(settings.runs_dir / "first" / "lm_sasrec" / "eval")
    data = _data(settings)
    vectors = _vectors(settings, "first")
    item_map = np.arange(data.n_items)
    item_map[3] = -1  # pretend item 3 is new to the earlier model
    model = build_model("lm_sasrec", {**SMALL, "lr": 1e-12, "max_epochs": 1})
    model.warm_start(source, item_map)
    model.fit(InteractionData(data.catalogue, data.user_ids, data.histories), vectors)
    rows, before = model.state()["net.item_embedding.weight"], source.state()["net.item_embedding.weight"]
    known = np.flatnonzero(item_map >= 0) + 1
    np.testing.assert_allclose(rows[known], before[known], atol=1e-6)
    assert np.abs(rows[4]).max() < 1e-6  # item 3 (token 4): text projection alone
    np.testing.assert_allclose(
        model.state()["net.text_projection.weight"], source.state()["net.text_projection.weight"], atol=1e-6
    )
    np.testing.assert_array_equal(model.whitening[1], source.whitening[1])


@pytest.mark.parametrize(
    ("champion_configs", "words"),
    [
        ({"lm_sasrec": {**SMALL, "hidden": 8}}, "hidden differs: 8 in the earlier model, 16 now"),
        ({"ease": {}}, "the champion is ease, not lm_sasrec"),
    ],
)
def test_an_incompatible_champion_means_a_cold_start_with_a_log_line(tmp_path, caplog, champion_configs, words):
    first = _settings(tmp_path, candidates=list(champion_configs), configs=champion_configs)
    assert run_pipeline(first, "first")["decision"] == "promoted"
    second = load_settings(
        **{
            **first.model_dump(),
            "train": {**first.train.model_dump(), "candidates": ["lm_sasrec"], "model_configs": {"lm_sasrec": SMALL}},
        }
    )
    with caplog.at_level(logging.INFO, logger="components"):
        decision = run_pipeline(second, "second")
    assert decision["model_kind"] == "lm_sasrec"
    fit = _fit(second, "second")
    assert fit["warm_start"]["used"] is False and words in fit["warm_start"]["reason"]
    assert any("lm_sasrec: cold start" in r.getMessage() and words in r.getMessage() for r in caplog.records)


def test_an_unreadable_champion_artifact_means_a_cold_start(tmp_path, caplog):
    settings = _settings(tmp_path)
    run_pipeline(settings, "first")
    # corrupt the champion's evaluation-side fit where MLflow keeps it
    for state in Path(settings.artifact_root).rglob("model_val/state.npz"):
        state.write_bytes(b"not a numpy archive")
    with caplog.at_level(logging.INFO, logger="components"):
        decision = run_pipeline(settings, "second")
    assert decision["model_kind"] == "lm_sasrec"
    fit = _fit(settings, "second")
    reason = fit["warm_start"]["reason"]  # the content-hash check catches the change before anything loads
    assert fit["warm_start"]["used"] is False and "changed: model_val/state.npz" in reason
    assert any("cold start" in r.getMessage() for r in caplog.records)
    # a champion that cannot be read can be neither compared nor served: the gate replaces it
    report = _report(settings, "second")
    assert "champion" not in report and report["champion_unreadable"]["version"] == "1"
    assert decision["decision"] == "promoted" and "version 1 could not be read" in decision["reason"]


def test_a_diverging_candidate_is_dropped_and_the_others_go_on(tmp_path):
    settings = _settings(tmp_path, candidates=["popularity", "lm_sasrec"], configs={"lm_sasrec": {**SMALL, "lr": 1e30}})
    decision = run_pipeline(settings, "nan")
    assert decision["decision"] == "promoted" and decision["model_kind"] == "popularity"
    report = _report(settings, "nan")
    assert list(report["candidates"]) == ["popularity"]
    assert "training loss became" in report["dropped"]["lm_sasrec"]
    assert not (settings.runs_dir / "nan" / "lm_sasrec" / "eval").exists()
    run = MlflowClient(settings.tracking_uri).get_run(decision["run_id"])
    assert "training loss became" in run.data.tags["candidate.lm_sasrec.dropped"]


def test_when_every_candidate_diverges_the_champion_stays(tmp_path):
    settings = _settings(tmp_path, candidates=["popularity"], configs={})
    champion = run_pipeline(settings, "good")["version"]
    bad = load_settings(
        **{
            **settings.model_dump(),
            "train": {
                **settings.train.model_dump(),
                "candidates": ["lm_sasrec"],
                "model_configs": {"lm_sasrec": {**SMALL, "lr": 1e30}},
            },
        }
    )
    with pytest.raises(LmRecsysError, match="every candidate was dropped"):
        run_pipeline(bad, "bad")
    client = MlflowClient(settings.tracking_uri)
    assert str(client.get_model_version_by_alias("recommender", "champion").version) == champion
    assert [str(v.version) for v in client.search_model_versions("name='recommender'")] == [champion]


def test_an_unknown_candidate_fails_before_anything_is_written(tmp_path):
    settings = _settings(tmp_path, candidates=["popularity", "transformer_xl"], configs={})
    with pytest.raises(
        LmRecsysError, match="unknown candidate\\(s\\) 'transformer_xl' in train.candidates; known: .*lm_sasrec"
    ):
        run_pipeline(settings, "unknown")
    assert not settings.snapshots_dir.exists() and not settings.runs_dir.exists()


def test_missing_text_vectors_stop_training_with_a_clear_error(warm_pair):
    from components.models import build_model

    data = _data(warm_pair[0])
    vectors = _vectors(warm_pair[0], "first").copy()
    vectors[2] = np.nan
    with pytest.raises(ValueError, match="1 item text vector\\(s\\) are not finite"):
        build_model("lm_sasrec", SMALL).fit(data, vectors)
