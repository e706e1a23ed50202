"""Error types. Every error carries a short, stable reject ``code``.

``LocalProtocolError`` means we misused an API; ``RemoteProtocolError`` means a
peer (or another service) sent something invalid. Codes travel in
``wire.rejected`` events and RPC error replies, so they are part of the
contract (docs/protocol.md, "Reject codes").
"""

from __future__ import annotations


class TazcomError(Exception):
    """Base of every TAZCOM error."""

    code: str = "error"

    def __init__(self, message: str = "", *, code: str | None = None) -> None:
        super().__init__(message or (code or self.code))
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.code


class LocalProtocolError(TazcomError):
    """We asked for something the protocol does not allow."""

    code = "local_error"


class RemoteProtocolError(TazcomError):
    """A peer or another service sent invalid input."""

    code = "protocol_error"


class SchemaError(RemoteProtocolError):
    """A message does not match its one definition."""

    code = "bad_message"


class ConfigError(TazcomError):
    """The configuration is invalid; the service cannot start."""

    code = "bad_config"


class KeyFileError(TazcomError):
    """The identity key file is missing, corrupt or too open."""

    code = "bad_key_file"


class ServiceUnavailable(TazcomError):
    """A local service did not answer in time."""

    code = "unavailable"


class RequestFailed(TazcomError):
    """A local service answered a request with an error reply."""

    code = "failed"
