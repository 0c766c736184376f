"""The console in a real browser (headless Chromium): sign-in works end to end."""

import pytest

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_person_signs_in_through_the_login_page(live_server, page, admin_user):
    page.goto(f"{live_server.url}/")
    assert "/login/" in page.url
    page.fill("#id_username", admin_user.username)
    page.fill("#id_password", "correct horse battery staple")
    page.click("button[type=submit]")
    page.wait_for_url(f"{live_server.url}/")
    assert "Signed in as alice-admin (admin)" in page.inner_text("main")


def test_a_wrong_password_stays_on_the_login_page(live_server, page, admin_user):
    page.goto(f"{live_server.url}/login/")
    page.fill("#id_username", admin_user.username)
    page.fill("#id_password", "wrong")
    page.click("button[type=submit]")
    assert "did not match" in page.inner_text("main")
