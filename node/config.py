"""Node configuration: the data directory and ``config.toml`` inside it."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

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


@dataclass(frozen=True)
class NodeConfig:
    node: str
    name: str
    endpoint: str
    listen: str
    log_origin: str

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
        try:
            node = raw["node"]
            return cls(
                node=check_node_id(node["id"], field="config node.id"),
                name=str(node["name"]),
                endpoint=check_endpoint(str(node["endpoint"])),
                listen=str(node.get("listen", node["endpoint"])),
                log_origin=str(node.get("log_origin", f"{node['id']}.accord/log")),
            )
        except (KeyError, TypeError, InputError) as e:
            raise ConfigError(f"{path}: missing or invalid setting ({e})") from e

    def to_toml(self) -> str:
        import tomli_w

        return tomli_w.dumps(
            {
                "node": {
                    "id": self.node,
                    "name": self.name,
                    "endpoint": self.endpoint,
                    "listen": self.listen,
                    "log_origin": self.log_origin,
                }
            }
        )
