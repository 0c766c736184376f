from tests.proxy.conftest import (  # noqa: F401 - shared live-Behavry fixtures
    _django_db_helper,
    _fresh_proxy_caches,
    agent,
    agent_and_token,
    behavry_url,
    demo_server,
    legacy_server,
    starter_policies,
    token,
)
