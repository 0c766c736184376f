"""Refuse UPDATE and DELETE on audit rows in the database itself (see audit/db.py)."""

from django.db import migrations


def install(apps, schema_editor):
    from audit.db import install_append_only

    install_append_only(schema_editor)


def uninstall(apps, schema_editor):
    from audit.db import uninstall_append_only

    uninstall_append_only(schema_editor)


class Migration(migrations.Migration):
    dependencies = [("audit", "0001_initial")]
    operations = [migrations.RunPython(install, uninstall)]
