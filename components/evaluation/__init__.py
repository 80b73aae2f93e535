"""Offline evaluation: ranking metrics with intervals, alternative splits, the run report and
its plots, and re-scoring the champion on a run's split."""
