"""Settings: where values come from, and every bad value stopping start-up with a message that
names the setting and its source."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpuscribe.config import ConfigError, Settings, load_settings, unknown_variables


def load(env: dict[str, str], tmp_path: Path) -> Settings:
    return load_settings(env=env, config_file=None, flags={"data_dir": str(tmp_path)})


@pytest.fixture(autouse=True)
def _no_toml(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)


def test_flags_win_over_environment_over_toml(tmp_path: Path) -> None:
    toml = tmp_path / "g.toml"
    toml.write_text("port = 1\nmax_queue_length = 5\nmax_attempts = 7\n")
    settings = load_settings(
        env={"GPUSCRIBE_PORT": "2", "GPUSCRIBE_MAX_QUEUE_LENGTH": "6"},
        config_file=toml,
        flags={"port": "3"},
    )
    assert (settings.port, settings.max_queue_length, settings.max_attempts) == (3, 6, 7)


@pytest.mark.parametrize(
    ("var", "value", "words"),
    [
        ("GPUSCRIBE_STORE", "mysql://x", ["store='mysql://x'", "postgresql://"]),
        ("GPUSCRIBE_STORE", "sqlite:///", ["store='sqlite:///'"]),
        ("GPUSCRIBE_SIMULATE_GPUS", "2x24G", ["simulate_gpus='2x24G'", "2x24GiB"]),
        ("GPUSCRIBE_DEFAULT_MODEL", "tiny.ne", ["default_model='tiny.ne'", "'tiny.en'?"]),
        ("GPUSCRIBE_DEFAULT_ENGINE", "whisper", ["default_engine='whisper'", "faster-whisper"]),
        ("GPUSCRIBE_MEMORY_WARNING_FRACTION", "1.5", ["memory_warning_fraction=1.5"]),
        ("GPUSCRIBE_MEMORY_WARNING_FOREIGN_GROWTH_BYTES", "0", ["more than 0"]),
        ("GPUSCRIBE_BATCH_LAYOUT", "paged", ["batch_layout='paged'", "per-row or pooled"]),
        ("GPUSCRIBE_PORT", "70000", ["port=70000"]),
        ("GPUSCRIBE_PORT", "http", ["port='http'"]),
        ("MAX_MEMORY_UTILIZATION", "1.5", ["max_memory_utilization=1.5"]),
    ],
)
def test_a_bad_value_names_the_setting_and_where_it_came_from(
    tmp_path: Path, var: str, value: str, words: list[str]
) -> None:
    with pytest.raises(ConfigError) as raised:
        load({var: value}, tmp_path)
    message = str(raised.value)
    assert f"environment variable {var}" in message
    for word in words:
        assert word in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "url", ["", "memory://", "sqlite:///var/x.db", "sqlite:////abs/x.db", "postgresql://u@h/db"]
)
def test_good_store_urls(tmp_path: Path, url: str) -> None:
    assert load({"GPUSCRIBE_STORE": url}, tmp_path).store == url


def test_known_model_aliases_are_good_defaults(tmp_path: Path) -> None:
    assert load({"GPUSCRIBE_DEFAULT_MODEL": "turbo"}, tmp_path).default_model == "turbo"


def test_bad_value_in_toml_names_the_file(tmp_path: Path) -> None:
    toml = tmp_path / "g.toml"
    toml.write_text('simulate_gpus = "lots"\n')
    with pytest.raises(ConfigError, match=r"simulate_gpus='lots'.*g\.toml"):
        load_settings(env={}, config_file=toml)


def test_unknown_toml_key_suggests_the_setting(tmp_path: Path) -> None:
    toml = tmp_path / "g.toml"
    toml.write_text("max_upload_byte = 5\n")
    with pytest.raises(ConfigError, match="did you mean 'max_upload_bytes'"):
        load_settings(env={}, config_file=toml)


def test_misspelled_variable_is_named_with_the_closest_setting() -> None:
    env = {
        "GPUSCRIBE_MAX_UPLOADBYTES": "1",
        "GPUSCRIBE_DEVICE": "0",
        "GPUSCRIBE_MAX_UPLOAD_BYTES": "1",
        "GPUSCRIBE_SERVER": "http://x",
        "GPUSCRIBE_API_KEY": "k",
        "GPUSCRIBE_CONFIG": "g.toml",
        "GPUSCRIBE_TEST_GPU": "0",
        "MAX_TASKS_PER_GPU": "2",
        "HOME": "/root",
    }
    warnings = unknown_variables(env)
    assert len(warnings) == 2
    assert "GPUSCRIBE_DEVICE is not a gpuscribe setting" in warnings[0]
    assert "did you mean GPUSCRIBE_DEVICES?" in warnings[0]
    assert "did you mean GPUSCRIBE_MAX_UPLOAD_BYTES?" in warnings[1]


def test_models_dir_defaults_under_the_data_dir(tmp_path: Path) -> None:
    settings = load({}, tmp_path)
    assert settings.models_dir == str(tmp_path / "models")
    assert load({"GPUSCRIBE_MODELS_DIR": "/m"}, tmp_path).models_path == Path("/m")


def test_data_dir_defaults_to_the_users_data_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert load_settings(env={}).data_dir == str(tmp_path / "xdg" / "gpuscribe")


def test_relative_data_dir_is_made_absolute(tmp_path: Path) -> None:
    """From a flag or variable: relative to where the command runs; from a gpuscribe.toml:
    relative to that file, wherever the command runs."""
    assert load_settings(env={}, flags={"data_dir": "d"}).data_dir == str(tmp_path / "d")
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "gpuscribe.toml").write_text('data_dir = "state"\n')
    settings = load_settings(env={}, config_file=conf / "gpuscribe.toml")
    assert settings.data_dir == str(conf / "state")
    assert settings.store_url == f"sqlite:///{conf / 'state' / 'gpuscribe.db'}"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"GPUSCRIBE_MEMORY_WARNING_FRACTION": "0.05"}, "GPUSCRIBE_MEMORY_WARNING_FRACTION"),
        ({"MAX_MEMORY_UTILIZATION": "0.08"}, "MAX_MEMORY_UTILIZATION"),  # level 0.04 by default
    ],
)
def test_a_warning_level_at_or_below_the_clear_margin_is_refused(
    tmp_path: Path, env: dict[str, str], named: str
) -> None:
    """Calm means used memory below the level less the margin: with nothing above zero to get
    below, a warning would never end and its GPU would take no task again."""
    with pytest.raises(ConfigError) as raised:
        load(env, tmp_path)
    message = str(raised.value)
    assert f"environment variable {named}" in message
    assert "must be above memory_warning_clear_margin (0.05)" in message
    assert load({**env, "GPUSCRIBE_MEMORY_WARNING_CLEAR_MARGIN": "0.01"}, tmp_path)


def test_memory_warning_settings_read_sizes_and_follow_the_cap(tmp_path: Path) -> None:
    settings = load(
        {
            "GPUSCRIBE_MEMORY_WARNING_FOREIGN_GROWTH_BYTES": "512MiB",
            "MAX_MEMORY_UTILIZATION": "0.8",
        },
        tmp_path,
    )
    assert settings.memory_warning_foreign_growth_bytes == 512 * 1024**2
    assert settings.memory_warning_level == pytest.approx(0.75)  # 0.05 below the cap
    explicit = load({"GPUSCRIBE_MEMORY_WARNING_FRACTION": "0.6"}, tmp_path)
    assert explicit.memory_warning_level == 0.6
