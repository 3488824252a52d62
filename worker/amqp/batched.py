"""A pika connection that sends what one I/O-loop turn wrote in one socket write.

pika hands every frame to its transport separately and the transport sends each one with its
own `send()`: a reply is three frames (method, properties, body), so a burst of 64 replies and
their acks costs about 200 system calls, and the broker reads as many small segments. Here
frames written during one turn of the loop are joined and handed to the transport together at
the end of the turn (in the order they were written), so the burst leaves in one write.

Nothing is delayed past the turn that wrote it: the flush is a zero-delay callback of the same
loop, which runs before the loop next waits for the socket.
"""

from __future__ import annotations

from typing import Any

import pika

# A joined write never grows past this: larger bodies are split into frames of at most the
# negotiated frame size (128 KiB by default), and a frame is never split or copied twice.
MAX_JOINED_BYTES = 256 * 1024


class BatchedSelectConnection(pika.SelectConnection):
    """`pika.SelectConnection` whose outgoing frames leave once per loop turn."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._out: list[bytes] = []
        self._out_bytes = 0
        self._flush_due = False
        self.writes = 0  # joined writes handed to the transport (for tests and benchmarks)
        super().__init__(*args, **kwargs)

    def _adapter_emit_data(self, data: bytes) -> None:
        """[override] Keep the frame for this turn's write."""
        if self._out_bytes + len(data) > MAX_JOINED_BYTES:
            self._flush_out()
        self._out.append(data)
        self._out_bytes += len(data)
        if not self._flush_due:
            self._flush_due = True
            self.ioloop.call_later(0, self._flush_out)

    def _flush_out(self) -> None:
        self._flush_due = False
        out = self._out
        if not out:
            return
        self._out = []
        self._out_bytes = 0
        transport = self._transport
        if transport is None:
            return  # the stream is gone; pika drops unsent frames the same way
        self.writes += 1
        transport.write(out[0] if len(out) == 1 else b"".join(out))
