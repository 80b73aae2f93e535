"""components.data.sources: MovieLens and generic-contract readers, and their errors on bad input."""

from __future__ import annotations

import hashlib
import zipfile

import pandas as pd
import pytest

from components.data.columns import INTERACTION_COLUMNS, ITEM_COLUMNS
from components.data.sources import (
    parse_timestamps,
    read_generic,
    read_movielens,
    read_table,
    resolve_movielens_dir,
    sha256_file,
)
from components.errors import ChecksumError, SourceError

# --------------------------------------------------------------------------- MovieLens, good input


def test_movielens_items_years_genres_and_top_tags(tiny_movielens):
    data = read_movielens(tiny_movielens)

    assert list(data.items.columns) == ITEM_COLUMNS
    items = data.items.set_index("item_id")
    assert items.index.tolist() == [1, 2, 3, 4]
    assert items.loc[1, "title"] == "Toy Story (1995)"
    assert items.loc[4, "title"] == "Amélie (Fabuleux destin d'Amélie Poulain, Le) (2001)"
    assert items.loc[1, "year"] == 1995
    assert items.loc[4, "year"] == 2001
    assert pd.isna(items.loc[3, "year"])  # "Babylon 5" has no year
    assert str(items["year"].dtype) == "Int64"
    assert items.loc[1, "categories"] == "Adventure|Animation|Children"
    assert items.loc[3, "categories"] == ""  # "(no genres listed)" becomes empty
    # Tags are lower-cased and stripped; most frequent first, ties by name.
    assert items.loc[1, "tags"] == "pixar|fun|toy"
    assert items.loc[4, "tags"] == "paris|quirky"
    assert items.loc[2, "tags"] == ""
    assert (items["description"] == "").all()


def test_movielens_interactions_and_provenance(tiny_movielens):
    data = read_movielens(tiny_movielens)

    assert data.id_type == "int"
    inter = data.interactions
    assert list(inter.columns) == INTERACTION_COLUMNS
    assert len(inter) == 7
    first = inter.iloc[0]
    assert first["event_id"] == "ml-1-1-964982703"
    assert (first["user_id"], first["item_id"], first["timestamp"], first["value"]) == (1, 1, 964982703, 4.0)
    assert set(inter["event"]) == {"rating"} and set(inter["source"]) == {"movielens"}
    assert inter["event_id"].is_unique
    assert inter["value"].sum() == pytest.approx(25.5)
    assert set(data.source_hashes) == {"movies.csv", "ratings.csv", "tags.csv"}
    for name, digest in data.source_hashes.items():
        assert digest == hashlib.sha256((tiny_movielens / name).read_bytes()).hexdigest()
        assert data.source_uris[name] == (tiny_movielens / name).resolve().as_uri()


def test_movielens_top_tags_limit_max_users_and_missing_tags_file(movielens_folder):
    data = read_movielens(movielens_folder("ml"), top_tags=1, max_users=2)
    assert data.items.set_index("item_id").loc[1, "tags"] == "pixar"
    assert sorted(data.interactions["user_id"].unique()) == [1, 2]
    assert len(data.interactions) == 5
    # A reduced config keeps only the items its users touched: user 1 rated movies 1, 2 and 4.
    assert read_movielens(movielens_folder("ml-one"), max_users=1).items["item_id"].tolist() == [1, 2, 4]

    no_tags = read_movielens(movielens_folder("ml-no-tags", tags=None))
    assert (no_tags.items["tags"] == "").all()
    assert set(no_tags.source_hashes) == {"movies.csv", "ratings.csv"}


def test_resolve_movielens_dir_accepts_folder_and_local_zip(tiny_movielens, tmp_path):
    folder, provenance = resolve_movielens_dir(str(tiny_movielens), tmp_path / "cache", "unused")
    assert folder == tiny_movielens and provenance == {}

    zip_path = tmp_path / "ml.zip"
    with zipfile.ZipFile(zip_path, "w") as archive:
        for name in ("movies.csv", "ratings.csv", "tags.csv"):
            archive.write(tiny_movielens / name, f"ml-latest-small/{name}")
    digest = sha256_file(zip_path)
    folder, provenance = resolve_movielens_dir(str(zip_path), tmp_path / "cache", digest)
    assert folder.name == "ml-latest-small"
    assert provenance == {"archive": zip_path.resolve().as_uri(), "archive_sha256": digest}
    assert len(read_movielens(folder).interactions) == 7


# --------------------------------------------------------------------------- generic contract

BOOKS_CSV = """item_id,title,categories,description,author
0001,The Hobbit,fantasy|classic,A hobbit goes on an adventure,J. R. R. Tolkien
0002,Dune,science fiction,Spice and sand,Frank Herbert
b-003,Emma,romance|classic,,Jane Austen
"""
BOOK_EVENTS_CSV = """user_id,item_id,timestamp,event,value
u-alice,0001,2021-03-04T05:06:07Z,rating,4.5
u-alice,0002,2021-03-05T10:00:00+00:00,click,
0042,b-003,2021-03-06 12:00:00,purchase,1
"""


def _write_books(tmp_path):
    items, inter = tmp_path / "books.csv", tmp_path / "book_events.csv"
    items.write_text(BOOKS_CSV)
    inter.write_text(BOOK_EVENTS_CSV)
    return items, inter


def test_generic_books_with_string_ids_and_iso_timestamps(tmp_path):
    items_path, inter_path = _write_books(tmp_path)
    data = read_generic(items_path, inter_path, text_columns=["author"])

    assert data.id_type == "str"
    items = data.items.set_index("item_id")
    assert items.index.tolist() == ["0001", "0002", "b-003"]  # leading zeros survive: ids stay strings
    assert items.loc["0001", "categories"] == "fantasy|classic"
    assert items.loc["0001", "description"] == "A hobbit goes on an adventure. author: J. R. R. Tolkien"
    assert items.loc["b-003", "description"] == "author: Jane Austen"
    assert items["year"].isna().all()

    inter = data.interactions
    assert list(inter.columns) == INTERACTION_COLUMNS
    assert inter["user_id"].tolist() == ["u-alice", "u-alice", "0042"]
    assert inter["item_id"].tolist() == ["0001", "0002", "b-003"]
    assert inter["event"].tolist() == ["rating", "click", "purchase"]
    assert inter["value"].iloc[0] == 4.5 and pd.isna(inter["value"].iloc[1]) and inter["value"].iloc[2] == 1.0
    assert str(inter["timestamp"].dtype) == "int64"
    assert inter["timestamp"].is_monotonic_increasing
    assert inter["event_id"].is_unique and inter["event_id"].str.startswith("g-u-alice-0001-").iloc[0]
    assert set(inter["source"]) == {"generic"}
    assert set(data.source_hashes) == {"books.csv", "book_events.csv"}


def test_generic_iso_timestamps_become_epoch_seconds(tmp_path):
    items_path, inter_path = _write_books(tmp_path)
    data = read_generic(items_path, inter_path)
    assert data.interactions["timestamp"].tolist() == [1614834367, 1614938400, 1615032000]


def test_parse_timestamps_epoch_seconds_pass_through():
    assert parse_timestamps(pd.Series(["964982703", "1100000000"]), "x").tolist() == [964982703, 1100000000]


def test_generic_recipes_from_parquet_with_defaults(tmp_path):
    items_path, inter_path = tmp_path / "recipes.parquet", tmp_path / "cooked.parquet"
    pd.DataFrame(
        {"item_id": ["r1", "r2"], "title": ["Pad thai", "Ratatouille"], "categories": ["thai|noodles", "french|vegan"]}
    ).to_parquet(items_path)
    pd.DataFrame(
        {"user_id": ["cook1", "cook2"], "item_id": ["r2", "r1"], "timestamp": [1600000000, 1600000500]}
    ).to_parquet(inter_path)
    data = read_generic(items_path, inter_path)
    assert data.items.set_index("item_id").loc["r2", "categories"] == "french|vegan"
    assert (data.items["description"] == "").all()
    assert data.interactions["event"].tolist() == ["interaction", "interaction"]
    assert data.interactions["value"].isna().all()
    assert data.interactions["timestamp"].tolist() == [1600000000, 1600000500]
    assert data.interactions["event_id"].tolist() == [
        "g-cook1-r2-1600000000-interaction",
        "g-cook2-r1-1600000500-interaction",
    ]


def test_generic_missing_text_column_is_an_error(tmp_path):
    items_path, inter_path = _write_books(tmp_path)
    with pytest.raises(SourceError, match=r"lacks the configured text column\(s\) \['isbn'\]"):
        read_generic(items_path, inter_path, text_columns=["isbn"])


# --------------------------------------------------------------------------- bad input


def test_missing_source_dir(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        resolve_movielens_dir(str(tmp_path / "nowhere"), tmp_path / "cache", "x")


def test_empty_source_dir(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match=r"empty.*movies\.csv"):
        resolve_movielens_dir(str(tmp_path / "empty"), tmp_path / "cache", "x")


def test_source_file_that_is_not_a_zip(tmp_path):
    path = tmp_path / "ratings.txt"
    path.write_text("hello")
    with pytest.raises(SourceError, match="not a .zip archive"):
        resolve_movielens_dir(str(path), tmp_path / "cache", "x")


def test_corrupt_zip(tmp_path):
    path = tmp_path / "ml.zip"
    path.write_bytes(b"PK definitely not a zip")
    with pytest.raises(SourceError, match="not a valid zip file"):
        resolve_movielens_dir(str(path), tmp_path / "cache", sha256_file(path))


def test_zip_with_wrong_hash(tmp_path, tiny_movielens):
    path = tmp_path / "ml.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.write(tiny_movielens / "ratings.csv", "ratings.csv")
    with pytest.raises(ChecksumError, match="expected 0000"):
        resolve_movielens_dir(str(path), tmp_path / "cache", "0" * 64)


def test_missing_file_in_folder(movielens_folder):
    folder = movielens_folder("ml")
    (folder / "movies.csv").unlink()
    with pytest.raises(SourceError, match="movies.csv is missing"):
        read_movielens(folder)


def test_empty_file_zero_bytes(movielens_folder):
    folder = movielens_folder("ml", ratings="")
    with pytest.raises(SourceError, match=r"ratings\.csv is empty \(0 bytes\)"):
        read_movielens(folder)


def test_whitespace_only_file(movielens_folder):
    folder = movielens_folder("ml", ratings="\n\n")
    with pytest.raises(SourceError, match=r"ratings\.csv is empty"):
        read_movielens(folder)


def test_header_only(movielens_folder):
    folder = movielens_folder("ml", ratings="userId,movieId,rating,timestamp\n")
    with pytest.raises(SourceError, match=r"ratings\.csv has a header but no rows"):
        read_movielens(folder)


def test_wrong_delimiter(movielens_folder):
    folder = movielens_folder("ml", ratings="userId;movieId;rating;timestamp\n1;1;4.0;964982703\n")
    with pytest.raises(SourceError, match=r"ratings\.csv lacks required column.*delimiter") as info:
        read_movielens(folder)
    assert "userId;movieId;rating;timestamp" in str(info.value)


def test_non_utf8_bytes(movielens_folder):
    folder = movielens_folder("ml")
    (folder / "movies.csv").write_bytes("movieId,title,genres\n1,Amélie (2001),Comedy\n".encode("latin-1"))
    with pytest.raises(SourceError, match=r"movies\.csv is not valid UTF-8"):
        read_movielens(folder)


def test_missing_column(movielens_folder):
    folder = movielens_folder("ml", ratings="userId,movieId,timestamp\n1,1,964982703\n")
    with pytest.raises(SourceError, match=r"ratings\.csv lacks required column\(s\) \['rating'\]") as info:
        read_movielens(folder)
    assert "delimiter" not in str(info.value)


def test_string_ids_where_ints_expected(movielens_folder):
    folder = movielens_folder(
        "ml", ratings="userId,movieId,rating,timestamp\nalice,1,4.0,964982703\n2,1,3.0,964982800\n"
    )
    with pytest.raises(
        SourceError, match=r"ratings\.csv: column 'userId' must hold integers; 1 row\(s\) do not, e.g. \['alice'\]"
    ):
        read_movielens(folder)


def test_fractional_ids_are_rejected(movielens_folder):
    folder = movielens_folder("ml", movies="movieId,title,genres\n1.5,Heat (1995),Action\n")
    with pytest.raises(SourceError, match="'movieId' must hold integers"):
        read_movielens(folder)


def test_unparsable_timestamps(movielens_folder):
    folder = movielens_folder("ml", ratings="userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,2,3.0,yesterday\n")
    with pytest.raises(
        SourceError, match=r"ratings\.csv: \d+ timestamp\(s\) are neither epoch seconds nor ISO 8601"
    ) as info:
        read_movielens(folder)
    assert "'yesterday'" in str(info.value)


def test_unparsable_timestamps_message_counts_only_the_bad_values(movielens_folder):
    folder = movielens_folder("ml", ratings="userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,2,3.0,yesterday\n")
    with pytest.raises(
        SourceError, match=r"1 timestamp\(s\) are neither epoch seconds nor ISO 8601, e.g. \['yesterday'\]"
    ):
        read_movielens(folder)


def test_read_table_parse_error_names_the_file(tmp_path):
    path = tmp_path / "broken.csv"
    path.write_text('a,b\n1,"unterminated\n')
    with pytest.raises(SourceError, match=r"broken\.csv could not be parsed"):
        read_table(path, ["a", "b"])
