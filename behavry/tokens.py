"""Bearer secrets for agents and integrations.

Both agent tokens and API keys are 256-bit random strings with a kind marker in front
(`bhv_agent_` or `bhv_key_`), so a secret pasted into the wrong place is recognisable and a log
scanner can find leaked ones. Only a SHA-256 digest is stored. A slow password hash buys nothing
here: the secret has 256 bits of entropy, so nobody can brute-force the digest, and a fast digest
keeps authentication on the tool-call path to one indexed lookup.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

AGENT_TOKEN_KIND = "bhv_agent_"
API_KEY_KIND = "bhv_key_"
PREFIX_LENGTH = 8  # random characters shown in lists so people can tell secrets apart


@dataclass(frozen=True)
class NewSecret:
    raw: str  # shown once, never stored
    prefix: str  # safe to display
    digest: str  # what the database keeps


def secret_generate(kind: str) -> NewSecret:
    body = secrets.token_urlsafe(32)  # 32 bytes = 256 bits
    raw = f"{kind}{body}"
    return NewSecret(raw=raw, prefix=raw[: len(kind) + PREFIX_LENGTH], digest=secret_digest(raw))


def secret_digest(raw: str) -> str:
    return hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()
