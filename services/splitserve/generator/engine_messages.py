"""What the generator process and its engine process say to each other over their pipe (pickled)."""

from __future__ import annotations

from dataclasses import dataclass

from splitserve.link.multiplex import Output
from splitserve.link.types import EngineInfo, EngineLoad, GenerationRequest

# -- to the engine process ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Start:
    """Begin generating for `request` under the parent's stream id."""

    stream_id: int
    request: GenerationRequest


@dataclass(frozen=True)
class Cancel:
    """The consumer went away: abort the stream and free its batch slot."""

    stream_id: int


@dataclass(frozen=True)
class Shutdown:
    """Abort everything, stop the engine and exit."""


# -- from the engine process -------------------------------------------------------------------------


@dataclass(frozen=True)
class Ready:
    """The engine started; it serves from now on."""

    info: EngineInfo


@dataclass(frozen=True)
class StartFailed:
    """The engine could not start (the process exits after sending this)."""

    reason: str


@dataclass(frozen=True)
class Outputs:
    """Everything produced since the last message, for all streams at once, with the engine's load.

    A stream's error is its RequestError itself (exceptions pickle with their class and message).
    """

    items: list[tuple[int, Output]]
    load: EngineLoad


@dataclass(frozen=True)
class Health:
    """The engine's own health listener fired (its loop died, or came back)."""

    serving: bool


ToEngine = Start | Cancel | Shutdown
FromEngine = Ready | StartFailed | Outputs | Health
