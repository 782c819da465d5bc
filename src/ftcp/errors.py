"""Errors that say whose fault it was.

`UserError` is bad input from a person (unknown topology, not root): the CLI
prints its message on one line and exits non-zero. `RemoteProtocolError` is
a peer that sent something malformed. `LocalProtocolError` is a bug in ftcp
itself (a broken invariant)."""


class FtcpError(Exception):
    """Base class of every error ftcp raises on purpose."""


class UserError(FtcpError):
    """Bad input or environment: one clear line for a person."""


class RemoteProtocolError(FtcpError):
    """A peer (packet source, logger peer) sent something malformed."""


class LocalProtocolError(FtcpError):
    """ftcp broke its own rules: a bug."""
