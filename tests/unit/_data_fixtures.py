"""Tiny hand-written MovieLens files for unit tests."""

from __future__ import annotations

from pathlib import Path

TINY_MOVIES_CSV = """movieId,title,genres
1,Toy Story (1995),Adventure|Animation|Children
2,Heat (1995),Action|Crime|Thriller
3,Babylon 5,(no genres listed)
4,"Amélie (Fabuleux destin d'Amélie Poulain, Le) (2001)",Comedy|Romance
"""
TINY_RATINGS_CSV = """userId,movieId,rating,timestamp
1,1,4.0,964982703
1,2,3.5,964982931
1,4,5.0,964983100
2,1,5.0,1100000000
2,3,2.5,1100000500
3,2,4.5,1200000000
3,4,1.0,1200000100
"""
TINY_TAGS_CSV = """userId,movieId,tag,timestamp
1,1,Pixar,1139045764
2,1,pixar,1139045800
3,1,fun,1139045900
1,1,toy,1139045950
2,4,Paris,1139046000
2,4,  quirky ,1139046100
"""


def write_movielens(
    folder: Path, *, movies: str = TINY_MOVIES_CSV, ratings: str = TINY_RATINGS_CSV, tags: str | None = TINY_TAGS_CSV
) -> Path:
    """Write a MovieLens-layout folder (movies.csv, ratings.csv, optional tags.csv)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "movies.csv").write_text(movies, encoding="utf-8")
    (folder / "ratings.csv").write_text(ratings, encoding="utf-8")
    if tags is not None:
        (folder / "tags.csv").write_text(tags, encoding="utf-8")
    return folder
