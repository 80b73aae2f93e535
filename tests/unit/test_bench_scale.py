"""The scale benchmark (benchmarks/bench_scale.py) in its smallest form: real stage processes on a
hand-written catalogue, the growth-exponent fit on known numbers, the tables and the disk check."""

from __future__ import annotations

import json

import pytest

from benchmarks import bench_scale, workload
from tests.unit.test_workload import N_ITEMS, _movies, _ratings, _tags


@pytest.mark.parametrize(
    ("scales", "values", "expected"),
    [
        ([1, 10, 100], [2.0, 20.0, 200.0], 1.0),  # linear
        ([1, 10], [3.0, 300.0], 2.0),  # quadratic
        ([1, 10, 100], [5.0, 5.0, 5.0], 0.0),  # flat
        ([2, 4, 8], [1.0, 2.0**0.5, 2.0], 0.5),
    ],
)
def test_the_growth_exponent_is_the_log_log_slope(scales, values, expected):
    assert bench_scale.growth_exponent(scales, values) == pytest.approx(expected, abs=1e-9)


def test_the_growth_exponent_needs_two_scales_with_positive_values():
    assert bench_scale.growth_exponent([1], [3.0]) is None
    assert bench_scale.growth_exponent([1, 10], [0.0, 4.0]) is None  # a zero cannot be on a log axis
    assert bench_scale.growth_exponent([1, 10, 100], [1.0, 0.0, 100.0]) == pytest.approx(1.0)


def test_each_stage_runs_in_its_own_process_and_reports_time_and_rss(movielens_folder, tmp_path):
    source = movielens_folder("ml-shape", movies=_movies(N_ITEMS), ratings=_ratings(40, N_ITEMS), tags=_tags(N_ITEMS))
    folder = tmp_path / "x2"
    workload.main(["--movielens", str(source), "--out", str(folder), "--scale", "2"])
    env = bench_scale.stage_env(tmp_path / "root", folder, ["popularity"], {})
    results = bench_scale.pipeline_stages(2, env, tmp_path / "logs", only=("ingest", "validate"))
    assert list(results) == ["ingest", "validate"]
    for result in results.values():
        assert result["seconds"] > 0 and result["process_seconds"] >= result["seconds"]
        assert result["peak_rss_mb"] > 20 and result["tree_peak_rss_mb"] > 0
    snapshot_id = results["ingest"]["handle"]
    assert results["validate"]["handle"] == snapshot_id
    manifest = json.loads((tmp_path / "root" / "snapshots" / snapshot_id / "manifest.json").read_text())
    assert manifest["row_counts"]["items"] == 2 * N_ITEMS and manifest["row_counts"]["users"] == 2 * 40
    assert (tmp_path / "root" / "snapshots" / snapshot_id / "validation.json").exists()


def test_a_failing_stage_names_itself_and_its_log(tmp_path):
    env = bench_scale.stage_env(tmp_path / "root", tmp_path / "missing", ["popularity"], {})
    with pytest.raises(bench_scale.ScaleError, match=r"stage ingest failed \(exit 1\).*ingest\.log"):
        bench_scale.run_stage("ingest", {}, env, tmp_path / "logs")


def _stage(seconds, rss, **extra):
    return {"seconds": seconds, "peak_rss_mb": rss, **extra}


def test_the_table_gives_each_stage_its_exponent_and_skips_are_not_fitted():
    results = {
        "scales": {
            "1": {
                "workload": _stage(1.0, 190),
                "stages": {
                    "ingest": _stage(2.0, 200),
                    "embed_shard:0": _stage(3.0, 600),
                    "embed_shard:1": _stage(5.0, 650),
                    "train:ease": _stage(4.0, 1000, status="ok"),
                },
            },
            "10": {
                "workload": _stage(10.0, 190),
                "stages": {
                    "ingest": _stage(20.0, 2000),
                    "embed_shard:0": _stage(30.0, 600),
                    "embed_shard:1": _stage(50.0, 650),
                    "train:ease": _stage(1.5, 900, status="skipped", reason="skipped: needs about 100 GiB"),
                },
            },
        }
    }
    table = bench_scale.stage_table(results)
    assert table["embed_shards"][10] == {"seconds": 80.0, "peak_rss_mb": 650, "shards": 2}
    fits = bench_scale.exponents(table)
    assert fits["ingest"] == {"time": 1.0, "rss": 1.0}
    assert fits["workload"] == {"time": 1.0, "rss": 0.0}
    assert fits["train:ease"] == {"time": None, "rss": None}  # one trained scale: nothing to fit
    lines = bench_scale.markdown_table(results)
    ingest = next(line for line in lines if line.startswith("| ingest |"))
    assert ingest == "| ingest | 2.00 | 20.0 | 1.00 | 200 | 2,000 | 1.00 |"
    assert any("skipped (1.50)" in line for line in lines if line.startswith("| train: ease"))


def test_a_scale_that_cannot_fit_on_disk_is_refused_before_anything_is_written(tmp_path, capsys):
    work = tmp_path / "work"
    with pytest.raises(SystemExit) as exited:
        bench_scale.main(["--scales", str(10**9), "--work", str(work), "--no-serving"])
    assert exited.value.code == 2
    assert "on disk but only" in capsys.readouterr().err
    assert not work.exists()


def test_bad_arguments_are_refused(capsys):
    for argv in (["--scales", "0"], ["--max-epochs", "0"], ["--with-100", "--scales", "1", "100"]):
        with pytest.raises(SystemExit):
            bench_scale.main(argv)
    assert "--scales must be" in capsys.readouterr().err
