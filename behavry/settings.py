"""Behavry settings: the one place that reads the environment.

With no variables set you get the embedded default (SQLite in var/, the in-memory channel layer,
Celery on a filesystem broker in var/). DATABASE_URL and REDIS_URL switch to PostgreSQL and Redis.
Every variable is documented in the README's configuration table; keep the two in step.
"""

from __future__ import annotations

from pathlib import Path

from .env import (
    ConfigError,
    check_redis_url,
    env_bool,
    env_choice,
    env_int,
    env_list,
    env_rate,
    env_str,
    parse_database_url,
)

BASE_DIR = Path(__file__).resolve().parent.parent

try:
    VAR_DIR = Path(env_str("BEHAVRY_VAR_DIR", str(BASE_DIR / "var"))).resolve()
    DEBUG = env_bool("BEHAVRY_DEBUG", False)
    _secret = env_str("BEHAVRY_SECRET_KEY", "")
    _production = env_bool("BEHAVRY_PRODUCTION", False)
    if _production and len(_secret) < 32:
        raise ConfigError("BEHAVRY_SECRET_KEY must be set to at least 32 characters when BEHAVRY_PRODUCTION=true")
    ALLOWED_HOSTS = env_list("BEHAVRY_ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]", "testserver"])
    CSRF_TRUSTED_ORIGINS = env_list("BEHAVRY_CSRF_TRUSTED_ORIGINS", [])
    BEHAVRY_PORT = env_int("BEHAVRY_PORT", 8000, minimum=1, maximum=65535)
    # uvicorn (uvloop + httptools) by default: less CPU per proxied call than Daphne at the same
    # load in every bench run (0.1-1.5 ms, bench/README.md). Daphne stays supported; `runserver`
    # uses it.
    BEHAVRY_ASGI_SERVER = env_choice("BEHAVRY_ASGI_SERVER", "uvicorn", ("uvicorn", "daphne"))
    BEHAVRY_DEMO_UPSTREAM_PORT = env_int("BEHAVRY_DEMO_UPSTREAM_PORT", 8765, minimum=1, maximum=65535)
    _database = parse_database_url(
        env_str("DATABASE_URL", ""),
        sqlite_default=VAR_DIR / "behavry.sqlite3",
        conn_max_age=env_int("BEHAVRY_DB_CONN_MAX_AGE", 60, minimum=0),
    )
    # The proxy's audit appends as named prepared statements on its own connections
    # (behavry/pgpool.py). Turn off behind a pooler in transaction mode that does not track
    # prepared statements (PgBouncer before 1.21, or max_prepared_statements = 0).
    BEHAVRY_DB_PREPARED_STATEMENTS = env_bool("BEHAVRY_DB_PREPARED_STATEMENTS", True)
    REDIS_URL = check_redis_url("REDIS_URL", env_str("REDIS_URL", ""))
    BEHAVRY_MCP_MAX_BODY_BYTES = env_int("BEHAVRY_MCP_MAX_BODY_BYTES", 4 * 1024 * 1024, minimum=1024)
    BEHAVRY_MCP_ALLOWED_ORIGINS = env_list("BEHAVRY_MCP_ALLOWED_ORIGINS", [])
    # 2025-era GET streams (server-initiated messages) held open at once to one upstream by one
    # process. They live as long as the agent keeps them, on connections of their own, so however
    # many an agent opens, tool calls still find a connection; one past this is refused.
    BEHAVRY_UPSTREAM_MAX_GET_STREAMS = env_int("BEHAVRY_UPSTREAM_MAX_GET_STREAMS", 32, minimum=1)
    BEHAVRY_MCP_MAX_GET_STREAMS_PER_AGENT = env_int("BEHAVRY_MCP_MAX_GET_STREAMS_PER_AGENT", 4, minimum=1)
    # 2025-era sessions most clients leave without a DELETE: ended by the beat job once unused this
    # long (agents.services.agent_session_expire_idle). At least 60: last_seen_at moves once a
    # minute (agents.services.SESSION_TOUCH_SECONDS), so a finer limit could not be kept.
    BEHAVRY_MCP_SESSION_IDLE_SECONDS = env_int("BEHAVRY_MCP_SESSION_IDLE_SECONDS", 3600, minimum=60)
    # Open sessions per agent and upstream; an initialize past it ends the least recently seen.
    BEHAVRY_MCP_MAX_SESSIONS_PER_AGENT = env_int("BEHAVRY_MCP_MAX_SESSIONS_PER_AGENT", 64, minimum=1)
    # Ended sessions are kept this long (the admin's session list, an investigation), then deleted
    # by the hourly retention job: a client that initializes for every call would grow the table
    # without end. What an agent did is in the audit trail, which has its own retention.
    BEHAVRY_MCP_SESSION_RETENTION_DAYS = env_int("BEHAVRY_MCP_SESSION_RETENTION_DAYS", 30, minimum=1)
    # An upstream's answer is held whole to be checked and re-shaped (about three copies of it at
    # once): past this many bytes in one JSON body or one SSE event the call fails instead of
    # filling a process that serves every agent.
    BEHAVRY_UPSTREAM_MAX_ANSWER_BYTES = env_int(
        "BEHAVRY_UPSTREAM_MAX_ANSWER_BYTES", 32 * 1024 * 1024, minimum=64 * 1024
    )
    BEHAVRY_DECISION_TIMEOUT_SECONDS = env_int("BEHAVRY_DECISION_TIMEOUT_SECONDS", 5, minimum=1)
    BEHAVRY_MCP_BODY_TIMEOUT_SECONDS = env_int("BEHAVRY_MCP_BODY_TIMEOUT_SECONDS", 30, minimum=1)
    BEHAVRY_ESCALATION_TIMEOUTS = {
        "low": env_int("BEHAVRY_ESCALATION_TIMEOUT_LOW", 30 * 60, minimum=1),
        "medium": env_int("BEHAVRY_ESCALATION_TIMEOUT_MEDIUM", 30 * 60, minimum=1),
        "high": env_int("BEHAVRY_ESCALATION_TIMEOUT_HIGH", 15 * 60, minimum=1),
        "critical": env_int("BEHAVRY_ESCALATION_TIMEOUT_CRITICAL", 5 * 60, minimum=1),
    }
    BEHAVRY_ESCALATION_RECHECK_SECONDS = env_int("BEHAVRY_ESCALATION_RECHECK_SECONDS", 2, minimum=1, maximum=2)
    BEHAVRY_MAX_HELD_REQUESTS = env_int("BEHAVRY_MAX_HELD_REQUESTS", 5000, minimum=1)
    BEHAVRY_WEBHOOK_URL = env_str("BEHAVRY_WEBHOOK_URL", "")
    BEHAVRY_WEBHOOK_SECRET = env_str("BEHAVRY_WEBHOOK_SECRET", "")
    if BEHAVRY_WEBHOOK_URL and len(BEHAVRY_WEBHOOK_SECRET) < 16:
        raise ConfigError("BEHAVRY_WEBHOOK_SECRET must be at least 16 characters when BEHAVRY_WEBHOOK_URL is set")
    BEHAVRY_AUDIT_RETENTION_DAYS = env_int("BEHAVRY_AUDIT_RETENTION_DAYS", 365, minimum=1)
    # Per API key (or signed-in person); the counters live in the cache, so Redis in production.
    BEHAVRY_API_RATE = env_rate("BEHAVRY_API_RATE", "1200/minute")
    BEHAVRY_LOG_LEVEL = env_str("BEHAVRY_LOG_LEVEL", "INFO").upper()
    if BEHAVRY_LOG_LEVEL not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
        raise ConfigError(f"BEHAVRY_LOG_LEVEL={BEHAVRY_LOG_LEVEL!r} is not a log level")
except ConfigError as exc:
    # One line, no traceback: an operator fixing an env file needs the variable and the reason.
    raise SystemExit(f"behavry: configuration error: {exc}") from None

# Without an explicit key a development key is derived per checkout, so the embedded default works
# out of the box but no two installs share a key. Production refuses to start without one (above).
SECRET_KEY = _secret or f"behavry-dev-insecure-{BASE_DIR}"

VAR_DIR.mkdir(parents=True, exist_ok=True)

INSTALLED_APPS = [
    # daphne first so `runserver` serves ASGI (Channels) instead of Django's WSGI dev server.
    "daphne",
    "behavry.admin_site.BehavryAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_htmx",
    "accounts",
    "agents",
    "proxy",
    "policies",
    "escalations",
    "alerts",
    "audit",
    "risk",
    "demo",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "behavry.urls"
ASGI_APPLICATION = "behavry.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {"default": _database.django}
DATABASE_VENDOR = _database.vendor
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            # redis-py 8 reads with a 5 s socket timeout by default, the same 5 s that
            # channels-redis blocks in BZPOPMIN: an idle receive() then failed every 5 s. 10 s
            # clears the blocking pop and still bounds a command to a hung Redis.
            "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": 10}], "prefix": "behavry"},
        }
    }
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "behavry",
        }
    }
    CELERY_BROKER_URL = REDIS_URL
    CELERY_BROKER_TRANSPORT_OPTIONS: dict = {}
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    # A file cache, not LocMem: the web process and the Celery worker must see the same values
    # (the worker's heartbeat for /readyz, cross-process freshness stamps).
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": str(VAR_DIR / "cache"),
        }
    }
    # kombu's filesystem transport: a broker that needs no server, shared by the web process and
    # the worker through var/celery/. Good for one machine; production uses Redis.
    _celery_dir = VAR_DIR / "celery"
    for _sub in ("out", "processed"):
        (_celery_dir / _sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_URL = "filesystem://"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_celery_dir / "out"),
        "data_folder_out": str(_celery_dir / "out"),
        "processed_folder": str(_celery_dir / "processed"),
        "store_processed": False,
    }

CELERY_TASK_ALWAYS_EAGER = env_bool("BEHAVRY_CELERY_EAGER", False)
CELERY_TASK_IGNORE_RESULT = True
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
CELERY_TIMEZONE = "UTC"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STATICFILES_DIRS = [BASE_DIR / "static"]

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SECURE = _production
CSRF_COOKIE_SECURE = _production

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.authentication.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["accounts.permissions.IsViewer"],
    "EXCEPTION_HANDLER": "behavry.api.exception_handler",
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    # JSON only: integrations send JSON, and form/multipart parsing is attack surface we do not need.
    "DEFAULT_PARSER_CLASSES": ["behavry.drf_defaults.StrictJSONParser"],
    "DEFAULT_PAGINATION_CLASS": "behavry.drf_defaults.BoundedLimitOffsetPagination",
    "PAGE_SIZE": 100,
    "DEFAULT_THROTTLE_CLASSES": ["accounts.throttles.ApiKeyRateThrottle"] if BEHAVRY_API_RATE else [],
    "DEFAULT_THROTTLE_RATES": {"api": BEHAVRY_API_RATE},
    "DEFAULT_SCHEMA_CLASS": "behavry.schema.BehavrySchema",
    # `?format=` selects an export format on the audit list, not a DRF renderer.
    "URL_FORMAT_OVERRIDE": None,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Behavry API",
    "DESCRIPTION": (
        "Governance proxy for AI agents: servers, agents, policies, exceptions, escalations, alerts and "
        "the audit trail. Authenticate with `Authorization: Bearer <API key>` (`bhv_key_…`). Every error "
        'is `{"error": {"code", "message", "fields"}}` with a 4xx status.'
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    # Separate request and response components, so read-only fields are not "required" in requests.
    "COMPONENT_SPLIT_REQUEST": True,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "ENUM_NAME_OVERRIDES": {
        "RiskTierEnum": "agents.models.RiskTier",
        "PersonRoleEnum": "accounts.roles.PersonRole",
        "ToolActionEnum": "proxy.models.ToolAction",
        "PolicyModeEnum": "policies.models.PolicyMode",
        "ReplayModeEnum": [("replace", "replace"), ("add", "add")],
    },
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {"behavry": {"handlers": ["console"], "level": BEHAVRY_LOG_LEVEL, "propagate": False}},
}
