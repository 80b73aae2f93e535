"""A small hand-written catalogue in the MovieLens layout, and a champion trained on it in seconds.

Thirty films in three genres and thirty users who each keep mostly to one genre (written here, not
MovieLens data), so a whole pipeline run (ingest, Great Expectations, the text encoder, two
candidates, MLflow, the gate) takes seconds and every fault test can own its data root.
"""

from __future__ import annotations

from pathlib import Path

GENRES = ("Sci-Fi|Action", "Romance|Drama", "Comedy|Animation")
WORDS = ("Space", "Love", "Laugh")
N_ITEMS, N_USERS = 30, 30
CANDIDATES = ["popularity", "lm_content"]


def write_catalogue(folder: Path) -> Path:
    """movies.csv and ratings.csv of the small catalogue in ``folder``; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    movies = ["movieId,title,genres"]
    for item in range(1, N_ITEMS + 1):
        genre = (item - 1) % 3
        movies.append(f"{item},{WORDS[genre]} Story {item} ({1980 + item}),{GENRES[genre]}")
    ratings = ["userId,movieId,rating,timestamp"]
    for user in range(1, N_USERS + 1):
        own = [item for item in range(1, N_ITEMS + 1) if (item - 1) % 3 == user % 3]
        picks = own[user % 4 :][:7] + [1 + (user * 7) % N_ITEMS]
        for step, item in enumerate(dict.fromkeys(picks)):
            rating = 3.5 + (step % 3) * 0.5
            ratings.append(f"{user},{item},{rating},{1_500_000_000 + user * 10_000 + step * 100}")
    (folder / "movies.csv").write_text("\n".join(movies) + "\n")
    (folder / "ratings.csv").write_text("\n".join(ratings) + "\n")
    return folder


def small_settings(data_root: Path, source: Path, **overrides):
    """Settings for a pipeline over the small catalogue: two quick candidates, few bootstrap samples."""
    from components.settings import load_settings

    return load_settings(
        data_root=data_root,
        ingest={"source": str(source)},
        train={"candidates": CANDIDATES, "bootstrap_samples": 50},
        embed={"precision": "fp32"},
        **overrides,
    )


def small_env(data_root: Path, source: Path) -> dict[str, str]:
    """The same settings as ``LMRECSYS_*`` variables, for a child process (the CLI, ``bentoml serve``)."""
    return {
        "LMRECSYS_DATA_ROOT": str(data_root),
        "LMRECSYS_INGEST__SOURCE": str(source),
        "LMRECSYS_TRAIN__CANDIDATES": '["popularity", "lm_content"]',
        "LMRECSYS_TRAIN__BOOTSTRAP_SAMPLES": "50",
        "LMRECSYS_EMBED__PRECISION": "fp32",
    }


def build_small_champion(data_root: Path) -> tuple[Path, dict]:
    """Write the catalogue beside ``data_root`` and run the whole pipeline on it once; returns
    (source folder, the gate's decision), which promotes the first version."""
    source = write_catalogue(data_root.parent / f"{data_root.name}-source")
    decision = run_small_pipeline(data_root, source, "first")
    assert decision["decision"] == "promoted", decision
    return source, decision


def run_small_pipeline(data_root: Path, source: Path, run_key: str) -> dict:
    from components.pipeline import run_pipeline
    from tests.harness import restored_mlflow_state

    with restored_mlflow_state():
        return run_pipeline(small_settings(data_root, source), run_key)
