"""Settings: defaults, TOML, environment precedence, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from symbi_common import envvars
from symbi_common.errors import ConfigError
from symbi_common.settings import Settings, load_settings

GOOD_TOML = """
[runtime]
max_concurrent_agents = 50
default_sandbox_tier = "Tier1"

[security]
enforce_policies = true

[context]
embedding_dimension = 768

[mcp]
tool_verification = "warn"
connection_timeout_s = 12.5
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "symbi.toml"
    path.write_text(text)
    return path


def test_defaults_match_the_seed() -> None:
    settings = load_settings(environ={})
    assert settings.runtime.default_sandbox_tier == "Tier2"
    assert settings.security.enforce_policies
    assert settings.security.audit_enabled
    assert settings.context.embedding_dimension == 384
    assert settings.mcp.tool_verification == "strict"
    assert settings.audit_storage == settings.runtime.state_dir / "audit"


def test_toml_values_are_read(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, GOOD_TOML), environ={})
    assert settings.runtime.max_concurrent_agents == 50
    assert settings.runtime.default_sandbox_tier == "Tier1"
    assert settings.context.embedding_dimension == 768
    assert settings.mcp.connection_timeout_s == 12.5


def test_environment_overrides_toml(tmp_path: Path) -> None:
    env = {
        "SYMBI_MAX_CONCURRENT_AGENTS": "7",
        "QDRANT_URL": "http://qdrant:6333",
        "MCP_SERVER_DISCOVERY": "true",
        "SYMBI_AUDIT_STORAGE": str(tmp_path / "audit"),
        "SYMBI_LOG_LEVEL": "DEBUG",
    }
    settings = load_settings(write(tmp_path, GOOD_TOML), environ=env)
    assert settings.runtime.max_concurrent_agents == 7
    assert settings.context.vector_db_url == "http://qdrant:6333"
    assert settings.mcp.discovery_enabled is True
    assert settings.audit_storage == tmp_path / "audit"
    assert settings.runtime.log_level == "DEBUG"


def test_config_path_variable_selects_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD_TOML)
    settings = load_settings(environ={envvars.CONFIG_PATH: str(path)})
    assert settings.runtime.max_concurrent_agents == 50


def test_missing_config_path_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"SYMBI_CONFIG_PATH=.*no such file"):
        load_settings(environ={envvars.CONFIG_PATH: str(tmp_path / "nope.toml")})


def test_malformed_toml_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "[runtime]\nmax_concurrent_agents = = 3\n")
    with pytest.raises(ConfigError, match=r"not valid TOML.*line 2"):
        load_settings(path, environ={})


def test_unknown_key_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "[runtime]\nmax_concurent_agents = 3\n")
    with pytest.raises(ConfigError, match=r"\[runtime\]\.max_concurent_agents .*unknown key"):
        load_settings(path, environ={})


def test_unknown_section_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[runtme\]"):
        load_settings(write(tmp_path, "[runtme]\nx = 1\n"), environ={})


def test_section_must_be_a_table(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="`runtime` must be a"):
        load_settings(write(tmp_path, 'runtime = "fast"\n'), environ={})


def test_bad_type_in_toml_names_key_and_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[runtime]\nmax_concurrent_agents = "many"\n')
    with pytest.raises(ConfigError, match=r"\[runtime\]\.max_concurrent_agents in .*symbi.toml: Input should be"):
        load_settings(path, environ={})


def test_bad_environment_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"\[mcp\]\.tool_verification from SYMBI_TOOL_VERIFICATION='lenient'"):
        load_settings(environ={"SYMBI_TOOL_VERIFICATION": "lenient"})


def test_out_of_range_value_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"\[runtime\]\.max_concurrent_agents .*greater than 0"):
        load_settings(environ={"SYMBI_MAX_CONCURRENT_AGENTS": "0"})


def test_secret_values_are_masked_in_errors() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ={"OPENAI_API_KEY": "sk-real", "SYMBI_RUNTIME_MODE": "production", "SYMBI_API_PORT": "x"})
    assert "sk-real" not in str(info.value)


def test_placeholder_secret_refused_in_production() -> None:
    env = {"SYMBI_RUNTIME_MODE": "production", "OPENAI_API_KEY": "changeme"}
    with pytest.raises(ConfigError, match="placeholder secret"):
        load_settings(environ=env)
    assert load_settings(environ={**env, "SYMBI_RUNTIME_MODE": "development"}).context.openai_api_key is not None


def test_every_registered_variable_maps_to_a_real_key() -> None:
    settings = Settings()
    for var in envvars.REGISTRY:
        if not var.key:
            continue
        section, _, key = var.key.partition(".")
        assert key in type(getattr(settings, section)).model_fields, var.name


def test_with_overrides_revalidates() -> None:
    settings = Settings().with_overrides({"nats.url": "nats://x:1"})
    assert settings.nats.servers == ["nats://x:1"]
    with pytest.raises(ConfigError, match="scheduler_threads"):
        Settings().with_overrides({"runtime.scheduler_threads": -1})


def test_relative_paths_in_a_config_file_are_relative_to_the_file(tmp_path: Path) -> None:
    conf = tmp_path / "conf" / "symbi.toml"
    conf.parent.mkdir()
    conf.write_text(
        '[mcp]\nkeys_dir = "keys"\ntrust_bundles = ["b/one.json", "/abs/two.json"]\n'
        '[[mcp.servers]]\nname = "s"\ncommand = ["python3", "server.py"]\ncwd = "tools"\n'
        '[security]\naudit_storage = "../audit"\n'
    )
    settings = load_settings(conf, environ={"SYMBI_NATS_CREDENTIALS": "relative.creds"})
    assert settings.mcp.keys_dir == conf.parent / "keys"
    assert settings.mcp.trust_bundles == (conf.parent / "b" / "one.json", Path("/abs/two.json"))
    assert settings.mcp.servers[0].cwd == conf.parent / "tools"
    assert settings.mcp.servers[0].command == ("python3", "server.py")  # arguments are not paths
    assert settings.security.audit_storage == conf.parent / ".." / "audit"
    assert settings.nats.credentials == Path("relative.creds")  # environment values stay as given
