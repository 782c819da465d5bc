"""Output commit (DESIGN.md invariant 3), for one application: the one owner.

No byte (and no FIN) an application process writes may reach the network while
a read result that process reported earlier is not durably logged. A *source*
is one process of the application (an NSW session); it numbers its live read
results 1, 2, ... and, before every write, waits until its *released* count
covers the last read it reported. `OutputCommit` decides that count:

* `read(source, seq, conn_id, protected)` takes one read result in the order
  the sources reported them, and gives a protected one its logger order (0, 1,
  ... over the whole application: the order the log keeps). A read on a
  connection that is not protected gets no order: nothing waits for the logger
  for it, but it keeps its place;
* `logged(next_order)`: the logger holds every read result with a lower order;
* `releases()`: the sources whose released count moved since last asked, each
  with its new count. A read is released once it and every read reported before
  it (by any source) is logged or unprotected, so the counts only grow.

The shim carries the decision out (it compares its last reported read with the
count the supervisor publishes to it); the simulation's shim does the same.
Sans-IO: no clock, no sockets.
"""

from __future__ import annotations

from collections import deque

from ftcp.errors import RemoteProtocolError

_UNPROTECTED = -1


class OutputCommit:
    """Read order and released counts of one application (module docstring)."""

    __slots__ = ("_fifo", "_last", "_released", "_unstable", "_next_order", "_logged_next")

    def __init__(self, first_order: int = 0) -> None:
        # (logger order or _UNPROTECTED, source, seq, conn_id), in report order
        self._fifo: deque[tuple[int, int, int, int]] = deque()
        self._last: dict[int, int] = {}  # live source -> seq of its last read
        self._released: dict[int, int] = {}  # live source -> released count
        self._unstable: dict[int, int] = {}  # conn_id -> its reads not released yet
        self._next_order = first_order
        self._logged_next = first_order

    @property
    def next_order(self) -> int:
        """The logger order the next protected read gets."""
        return self._next_order

    def read(self, source: int, seq: int, conn_id: int, protected: bool) -> int | None:
        """Source `source` reported its read `seq` on `conn_id`: its logger order, or
        None (unprotected: log nothing). A seq out of turn is the shim's fault."""
        last = self._last.get(source, 0)
        if seq != last + 1:
            raise RemoteProtocolError(f"nsw: read {seq} of source {source} after {last}")
        self._last[source] = seq
        order = _UNPROTECTED
        if protected:
            order = self._next_order
            self._next_order += 1
        self._fifo.append((order, source, seq, conn_id))
        self._unstable[conn_id] = self._unstable.get(conn_id, 0) + 1
        return None if order == _UNPROTECTED else order

    def logged(self, next_order: int) -> None:
        """The logger holds every read result whose order is below `next_order`."""
        self._logged_next = max(self._logged_next, next_order)

    def releases(self) -> dict[int, int]:
        """The live sources whose released count moved, with their new counts."""
        out: dict[int, int] = {}
        fifo, logged = self._fifo, self._logged_next
        while fifo and fifo[0][0] < logged:  # _UNPROTECTED < any order
            _, source, seq, cid = fifo.popleft()
            n = self._unstable[cid] - 1
            if n:
                self._unstable[cid] = n
            else:
                del self._unstable[cid]
            if source in self._last:
                self._released[source] = seq
                out[source] = seq
        return out

    def released(self, source: int) -> int:
        """Reads 1..this of `source` are released: its output may leave."""
        return self._released.get(source, 0)

    def may_output(self, source: int) -> bool:
        """Every read `source` reported is released (what the shim checks)."""
        return self._released.get(source, 0) >= self._last.get(source, 0)

    def unstable(self, conn_id: int) -> int:
        """Reads on `conn_id` not released yet (`ftcp status`)."""
        return self._unstable.get(conn_id, 0)

    def end(self, source: int) -> None:
        """The process is gone: its reads keep their places, nothing is released to it."""
        self._last.pop(source, None)
        self._released.pop(source, None)
