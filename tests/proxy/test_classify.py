"""What policy matches a call's resource against (proxy/classify.py): whole, and paths in their
normal form, so that a deny rule on resources cannot be walked around."""

import pytest

from policies.services import policy_create
from proxy.classify import MAX_RESOURCE, normal_path, resource_text
from tests.conftest import TEST_ACTOR
from tests.proxy.conftest import MODES, mcp_client


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("/etc/shadow", "/etc/shadow"),
        ("//etc/shadow", "/etc/shadow"),
        ("/srv/../etc/shadow", "/etc/shadow"),
        ("/srv/app/./././secret.key", "/srv/app/secret.key"),
        ("/../../etc/passwd", "/etc/passwd"),
        ("srv/../etc/passwd", "etc/passwd"),
        ("/srv/app/./logs/", "/srv/app/logs/"),
        ("file:///etc/../etc/passwd", "file:///etc/passwd"),
        # not paths: left alone
        ("https://example.com/a/../b", "https://example.com/a/../b"),
        ("acme/widgets", "acme/widgets"),
        ("customers", "customers"),
        ("..", ".."),
    ],
)
def test_paths_are_matched_in_their_normal_form(raw, normal):
    assert normal_path(raw) == normal
    assert resource_text(raw) == normal


def test_a_resource_is_never_cut():
    long = "/srv/" + "a/" * MAX_RESOURCE + "secret.key"
    assert resource_text(long).endswith("secret.key")
    assert len(resource_text({"paths": [long]})) > MAX_RESOURCE


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("demo_server", "starter_policies")
@pytest.mark.parametrize("mode", MODES)
async def test_a_deny_rule_on_resources_cannot_be_walked_around(behavry_url, token, mode):
    """The outsider's paths: the same file by another spelling, or behind 1,000 characters of
    padding that a cut-off match would never reach. Reads are allowed; keys and /etc are not."""
    from tests.proxy.conftest import run_in_thread

    await run_in_thread(
        policy_create,
        data={"name": "no secrets", "effect": "deny", "resources": ["*.key", "/etc/*"], "reason": "secret"},
        by=TEST_ACTOR,
    )
    padded = "/srv/app/" + "./" * 600 + "secret.key"
    async with mcp_client(f"{behavry_url}/mcp/demo", token, mode) as client:
        allowed = await client.call_tool("read_file", {"path": "/srv/app/readme.txt"})
        assert "Behavry denied" not in allowed.content[0].text  # the control: reads go through
        for path in ("//etc/shadow", "/srv/../etc/shadow", "/srv/app/./secret.key", padded):
            result = await client.call_tool("read_file", {"path": path})
            assert result.is_error, path
            assert result.structured_content["behavry"]["policy_id"] == "no-secrets", path
        too_long = "/srv/app/" + "x" * MAX_RESOURCE + ".txt"
        result = await client.call_tool("read_file", {"path": too_long})
        assert result.is_error and result.structured_content["behavry"]["policy_id"] == "system.resource_too_long"
