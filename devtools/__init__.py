"""Development tools: the local Airflow/MLflow/BentoML process stack and the demo runner.

Not part of the installed package; run from a checkout (``python -m devtools.demo``)."""
