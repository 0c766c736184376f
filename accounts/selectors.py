from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from accounts.models import ApiKey
from behavry.tokens import API_KEY_KIND, secret_digest

# last_used_at is written at most this often per key, so a busy integration does not turn every
# read into a write.
LAST_USED_GRANULARITY = timedelta(seconds=60)


def api_key_authenticate(raw: str) -> ApiKey | None:
    """The usable key matching `raw`, or None (unknown, revoked, expired, or not an API key)."""
    if not raw.startswith(API_KEY_KIND):
        return None
    key = ApiKey.objects.filter(key_hash=secret_digest(raw)).first()
    if key is None or not key.is_usable():
        return None
    now = timezone.now()
    if key.last_used_at is None or now - key.last_used_at > LAST_USED_GRANULARITY:
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
        key.last_used_at = now
    return key
