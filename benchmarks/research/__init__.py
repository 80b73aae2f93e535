"""Concluded studies, kept so their results can be reproduced: ``python -m benchmarks.research.NAME``.

Each module's docstring opens with its conclusion and the report it belongs to.
"""
