"""`greenloop.toml`: every mistake is one line naming the file and the key."""

from __future__ import annotations

import pytest

from policy.config import DEFAULT_DENIED_GLOBS, GreenloopConfig, WriteRules, load_config_text
from policy.errors import ConfigError
from policy.types import Autonomy

GOOD = """
[server]
interval_seconds = 60

[forge]
api_url = "http://127.0.0.1:9000/api/v3"

[[project]]
name = "demo"
repo = "acme/demo"
jobs = ["ci"]
flaky_jobs = ["ci"]
autonomy = "auto_merge"

[project.budgets]
max_turns = 12

[project.write]
allowed = ["src/**"]
denied = ["src/vendor/**"]

[[project]]
name = "other"
repo = "acme/other"
"""


def test_valid_config_loads() -> None:
    config = load_config_text(GOOD)
    assert isinstance(config, GreenloopConfig)
    demo = config.project("demo")
    assert demo.autonomy is Autonomy.AUTO_MERGE
    assert demo.budgets.max_turns == 12
    assert demo.watches("ci") and not demo.watches("nightly")
    assert config.project("other").watches("anything")
    assert config.server.interval_seconds == 60
    with pytest.raises(KeyError):
        config.project("missing")


def test_project_denied_globs_add_to_the_defaults() -> None:
    rules = load_config_text(GOOD).project("demo").write
    assert rules.effective_denied[: len(DEFAULT_DENIED_GLOBS)] == DEFAULT_DENIED_GLOBS
    assert "src/vendor/**" in rules.effective_denied
    assert WriteRules(denied=(".git/**",)).effective_denied == DEFAULT_DENIED_GLOBS


BROKEN = [
    pytest.param("x = [", "not valid TOML", id="broken-toml"),
    pytest.param("[server]\nbogus = 1\n", "server.bogus: unknown key", id="unknown-server-key"),
    pytest.param(
        '[[project]]\nname = "demo"\nrepo = "acme/demo"\nfoo = 1\n', "foo: unknown key", id="unknown-project-key"
    ),
    pytest.param(
        '[[project]]\nname = "demo"\nrepo = "not-a-repo"\n', "repo: must look like 'owner/name'", id="bad-repo"
    ),
    pytest.param('[[project]]\nname = "demo"\nrepo = "acme/demo.git"\n', "repo:", id="repo-dot-git"),
    pytest.param('[[project]]\nname = "demo"\nrepo = "../../etc"\n', "repo:", id="repo-traversal"),
    pytest.param('[[project]]\nname = "demo"\nrepo = "acme/demo"\nautonomy = "yolo"\n', "autonomy:", id="bad-autonomy"),
    pytest.param('[[project]]\nname = "Demo Project"\nrepo = "acme/demo"\n', "name:", id="bad-name"),
    pytest.param(
        '[[project]]\nname = "demo"\nrepo = "acme/demo"\n[project.budgets]\nmax_turns = 0\n',
        "projects[0] ('demo').budgets.max_turns",
        id="budget-out-of-range",
    ),
    pytest.param(
        '[[project]]\nname = "demo"\nrepo = "acme/a"\n[[project]]\nname = "demo"\nrepo = "acme/b"\n',
        "duplicate project name 'demo'",
        id="duplicate-names",
    ),
    pytest.param('[[project]]\nname = "demo"\n', "repo", id="missing-repo"),
    pytest.param('[[project]]\nname = "d"\nrepo = "a/b"\ndefault_branch = "a..b"\n', "default_branch", id="bad-branch"),
    pytest.param("[server]\nhttp_port = 70000\n", "server.http_port", id="bad-port"),
]


@pytest.mark.parametrize(("text", "expected"), BROKEN)
def test_broken_config_is_one_line_naming_the_key(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text(text, source="conf/greenloop.toml")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("conf/greenloop.toml: ")
    assert expected in message


def test_several_problems_are_counted_on_the_one_line() -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text("[server]\nbogus = 1\nother = 2\n")
    assert "(and 1 more problem(s))" in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("value", ["true", "True", "1"])
def test_env_overrides_the_kill_switch(value: str) -> None:
    config = load_config_text(GOOD, env={"GREENLOOP_SERVER__KILL_SWITCH": value})
    assert config.server.kill_switch is True
    assert load_config_text(GOOD, env={}).server.kill_switch is False


def test_env_override_beats_the_file_and_is_validated() -> None:
    config = load_config_text(GOOD, env={"GREENLOOP_SERVER__INTERVAL_SECONDS": "5"})
    assert config.server.interval_seconds == 5
    with pytest.raises(ConfigError, match=r"server\.interval_seconds"):
        load_config_text(GOOD, env={"GREENLOOP_SERVER__INTERVAL_SECONDS": "soon"})


def test_env_ignores_unrelated_variables() -> None:
    config = load_config_text(GOOD, env={"GREENLOOP_PROJECTS__X": "1", "HOME": "/root", "GREENLOOP_": "x"})
    assert len(config.projects) == 2


def test_unknown_env_key_is_reported_like_a_file_key() -> None:
    with pytest.raises(ConfigError, match=r"server\.bogus: unknown key"):
        load_config_text("", env={"GREENLOOP_SERVER__BOGUS": "1"})


def test_an_env_value_error_names_the_variable_not_the_file() -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text(GOOD, source="conf/greenloop.toml", env={"GREENLOOP_SERVER__HTTP_PORT": "eighty"})
    message = str(info.value)
    assert message.startswith("environment variable GREENLOOP_SERVER__HTTP_PORT: server.http_port: ")
    assert "conf/greenloop.toml" not in message
    # A problem in the file is still blamed on the file, even with unrelated variables set.
    with pytest.raises(ConfigError, match=r"^conf/greenloop\.toml: server\.http_port"):
        load_config_text(
            "[server]\nhttp_port = 'x'\n", source="conf/greenloop.toml", env={"GREENLOOP_AGENT__MODEL": "m"}
        )


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mysql://app:pw@db/greenloop", "unsupported database 'mysql'"),
        ("mysql+pymysql://app@db/greenloop", "unsupported database 'mysql'"),
        ("oracle://db/x", "unsupported database 'oracle'"),
        ("greenloop.db", "unsupported database"),
        ("postgresql+psycopg2://db/x", "unsupported driver 'psycopg2' for postgresql: use postgresql+asyncpg"),
        ("sqlite+pysqlite:///x.db", "unsupported driver 'pysqlite' for sqlite: use sqlite+aiosqlite"),
    ],
)
def test_only_sqlite_and_postgresql_database_urls_pass(url: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text(f'[server]\ndatabase_url = "{url}"\n')
    assert f"server.database_url: {expected}" in str(info.value)
    assert "pw@" not in str(info.value)  # a password in the URL is never echoed


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:///g.db",
        "sqlite+aiosqlite:///g.db",
        "postgresql://u@h/db",
        "postgres://u@h/db",
        "postgresql+asyncpg://h/d",
    ],
)
def test_sqlite_and_postgresql_urls_are_accepted(url: str) -> None:
    assert load_config_text(f'[server]\ndatabase_url = "{url}"\n').server.database_url == url
