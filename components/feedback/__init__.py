"""The feedback store (SQLite WAL or PostgreSQL) and the trigger that turns new feedback into a
pipeline run."""
