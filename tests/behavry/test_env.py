from pathlib import Path

import pytest

from behavry.env import ConfigError, env_bool, env_choice, env_int, env_list, env_rate, parse_database_url

SQLITE_DEFAULT = Path("var/behavry-default.sqlite3")


def test_it_reads_defaults_when_unset():
    assert env_int("X", 7, environ={}) == 7
    assert env_bool("X", True, environ={}) is True
    assert env_list("X", ["a"], environ={}) == ["a"]


def test_it_parses_integers_and_booleans():
    assert env_int("X", 1, environ={"X": " 42 "}) == 42
    assert env_bool("X", False, environ={"X": "yes"}) is True
    assert env_bool("X", True, environ={"X": "off"}) is False


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"X": "abc"}, "X='abc' is not an integer"),
        ({"X": "0"}, "below the minimum"),
        ({"X": "70000"}, "above the maximum"),
    ],
)
def test_it_refuses_bad_integers_naming_the_variable(environ, message):
    with pytest.raises(ConfigError, match=message):
        env_int("X", 1, minimum=1, maximum=65535, environ=environ)


def test_it_refuses_a_non_boolean():
    with pytest.raises(ConfigError, match="not a boolean"):
        env_bool("X", False, environ={"X": "maybe"})


def test_it_reads_a_choice_and_refuses_others_naming_them():
    choices = ("uvicorn", "daphne")
    assert env_choice("X", "uvicorn", choices, environ={}) == "uvicorn"
    assert env_choice("X", "uvicorn", choices, environ={"X": " Daphne "}) == "daphne"
    with pytest.raises(ConfigError, match="X='gunicorn' is not one of: uvicorn, daphne"):
        env_choice("X", "uvicorn", choices, environ={"X": "gunicorn"})


def test_it_defaults_to_sqlite_in_var():
    config = parse_database_url("", sqlite_default=SQLITE_DEFAULT)
    assert config.vendor == "sqlite"
    assert config.django["NAME"] == str(SQLITE_DEFAULT)


def test_it_parses_a_postgres_url():
    config = parse_database_url("postgres://bob:s%40cret@db.internal:6543/behavry", sqlite_default=SQLITE_DEFAULT)
    assert config.vendor == "postgresql"
    assert config.django["ENGINE"] == "django.db.backends.postgresql"
    assert (config.django["USER"], config.django["PASSWORD"]) == ("bob", "s@cret")
    assert (config.django["HOST"], config.django["PORT"], config.django["NAME"]) == ("db.internal", "6543", "behavry")


@pytest.mark.parametrize(
    "url", ["mysql://x", "postgres://host/", "sqlite://", "oracle://a/b", "postgres://h:notaport/db"]
)
def test_it_refuses_unsupported_or_incomplete_database_urls(url):
    with pytest.raises(ConfigError):
        parse_database_url(url, sqlite_default=SQLITE_DEFAULT)


def test_it_parses_api_rates():
    assert env_rate("R", "1200/minute", environ={}) == "1200/minute"
    assert env_rate("R", "x", environ={"R": "20/s"}) == "20/second"
    assert env_rate("R", "x", environ={"R": " 5/Hour "}) == "5/hour"
    assert env_rate("R", "x", environ={"R": "off"}) is None


@pytest.mark.parametrize("raw", ["fast", "0/minute", "-1/s", "10/fortnight", "10"])
def test_it_refuses_a_bad_rate_naming_the_variable(raw):
    with pytest.raises(ConfigError, match="BEHAVRY_API_RATE"):
        env_rate("BEHAVRY_API_RATE", "1/s", environ={"BEHAVRY_API_RATE": raw})
