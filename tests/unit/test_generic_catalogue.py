"""The platform is not MovieLens-only: a tiny book catalogue with string ids goes through every stage.

Two of its items are bare ids with no text at all: they pass validation where the settings admit
untitled items, get no text vector (logged with a count), and the models represent them by their ID.
"""

from __future__ import annotations

import json
import logging

import mlflow
import numpy as np
import pytest

from components.data.snapshots import Snapshot
from components.embed import ItemEmbeddings, encoder_from_settings
from components.errors import ValidationFailed
from components.pipeline import run_pipeline, stage_ingest, stage_validate
from components.settings import load_settings

BOOKS = """item_id,title,description,categories,tags,author
bk-001,The Hobbit,A hobbit is swept into a quest to reclaim a dragon's treasure,fantasy|adventure,dragons|quest,J. R. R. Tolkien
bk-002,Dune,Politics and prophecy on a desert planet that holds the spice,science fiction|adventure,desert|space,Frank Herbert
bk-003,Pride and Prejudice,Manners and marriage in Regency England,romance|classic,wit|society,Jane Austen
bk-004,Foundation,A mathematician foresees the fall of a galactic empire,science fiction,space|empire,Isaac Asimov
bk-005,Emma,A young matchmaker meddles in her neighbours' love lives,romance|classic,matchmaking|society,Jane Austen
bk-006,The Name of the Wind,A gifted young man grows up to become a notorious wizard,fantasy,magic|music,Patrick Rothfuss
bk-007,,,,,
bk-008,,,,,
"""
EVENTS = """user_id,item_id,timestamp,event,value
ana,bk-001,2024-01-01T10:00:00Z,view,
ana,bk-006,2024-01-02T10:00:00Z,like,1
ana,bk-002,2024-01-03T10:00:00Z,purchase,
ben,bk-003,2024-01-01T09:00:00Z,view,
ben,bk-005,2024-01-04T09:00:00Z,like,1
ben,bk-001,2024-01-05T09:00:00Z,view,
cy,bk-004,2024-02-01T08:00:00Z,purchase,
cy,bk-002,2024-02-02T08:00:00Z,view,
cy,bk-006,2024-02-03T08:00:00Z,like,1
ana,bk-007,2024-01-04T10:00:00Z,view,
ben,bk-008,2024-01-06T09:00:00Z,view,
cy,bk-007,2024-02-04T08:00:00Z,view,
"""
NO_TEXT = {"bk-007", "bk-008"}


def book_settings(tmp_path, **validation):
    items, events = tmp_path / "books.csv", tmp_path / "events.csv"
    items.write_text(BOOKS)
    events.write_text(EVENTS)
    return load_settings(
        data_root=tmp_path / "root",
        ingest={
            "source_format": "generic",
            "items_path": str(items),
            "interactions_path": str(events),
            "text_columns": ["author"],
        },
        validation=validation,
        train={"bootstrap_samples": 50},
    )


def test_book_catalogue_trains_registers_and_answers(tmp_path, caplog):
    settings = book_settings(tmp_path, max_untitled_share=0.25)
    with caplog.at_level(logging.WARNING, logger="components.embed.stage"):
        decision = run_pipeline(settings)
    assert decision["decision"] == "promoted"
    assert "2 of 8 items have no text" in caplog.text and "represented by their ID alone" in caplog.text

    # the bare ids were never encoded: their rows are zero, every other row is a unit text vector
    folder = settings.embeddings_dir / decision["snapshot_id"] / encoder_from_settings(settings).encoder_id
    embeddings = ItemEmbeddings.load(folder)
    assert json.loads((folder / "manifest.json").read_text())["no_text"] == 2
    bare = np.isin(embeddings.item_ids, sorted(NO_TEXT))
    assert bare.sum() == 2 and not embeddings.vectors[bare].any()
    np.testing.assert_allclose(np.linalg.norm(embeddings.vectors[~bare], axis=1), 1.0, atol=1e-3)

    engine = mlflow.pyfunc.load_model(decision["model_uri"]).unwrap_python_model().engine
    assert engine.id_type == "str"
    recs, source = engine.recommend_history(engine.history_for("ana"), 3)
    assert source != "popularity"
    assert {r.item_id for r in recs}.isdisjoint({"bk-001", "bk-006", "bk-002", "bk-007"})
    assert all(np.isfinite(r.score) for r in recs)
    similar = engine.similar_items("bk-003", 1)  # the other Austen novel is the obvious neighbour
    assert similar[0].item_id == "bk-005"


def test_untitled_items_beyond_the_allowed_share_are_rejected(tmp_path):
    settings = book_settings(tmp_path)  # default: at most 5% of items untitled; here 2 of 8
    snapshot_id = stage_ingest(settings)
    with pytest.raises(ValidationFailed, match="expect_column_value_lengths_to_be_between on column 'title'"):
        stage_validate(settings, snapshot_id)
    assert not Snapshot(settings.snapshots_dir / snapshot_id).path.exists()


def test_generic_catalogue_needs_both_files(tmp_path):
    from components.errors import SourceError

    settings = load_settings(data_root=tmp_path / "root", ingest={"source_format": "generic"})
    with pytest.raises(SourceError, match="ITEMS_PATH"):
        run_pipeline(settings)
