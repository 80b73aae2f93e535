"""The ingest stage: the source's data plus new feedback becomes an immutable snapshot."""

from components.ingest.stage import feedback_frame, ingest, read_source

__all__ = ["feedback_frame", "ingest", "read_source"]
