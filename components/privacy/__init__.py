"""Forgetting users: erasure requests, their tombstones, and the audit that proves where a user still is.

``forget.py`` records a request and deletes the user's events at once; ingest (through the
tombstones) builds every later snapshot without them; ``audit.py`` lists every place the platform
keeps that still holds them. docs/privacy.md tells the whole story.
"""

from components.privacy.audit import audit_user
from components.privacy.forget import erasure_requests, forget_user

__all__ = ["audit_user", "erasure_requests", "forget_user"]
