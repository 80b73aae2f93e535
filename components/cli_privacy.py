"""The ``lmrecsys users`` commands: forget a user, audit where a user still is, list erasure requests.

``components.cli`` adds the group. docs/privacy.md says what each step does and how long it takes.
"""

from __future__ import annotations

import typer

from components.cli import EXIT_ERROR, JsonOption, _emit, _fail, _settings, _table, app

users_app = typer.Typer(
    help="Forget a user everywhere, audit where a user still is, list erasures.", no_args_is_help=True
)
app.add_typer(users_app, name="users")


@users_app.command("forget")
def users_forget(
    user_id: str,
    reason: str = typer.Option(..., "--reason", help="Why (kept with the request; the user id itself is not)."),
    as_json: bool = JsonOption,
):
    """Delete the user's stored events now and stand a tombstone; the next run trains without them."""
    from components.errors import LmRecsysError
    from components.privacy import forget_user

    try:
        result = forget_user(_settings(), user_id, reason)
    except LmRecsysError as exc:
        _fail(f"nothing was changed: {exc}", EXIT_ERROR)
    _emit(result, as_json, result["message"])


@users_app.command("audit")
def users_audit(
    user_id: str,
    service_url: str = typer.Option(None, "--service-url", help="Also ask this running service (admin token)."),
    as_json: bool = JsonOption,
):
    """Every place that still holds the user; exit 0 when there is none, 1 otherwise."""
    from components.errors import LmRecsysError
    from components.privacy import audit_user

    try:
        result = audit_user(_settings(), user_id, service_url=service_url)
    except LmRecsysError as exc:
        _fail(str(exc), EXIT_ERROR)
    rows = [
        {
            "place": p["place"],
            "where": p.get("path") or p.get("table") or p.get("version") or "",
            "rows": p.get("rows", ""),
        }
        for p in result["places"]
    ]
    _emit(
        result,
        as_json,
        f"user {result['user_id']!r}: found in {result['found']} place(s)\n" + _table(rows, ["place", "where", "rows"]),
    )
    raise typer.Exit(0 if result["found"] == 0 else 1)


@users_app.command("forgotten")
def users_forgotten(as_json: bool = JsonOption):
    """Erasure requests with their state: pending, serving-clean, done (ids are kept only as keyed hashes)."""
    from components.errors import LmRecsysError
    from components.privacy import erasure_requests

    try:
        rows = erasure_requests(_settings())
    except LmRecsysError as exc:
        _fail(str(exc), EXIT_ERROR)
    shown = [{**r, "user_key": r["user_key"][:16] + "…"} for r in rows]
    _emit(rows, as_json, _table(shown, ["user_key", "state", "reason", "requested_at", "events_deleted"]))


@users_app.command("purge")
def users_purge(as_json: bool = JsonOption):
    """Purge older artifacts of every serving-clean erasure (runs by itself after each promotion)."""
    from components.errors import LmRecsysError
    from components.privacy.purge import purge

    try:
        result = purge(_settings())
    except LmRecsysError as exc:
        _fail(f"the purge stopped; the requests stay serving-clean: {exc}", EXIT_ERROR)
    _emit(result, as_json)
