from __future__ import annotations

from rest_framework import authentication, exceptions

from accounts.selectors import api_key_authenticate
from behavry.tokens import AGENT_TOKEN_KIND


class ApiKeyAuthentication(authentication.BaseAuthentication):
    """`Authorization: Bearer <api key>`. On success request.user is anonymous and request.auth the key.

    A present but bad credential is a 401, never a fall-through to session auth, so a revoked key
    cannot be "rescued" by a browser cookie in a script. Agent tokens are refused by name: they
    only work on /mcp/.
    """

    keyword = "Bearer"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header:
            return None
        scheme, _, raw = header.partition(" ")
        if scheme.lower() != self.keyword.lower():
            return None
        raw = raw.strip()
        if not raw:
            raise exceptions.AuthenticationFailed("Empty bearer token.")
        if raw.startswith(AGENT_TOKEN_KIND):
            raise exceptions.AuthenticationFailed("Agent tokens are valid only on /mcp/; use an API key here.")
        key = api_key_authenticate(raw)
        if key is None:
            raise exceptions.AuthenticationFailed("Invalid, expired or revoked API key.")
        from django.contrib.auth.models import AnonymousUser

        return AnonymousUser(), key

    def authenticate_header(self, request):
        return self.keyword
