"""Instream reassembly: segments in any order, duplicated or overlapping.

Sans-IO; used by the logger (to know `stable_seq`) and by tests. Bytes are
kept once: the first copy of a byte wins, and a retransmission that disagrees
with what is stored is reported (a client never does that; a forged segment
might), never silently merged.
"""

from __future__ import annotations

from ftcp.core import seq
from ftcp.errors import RemoteProtocolError

MAX_BUFFERED_AHEAD = 64 << 20  # out-of-order bytes kept beyond stable_seq


class Reassembler:
    """Contiguous instream from `isn + 1`; `stable_seq` is the first missing byte."""

    __slots__ = ("isn", "stable_seq", "fin_seq", "_data", "_ooo")

    def __init__(self, isn: int) -> None:
        self.isn = seq.check(isn)
        self.stable_seq = seq.add(isn, 1)
        self.fin_seq: int | None = None
        self._data = bytearray()  # [isn + 1, stable_seq)
        self._ooo: dict[int, bytes] = {}  # offset from isn+1 -> bytes, beyond stable

    @property
    def contiguous(self) -> bytes:
        """Logged bytes `[isn + 1, stable_seq)`."""
        return bytes(self._data)

    def live(self) -> bytearray:
        """The buffer behind `contiguous`, not copied (recovery's answer): read only.

        It only ever grows at its end, so a prefix read from it stays valid; a
        `memoryview` of it must be released before anything is added.
        """
        return self._data

    @property
    def fin_reached(self) -> bool:
        """A client FIN is logged right after the contiguous bytes."""
        return self.fin_seq is not None and self.fin_seq == self.stable_seq

    @property
    def ack_limit(self) -> int:
        """Highest ack the client may see: `stable_seq`, plus one for a logged FIN."""
        return seq.add(self.stable_seq, 1) if self.fin_reached else self.stable_seq

    def add(self, sq: int, payload: bytes, fin: bool = False) -> int:
        """Add one segment; return the new `stable_seq`."""
        if (
            sq == self.stable_seq
            and not fin
            and not self._ooo
            and len(payload) <= MAX_BUFFERED_AHEAD
        ):
            # fast path (the logger's hot path): the next bytes, in order; what
            # the general path below would do, minus the bookkeeping
            self._data += payload
            self.stable_seq = seq.add(sq, len(payload))
            return self.stable_seq
        base = seq.add(self.isn, 1)
        off = seq.sub(sq, base)
        if fin:
            fin_at = seq.add(sq, len(payload))
            if self.fin_seq is not None and self.fin_seq != fin_at:
                raise RemoteProtocolError(
                    f"second FIN at a different sequence number ({fin_at} vs {self.fin_seq})"
                )
            self.fin_seq = fin_at
        if payload:
            if off < 0:  # starts before the ISN+1 point: keep the part after it
                if off + len(payload) <= 0:
                    return self.stable_seq
                payload = payload[-off:]
                off = 0
            have = len(self._data)
            if off + len(payload) > have + MAX_BUFFERED_AHEAD:
                raise RemoteProtocolError("segment too far beyond the logged instream")
            self._merge(off, payload)
        self._check_fin()
        return self.stable_seq

    def _merge(self, off: int, payload: bytes) -> None:
        have = len(self._data)
        if off < have:  # overlaps what is contiguous: compare, then keep the rest
            overlap = min(have - off, len(payload))
            if self._data[off : off + overlap] != payload[:overlap]:
                raise RemoteProtocolError(f"retransmission differs at instream offset {off}")
            payload = payload[overlap:]
            off = have
        if not payload:
            return
        if off > have:
            prev = self._ooo.get(off)
            if prev is None or len(prev) < len(payload):
                if prev is not None and payload[: len(prev)] != prev:
                    raise RemoteProtocolError(f"retransmission differs at instream offset {off}")
                self._ooo[off] = payload
            return
        self._data += payload
        self._drain()

    def _drain(self) -> None:
        progressed = True
        while progressed and self._ooo:
            progressed = False
            have = len(self._data)
            for o in sorted(self._ooo):
                if o > have:
                    break
                chunk = self._ooo.pop(o)
                end = o + len(chunk)
                if end > have:
                    overlap = have - o
                    if self._data[o:have] != chunk[:overlap]:
                        raise RemoteProtocolError(
                            f"retransmission differs at instream offset {o}"
                        )
                    self._data += chunk[overlap:]
                    progressed = True
                    break
        self.stable_seq = seq.add(self.isn, 1 + len(self._data))

    def _check_fin(self) -> None:
        self.stable_seq = seq.add(self.isn, 1 + len(self._data))
