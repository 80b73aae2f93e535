"""The fault tier: crashes, store restarts, a full disk and hostile clients against real servers.

Each test runs the smallest form of a fault that ``python -m benchmarks.faults`` runs in full
(docs/benchmarks/faults.md). The servers are real (``bentoml serve``, a private PostgreSQL);
the champion is trained on a small hand-written catalogue (``catalogue.py``) in seconds.
"""
