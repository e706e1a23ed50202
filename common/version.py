"""The protocol version this code speaks (docs/protocol.md names the same number)."""

PROTOCOL_VERSION = 1
