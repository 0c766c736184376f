from django.apps import AppConfig
from django.db.models.signals import post_migrate


def _install_cache_triggers(sender, using: str = "default", **kwargs) -> None:
    from proxy.generation import install_cache_triggers

    install_cache_triggers(using)


class ProxyConfig(AppConfig):
    name = "proxy"
    verbose_name = "Upstream servers and tools"

    def ready(self) -> None:
        # After every migrate and flush, for this app only (once per run): a migration that
        # rebuilds a watched table on SQLite drops its triggers; this puts them back.
        post_migrate.connect(_install_cache_triggers, sender=self, dispatch_uid="behavry_cache_triggers")
