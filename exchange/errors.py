"""One error root for Accord, with families by who is at fault.

Every error carries a stable ``code`` (partners and scripts match on it) and a
``next_step`` telling the person what to do. Messages name the field or rule that failed,
never a field value.
"""

from __future__ import annotations


class AccordError(Exception):
    """Root of every error Accord raises on purpose."""

    code: str = "accord.error"
    exit_code: int = 1
    default_next_step: str = "See 'accord --help'."

    def __init__(self, message: str, *, next_step: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.next_step = next_step or self.default_next_step
        if code is not None:
            self.code = code

    def diagnostics(self) -> str:
        return f"{self.message}\nNext step: {self.next_step}"


class InputError(AccordError):
    """The officer's or operator's input is malformed or invalid."""

    code = "input.invalid"
    exit_code = 2
    default_next_step = "Fix the named field or argument and run the command again."


class PeerDataError(AccordError):
    """Data from a partner failed a check (signature, replay, ceiling, ...)."""

    code = "peer.invalid"
    exit_code = 3
    default_next_step = "Nothing was stored. Ask the partner to check their node's logs."


class PolicyError(AccordError):
    """A release policy or agreement is wrong or refuses the operation."""

    code = "policy.invalid"
    exit_code = 4
    default_next_step = "Check the policy with 'accord policy check FILE'."


class KeyringError(AccordError):
    """Key files, passphrases, cards or the trust store refuse the operation."""

    code = "keyring.error"
    exit_code = 5
    default_next_step = "Check the key files and passphrase of this node."


class StoreError(AccordError):
    """The node's database is missing, corrupt, full or read-only."""

    code = "store.error"
    exit_code = 6
    default_next_step = "Check the data directory's disk space and permissions."


class ConfigError(AccordError):
    """The node's configuration or data directory is wrong."""

    code = "config.invalid"
    exit_code = 7
    default_next_step = "Check --data / ACCORD_HOME and the node's config.toml."


class TransportError(AccordError):
    """The partner or the local node could not be reached, or the call failed."""

    code = "transport.error"
    exit_code = 8
    default_next_step = "Check that the node is running ('accord status') and reachable."
