"""lm-recsys components: every stage of the recommender's life cycle as plain Python.

Nothing in this package imports Airflow; the DAGs in ``dags/`` only wire these functions.
"""

__version__ = "0.1.0"
