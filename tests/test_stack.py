"""The local Graphite stack's configuration, rendered from carbon_conf/."""

from __future__ import annotations

import configparser
from pathlib import Path

import pytest

from dsat.errors import ConfigError
from dsat.tools.stack import LocalStack, render_carbon_conf


def test_carbon_conf_renders_every_field(tmp_path: Path) -> None:
    """carbon.conf's fields are all filled; carbon reads ports and directories from it."""
    stack = LocalStack(tmp_path, pickle_port=2104, http_port=8081)
    text = render_carbon_conf(
        STORAGE_DIR=tmp_path,
        WHISPER_DIR=stack.whisper_dir,
        CONF_DIR=tmp_path / "conf",
        LOG_DIR=tmp_path / "log",
        INTERFACE="127.0.0.1",
        LINE_PORT=stack.line_port,
        PICKLE_PORT=2104,
        QUERY_PORT=stack.query_port,
        GRAPHITE_URL=stack.graphite_url,
    )
    assert "${" not in text
    conf = configparser.ConfigParser(interpolation=None)
    conf.read_string(text)
    assert conf["cache"]["PICKLE_RECEIVER_PORT"] == "2104"
    assert conf["cache"]["LOCAL_DATA_DIR"] == str(stack.whisper_dir)
    assert conf["cache"]["MAX_CREATES_PER_MINUTE"] == "inf"


def test_carbon_registers_tagged_series_with_the_stacks_graphite_web(tmp_path: Path) -> None:
    """carbon.conf enables tags, keeps hashed _tagged/ file names and posts to this stack's graphite-web."""
    stack = LocalStack(tmp_path, pickle_port=2104, http_port=8081)
    stack.prepare_carbon()
    conf = configparser.ConfigParser(interpolation=None)
    conf.read(tmp_path / "conf" / "carbon.conf")
    assert conf["cache"]["ENABLE_TAGS"] == "True" and conf["cache"]["TAG_HASH_FILENAMES"] == "True"
    assert conf["cache"]["GRAPHITE_URL"] == "http://127.0.0.1:8081"
    other = LocalStack(tmp_path / "b", pickle_port=2104, graphite_url="http://graphite-web:8080")
    assert other.graphite_url == "http://graphite-web:8080"


def test_a_missing_field_is_a_config_error() -> None:
    """Rendering without a field names the field instead of writing a broken file."""
    with pytest.raises(ConfigError, match="STORAGE_DIR"):
        render_carbon_conf(WHISPER_DIR="/x")


def test_graphite_env_points_graphite_web_at_the_state_dir(tmp_path: Path) -> None:
    """graphite-web gets its settings module, storage, Whisper dir and carbon's query port; the key is kept."""
    stack = LocalStack(tmp_path, pickle_port=2104)
    env = stack.graphite_env()
    assert env["GRAPHITE_SETTINGS_MODULE"] == "dsat.carbon_conf.local_settings"
    assert env["DSAT_WHISPER_DIR"] == str(tmp_path.resolve() / "whisper")
    assert env["DSAT_CARBONLINK_HOSTS"] == f"127.0.0.1:{stack.query_port}:a"
    assert stack.graphite_env()["DSAT_SECRET_KEY"] == env["DSAT_SECRET_KEY"]
