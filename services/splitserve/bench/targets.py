"""Where the bench sends requests: the public gRPC API, or an engine in this process."""

from __future__ import annotations

import contextlib
import itertools
from typing import Protocol

import grpc

from splitserve.api.text.v1 import text_pb2 as pb
from splitserve.api.text.v1 import text_pb2_grpc
from splitserve.bench.records import RequestRecord
from splitserve.bench.workload import WorkItem
from splitserve.common.errors import RequestError
from splitserve.generator.engine import Engine
from splitserve.generator.validation import validate_request
from splitserve.link.types import GenerationRequest


class Target(Protocol):
    """Runs one request and fills in its record (first token, end, tokens, error)."""

    async def send(self, item: WorkItem, record: RequestRecord) -> None: ...


class GrpcTarget:
    """The public text API: GenerateStream with a text prompt, as a user would call it.

    With several channels (one per tokenizer process) requests go round-robin, as behind a load balancer.
    """

    def __init__(self, channels: list[grpc.aio.Channel], timeout: float) -> None:
        self._stubs = itertools.cycle([text_pb2_grpc.TextGenerationServiceStub(c) for c in channels])
        self._timeout = timeout

    async def send(self, item: WorkItem, record: RequestRecord) -> None:
        request = pb.GenerateStreamRequest(
            prompt=item.prompt,
            stopping=pb.StoppingCriteria(max_new_tokens=item.max_new_tokens, ignore_eos=True))
        call = next(self._stubs).GenerateStream(request, timeout=self._timeout)
        try:
            async for msg in call:
                record.on_message()
                if msg.finish_reason != pb.FINISH_REASON_UNSPECIFIED:
                    record.finish(msg.usage.completion_tokens)
        except grpc.aio.AioRpcError as error:
            record.fail(error.code().name)
        finally:
            call.cancel()  # a request cut off at the end of a level is cancelled, not left running


class EngineTarget:
    """An engine in this process, without gRPC: the baseline the full stack is compared to."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._ids = itertools.count()

    async def send(self, item: WorkItem, record: RequestRecord) -> None:
        request = GenerationRequest(f"bench-{next(self._ids)}", item.prompt_ids,
                                    max_new_tokens=item.max_new_tokens, ignore_eos=True)
        try:
            validated = validate_request(request, self._engine.info)
            async with contextlib.aclosing(self._engine.generate(validated)) as chunks:
                async for chunk in chunks:
                    record.on_message()
                    if chunk.finish_reason is not None:
                        record.finish(chunk.num_generated_tokens)
        except RequestError as error:
            record.fail(error.code_name)

