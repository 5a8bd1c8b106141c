"""Secrets from files and _FILE variables, and the accepted master keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.secrets import MasterKeys, SecretError, digest_of, env_secret, read_secret
from proxy.settings import ConfigError, Settings, load_settings
from tests.conftest import WriteConfig

SENTINEL = "sk-sentinel-7f3a9c"


def _quiet(_: str) -> None:
    """Swallow settings warnings."""


def _secret(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _openai(api_key: str | None = None, **params: object) -> dict[str, object]:
    entry: dict[str, object] = {"model": "openai/gpt-4o", **params}
    if api_key is not None:
        entry["api_key"] = api_key
    return {"model_name": "gpt", "params": entry}


# --------------------------------------------------------------------------- reading


def test_read_secret_drops_one_trailing_newline(tmp_path: Path) -> None:
    """A secret file's trailing newline (or CRLF) is not part of the value."""
    assert read_secret(str(_secret(tmp_path, "a", "abc\n")), "x") == "abc"
    assert read_secret(str(_secret(tmp_path, "b", "abc\r\n")), "x") == "abc"
    assert read_secret(str(_secret(tmp_path, "c", " abc ")), "x") == " abc "


def test_missing_file_error_names_setting_and_path(tmp_path: Path) -> None:
    """An unreadable file is an error naming the setting and the path."""
    path = tmp_path / "absent"
    with pytest.raises(SecretError, match=rf"^NAME: cannot read secret file {path}: "):
        read_secret(str(path), "NAME")


def test_empty_or_binary_file_is_refused_without_its_content(tmp_path: Path) -> None:
    """An empty file (it would open the proxy) and a non-UTF-8 file are errors."""
    with pytest.raises(SecretError, match="is empty"):
        read_secret(str(_secret(tmp_path, "e", "\n")), "NAME")
    binary = tmp_path / "b"
    binary.write_bytes(b"\xff\xfe" + SENTINEL.encode())
    with pytest.raises(SecretError, match="not UTF-8") as info:
        read_secret(str(binary), "NAME")
    assert SENTINEL not in str(info.value)


def test_env_secret_reads_the_file_variant(tmp_path: Path) -> None:
    """NAME_FILE supplies NAME's value from a file, and says which file."""
    path = _secret(tmp_path, "k", SENTINEL + "\n")
    assert env_secret("K", {"K_FILE": str(path)}) == (SENTINEL, str(path))
    assert env_secret("K", {"K": "direct"}) == ("direct", None)
    assert env_secret("K", {}) is None


def test_env_secret_refuses_both_variants(tmp_path: Path) -> None:
    """NAME and NAME_FILE both set is an error naming both, not the value."""
    path = _secret(tmp_path, "k", "from-file")
    with pytest.raises(SecretError, match="K and K_FILE are both set") as info:
        env_secret("K", {"K": SENTINEL, "K_FILE": str(path)})
    assert SENTINEL not in str(info.value)


# --------------------------------------------------------------------------- settings


def test_api_key_file_reference(tmp_path: Path, write_config: WriteConfig) -> None:
    """``api_key: file:/path`` reads the key from the file and records it for rotation."""
    key = _secret(tmp_path, "key", SENTINEL + "\n")
    path = write_config({"model_list": [_openai(f"file:{key}", api_base="http://u/v1")]})
    settings = load_settings(str(path), {}, _quiet)
    assert settings.model_list[0].params.api_key == SENTINEL
    (file,) = settings.secret_files
    assert (file.name, file.path, file.target, file.index) == (
        "model_list[0].params.api_key",
        str(key),
        "api_key",
        0,
    )
    assert file.digest == digest_of(SENTINEL)


def test_environ_reference_honours_name_file(tmp_path: Path, write_config: WriteConfig) -> None:
    """``os.environ/NAME`` takes NAME_FILE's content when only the file variant is set."""
    key = _secret(tmp_path, "key", SENTINEL)
    path = write_config({"model_list": [_openai("os.environ/MY_KEY", api_base="http://u/v1")]})
    settings = load_settings(str(path), {"MY_KEY_FILE": str(key)}, _quiet)
    assert settings.model_list[0].params.api_key == SENTINEL
    assert [f.name for f in settings.secret_files] == ["MY_KEY_FILE"]


def test_provider_default_key_file(tmp_path: Path, write_config: WriteConfig) -> None:
    """OPENAI_API_KEY_FILE / ANTHROPIC_API_KEY_FILE fill keys the config leaves out."""
    key = _secret(tmp_path, "key", SENTINEL)
    entries = [_openai(), {"model_name": "c", "params": {"model": "anthropic/claude"}}]
    path = write_config({"model_list": entries})
    env = {"OPENAI_API_KEY_FILE": str(key), "ANTHROPIC_API_KEY_FILE": str(key)}
    settings = load_settings(str(path), env, _quiet)
    assert [m.params.api_key for m in settings.model_list] == [SENTINEL, SENTINEL]
    assert [(f.name, f.index) for f in settings.secret_files] == [
        ("OPENAI_API_KEY_FILE", 0),
        ("ANTHROPIC_API_KEY_FILE", 1),
    ]


def test_disabled_entries_shift_the_recorded_index(
    tmp_path: Path, write_config: WriteConfig
) -> None:
    """A deployment left out for an unset variable does not misdirect later rotations."""
    key = _secret(tmp_path, "key", SENTINEL)
    entries = [
        _openai("os.environ/UNSET_KEY", api_base="http://u/v1"),
        _openai(f"file:{key}", api_base="http://u/v1"),
    ]
    settings = load_settings(str(write_config({"model_list": entries})), {}, _quiet)
    assert len(settings.model_list) == 1
    assert [(f.target, f.index) for f in settings.secret_files] == [("api_key", 0)]


@pytest.mark.parametrize(
    ("variable", "attribute"),
    [
        ("LLM_PROXY_MASTER_KEY", "master_key"),
        ("LITELLM_MASTER_KEY", "master_key"),
        ("DATABASE_URL", "database.url"),
        ("REDIS_URL", "limits.redis_url"),
    ],
)
def test_file_variants_of_secret_variables(tmp_path: Path, variable: str, attribute: str) -> None:
    """Each secret environment variable has a _FILE twin."""
    value = {"DATABASE_URL": "postgresql://u:pw@db/x", "REDIS_URL": "redis://:pw@r:6379/0"}.get(
        variable, SENTINEL
    )
    path = _secret(tmp_path, "secret", value + "\n")
    settings = load_settings(None, {f"{variable}_FILE": str(path)}, _quiet)
    section, _, name = attribute.rpartition(".")
    holder: object = getattr(settings, section) if section else settings
    assert getattr(holder, name) == value
    assert [f.name for f in settings.secret_files] == [f"{variable}_FILE"]


def test_value_and_file_both_set_is_a_config_error(tmp_path: Path) -> None:
    """LLM_PROXY_MASTER_KEY and its _FILE together stop start-up, naming both."""
    path = _secret(tmp_path, "mk", "from-file")
    env = {"LLM_PROXY_MASTER_KEY": SENTINEL, "LLM_PROXY_MASTER_KEY_FILE": str(path)}
    with pytest.raises(ConfigError) as info:
        load_settings(None, env, _quiet)
    message = str(info.value)
    assert "LLM_PROXY_MASTER_KEY and LLM_PROXY_MASTER_KEY_FILE are both set" in message
    assert SENTINEL not in message


def test_unreadable_secret_file_is_a_config_error(
    tmp_path: Path, write_config: WriteConfig
) -> None:
    """A ``file:`` reference to a missing file names the setting and the path."""
    missing = tmp_path / "nope"
    path = write_config({"master_key": f"file:{missing}"})
    with pytest.raises(ConfigError, match=rf"^master_key: cannot read secret file {missing}"):
        load_settings(str(path), {}, _quiet)


def test_environment_override_replaces_a_file_backed_setting(
    tmp_path: Path, write_config: WriteConfig
) -> None:
    """A master key from the environment wins over the config's file, which is not watched."""
    path = write_config({"master_key": f"file:{_secret(tmp_path, 'mk', 'from-file')}"})
    settings = load_settings(str(path), {"LLM_PROXY_MASTER_KEY": SENTINEL}, _quiet)
    assert settings.master_key == SENTINEL
    assert settings.secret_files == ()


def test_cache_sharing_the_limits_redis_watches_it_too(tmp_path: Path) -> None:
    """A Redis cache that inherits REDIS_URL_FILE rotates with it."""
    path = _secret(tmp_path, "redis", "redis://:pw@127.0.0.1:6379/0")
    config = tmp_path / "c.yaml"
    config.write_text("cache: {type: redis}\n")
    settings = load_settings(str(config), {"REDIS_URL_FILE": str(path)}, _quiet)
    assert settings.cache is not None
    assert settings.cache.redis_url == "redis://:pw@127.0.0.1:6379/0"
    assert sorted(f.target for f in settings.secret_files) == ["cache_redis_url", "redis_url"]


def test_previous_master_keys_from_config(tmp_path: Path, write_config: WriteConfig) -> None:
    """previous_master_keys lists keys (files allowed) with their expiry."""
    old = _secret(tmp_path, "old", "sk-old\n")
    path = write_config(
        {
            "master_key": "sk-new",
            "previous_master_keys": [{"key": f"file:{old}", "expires": "2030-01-01T00:00:00Z"}],
        }
    )
    settings = load_settings(str(path), {}, _quiet)
    (previous,) = settings.previous_master_keys
    assert previous.key == "sk-old"
    assert previous.expires.year == 2030
    assert [(f.target, f.index) for f in settings.secret_files] == [("previous_master_key", 0)]


def test_previous_master_key_from_the_environment(tmp_path: Path) -> None:
    """LLM_PROXY_MASTER_KEY_PREVIOUS(_FILE) needs LLM_PROXY_MASTER_KEY_PREVIOUS_EXPIRES."""
    old = _secret(tmp_path, "old", "sk-old")
    env = {"LLM_PROXY_MASTER_KEY": "sk-new", "LLM_PROXY_MASTER_KEY_PREVIOUS_FILE": str(old)}
    with pytest.raises(ConfigError, match="needs LLM_PROXY_MASTER_KEY_PREVIOUS_EXPIRES"):
        load_settings(None, env, _quiet)
    env["LLM_PROXY_MASTER_KEY_PREVIOUS_EXPIRES"] = "2030-01-01T00:00:00+00:00"
    settings = load_settings(None, env, _quiet)
    assert [p.key for p in settings.previous_master_keys] == ["sk-old"]


def test_previous_master_keys_need_a_current_one(write_config: WriteConfig) -> None:
    """Previous keys without a master key would be a confusing half-open proxy."""
    path = write_config(
        {"previous_master_keys": [{"key": "sk-old", "expires": "2030-01-01T00:00:00Z"}]}
    )
    with pytest.raises(ConfigError, match="previous_master_keys: needs a master_key"):
        load_settings(str(path), {}, _quiet)


def test_secret_files_cannot_be_set_in_the_config(write_config: WriteConfig) -> None:
    """The loader's record of secret files is not a config setting."""
    with pytest.raises(ConfigError, match="secret_files: unknown setting"):
        load_settings(str(write_config({"secret_files": []})), {}, _quiet)


def test_settings_without_files_record_nothing() -> None:
    """Plain values are not watched."""
    settings = load_settings(None, {"LLM_PROXY_MASTER_KEY": SENTINEL}, _quiet)
    assert isinstance(settings, Settings)
    assert settings.secret_files == ()


# --------------------------------------------------------------------------- master keys


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_master_keys_accept_current_and_unexpired_previous() -> None:
    """A previous key is accepted until its expiry, then refused."""
    clock = _Clock()
    keys = MasterKeys("new", [("old", 1010.0)], clock=clock)
    assert keys.matches("new")
    assert keys.matches("old")
    assert not keys.matches("other")
    clock.now = 1010.0
    assert not keys.matches("old")
    assert keys.matches("new")


def test_master_keys_unconfigured_match_nothing() -> None:
    """Without a master key nothing matches (the pipeline then runs open, by choice)."""
    keys = MasterKeys(None)
    assert not keys.configured
    assert not keys.matches("")


def test_rotation_without_grace_refuses_the_old_key() -> None:
    """Rotating with no grace period drops the old key at once."""
    keys = MasterKeys("old")
    keys.rotate("new")
    assert keys.matches("new")
    assert not keys.matches("old")


def test_rotation_grace_keeps_the_old_key_for_a_while() -> None:
    """With a grace period the replaced key works until it ends."""
    clock = _Clock()
    keys = MasterKeys("old", clock=clock)
    keys.rotate("new", grace_seconds=30)
    assert keys.matches("old")
    clock.now += 30
    assert not keys.matches("old")
    keys.rotate("newer", grace_seconds=30)
    assert keys.matches("new")
    assert not keys.matches("old")


def test_replace_previous_keeps_its_expiry() -> None:
    """A previous key re-read from its file keeps the configured expiry."""
    clock = _Clock()
    keys = MasterKeys("cur", [("a", 1005.0)], clock=clock)
    keys.replace_previous(0, "b")
    assert keys.matches("b")
    assert not keys.matches("a")
    clock.now = 1005.0
    assert not keys.matches("b")
