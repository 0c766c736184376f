"""Per-credential rate limiting for the REST API (`BEHAVRY_API_RATE`)."""

from __future__ import annotations

from rest_framework.throttling import SimpleRateThrottle


class ApiKeyRateThrottle(SimpleRateThrottle):
    """One bucket per API key, per signed-in person, or per client address for anonymous calls.

    Buckets are per credential rather than per address, so integrations behind one NAT do not
    starve each other, and one leaked key cannot spend another key's budget. The counters are in
    Django's cache: the file cache on the embedded default, Redis (shared by every process) in
    production.
    """

    scope = "api"

    def get_cache_key(self, request, view):
        if request.auth is not None and getattr(request.auth, "pk", None) is not None:
            ident = f"key:{request.auth.pk}"
        elif request.user is not None and request.user.is_authenticated:
            ident = f"user:{request.user.pk}"
        else:
            ident = f"addr:{self.get_ident(request)}"
        return self.cache_format % {"scope": self.scope, "ident": ident}
