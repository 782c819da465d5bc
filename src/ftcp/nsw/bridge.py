"""The NSW agent's handler in `ftcp run`: what the shim reports goes to the SSW engine.

Accepts are matched to the connections SSW saw (an unknown one is served
unprotected, loudly); live reads take their place in the application's read
order and are logged (`Engine.on_read`); the engine publishes each process's
released count back through `Agent.publish`; closes are reported to their
connection before the agent lets the shim's call run. Nothing here decides an
invariant: the engine's core does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from ftcp.core.records import CloseHow, ReadKind
from ftcp.nsw.agent import AcceptInfo, Agent, AgentHandler, Decision, Normal, SessionInfo
from ftcp.nsw.proto import How, Kind

if TYPE_CHECKING:
    from ftcp.ssw.engine import Engine

log = logging.getLogger("ftcp.nsw")


class AgentBridge(AgentHandler):
    """Agent callbacks to engine calls; `attach` wires the engine's output back."""

    def __init__(self, engine: Engine, on_orphans: Callable[[list[int]], None] | None = None):
        self.engine = engine
        self.on_orphans = on_orphans

    def attach(self, agent: Agent) -> None:
        """Released counts go to `agent`'s sessions (the shims wait for them)."""
        self.engine.publish = agent.publish

    def on_accept(self, info: AcceptInfo) -> Decision:
        cid = self.engine.conn_for_accept(info.local, info.remote)
        if cid is None:
            log.warning(
                "nsw: accepted %s:%d not seen by SSW: unprotected", info.remote[0], info.remote[1]
            )
            cid = self.engine.new_unprotected_id()
        return Normal(conn_id=cid)

    def on_read(
        self, session: int, seq: int, conn_id: int, kind: Kind, value: int, wtotal: int, wcrc: int
    ) -> None:
        self.engine.on_read(session, seq, conn_id, ReadKind(int(kind)), value)

    def on_close(self, conn_id: int, how: How, wtotal: int, wcrc: int) -> None:
        self.engine.on_close(conn_id, CloseHow(int(how)))

    def on_session_end(self, session: SessionInfo, orphans: list[int]) -> None:
        self.engine.end_source(session.session_id)
        if orphans:
            log.error(
                "nsw: process %d died holding connections %s (recovery not implemented yet)",
                session.pid,
                orphans,
            )
            if self.on_orphans is not None:
                self.on_orphans(orphans)
