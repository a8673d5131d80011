"""Configuration: a TOML file, overridden by ``DENTALLY_NOTIFIER_*`` environment variables.

Unknown keys are errors (a typo must never pass silently), and every error names the key:
``practices[0] (main).region: Input should be 'uk', 'roi', ...``. Secrets may be inline,
in an environment variable or in a file (systemd credentials); they are held as
``SecretStr`` so that printing a config never shows them, and read from their source each
time they are needed, so a rotated key file is picked up on reload.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from notifier import signing
from notifier.core import fields as known_fields
from notifier.core import resources, shaping
from notifier.delivery import safety
from notifier.errors import ConfigError

DEFAULT_PATH = "/etc/dentally-notifier/config.toml"
ENV_PREFIX = "DENTALLY_NOTIFIER_"

REGIONS: dict[str, str] = {
    "uk": "https://api.dentally.co",
    "roi": "https://api.dentally.co",
    "au": "https://api.apac.dentally.com",
    "nz": "https://api.apac.dentally.com",
    "ca": "https://api.ca.dentally.com",
    "sandbox": "https://api.sandbox.dentally.co",
}

def _check_url(value: str, schemes: tuple[str, ...]) -> str:
    """``value`` as a URL with one of ``schemes``, a host and a valid port (if any)."""
    try:
        parts = urlsplit(value)
        port = parts.port  # ValueError when out of range or not a number
    except ValueError as exc:
        raise ValueError(f"not a valid URL: {exc}") from None
    if parts.scheme not in schemes or not parts.hostname:
        raise ValueError(f"must be a {' or '.join(s + '://' for s in schemes)} URL with a host")
    if port == 0:
        raise ValueError("port 0 is not a port to connect to")
    return value


Name = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")]
Seconds = Annotated[float, Field(gt=0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


FieldNames = list[str] | dict[str, list[str]]
"""A field list for every resource, or per resource: ``{ patients = [...], "*" = [...] }``
(``*``: every resource not listed)."""


def _field_table(value: FieldNames | None, what: str) -> dict[str, list[str]] | None:
    """``value`` as resource -> names, each checked (ValueError names the problem): a
    per-resource list against that resource's known fields, a list for every resource
    (or ``*``) against the fields of all described resources together."""
    if value is None:
        return None
    table = {shaping.ALL: value} if isinstance(value, list) else value
    for resource, names in table.items():
        if resource == shaping.ALL:
            problem = known_fields.unknown_anywhere(names)
        elif resource not in resources.RESOURCES:
            raise ValueError(f"{what}: unknown resource {resource!r} (known: "
                             f"{', '.join(sorted(resources.RESOURCES))}, or \"*\")")
        else:
            problem = known_fields.unknown(resource, names)
        if problem is not None:
            raise ValueError(f"{what}: {problem}")
        if len(set(names)) != len(names):
            raise ValueError(f"{what}: a field is listed twice")
    return table


def _rules(allow: dict[str, list[str]] | None, deny: dict[str, list[str]] | None
           ) -> dict[str, shaping.FieldRule]:
    out: dict[str, shaping.FieldRule] = {}
    for resource, names in (allow or {}).items():
        out[resource] = shaping.FieldRule(allow=frozenset(names))
    for resource, names in (deny or {}).items():
        out[resource] = shaping.FieldRule(deny=frozenset(names))
    return out


class HeaderSource(_Strict):
    """A header value from the environment or a file, like a secret."""

    env: str | None = None
    file: Path | None = None
    value: SecretStr | None = None

    @model_validator(mode="after")
    def _one(self) -> HeaderSource:
        given = [n for n in ("env", "file", "value") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("set exactly one of env, file, value")
        return self


def _read_secret(inline: SecretStr | None, env: str | None, file: Path | None,
                 what: str) -> str:
    """The secret from exactly one of its three sources; ConfigError names the problem."""
    if inline is not None:
        return inline.get_secret_value()
    if env is not None:
        value = os.environ.get(env)
        if not value:
            raise ConfigError(f"{what}: environment variable {env} is not set")
        return value.strip()
    if file is not None:
        file = Path(os.path.expandvars(str(file)))  # "$CREDENTIALS_DIRECTORY/main-api-key"
        try:
            value = file.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{what}: cannot read {file}: {exc.strerror}") from None
        if not value:
            raise ConfigError(f"{what}: {file} is empty")
        return value
    raise ConfigError(f"{what}: no secret configured")


class RedisConfig(_Strict):
    url: str = "redis://127.0.0.1:6379/0"
    stream: str = "dentally:events"
    prefix: str = Field(default="dentally-notifier", min_length=1)
    retention: Seconds = 604_800
    stream_fields: FieldNames | None = None
    """Keep only these record fields in the stream (all resources, or per resource): for
    operators who want the minimum there too. Snapshots stay whole (diffs need them)."""
    consumer_groups: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    """Your own consumer groups on the stream: retention never trims what they have not
    read or acknowledged, as for the subscribers' groups."""
    practice_lease: Annotated[float, Field(ge=0.5, le=300)] = 15.0
    """How long a practice's lease outlives its holder's last renewal: a daemon killed
    without stopping hands its practices on after this long."""

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if value.startswith("unix://"):
            return value
        try:
            return _check_url(value, ("redis", "rediss"))
        except ValueError as exc:
            # the message never repeats the URL: it may carry a password
            raise ValueError(str(exc)) from None

    @field_validator("stream_fields")
    @classmethod
    def _stream_fields(cls, value: FieldNames | None) -> FieldNames | None:
        _field_table(value, "stream_fields")
        return value

    def stream_shape(self) -> shaping.Shape | None:
        """How events are cut down before they enter the stream, if they are."""
        table = _field_table(self.stream_fields, "stream_fields")
        return None if table is None else shaping.Shape(fields=_rules(table, None),
                                                        skip_hidden_updates=False)


class PracticeConfig(_Strict):
    name: Name
    region: Literal["uk", "roi", "au", "nz", "ca", "sandbox"] = "uk"
    base_url: str | None = None
    api_key: SecretStr | None = None
    api_key_env: str | None = None
    api_key_file: Path | None = None
    resources: list[str] = Field(default_factory=lambda: list(resources.DEFAULT_RESOURCES))
    poll_interval: Seconds | None = None
    intervals: dict[str, Seconds] = Field(default_factory=dict)
    initial_sync: Literal["seed", "emit"] = "seed"
    max_requests_per_hour: Annotated[int, Field(ge=1)] = 1800
    max_requests_per_second: Annotated[float, Field(gt=0, le=100)] = 5.0
    """Pace of every request with this key (Dentally's burst limit is ~10/s per key)."""
    keepalive_interval: Seconds = 21_600
    reconcile_interval: Seconds = 86_400
    max_delete_fraction: Annotated[float, Field(ge=0, le=1)] = 0.2
    """A sweep that would delete more than this fraction of a resource's tracked records
    publishes none of them until ``dentally-notifier reconcile NAME RESOURCE --accept``."""
    overlap: Annotated[float, Field(ge=0)] = 60.0
    per_page: Annotated[int, Field(ge=1, le=100)] = 100
    window_rows: Annotated[int, Field(ge=100)] = 2000
    timeout: Seconds = 30.0
    rate_window: Seconds = 3600.0
    key_probe_interval: Seconds = 3600.0
    scope_recheck_interval: Seconds = 86_400.0
    webhook_secret: SecretStr | None = None
    webhook_secret_env: str | None = None
    webhook_secret_file: Path | None = None
    """The secret of the practice's Dentally webhooks (at most one source): with one set,
    ``[ingest] listen`` serves ``POST /dentally/<name>`` and hints make polls come early."""
    backstop_interval: Seconds = 300.0
    """While Dentally's webhooks keep arriving, a hinted resource polls this seldom."""
    hint_silence_after: Seconds = 900.0
    """No hint for this long while polls still find changes: the webhook is broken."""

    @field_validator("resources")
    @classmethod
    def _known_resources(cls, value: list[str]) -> list[str]:
        for name in value:
            if name not in resources.RESOURCES:
                known = ", ".join(sorted(resources.RESOURCES))
                raise ValueError(f"unknown resource {name!r} (known: {known})")
        if len(set(value)) != len(value):
            raise ValueError("a resource is listed twice")
        return value

    @field_validator("intervals")
    @classmethod
    def _known_intervals(cls, value: dict[str, float]) -> dict[str, float]:
        for name in value:
            if name not in resources.RESOURCES:
                raise ValueError(f"unknown resource {name!r}")
        return value

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None:
            _check_url(value, ("http", "https"))
        return value.rstrip("/") if value else value

    @model_validator(mode="after")
    def _one_key_source(self) -> PracticeConfig:
        given = [n for n in ("api_key", "api_key_env", "api_key_file")
                 if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("set exactly one of api_key_env, api_key_file, api_key"
                             + (f" (got {', '.join(given)})" if given else ""))
        return self

    @model_validator(mode="after")
    def _one_webhook_secret_source(self) -> PracticeConfig:
        given = [n for n in ("webhook_secret", "webhook_secret_env", "webhook_secret_file")
                 if getattr(self, n) is not None]
        if len(given) > 1:
            raise ValueError("set at most one of webhook_secret_env, webhook_secret_file, "
                             f"webhook_secret (got {', '.join(given)})")
        return self

    @property
    def url(self) -> str:
        return self.base_url or REGIONS[self.region]

    @property
    def hinted(self) -> bool:
        """Whether this practice takes Dentally's webhooks (a secret is configured)."""
        return any(getattr(self, n) is not None
                   for n in ("webhook_secret", "webhook_secret_env", "webhook_secret_file"))

    def webhook_secret_values(self) -> list[str]:
        """The webhook secrets (several, space-separated, while rotating)."""
        return _read_secret(self.webhook_secret, self.webhook_secret_env,
                            self.webhook_secret_file,
                            f"practice {self.name!r} webhook secret").split()

    def interval(self, resource: str) -> float:
        if resource in self.intervals:
            return self.intervals[resource]
        if self.poll_interval is not None:
            return self.poll_interval
        return resources.get(resource).interval

    def api_key_value(self) -> str:
        return _read_secret(self.api_key, self.api_key_env, self.api_key_file,
                            f"practice {self.name!r} API key")


HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
RESERVED_HEADERS = frozenset({
    "content-type", "content-length", "content-encoding", "transfer-encoding", "host",
    "connection", "webhook-id", "webhook-timestamp", "webhook-signature"})


class SubscriberConfig(_Strict):
    name: Name
    # Before ``url``: its validator reads it (fields are validated in this order).
    allow_private: bool = False
    url: str
    secret: SecretStr | None = None
    secrets: list[SecretStr] | None = None
    secret_env: str | None = None
    secret_file: Path | None = None
    events: list[str] = Field(default_factory=lambda: ["*"])
    start: Literal["now", "beginning"] = "now"
    retry_schedule: list[Annotated[float, Field(ge=0)]] = Field(
        default_factory=lambda: [5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0])
    timeout: Seconds = 15
    max_in_flight: Annotated[int, Field(ge=1, le=1000)] = 8
    max_per_second: Seconds | None = None
    ordering: Literal["none", "per_record"] = "none"
    disable_after: Seconds = 432_000
    payload: shaping.PayloadMode = "full"
    fields: FieldNames | None = None
    exclude_fields: FieldNames | None = None
    practices: list[Name] | None = None
    sites: list[Annotated[str, Field(min_length=1)]] | None = None
    changed: list[str] | None = None
    headers: dict[str, SecretStr | HeaderSource] = Field(default_factory=dict)
    format: shaping.Format = "standard"

    @field_validator("fields", "exclude_fields")
    @classmethod
    def _field_names(cls, value: FieldNames | None, info: ValidationInfo) -> FieldNames | None:
        _field_table(value, str(info.field_name))
        return value

    @field_validator("changed")
    @classmethod
    def _changed(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return value
        if not value:
            raise ValueError("an empty list would deliver no update at all; leave it out")
        singular = resources.BY_SINGULAR
        for item in value:
            kind, dot, name = item.partition(".")
            if not dot or kind not in singular:
                raise ValueError(f"{item!r}: write <resource>.<field> with the resource in "
                                 "the singular, e.g. \"appointment.state\"")
            problem = known_fields.unknown(singular[kind], [name])
            if problem is not None:
                raise ValueError(f"{item!r}: {problem}")
        return value

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, SecretStr | HeaderSource]
                 ) -> dict[str, SecretStr | HeaderSource]:
        for name in value:
            if not HEADER_NAME.match(name):
                raise ValueError(f"{name!r} is not a valid HTTP header name")
            if name.lower() in RESERVED_HEADERS:
                raise ValueError(f"{name!r} is set by the notifier itself (signature, "
                                 "content type, framing) and cannot be overridden")
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str, info: ValidationInfo) -> str:
        _check_url(value, ("http", "https"))
        host = urlsplit(value).hostname or ""
        reason = None if info.data.get("allow_private") else safety.host_reason(host)
        if reason:
            # Every delivery would be refused and retried for days: say so now.
            raise ValueError(f"{host} is {reason}; webhooks to loopback or private "
                             "addresses need allow_private = true for this subscriber")
        return value

    def secret_values(self) -> list[str]:
        """The signing secrets (several when rotating), from whichever source is set."""
        what = f"subscriber {self.name!r} secret"
        if self.secrets is not None:
            values = [s.get_secret_value() for s in self.secrets]
        elif self.secret is not None:
            values = [self.secret.get_secret_value()]
        else:
            values = _read_secret(None, self.secret_env, self.secret_file, what).split()
        for value in values:
            try:
                signing.secret_key(value)
            except ValueError as exc:
                raise ConfigError(f"{what}: {exc}") from None
        return values

    @model_validator(mode="after")
    def _shaping(self) -> SubscriberConfig:
        if self.fields is not None and self.exclude_fields is not None:
            allow = _field_table(self.fields, "fields") or {}
            deny = _field_table(self.exclude_fields, "exclude_fields") or {}
            both = sorted(set(allow) & set(deny))
            if both:
                raise ValueError("set fields or exclude_fields for a resource, not both "
                                 f"(both given for {', '.join(both)})")
        if self.payload == "thin" and (self.fields is not None
                                       or self.exclude_fields is not None):
            raise ValueError('payload = "thin" sends no record fields: fields and '
                             "exclude_fields have no effect with it; leave them out")
        return self

    def shape(self, regions: Mapping[str, str] | None = None) -> shaping.Shape:
        """This subscriber's delivery rules (``regions``: practice -> region)."""
        singular = resources.BY_SINGULAR
        changed: dict[str, set[str]] | None = None
        if self.changed is not None:
            changed = {}
            for item in self.changed:
                kind, _, name = item.partition(".")
                changed.setdefault(singular[kind], set()).add(name)
        return shaping.Shape(
            payload=self.payload,
            fields=_rules(_field_table(self.fields, "fields"),
                          _field_table(self.exclude_fields, "exclude_fields")),
            practices=frozenset(self.practices) if self.practices is not None else None,
            sites=frozenset(self.sites) if self.sites is not None else None,
            changed=({k: frozenset(v) for k, v in changed.items()}
                     if changed is not None else None),
            format=self.format, regions=dict(regions or {}))

    def header_values(self) -> dict[str, str]:
        """The extra headers, read from their sources (ConfigError names the header,
        never its value)."""
        out: dict[str, str] = {}
        for name, source in self.headers.items():
            what = f"subscriber {self.name!r} header {name!r}"
            if isinstance(source, SecretStr):
                value = source.get_secret_value()
            else:
                value = _read_secret(source.value, source.env, source.file, what)
            if "\r" in value or "\n" in value:
                raise ConfigError(f"{what}: the value contains a line break")
            out[name] = value
        return out

    @model_validator(mode="after")
    def _one_secret_source(self) -> SubscriberConfig:
        given = [n for n in ("secret", "secrets", "secret_env", "secret_file")
                 if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("set exactly one of secret, secrets, secret_env, secret_file")
        return self


def _check_listen(value: str | None, example: str = "127.0.0.1:9464") -> str | None:
    if value is None:
        return value
    _, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"must be host:port with a port from 1 to 65535, e.g. \"{example}\"")
    return value


class MetricsConfig(_Strict):
    listen: str | None = None

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str | None) -> str | None:
        return _check_listen(value)


MAX_HINT_BODY = 1 << 20


class IngestConfig(_Strict):
    """The endpoint for Dentally's own webhooks (``POST /dentally/<practice>``)."""

    listen: str | None = None
    signature_header: str = Field(default="X-Dentally-Signature", min_length=1)
    signature_encoding: Literal["hex", "base64"] = "hex"
    signature_prefix: str = ""
    trusted_proxies: list[str] = Field(default_factory=list)
    """Addresses or networks of reverse proxies whose ``X-Forwarded-For`` is believed."""
    max_body: Annotated[int, Field(ge=1024, le=MAX_HINT_BODY)] = MAX_HINT_BODY
    replay_window: Seconds = 600.0
    """A signed body seen again within this long is ignored (a replay, or a duplicate)."""

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str | None) -> str | None:
        return _check_listen(value, "0.0.0.0:8090")

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, value: list[str]) -> list[str]:
        from notifier.core.hints import networks
        networks(value)
        return value


class LogConfig(_Strict):
    format: Literal["auto", "json", "text"] = "auto"
    level: Literal["debug", "info", "warning", "error"] = "info"


class Settings(BaseSettings):
    """The whole configuration. Environment variables override the file."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__",
                                      extra="forbid")

    redis: RedisConfig = Field(default_factory=RedisConfig)
    practices: list[PracticeConfig] = Field(default_factory=list)
    subscribers: list[SubscriberConfig] = Field(default_factory=list)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    log: LogConfig = Field(default_factory=LogConfig)

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file's contents arrive as init arguments; the environment wins over them.
        return env_settings, init_settings

    @model_validator(mode="after")
    def _unique_names(self) -> Settings:
        for what, items in (("practices", self.practices), ("subscribers", self.subscribers)):
            names = [i.name for i in items]
            for name in names:
                if names.count(name) > 1:
                    raise ValueError(f"{what}: name {name!r} is used twice")
        configured = {p.name for p in self.practices}
        for sub in self.subscribers:
            unknown = sorted(set(sub.practices or ()) - configured)
            if self.practices and unknown:
                raise ValueError(f"subscribers ({sub.name}).practices: no practice named "
                                 f"{', '.join(map(repr, unknown))} (configured: "
                                 f"{', '.join(sorted(configured))})")
        self._filters_see_their_fields()
        taken = {s.name for s in self.subscribers}
        for group in self.redis.consumer_groups:
            if group in taken:
                raise ValueError(f"redis.consumer_groups: {group!r} is the consumer group "
                                 f"of subscriber {group!r} (each subscriber's name is its "
                                 "group); name your own group differently")
        return self

    def _filters_see_their_fields(self) -> None:
        """A subscriber filter reads the event as the stream keeps it: a ``sites`` filter
        on records whose ``site_id`` the stream drops would let every site through, and a
        ``changed`` field the stream drops would never match."""
        stream = self.redis.stream_shape()
        if stream is None:
            return
        singular = resources.BY_SINGULAR
        for sub in self.subscribers:
            if sub.sites is not None:
                for resource, names in known_fields.KNOWN_FIELDS.items():
                    if "site_id" in names and _stream_drops(stream, resource, "site_id"):
                        raise ValueError(
                            f"subscribers ({sub.name}).sites: [redis] stream_fields drops "
                            f"site_id from {resource}, so this filter could not tell their "
                            "sites apart; keep site_id in stream_fields")
            for item in sub.changed or ():
                kind, _, name = item.partition(".")
                of = singular.get(kind)
                if of is not None and _stream_drops(stream, of, name):
                    raise ValueError(
                        f"subscribers ({sub.name}).changed: [redis] stream_fields drops "
                        f"{name} from {of}, so {item!r} could never match; keep it "
                        "in stream_fields")


def _stream_drops(stream: shaping.Shape, resource: str, name: str) -> bool:
    rule = stream.rule(resource)
    return rule is not None and not rule.keeps(name)


def regions(settings: Settings) -> dict[str, str]:
    """Practice name -> region (CloudEvents' ``source``)."""
    return {p.name: p.region for p in settings.practices}


RESTART_ONLY: dict[str, tuple[str, ...]] = {
    "redis": ("url", "stream", "prefix", "stream_fields"),
    "metrics": ("listen",),
    "ingest": ("listen",),
}
"""Settings a reload (SIGHUP) cannot apply: the daemon keeps the running values until it
restarts. Everything else (practices, subscribers, ``[log]``, ``[redis] retention`` and
``consumer_groups``) applies at once."""


def restart_needed(old: Settings, new: Settings) -> list[str]:
    """``[redis] url``, ``[metrics] listen``: each changed setting a reload cannot apply."""
    return [f"[{table}] {key}" for table, keys in RESTART_ONLY.items() for key in keys
            if getattr(getattr(old, table), key) != getattr(getattr(new, table), key)]


def keep_restart_only(old: Settings, new: Settings) -> Settings:
    """``new`` with the running values of the settings only a restart applies."""
    return new.model_copy(update={
        table: getattr(new, table).model_copy(
            update={key: getattr(getattr(old, table), key) for key in keys})
        for table, keys in RESTART_ONLY.items()})


def _where(loc: tuple[int | str, ...], data: Any) -> str:
    """``practices[0] (main).region`` from a pydantic error location."""
    out = ""
    node = data
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            try:
                node = node[part]
                if isinstance(node, dict) and "name" in node:
                    out += f" ({node['name']})"
            except (IndexError, KeyError, TypeError):
                node = None
        else:
            out += ("." if out else "") + part
            node = node.get(part) if isinstance(node, dict) else None
    return out or "config"


def env_source(loc: tuple[int | str, ...],
               environ: Mapping[str, str] | None = None) -> str | None:
    """The ``DENTALLY_NOTIFIER_...`` variable that set the value at ``loc``, if one did:
    ``DENTALLY_NOTIFIER_LOG__LEVEL`` for ``log.level``, or ``DENTALLY_NOTIFIER_LOG`` when a
    whole table came from the environment (as JSON). Names match case-insensitively, as
    pydantic-settings reads them."""
    env = {k.upper(): k for k in (os.environ if environ is None else environ)}
    for end in range(len(loc), 0, -1):
        name = ENV_PREFIX + "__".join(str(p) for p in loc[:end]).upper()
        if name in env:
            return env[name]
    return None


def parse(data: dict[str, Any], source: str = "config") -> Settings:
    """Validate ``data`` (the parsed TOML) with the environment's overrides; ConfigError
    names every offending key, and the environment variable when one set it."""
    # pydantic-settings reads init arguments that begin with "_" as its own options
    # (``_env_prefix``, ``_cli_parse_args``...): from a file they are unknown keys.
    private = sorted(k for k in data if str(k).startswith("_"))
    if private:
        raise ConfigError(f"invalid configuration in {source}:\n  " + "\n  ".join(
            f"{k}: unknown key (a key may not begin with '_')" for k in private))
    try:
        return Settings(**data)
    except ValidationError as exc:
        lines, sources = [], []
        for err in exc.errors():
            loc = tuple(p for p in err["loc"] if p not in ("function-after",))
            var = env_source(loc)
            if var is not None:
                lines.append(f"environment variable {var} ({_where(loc, data)}): "
                             f"{err['msg']}")
                sources.append("the environment")
            else:
                lines.append(f"{_where(loc, data)}: {err['msg']}")
                sources.append(source)
        where = " and ".join(sorted(set(sources), key=lambda s: s == "the environment"))
        raise ConfigError(f"invalid configuration in {where}:\n  " + "\n  ".join(lines)) \
            from None


def config_path(explicit: str | None) -> Path:
    return Path(explicit or os.environ.get(ENV_PREFIX + "CONFIG") or DEFAULT_PATH)


def load(path: Path, *, api_keys: bool = True, webhook_secrets: bool = True) -> Settings:
    """Read, parse and validate the file at ``path``, including that every secret resolves.

    Commands that read Redis alone (``status``, ``tail``, ``subscriber``) pass
    ``api_keys=False, webhook_secrets=False``; ``redeliver`` signs, so it needs the webhook
    secrets but not the Dentally keys. Only ``run`` and ``check`` need everything.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    settings = parse(data, str(path))
    if api_keys:
        for practice in settings.practices:
            practice.api_key_value()
    if webhook_secrets:
        for sub in settings.subscribers:
            sub.secret_values()
            sub.header_values()
        for practice in settings.practices:
            if practice.hinted:
                practice.webhook_secret_values()
    return settings


def secret_files(settings: Settings) -> list[tuple[str, Path]]:
    """Every file a secret is read from: (which key, path)."""
    out: list[tuple[str, Path]] = []
    for i, p in enumerate(settings.practices):
        if p.api_key_file is not None:
            out.append((f"practices[{i}] ({p.name}).api_key_file",
                        Path(os.path.expandvars(str(p.api_key_file)))))
        if p.webhook_secret_file is not None:
            out.append((f"practices[{i}] ({p.name}).webhook_secret_file",
                        Path(os.path.expandvars(str(p.webhook_secret_file)))))
    for i, sub in enumerate(settings.subscribers):
        if sub.secret_file is not None:
            out.append((f"subscribers[{i}] ({sub.name}).secret_file",
                        Path(os.path.expandvars(str(sub.secret_file)))))
    return out


def loose_secret_files(settings: Settings) -> list[str]:
    """Warnings for secret files that the group or others may read (as ssh refuses
    private keys that are), one per file, naming the key and the mode."""
    out = []
    for key, path in secret_files(settings):
        try:
            mode = path.stat().st_mode & 0o777
        except OSError:
            continue  # unreadable files are reported when the secret is read
        if mode & 0o077:
            out.append(f"{key}: {path} is readable by {'others' if mode & 0o007 else 'its group'}"
                       f" (mode {mode:04o}); make it private: chmod 600 {path}")
    return out
