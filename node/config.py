"""Node configuration: the data directory and ``config.toml`` inside it."""

from __future__ import annotations

import os
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exchange.errors import ConfigError, InputError
from exchange.names import check_endpoint, check_node_id

CONFIG_FILE = "config.toml"
DEFAULT_HOME = Path("~/.local/share/accord")


def resolve_data_dir(flag: Path | None) -> Path:
    """``--data`` wins, then ``$ACCORD_HOME``, then ``~/.local/share/accord``."""
    if flag is not None:
        return flag.expanduser().absolute()
    env = os.environ.get("ACCORD_HOME")
    if env:
        return Path(env).expanduser().absolute()
    return DEFAULT_HOME.expanduser().absolute()


ALERT_TIMEOUT_DEFAULT = 10.0
ALERT_TIMEOUT_MIN, ALERT_TIMEOUT_MAX = 1.0, 300.0
ALERT_HOOKS = ("on_critical", "on_overdue")


@dataclass(frozen=True)
class AlertsConfig:
    """The optional ``[alerts]`` table (docs/adr/0021-alert-commands.md): escalation
    commands run with one JSON object on stdin. A command is an argv array (preferred: no
    shell is involved) or a string split with :func:`shlex.split` (POSIX rules, also no
    shell: pipes and redirections are not interpreted)."""

    on_critical: tuple[str, ...] = ()
    on_overdue: tuple[str, ...] = ()
    timeout: float = ALERT_TIMEOUT_DEFAULT

    @classmethod
    def parse(cls, raw: object) -> AlertsConfig:
        if raw is None:
            return cls()
        if not isinstance(raw, dict):
            raise ConfigError(
                "config alerts: must be a table ([alerts])",
                code="config.alerts",
                next_step="Write the setting as an [alerts] table in config.toml.",
            )
        unknown = sorted(set(raw) - {*ALERT_HOOKS, "timeout"})
        if unknown:
            raise _alerts_error(
                unknown[0], "is not a known setting (on_critical, on_overdue, timeout)"
            )
        commands = {name: _command(name, raw.get(name)) for name in ALERT_HOOKS}
        timeout = raw.get("timeout", ALERT_TIMEOUT_DEFAULT)
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not ALERT_TIMEOUT_MIN <= timeout <= ALERT_TIMEOUT_MAX
        ):
            raise _alerts_error(
                "timeout",
                f"must be a number of seconds from {ALERT_TIMEOUT_MIN:g} to {ALERT_TIMEOUT_MAX:g}",
            )
        return cls(commands["on_critical"], commands["on_overdue"], float(timeout))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            name: list(getattr(self, name)) for name in ALERT_HOOKS if getattr(self, name)
        }
        if out or self.timeout != ALERT_TIMEOUT_DEFAULT:
            out["timeout"] = self.timeout
        return out


def _alerts_error(key: str, problem: str) -> ConfigError:
    return ConfigError(
        f"config alerts.{key}: {problem}",
        code="config.alerts",
        next_step="Fix the [alerts] table in config.toml (docs/adr/0021-alert-commands.md), "
        'e.g. on_critical = ["/usr/local/bin/page-duty-officer", "--critical"].',
    )


def _command(key: str, value: object) -> tuple[str, ...]:
    """An argv from a TOML array of strings, or from a string split with shlex."""
    if value is None:
        return ()
    if isinstance(value, str):
        try:
            argv = shlex.split(value)
        except ValueError as e:
            raise _alerts_error(key, f"cannot be split into arguments ({e})") from e
    elif isinstance(value, list) and all(isinstance(a, str) for a in value):
        argv = list(value)
    else:
        raise _alerts_error(key, "must be an array of strings (argv) or a string")
    if not argv or not argv[0]:
        raise _alerts_error(key, "names no program")
    if any("\x00" in a for a in argv):
        raise _alerts_error(key, "contains a NUL character")
    return tuple(argv)


DATABASE_SCHEMES = ("postgresql://", "postgres://")


def check_database(value: object, *, key: str = "config database") -> str:
    """A PostgreSQL connection string: a libpq URL (``postgresql://...``) or a keyword DSN
    (``host=... dbname=...``). Anything else is refused with a ConfigError naming ``key``;
    no message ever quotes the value (it may hold a password)."""
    from node.store.pg import dsn_settings

    def refuse(problem: str) -> ConfigError:
        return ConfigError(
            f"{key}: {problem}",
            code="config.database",
            next_step="Give a PostgreSQL URL (postgresql://user@host:5432/dbname) or a libpq "
            "keyword string (host=... dbname=...); leave it out to keep the state in SQLite.",
        )

    if not isinstance(value, str) or not value.strip():
        raise refuse("must be a non-empty string")
    text = value.strip()
    is_url = "://" in text
    if is_url and not text.lower().startswith(DATABASE_SCHEMES):
        raise refuse("is not a PostgreSQL URL (postgresql:// or postgres://)")
    if not is_url and "=" not in text:
        raise refuse("is neither a PostgreSQL URL nor a libpq keyword string")
    parts = dsn_settings(text)
    if parts is None:
        raise refuse("cannot be parsed as a PostgreSQL connection string")
    if not is_url and not parts:
        raise refuse("names no connection setting")
    return text


@dataclass(frozen=True)
class NodeConfig:
    node: str
    name: str
    endpoint: str
    listen: str
    log_origin: str
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    # PostgreSQL holds the node's state when set (docs/adr/0024); the DSN may carry a
    # password, so it is kept out of repr() and every message.
    database: str | None = field(default=None, repr=False)

    @classmethod
    def load(cls, data_dir: Path) -> NodeConfig:
        path = data_dir / CONFIG_FILE
        if not path.is_file():
            raise ConfigError(
                f"no Accord node in {data_dir} (missing {CONFIG_FILE})",
                next_step="Run 'accord --data DIR init --node ID --name NAME --endpoint HOST:PORT' "
                "or point --data / ACCORD_HOME at an existing node.",
            )
        try:
            raw = tomllib.loads(path.read_text("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: not valid TOML ({e})") from e
        alerts = AlertsConfig.parse(raw.get("alerts"))  # a ConfigError names the key
        database = raw.get("database")
        if database is not None:
            database = check_database(database)
        try:
            node = raw["node"]
            return cls(
                node=check_node_id(node["id"], field="config node.id"),
                name=str(node["name"]),
                endpoint=check_endpoint(str(node["endpoint"])),
                listen=str(node.get("listen", node["endpoint"])),
                log_origin=str(node.get("log_origin", f"{node['id']}.accord/log")),
                alerts=alerts,
                database=database,
            )
        except (KeyError, TypeError, InputError) as e:
            raise ConfigError(f"{path}: missing or invalid setting ({e})") from e

    def to_toml(self) -> str:
        import tomli_w

        doc: dict[str, Any] = {} if self.database is None else {"database": self.database}
        doc |= {
            "node": {
                "id": self.node,
                "name": self.name,
                "endpoint": self.endpoint,
                "listen": self.listen,
                "log_origin": self.log_origin,
            }
        }
        alerts = self.alerts.to_dict()
        if alerts:
            doc["alerts"] = alerts
        return tomli_w.dumps(doc)
