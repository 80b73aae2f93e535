"""No password or token reaches a log line, an error or the command's output (issue #16, part 7)."""

from __future__ import annotations

import logging

from typer.testing import CliRunner

from components.cli import app

PASSWORD = "hunter2-do-not-log"


def test_commands_that_fail_on_a_store_never_print_or_log_its_password(monkeypatch, tmp_path, tiny_movielens, caplog):
    monkeypatch.setenv("LMRECSYS_DATA_ROOT", str(tmp_path / "root"))
    monkeypatch.setenv("LMRECSYS_INGEST__SOURCE", str(tiny_movielens))
    monkeypatch.setenv("LMRECSYS_FEEDBACK__URL", f"postgresql://app:{PASSWORD}@127.0.0.1:1/feedback")
    monkeypatch.setenv("LMRECSYS_SERVING__ADMIN_TOKEN", "t" * 40)
    caplog.set_level(logging.DEBUG)
    runner = CliRunner()
    outputs = []
    for args in (["pipeline", "run"], ["status"], ["feedback", "quarantined"], ["snapshots", "list", "--json"]):
        result = runner.invoke(app, args)
        outputs.append((args, result.exit_code, result.output + repr(result.exception)))
    run_code, status_code = outputs[0][1], outputs[1][1]
    assert run_code == 1 and status_code in (0, 1)  # the store is unreachable: a handled error, not a crash
    assert "postgresql://app:***@127.0.0.1:1/feedback" in outputs[0][2]  # the URL is named, redacted
    for args, _, text in outputs:
        assert PASSWORD not in text and "t" * 40 not in text, args
    logged = "\n".join(record.getMessage() + str(record.exc_info or "") for record in caplog.records)
    assert PASSWORD not in logged and "t" * 40 not in logged
