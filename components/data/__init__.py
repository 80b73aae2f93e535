"""The data model and its storage: column names, the event vocabulary, sources, immutable
snapshots and the in-memory interaction dataset. Imports nothing above it."""
