"""One request of the native engine opened with `open_stream`: the step loop's items as chunks for a callback."""

from __future__ import annotations

from collections.abc import Callable

from splitserve.common.errors import RequestError
from splitserve.generator.engine import Deliver
from splitserve.generator.engines.native.sequence import Sequence
from splitserve.generator.engines.native.step_loop import Emitted
from splitserve.link.types import GenerationChunk, GenerationRequest, TokenOutput


class DirectStream:
    """Delivers a chunk per step, the last with its finish fields, or the error that ended it; then nothing."""

    __slots__ = ("_abort", "_deliver", "_ended", "_final", "_open", "request", "seq")

    def __init__(self, seq: Sequence, request: GenerationRequest, deliver: Deliver, abort: Callable[[int], None],
                 ended: Callable[[], None], final: Callable[[list[TokenOutput]], GenerationChunk]) -> None:
        self.seq, self.request, self._deliver = seq, request, deliver
        self._abort, self._ended, self._final = abort, ended, final  # the loop's abort; the engine's count
        self._open = True

    @property
    def is_open(self) -> bool:
        return self._open

    def on_item(self, item: Emitted | BaseException) -> None:
        """The step loop's sink (called on the event loop)."""
        if not self._open:
            return  # cancelled: the loop may still hand over a token of the step in flight
        if isinstance(item, BaseException):
            self._close()
            self._deliver(item if isinstance(item, RequestError) else RequestError(f"internal error: {item}"))
        elif item.finished:
            self._close()
            self._deliver(self._final([item.token]))
        else:
            self._deliver(GenerationChunk([item.token]))

    def cancel(self) -> None:
        if self._open:
            self._close()
            self._abort(self.seq.seq_id)

    def _close(self) -> None:
        self._open = False
        self._ended()
