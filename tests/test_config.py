"""Configuration: the PRODUCT.md file, errors that name the key, env and secret sources."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from notifier import config
from notifier.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent

MINIMAL = """
[redis]
url = "redis://127.0.0.1:6379/0"
stream = "dentally:events"

[[practices]]
name = "main"
region = "uk"
api_key_env = "TEST_DENTALLY_KEY"
resources = ["patients", "appointments", "invoices", "payments"]
poll_interval = 60

[[subscribers]]
name = "crm"
url = "https://crm.example.com/hooks/dentally"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
events = ["patient.*", "appointment.updated"]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_minimal_product_config_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_DENTALLY_KEY", "k1")
    s = config.load(write(tmp_path, MINIMAL))
    p = s.practices[0]
    assert p.url == "https://api.dentally.co" and p.api_key_value() == "k1"
    assert p.interval("patients") == 60 and p.initial_sync == "seed"
    assert s.subscribers[0].events == ["patient.*", "appointment.updated"]
    assert s.redis.retention == 604_800
    assert "whsec_" not in repr(s) and "k1" not in repr(s)


def test_example_config_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DENTALLY_API_KEY", "k")
    monkeypatch.setenv("CRM_WEBHOOK_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    s = config.load(ROOT / "config.example.toml")
    assert s.practices and s.subscribers


@pytest.mark.parametrize(("patch", "named"), [
    ('region = "uk"', 'practices[0] (main).region'),
    ("poll_interval = 60", "practices[0] (main).poll_interval"),
    ('resources = ["patients", "appointments", "invoices", "payments"]',
     "practices[0] (main).resources"),
])
def test_errors_name_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, patch: str,
                             named: str) -> None:
    monkeypatch.setenv("TEST_DENTALLY_KEY", "k1")
    broken = {'region = "uk"': 'region = "mars"', "poll_interval = 60": "poll_interval = -1",
              'resources = ["patients", "appointments", "invoices", "payments"]':
              'resources = ["patients", "teeth"]'}[patch]
    with pytest.raises(ConfigError) as info:
        config.load(write(tmp_path, MINIMAL.replace(patch, broken)))
    assert named in str(info.value)


def test_unknown_key_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"practices\[0\] \(main\)\.pol_interval: Extra"):
        config.load(write(tmp_path, MINIMAL.replace("poll_interval", "pol_interval")))


def test_missing_key_source_names_the_variable(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEST_DENTALLY_KEY", raising=False)
    with pytest.raises(ConfigError, match="TEST_DENTALLY_KEY is not set"):
        config.load(write(tmp_path, MINIMAL))


def test_key_from_file_strips_newline(tmp_path: Path) -> None:
    keyfile = tmp_path / "main.key"
    keyfile.write_text("filekey\n")
    text = MINIMAL.replace('api_key_env = "TEST_DENTALLY_KEY"', f'api_key_file = "{keyfile}"')
    assert config.load(write(tmp_path, text)).practices[0].api_key_value() == "filekey"


def test_two_key_sources_are_refused(tmp_path: Path) -> None:
    text = MINIMAL.replace('api_key_env = "TEST_DENTALLY_KEY"',
                           'api_key_env = "X"\napi_key = "inline"')
    with pytest.raises(ConfigError, match="exactly one of api_key_env"):
        config.load(write(tmp_path, text))


def test_environment_overrides_the_file(tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_DENTALLY_KEY", "k1")
    monkeypatch.setenv("DENTALLY_NOTIFIER_REDIS__STREAM", "other:events")
    s = config.load(write(tmp_path, MINIMAL))
    assert s.redis.stream == "other:events" and s.redis.url == "redis://127.0.0.1:6379/0"


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(write(tmp_path, "[redis\n"))
    with pytest.raises(ConfigError, match="cannot read config file"):
        config.load(tmp_path / "absent.toml")


def test_duplicate_practice_names(tmp_path: Path) -> None:
    text = MINIMAL + '\n[[practices]]\nname = "main"\napi_key = "x"\n'
    with pytest.raises(ConfigError, match="name 'main' is used twice"):
        config.load(write(tmp_path, text))


def test_cli_exits_2_naming_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace('region = "uk"', 'region = "mars"'))
    cmd = [sys.executable, "-m", "notifier", "run", "--config", str(path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                          env={"TEST_DENTALLY_KEY": "k", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 2
    assert "practices[0] (main).region" in done.stderr


def test_malformed_webhook_secret_is_named_not_echoed(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_DENTALLY_KEY", "k1")
    text = MINIMAL.replace('secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"',
                           'secret = "whsec_!!!notbase64"')
    with pytest.raises(ConfigError) as info:
        config.load(write(tmp_path, text))
    assert "subscriber 'crm' secret" in str(info.value) and "!!!" not in str(info.value)


def test_key_file_under_the_credentials_directory(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "main-api-key").write_text("from-systemd\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    text = MINIMAL.replace('api_key_env = "TEST_DENTALLY_KEY"',
                           'api_key_file = "$CREDENTIALS_DIRECTORY/main-api-key"')
    assert config.load(write(tmp_path, text)).practices[0].api_key_value() == "from-systemd"


def test_subscriber_url_needs_a_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_DENTALLY_KEY", "k1")
    text = MINIMAL.replace('url = "https://crm.example.com/hooks/dentally"', 'url = "https://"')
    with pytest.raises(ConfigError, match=r"subscribers\[0\] \(crm\)\.url"):
        config.load(write(tmp_path, text))


def test_a_bad_environment_override_names_the_variable_not_the_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_DENTALLY_KEY", "k1")
    monkeypatch.setenv("DENTALLY_NOTIFIER_LOG__LEVEL", "verbose")
    path = write(tmp_path, MINIMAL)
    with pytest.raises(ConfigError) as info:
        config.load(path)
    message = str(info.value)
    assert "environment variable DENTALLY_NOTIFIER_LOG__LEVEL (log.level)" in message
    assert str(path) not in message  # the file is fine: do not send the user there
    # a bad file value and a bad variable together: each blamed on its own source
    monkeypatch.setenv("DENTALLY_NOTIFIER_REDIS__RETENTION", "-1")
    path = write(tmp_path, MINIMAL.replace('region = "uk"', 'region = "mars"'))
    with pytest.raises(ConfigError) as info:
        config.load(path)
    message = str(info.value)
    assert f"invalid configuration in {path} and the environment" in message
    assert "practices[0] (main).region" in message
    assert "environment variable DENTALLY_NOTIFIER_REDIS__RETENTION (redis.retention)" \
        in message


def test_env_source_matches_case_insensitively_and_whole_tables() -> None:
    env = {"dentally_notifier_log__level": "x", "DENTALLY_NOTIFIER_REDIS": "{}"}
    assert config.env_source(("log", "level"), env) == "dentally_notifier_log__level"
    assert config.env_source(("redis", "url"), env) == "DENTALLY_NOTIFIER_REDIS"
    assert config.env_source(("practices", 0, "region"), env) is None


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000/hook", "http://localhost/hook",
                                 "http://[::1]:9/h", "http://10.1.2.3/h",
                                 "http://169.254.169.254/latest", "http://app.localhost/h"])
def test_a_private_subscriber_url_without_allow_private_is_refused_at_load(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    """Every delivery to it would fail and be retried for days: exit 2 naming the key."""
    monkeypatch.setenv("TEST_DENTALLY_KEY", "k1")
    text = MINIMAL.replace('url = "https://crm.example.com/hooks/dentally"', f'url = "{url}"')
    with pytest.raises(ConfigError, match=r"subscribers\[0\] \(crm\)\.url: .*allow_private"):
        config.load(write(tmp_path, text))
    allowed = text.replace('events = ["patient.*"', 'allow_private = true\nevents = ["patient.*"')
    assert config.load(write(tmp_path, allowed)).subscribers[0].url == url


def test_cli_refuses_a_loopback_subscriber_with_exit_2(tmp_path: Path) -> None:
    text = MINIMAL.replace("https://crm.example.com/hooks/dentally", "http://127.0.0.1:9/h")
    cmd = [sys.executable, "-m", "notifier", "check", "--config", str(write(tmp_path, text))]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                          env={"TEST_DENTALLY_KEY": "k", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 2
    assert "subscribers[0] (crm).url" in done.stderr and "allow_private" in done.stderr


def test_max_delete_fraction_defaults_and_is_bounded(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_DENTALLY_KEY", "k1")
    assert config.load(write(tmp_path, MINIMAL)).practices[0].max_delete_fraction == 0.2
    patched = MINIMAL.replace("poll_interval = 60", "poll_interval = 60\nmax_delete_fraction = 1.5")
    with pytest.raises(ConfigError) as info:
        config.load(write(tmp_path, patched))
    assert "practices[0] (main).max_delete_fraction" in str(info.value)


def test_a_subscriber_header_from_an_unset_variable_fails_at_load(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_DENTALLY_KEY", "k")
    monkeypatch.delenv("TEST_CRM_TOKEN", raising=False)
    path = write(tmp_path, MINIMAL + 'headers = { Authorization = { env = "TEST_CRM_TOKEN" } }\n')
    with pytest.raises(ConfigError, match="subscriber 'crm' header 'Authorization': "
                                          "environment variable TEST_CRM_TOKEN is not set"):
        config.load(path)
    monkeypatch.setenv("TEST_CRM_TOKEN", "Bearer t")
    assert config.load(path).subscribers[0].header_values() == {"Authorization": "Bearer t"}


def test_dentally_webhooks_are_off_by_default(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_DENTALLY_KEY", "k1")
    s = config.load(write(tmp_path, MINIMAL))
    p = s.practices[0]
    assert s.ingest.listen is None and not p.hinted
    assert p.backstop_interval == 300 and p.hint_silence_after == 900
    assert s.ingest.signature_header == "X-Dentally-Signature"
    assert s.ingest.max_body == 1 << 20


def test_dentally_webhook_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_DENTALLY_KEY", "k1")
    secret = tmp_path / "hook"
    secret.write_text("new old\n")
    text = MINIMAL.replace("poll_interval = 60", f'poll_interval = 60\n'
                           f'webhook_secret_file = "{secret}"\nbackstop_interval = 120') \
        + '\n[ingest]\nlisten = "0.0.0.0:8090"\ntrusted_proxies = ["10.0.0.0/8", "::1"]\n'
    s = config.load(write(tmp_path, text))
    p = s.practices[0]
    assert p.hinted and p.webhook_secret_values() == ["new", "old"]
    assert "new" not in repr(s)
    assert s.ingest.listen == "0.0.0.0:8090" and p.backstop_interval == 120
    assert config.restart_needed(s, s.model_copy(update={"ingest": s.ingest.model_copy(
        update={"listen": "0.0.0.0:9"})})) == ["[ingest] listen"]


@pytest.mark.parametrize(("patch", "message"), [
    ('[ingest]\nlisten = "8090"', "ingest.listen: Value error, must be host:port"),
    ('[ingest]\ntrusted_proxies = ["nope"]', "'nope' is not an IP address or network"),
    ('[ingest]\nmax_body = 2000000', "ingest.max_body"),
    ('[ingest]\nsignature_encoding = "rot13"', "ingest.signature_encoding"),
])
def test_bad_ingest_settings_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       patch: str, message: str) -> None:
    monkeypatch.setenv("TEST_DENTALLY_KEY", "k1")
    with pytest.raises(ConfigError, match=message):
        config.load(write(tmp_path, MINIMAL + "\n" + patch + "\n"))


def test_two_webhook_secret_sources_are_refused(tmp_path: Path) -> None:
    text = MINIMAL.replace("poll_interval = 60", 'poll_interval = 60\nwebhook_secret = "a"\n'
                           'webhook_secret_env = "B"')
    with pytest.raises(ConfigError, match="at most one of webhook_secret_env"):
        config.load(write(tmp_path, text))


def test_a_missing_webhook_secret_fails_at_load(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_DENTALLY_KEY", "k1")
    monkeypatch.delenv("NO_SUCH_HOOK_SECRET", raising=False)
    text = MINIMAL.replace("poll_interval = 60", 'poll_interval = 60\n'
                           'webhook_secret_env = "NO_SUCH_HOOK_SECRET"')
    with pytest.raises(ConfigError, match="webhook secret: environment variable "
                                          "NO_SUCH_HOOK_SECRET is not set"):
        config.load(write(tmp_path, text))
