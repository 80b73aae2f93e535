"""Speed, memory and quality benchmarks; results in docs/benchmarks.md.

Run one from the repository root as ``python -m benchmarks.NAME`` (``--help`` lists its options).
Shared helpers are in :mod:`benchmarks.common`; concluded studies are in :mod:`benchmarks.research`.
"""
