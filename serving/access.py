"""Who may call the service, and the front door that says so: client API keys, the admin token, /readyz.

``ClientKeys`` holds the client API keys (``serving.client_keys``). When any is configured (always in
production mode, which refuses to start without one), every route but the probes, ``/metrics`` and the
static ``/ui`` page needs one, sent as ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``. ``Gate`` is
the outermost of the service's ASGI middlewares, so the fast lane and BentoML's own API layer sit behind
the same check. Every comparison of a secret takes constant time (``hmac.compare_digest``), and no
answer or log line carries a key or a token.
"""

from __future__ import annotations

import hmac
import json
import logging

from starlette.responses import JSONResponse

from serving.middleware import SERVING

log = logging.getLogger("lmrecsys.serving")

OPEN_PATHS = frozenset({"/healthz", "/livez", "/readyz", "/metrics", "/ui"})
"""Routes answered without a client key: the probes, the metrics scrape and the page (static HTML that
holds no data; it asks for the key and sends it with each of its requests)."""
KEY_HEADERS = "'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
MIN_PRODUCTION_KEY_CHARS = 16


def same_secret(given: bytes, expected: bytes) -> bool:
    """Constant-time equality of two byte strings (the time does not depend on where they differ)."""
    return hmac.compare_digest(given, expected)


class ClientKeys:
    """The configured client API keys; ``allows(headers)`` says whether a request carries one of them.

    Built at start, it also enforces production mode's rules: client keys set (each at least 16
    characters) and an admin token, if set, of at least 32 characters.
    """

    def __init__(self, serving_settings) -> None:
        self._keys = [key.get_secret_value().encode() for key in serving_settings.client_keys]
        if any(not key for key in self._keys):
            raise RuntimeError("LMRECSYS_SERVING__CLIENT_KEYS holds an empty key")
        token = serving_settings.admin_token
        if serving_settings.production and token is not None and len(token.get_secret_value()) < 32:
            message = "LMRECSYS_SERVING__ADMIN_TOKEN must be at least 32 characters (or unset to disable /admin/reload)"
            raise RuntimeError(f"production mode: {message}")
        if serving_settings.production:
            if not self._keys:
                raise RuntimeError(
                    "production mode: set LMRECSYS_SERVING__CLIENT_KEYS to a JSON list of client API keys "
                    "(e.g. '[\"<random key>\"]'); every route but /healthz, /readyz and /metrics needs one"
                )
            if any(len(key) < MIN_PRODUCTION_KEY_CHARS for key in self._keys):
                shortest = f"at least {MIN_PRODUCTION_KEY_CHARS} characters"
                raise RuntimeError(f"production mode: every LMRECSYS_SERVING__CLIENT_KEYS key must be {shortest}")

    @property
    def required(self) -> bool:
        """Whether requests need a key (any key is configured)."""
        return bool(self._keys)

    def allows(self, headers) -> bool:
        """Whether the ASGI ``headers`` carry a configured key, as a bearer token or in ``X-API-Key``."""
        offered = []
        for name, value in headers:
            if name == b"x-api-key":
                offered.append(value.strip())
            elif name == b"authorization" and value[:7].lower() == b"bearer ":
                offered.append(value[7:].strip())
        allowed = False
        for given in offered:  # every pair is compared: the time says nothing about which key matched
            for key in self._keys:
                allowed |= same_secret(given, key)
        return allowed


def admin_refusal(token, authorization: str) -> JSONResponse | None:
    """The 403 (reload disabled) or 401 (wrong or missing bearer token) for ``/admin/reload``, or None."""
    if token is None or not token.get_secret_value():
        return JSONResponse({"error": "reload is disabled: set LMRECSYS_SERVING__ADMIN_TOKEN"}, status_code=403)
    expected = f"Bearer {token.get_secret_value()}".encode()
    if not same_secret(authorization.encode(), expected):
        return JSONResponse(
            {"error": "missing or wrong admin token: send it as 'Authorization: Bearer <admin token>'"},
            status_code=401,
            headers={"www-authenticate": 'Bearer realm="lm-recsys admin"'},
        )
    return None


UNAUTHORISED = json.dumps({"error": f"missing or wrong client API key: send it as {KEY_HEADERS}"}).encode()
STARTING = json.dumps({"error": "the service is starting; see /readyz"}).encode()


class Gate:
    """The service's outermost ASGI middleware: the /readyz reasons and the client key check.

    ``GET /readyz`` of a service that is not ready is answered here with a 503 whose body names each
    reason (BentoML's own body only says ``__is_ready__`` returned False); a ready one passes to BentoML.
    Every other route but ``OPEN_PATHS`` needs a client key when keys are configured: without one the
    answer is a 401 naming the headers expected. With no service instance yet, such requests get a 503.
    """

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, service = scope.get("path", ""), SERVING[-1] if SERVING else None
        if path == "/readyz" and service is not None:
            reasons = service.not_ready_reasons()
            if reasons:
                body = json.dumps({"ready": False, "reasons": reasons}).encode()
                return await _send(send, 503, body)
        if path in OPEN_PATHS:
            return await self.app(scope, receive, send)
        if service is None:
            return await _send(send, 503, STARTING)
        if service.client_keys.required and not service.client_keys.allows(scope["headers"]):
            log.debug("refused %s %s: no valid client API key", scope.get("method"), path)
            return await _send(send, 401, UNAUTHORISED, [(b"www-authenticate", b'Bearer realm="lm-recsys"')])
        return await self.app(scope, receive, send)


async def _send(send, status: int, payload: bytes, extra_headers=()) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": [*headers, *extra_headers]})
    await send({"type": "http.response.body", "body": payload})
