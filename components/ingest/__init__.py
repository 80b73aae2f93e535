"""The ingest stage: the source's data plus new feedback becomes an immutable snapshot."""

from components.ingest.screening import REASONS, screen_feedback
from components.ingest.stage import ingest, read_source

__all__ = ["REASONS", "ingest", "read_source", "screen_feedback"]
