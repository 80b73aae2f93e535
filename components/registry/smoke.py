"""The smoke test of a logged model: load the pyfunc and predict, in a fresh Python process.

A fresh process proves the artifact is complete on its own (nothing cached by the process that
logged it). :func:`smoke_test` runs this module as::

    python -m components.registry.smoke MODEL_URI TRACKING_URI USER_ID_JSON

which loads ``MODEL_URI``, asks for 5 recommendations for the user (``null``: the bundle's first
user with a history, else user 0), prints ``ok <rows>`` and exits 0; any failure ends it with a
traceback and a non-zero exit status.

The registry modules import this one when they call :func:`smoke_test`, not when they are
imported: ``python -m`` imports the package first, and a package that had already imported this
module would make ``runpy`` warn that it runs a second copy.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

MODULE = "components.registry.smoke"
"""This module's name, as ``python -m`` runs it."""
SMOKE_K = 5
"""How many recommendations the smoke test asks for."""


def smoke_test(model_uri: str, tracking_uri: str, user_id=None, timeout_s: float = 300) -> tuple[bool, str]:
    """Load the logged pyfunc and predict in a fresh process: proves the artifact is complete."""
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    try:
        done = subprocess.run(
            [sys.executable, "-m", MODULE, model_uri, tracking_uri, json.dumps(user_id)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env=env,
        )
    except subprocess.TimeoutExpired:
        return False, f"smoke test timed out after {timeout_s}s"
    if done.returncode != 0:
        return False, "smoke test failed: " + (done.stderr.strip().splitlines() or ["no output"])[-1]
    return True, done.stdout.strip()


def main(argv: list[str] | None = None) -> int:
    """Load MODEL_URI from TRACKING_URI, recommend for one user, print ``ok <rows>``."""
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.splitlines()[0])
    parser.add_argument("model_uri")
    parser.add_argument("tracking_uri")
    parser.add_argument("user_id", help="the user as JSON; null for the bundle's first user")
    args = parser.parse_args(argv)

    import mlflow
    import pandas as pd

    mlflow.set_tracking_uri(args.tracking_uri)
    model = mlflow.pyfunc.load_model(args.model_uri)
    engine = model.unwrap_python_model().engine
    user = json.loads(args.user_id) if args.user_id != "null" else next(iter(engine.histories), 0)
    out = model.predict(pd.DataFrame([{"user_id": str(user), "k": SMOKE_K}]))  # the signature: ids as strings
    if len(out) == 0:
        raise AssertionError("no recommendations")
    print("ok", len(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
