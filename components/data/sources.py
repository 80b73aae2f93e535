"""Read catalogues and interactions from their sources into the platform's canonical frames.

Two formats are understood:

* ``movielens``: a folder (or the official zip) with ``movies.csv``, ``ratings.csv`` and ``tags.csv``;
* ``generic``: any catalogue following docs/data-contract.md (items and interactions as CSV or Parquet).

Every reader either returns clean frames or raises :class:`SourceError` naming the file and the problem.
"""

from __future__ import annotations

import hashlib
import http.client
import re
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from components.data.atomic import atomic_dir, atomic_file
from components.data.columns import (
    CATEGORIES_COL,
    DESCRIPTION_COL,
    EVENT_COL,
    EVENT_ID_COL,
    INTERACTION_COLUMNS,
    ITEM_COL,
    ITEM_COLUMNS,
    SOURCE_COL,
    TAGS_COL,
    TIMESTAMP_COL,
    TITLE_COL,
    USER_COL,
    VALUE_COL,
    YEAR_COL,
)
from components.errors import ChecksumError, SourceError

MOVIELENS_FILES = {
    "movies.csv": ["movieId", "title", "genres"],
    "ratings.csv": ["userId", "movieId", "rating", "timestamp"],
}
_YEAR_RE = re.compile(r"\((\d{4})\)\s*$")


@dataclass
class SourceData:
    """What a source yields: canonical items and interactions, plus where they came from."""

    items: pd.DataFrame
    interactions: pd.DataFrame
    id_type: str
    """``int`` when user and item ids are integers (MovieLens), else ``str``."""
    source_uris: dict[str, str] = field(default_factory=dict)
    """File name → ``uri`` of every file read."""
    source_hashes: dict[str, str] = field(default_factory=dict)
    """File name → SHA-256 of its bytes."""


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------- download


def download_file(url: str, expected_sha256: str, cache_dir: Path, timeout_s: float = 60.0) -> Path:
    """Download ``url`` into ``cache_dir`` once, verifying its SHA-256; return the cached file.

    A cached file with the right hash is reused without network access. The body is written to a
    temporary name and renamed into place only after its length and hash check out, so a failed or
    interrupted download never leaves a file that looks valid.
    """
    expected_sha256 = expected_sha256.strip().lower()
    cache_dir.mkdir(parents=True, exist_ok=True)
    name = Path(urllib.request.urlparse(url).path).name or "download"
    target = cache_dir / f"{expected_sha256[:16]}-{name}"
    if target.exists():
        if sha256_file(target) == expected_sha256:
            return target
        target.unlink()  # corrupted cache entry: fetch again
    with atomic_file(target) as tmp:  # renamed into place only when the block succeeds
        digest = hashlib.sha256()
        received = 0
        try:
            with open(tmp, "wb") as out, urllib.request.urlopen(url, timeout=timeout_s) as response:
                expected_length = response.headers.get("Content-Length")
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
        except urllib.error.HTTPError as exc:
            raise SourceError(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from exc
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            raise SourceError(f"download of {url} failed: {getattr(exc, 'reason', exc)}") from exc
        if expected_length is not None and received != int(expected_length):
            raise SourceError(f"download of {url} is truncated: received {received} of {expected_length} bytes")
        actual = digest.hexdigest()
        if actual != expected_sha256:
            raise ChecksumError(
                f"download of {url} has SHA-256 {actual}, expected {expected_sha256}; "
                "the file is corrupted or the configured hash (LMRECSYS_INGEST__DOWNLOAD_SHA256) is wrong"
            )
    return target


def extract_movielens_zip(zip_path: Path, cache_dir: Path, expected_sha256: str | None = None) -> Path:
    """Extract a MovieLens zip once (atomically) and return the folder holding its CSV files."""
    digest = sha256_file(zip_path)
    if expected_sha256 and digest != expected_sha256.strip().lower():
        raise ChecksumError(f"{zip_path} has SHA-256 {digest}, expected {expected_sha256}")
    target = cache_dir / f"extracted-{digest[:16]}"
    if not target.exists():
        with atomic_dir(target, replace=False) as tmp:  # a concurrent extraction of the same zip may win
            try:
                with zipfile.ZipFile(zip_path) as archive:
                    archive.extractall(tmp)
            except zipfile.BadZipFile as exc:
                raise SourceError(f"{zip_path} is not a valid zip file: {exc}") from exc
    for candidate in [target, *sorted(p for p in target.iterdir() if p.is_dir())]:
        if (candidate / "ratings.csv").exists():
            return candidate
    raise SourceError(f"{zip_path} holds no ratings.csv; is it a MovieLens archive?")


def resolve_movielens_dir(source: str, cache_dir: Path, sha256: str, timeout_s: float = 60.0) -> tuple[Path, dict]:
    """Turn a source (folder, zip file or URL) into a local folder; also return provenance."""
    if source.startswith(("http://", "https://")):
        zip_path = download_file(source, sha256, cache_dir, timeout_s)
        return extract_movielens_zip(zip_path, cache_dir), {"archive": source, "archive_sha256": sha256}
    path = Path(source).expanduser()
    if not path.exists():
        raise SourceError(f"source {path} does not exist; set LMRECSYS_INGEST__SOURCE to a MovieLens folder or zip")
    if path.is_file():
        if path.suffix != ".zip":
            raise SourceError(f"source {path} is a file but not a .zip archive")
        return extract_movielens_zip(path, cache_dir, sha256), {
            "archive": path.resolve().as_uri(),
            "archive_sha256": sha256,
        }
    if not any(path.iterdir()):
        raise SourceError(f"source folder {path} is empty; expected {', '.join(MOVIELENS_FILES)}")
    return path, {}


# --------------------------------------------------------------------------- CSV reading


def read_table(path: Path, required: list[str], *, dtype: dict | None = None) -> pd.DataFrame:
    """Read a CSV or Parquet file and check its required columns, with errors naming the file."""
    if not path.exists():
        raise SourceError(f"{path.name} is missing from {path.parent}")
    if path.stat().st_size == 0:
        raise SourceError(f"{path} is empty (0 bytes)")
    try:
        if path.suffix == ".parquet":
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path, dtype=dtype, encoding="utf-8", keep_default_na=True)
    except UnicodeDecodeError as exc:
        raise SourceError(f"{path} is not valid UTF-8 (byte offset {exc.start}): re-encode it as UTF-8") from exc
    except pd.errors.EmptyDataError as exc:
        raise SourceError(f"{path} is empty") from exc
    except (pd.errors.ParserError, ValueError) as exc:
        raise SourceError(f"{path} could not be parsed: {exc}") from exc
    missing = [column for column in required if column not in frame.columns]
    if missing:
        hint = ""
        if len(frame.columns) == 1 and any(sep in frame.columns[0] for sep in ";\t|"):
            hint = " (the file looks like it uses another delimiter than a comma)"
        raise SourceError(f"{path} lacks required column(s) {missing}; found {list(frame.columns)}{hint}")
    if frame.empty:
        raise SourceError(f"{path} has a header but no rows")
    return frame


def _integer_column(frame: pd.DataFrame, column: str, path: Path) -> pd.Series:
    """A column as int64, or an error that names the first offending rows."""
    values = pd.to_numeric(frame[column], errors="coerce")
    bad = values.isna() | (values != np.floor(values))
    if bad.any():
        sample = frame.loc[bad, column].head(3).tolist()
        raise SourceError(
            f"{path}: column {column!r} must hold integers; {int(bad.sum())} row(s) do not, e.g. {sample}"
        )
    return values.astype("int64")


def parse_timestamps(values: pd.Series, where: str) -> pd.Series:
    """Epoch seconds or ISO 8601 strings (mixed is fine) → int64 epoch seconds."""
    numeric = pd.to_numeric(values, errors="coerce")
    if numeric.notna().all():
        return numeric.astype("int64")
    text = values[numeric.isna()].astype(str)
    parsed = pd.to_datetime(text, utc=True, errors="coerce", format="ISO8601")
    bad = parsed.isna()
    if bad.any():
        raise SourceError(
            f"{where}: {int(bad.sum())} timestamp(s) are neither epoch seconds nor ISO 8601, "
            f"e.g. {text[bad].head(3).tolist()}"
        )
    seconds = (parsed - pd.Timestamp("1970-01-01", tz="UTC")) // pd.Timedelta(seconds=1)
    return numeric.fillna(seconds).astype("int64")


# --------------------------------------------------------------------------- MovieLens


def _top_tags(tags: pd.DataFrame, top_n: int) -> pd.Series:
    """Each item's most frequent tags (lower-cased, ties by name), joined with '|'."""
    if tags.empty:
        return pd.Series(dtype="object")
    normalised = tags.assign(tag=tags["tag"].astype(str).str.strip().str.lower())
    normalised = normalised[normalised["tag"] != ""]
    counts = normalised.groupby(["movieId", "tag"]).size().rename("n").reset_index()
    counts = counts.sort_values(["movieId", "n", "tag"], ascending=[True, False, True])
    top = counts.groupby("movieId").head(top_n)
    return top.groupby("movieId")["tag"].agg("|".join)


def read_movielens(folder: Path, *, top_tags: int = 5, max_users: int | None = None) -> SourceData:
    """Read a MovieLens (ml-latest-small layout) folder into canonical frames."""
    movies_path, ratings_path, tags_path = folder / "movies.csv", folder / "ratings.csv", folder / "tags.csv"
    movies = read_table(movies_path, MOVIELENS_FILES["movies.csv"], dtype={"title": str, "genres": str})
    ratings = read_table(ratings_path, MOVIELENS_FILES["ratings.csv"])
    tags = (
        read_table(tags_path, ["userId", "movieId", "tag", "timestamp"], dtype={"tag": str})
        if tags_path.exists()
        else pd.DataFrame(columns=["userId", "movieId", "tag", "timestamp"])
    )

    movie_ids = _integer_column(movies, "movieId", movies_path)
    user_ids = _integer_column(ratings, "userId", ratings_path)
    rated_ids = _integer_column(ratings, "movieId", ratings_path)
    rating_values = pd.to_numeric(ratings["rating"], errors="coerce")  # NaN is left for validation
    timestamps = parse_timestamps(ratings["timestamp"], str(ratings_path))

    titles = movies["title"].fillna("").astype(str).str.strip()
    years = titles.str.extract(_YEAR_RE)[0].astype("Int64")
    genres = movies["genres"].fillna("").astype(str)
    genres = genres.where(genres != "(no genres listed)", "")
    if len(tags):
        tags = tags.assign(movieId=_integer_column(tags, "movieId", tags_path))
    item_tags = _top_tags(tags, top_tags)
    items = pd.DataFrame(
        {
            ITEM_COL: movie_ids.values,
            TITLE_COL: titles.values,
            YEAR_COL: years.values,
            CATEGORIES_COL: genres.values,
            TAGS_COL: movie_ids.map(item_tags).fillna("").values,
            DESCRIPTION_COL: "",
        }
    )
    interactions = pd.DataFrame(
        {
            EVENT_ID_COL: "ml-" + user_ids.astype(str) + "-" + rated_ids.astype(str) + "-" + timestamps.astype(str),
            USER_COL: user_ids.values,
            ITEM_COL: rated_ids.values,
            TIMESTAMP_COL: timestamps.values,
            EVENT_COL: "rating",
            VALUE_COL: rating_values.astype("float64").values,
            SOURCE_COL: "movielens",
        }
    )
    if max_users is not None:  # a reduced config: the first users and only the items they touched
        keep = np.sort(interactions[USER_COL].unique())[:max_users]
        interactions = interactions[interactions[USER_COL].isin(keep)]
        items = items[items[ITEM_COL].isin(interactions[ITEM_COL])]
    files = [p for p in (movies_path, ratings_path, tags_path) if p.exists()]
    return SourceData(
        items=items[ITEM_COLUMNS],
        interactions=interactions[INTERACTION_COLUMNS].reset_index(drop=True),
        id_type="int",
        source_uris={p.name: p.resolve().as_uri() for p in files},
        source_hashes={p.name: sha256_file(p) for p in files},
    )


# --------------------------------------------------------------------------- generic contract


def read_generic(items_path: Path, interactions_path: Path, *, text_columns: list[str] | None = None) -> SourceData:
    """Read a catalogue that follows the generic contract (docs/data-contract.md)."""
    items_raw = read_table(items_path, [ITEM_COL, TITLE_COL], dtype={ITEM_COL: str})
    inter_raw = read_table(interactions_path, [USER_COL, ITEM_COL, TIMESTAMP_COL], dtype={USER_COL: str, ITEM_COL: str})
    text_columns = list(text_columns or [])
    missing_text = [c for c in text_columns if c not in items_raw.columns]
    if missing_text:
        raise SourceError(f"{items_path} lacks the configured text column(s) {missing_text}")

    def text(column: str) -> pd.Series:
        if column not in items_raw.columns:
            return pd.Series("", index=items_raw.index)
        return items_raw[column].fillna("").astype(str)

    description = text(DESCRIPTION_COL)
    for column in text_columns:  # extra text columns are appended to the description, labelled
        value = text(column).str.strip()
        labelled = (column + ": " + value).where(value != "", "")  # an empty value adds no text
        description = description.str.cat(labelled, sep=". ").str.strip(". ")
    items = pd.DataFrame(
        {
            ITEM_COL: items_raw[ITEM_COL].astype(str).str.strip(),
            TITLE_COL: text(TITLE_COL).str.strip(),
            YEAR_COL: pd.array([pd.NA] * len(items_raw), dtype="Int64"),
            CATEGORIES_COL: text(CATEGORIES_COL),
            TAGS_COL: text(TAGS_COL),
            DESCRIPTION_COL: description,
        }
    )
    timestamps = parse_timestamps(inter_raw[TIMESTAMP_COL], str(interactions_path))
    events = inter_raw[EVENT_COL].fillna("interaction").astype(str) if EVENT_COL in inter_raw else "interaction"
    values = pd.to_numeric(inter_raw[VALUE_COL], errors="coerce") if VALUE_COL in inter_raw else np.nan
    users = inter_raw[USER_COL].astype(str).str.strip()
    item_ids = inter_raw[ITEM_COL].astype(str).str.strip()
    if EVENT_ID_COL in inter_raw:
        event_ids = inter_raw[EVENT_ID_COL].astype(str)
    else:
        event_ids = (
            "g-"
            + users
            + "-"
            + item_ids
            + "-"
            + timestamps.astype(str)
            + "-"
            + pd.Series(events, index=inter_raw.index).astype(str)
        )
    interactions = pd.DataFrame(
        {
            EVENT_ID_COL: event_ids,
            USER_COL: users,
            ITEM_COL: item_ids,
            TIMESTAMP_COL: timestamps,
            EVENT_COL: events,
            VALUE_COL: values,
            SOURCE_COL: "generic",
        }
    )
    return SourceData(
        items=items[ITEM_COLUMNS],
        interactions=interactions[INTERACTION_COLUMNS],
        id_type="str",
        source_uris={p.name: p.resolve().as_uri() for p in (items_path, interactions_path)},
        source_hashes={p.name: sha256_file(p) for p in (items_path, interactions_path)},
    )
