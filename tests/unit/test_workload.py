"""The workload generator (benchmarks/workload.py) on small hand-written MovieLens-format folders."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from benchmarks import workload
from components.ingest import ingest
from components.settings import load_settings
from components.validation.runner import validate_snapshot

WORDS = (
    "Red River Night City Ghost Garden Summer Storm Silent Harbor Iron Moon Lost Letter Broken Crown Winter "
    "Road Golden Hour Paper Tiger Hidden Valley Last Train Dark Water Glass House Wild Heart Secret Island"
).split()
GENRES = ["Comedy", "Drama", "Action|Thriller", "Animation|Children", "Comedy|Romance", "Horror", "(no genres listed)"]
N_USERS, N_ITEMS = 40, 200
TAGS = ["twist ending", "funny", "atmospheric", "slow", "classic", "dark", "family", "visually stunning"]


def _movies(n_items: int) -> str:
    rows = []
    for i in range(1, n_items + 1):
        words = [WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(1 + i % 3)]
        title = " ".join(words) + (", The" if i % 11 == 0 else "")
        title = f"{title} ({1980 + i % 35})" if i % 9 else title
        rows.append(f'{i},"{title}",{GENRES[i % len(GENRES)]}')
    return "movieId,title,genres\n" + "\n".join(rows) + "\n"


def _ratings(n_users: int, n_items: int) -> str:
    """Each user rates a skewed (low ids are popular), duplicate-free set, lengths varying widely."""
    rows, state = [], 12345
    for u in range(1, n_users + 1):
        length, seen, start = 3 + (u * 13) % 25 + (40 if u % 10 == 0 else 0), set(), 1_000_000_000 + u * 86_400
        while len(seen) < min(length, n_items):
            state = (state * 1103515245 + 12345) % 2**31
            item = 1 + int(n_items * (state / 2**31) ** 4)
            if item not in seen:
                seen.add(item)
                rating = 0.5 + (u + item) % 10 / 2
                rows.append(f"{u},{item},{rating},{start + len(seen) * 60 + (item % 3) * 3600}")
    return "userId,movieId,rating,timestamp\n" + "\n".join(rows) + "\n"


def _tags(n_items: int) -> str:
    rows = [
        f"{1 + i % 5},{i},{TAGS[(i + k) % len(TAGS)]},1100000000" for i in range(1, n_items + 1, 3) for k in range(2)
    ]
    return "userId,movieId,tag,timestamp\n" + "\n".join(rows) + "\n"


@pytest.fixture
def source(movielens_folder):
    """40 users, 200 movies, about 700 ratings with a long tail; genres, tags and titles written by formula."""
    return movielens_folder(
        "ml-shape", movies=_movies(N_ITEMS), ratings=_ratings(N_USERS, N_ITEMS), tags=_tags(N_ITEMS)
    )


def run(source, out, *extra) -> dict:
    return workload.main(["--movielens", str(source), "--out", str(out), *map(str, extra)])


def frames(out):
    items = pd.read_csv(out / "items.csv", dtype=str, keep_default_na=False)
    events = pd.read_csv(out / "events.csv", dtype={"user_id": str, "item_id": str})
    return items, events


def base_of(ids: pd.Series) -> pd.Series:
    return ids.str.extract(r"^[mu]-(\d+)")[0].astype(int)


@pytest.fixture
def scale3(source, tmp_path):
    out = tmp_path / "x3"
    record = run(source, out, "--scale", 3)
    return out, record


def test_same_seed_same_bytes_other_seed_other_bytes(source, tmp_path, scale3):
    out, _ = scale3
    again = tmp_path / "again"
    run(source, again, "--scale", 3)
    for name in ("items.csv", "events.csv", "workload.json"):
        assert (out / name).read_bytes() == (again / name).read_bytes(), name
    other = tmp_path / "other"
    run(source, other, "--scale", 3, "--seed", 7)
    assert (other / "events.csv").read_bytes() != (out / "events.csv").read_bytes()
    assert (other / "items.csv").read_bytes() != (out / "items.csv").read_bytes()


def test_scale_multiplies_users_items_and_interactions(source, scale3):
    out, record = scale3
    items, events = frames(out)
    ratings = pd.read_csv(source / "ratings.csv")
    assert len(items) == 3 * N_ITEMS and items["item_id"].is_unique
    assert events["user_id"].nunique() == 3 * ratings["userId"].nunique()
    assert len(events) == 3 * len(ratings)
    assert events["item_id"].isin(items["item_id"]).all()
    assert not events.duplicated(["user_id", "item_id"]).any()
    assert record["synthetic"]["interactions"] == len(events)
    assert json.loads((out / "workload.json").read_text())["synthetic"]["items"] == 3 * N_ITEMS


def test_lengths_time_order_and_popularity_keep_their_shape(source, scale3):
    out, record = scale3
    _, events = frames(out)
    ratings = pd.read_csv(source / "ratings.csv")
    real = ratings.groupby("userId").size()
    synthetic = events.groupby("user_id").size()
    assert (synthetic.to_numpy() == real.loc[base_of(synthetic.index)].to_numpy()).all()  # every copy, its length
    assert record["synthetic"]["length_quantiles"] == record["original"]["length_quantiles"]
    # Time order: each copy is its real user's sequence moved as a whole, so the gaps are the real ones.
    for user, rows in events.groupby("user_id"):
        gaps = np.diff(rows["timestamp"].to_numpy())
        assert (gaps >= 0).all()
        real_gaps = np.diff(np.sort(ratings.loc[ratings["userId"] == base_of(pd.Series([user]))[0], "timestamp"]))
        assert (gaps == real_gaps).all(), user
    popularity = events["item_id"].value_counts().reindex(frames(out)[0]["item_id"], fill_value=0)
    real_popularity = ratings["movieId"].value_counts().reindex(range(1, N_ITEMS + 1), fill_value=0)
    assert workload.gini(popularity) == pytest.approx(workload.gini(real_popularity), abs=0.03)
    assert workload.top_share(popularity) == pytest.approx(workload.top_share(real_popularity), abs=0.03)
    assert record["synthetic"]["popularity_gini"] == pytest.approx(workload.gini(popularity), abs=1e-4)


def test_users_of_one_taste_cluster_share_variants(source, scale3):
    out, _ = scale3
    _, events = frames(out)
    base = workload.Base(source, workload.DEFAULT_CLUSTERS, 0)
    cluster = dict(zip(base.user_ids.tolist(), base.cluster.tolist(), strict=True))
    copy = events["user_id"].str.extract(r"^u-\d+(?:-(\d+))?$")[0].fillna("0").astype(int)
    keys = pd.DataFrame(
        {"cluster": base_of(events["user_id"]).map(cluster), "copy": copy, "movie": base_of(events["item_id"])}
    )
    variants = events.groupby([keys["cluster"], keys["copy"], keys["movie"]])["item_id"].nunique()
    assert (variants == 1).all()  # one cluster, one copy: one variant of each movie
    assert events["item_id"].str.count("-").gt(1).any() and events["item_id"].str.count("-").eq(1).any()


def _words(text: str) -> set[str]:
    return set(re.sub(r"[,():]", " ", text).split())


def test_item_texts_are_real_fragments_that_keep_the_base_genres(source, scale3):
    out, _ = scale3
    items, _ = frames(out)
    movies = pd.read_csv(source / "movies.csv", dtype=str, keep_default_na=False)
    movies["movieId"] = movies["movieId"].astype(int)
    movies["genres"] = movies["genres"].replace("(no genres listed)", "")
    tags = pd.read_csv(source / "tags.csv")
    real_tags = set(tags["tag"].str.strip().str.lower())
    items = items.assign(movie=base_of(items["item_id"]), variant=items["item_id"].str.count("-"))
    real = movies.set_index("movieId")
    originals = items[items["variant"] == 1].set_index("movie")
    assert (originals["title"] == real.loc[originals.index, "title"]).all()  # variant 0 is the real item
    changed = 0
    for _, item in items[items["variant"] > 1].iterrows():
        base = real.loc[item["movie"]]
        assert item["categories"] == base["genres"]  # the base's genres, untouched
        year = re.search(r"\((\d{4})\)$", base["title"])
        assert item["title"].endswith(f"({year.group(1)})") if year else not re.search(r"\(\d{4}\)$", item["title"])
        first = base["genres"].split("|")[0]
        kin = movies[movies["genres"].str.split("|").str[0] == first]  # items sharing its (first) genre
        kin_words = set().union(*(_words(t) for t in kin["title"]))
        assert _words(re.sub(r"\(\d{4}\)$", "", item["title"])) <= kin_words, item["title"]
        mine = [t for t in item["tags"].split("|") if t]
        assert set(mine) <= real_tags
        assert len(mine) == len([t for t in originals.loc[item["movie"], "tags"].split("|") if t])
        changed += item["title"] != base["title"]
    assert changed > 0.5 * len(items[items["variant"] > 1])


def test_scale_one_is_the_source_itself(source, tmp_path):
    out = tmp_path / "x1"
    run(source, out, "--scale", 1)
    items, events = frames(out)
    ratings = pd.read_csv(source / "ratings.csv")
    assert len(items) == N_ITEMS and not items["item_id"].str.count("-").gt(1).any()
    mine = events.assign(u=base_of(events["user_id"]), m=base_of(events["item_id"]))[["u", "m", "timestamp", "value"]]
    real = ratings.rename(columns={"userId": "u", "movieId": "m", "rating": "value"})[["u", "m", "timestamp", "value"]]
    key = ["u", "m"]
    assert mine.sort_values(key).reset_index(drop=True).equals(real.sort_values(key).reset_index(drop=True))


def test_output_ingests_through_the_generic_source_and_passes_validation(source, tmp_path, scale3):
    out, _ = scale3
    settings = load_settings(
        data_root=tmp_path / "root",
        ingest={
            "source_format": "generic",
            "items_path": str(out / "items.csv"),
            "interactions_path": str(out / "events.csv"),
        },
    )
    snapshot = validate_snapshot(settings, ingest(settings))
    assert snapshot.accepted
    assert len(snapshot.items()) == 3 * N_ITEMS and len(snapshot.interactions()) == len(frames(out)[1])
    assert snapshot.interactions()["user_id"].nunique() == 3 * N_USERS


@pytest.mark.parametrize(
    ("scale", "message"),
    [("0", "at least 1"), ("-3", "at least 1"), ("2.5", "whole number"), ("ten", "whole number"), ("nan", "whole")],
)
def test_bad_scales_are_refused(source, tmp_path, capsys, scale, message):
    with pytest.raises(SystemExit) as exited:
        run(source, tmp_path / "out", "--scale", scale)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("option", "value"), [("--seed", "-1"), ("--swap-rate", "1.5"), ("--clusters", "0")])
def test_bad_options_are_refused(source, tmp_path, capsys, option, value):
    with pytest.raises(SystemExit):
        run(source, tmp_path / "out", "--scale", 2, option, value)
    assert option in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def _nothing_written(tmp_path, out):
    assert not out.exists()
    assert not list(tmp_path.glob(".tmp-*"))


def test_a_scale_that_cannot_fit_on_disk_is_refused_before_writing(source, tmp_path, capsys):
    out = tmp_path / "huge"
    with pytest.raises(SystemExit):
        run(source, out, "--scale", 10**12)
    err = capsys.readouterr().err
    assert "does not fit on disk" in err and "free at" in err
    _nothing_written(tmp_path, out)


def test_a_scale_that_cannot_fit_in_memory_is_refused_before_writing(source, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(workload, "free_disk_bytes", lambda path: 2**60)
    monkeypatch.setattr(workload, "available_memory_bytes", lambda: 64 * 2**20)
    out = tmp_path / "big"
    with pytest.raises(SystemExit):
        run(source, out, "--scale", 5)
    assert "does not fit in memory" in capsys.readouterr().err
    _nothing_written(tmp_path, out)


def test_a_non_empty_output_needs_force(source, tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit):
        run(source, out, "--scale", 1)
    assert "not empty" in capsys.readouterr().err and (out / "keep.txt").read_text() == "mine"
    run(source, out, "--scale", 1, "--force")
    assert sorted(p.name for p in out.iterdir()) == ["events.csv", "items.csv", "workload.json"]


def test_a_failed_run_leaves_nothing_behind(source, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("disk went away")

    monkeypatch.setattr(workload, "event_rows", broken)
    out = tmp_path / "half"
    with pytest.raises(OSError, match="disk went away"):
        run(source, out, "--scale", 2)
    _nothing_written(tmp_path, out)


def test_the_summary_compares_with_the_original(source, tmp_path, capsys):
    run(source, tmp_path / "x2", "--scale", 2)
    printed = capsys.readouterr().out
    for label in ("users", "items", "interactions", "popularity Gini", "top-1% item share", "sequence length p50"):
        assert label in printed
    assert re.search(r"took \d+\.\d s \(\d+\.\d s CPU\), peak RSS \d+ MiB", printed)
