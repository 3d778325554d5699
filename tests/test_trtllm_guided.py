"""Constrained decoding on the `trtllm` engine, against the STAND-IN TensorRT-LLM (tests/standin): each kind
reaches GuidedDecodingParams as TensorRT-LLM names it, the LLM is built with a guided backend only when asked,
and without one the capability is off and requests are refused before they reach TensorRT-LLM."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

sys.path.insert(0, str(Path(__file__).parent / "standin"))

import tensorrt_llm.llmapi as standin

from splitserve.api.tokens.v1 import tokens_pb2 as pb
from splitserve.api.tokens.v1 import tokens_pb2_grpc
from splitserve.generator.config import GeneratorConfig, check
from splitserve.generator.engines.trtllm_sampling import guided_decoding_kwargs
from splitserve.generator.server import start_generator
from splitserve.link.types import Constraint, ConstraintKind

from .test_trtllm_engines import make_config, model_dir  # noqa: F401 (model_dir: the fixture used here)

SCHEMA = json.dumps({"type": "object", "properties": {"a": {"type": "integer"}}})


def config(model_dir: Path, backend: str | None) -> GeneratorConfig:  # noqa: F811
    return dataclasses.replace(make_config("trtllm", model_dir, model_dir), guided_decoding_backend=backend)


@pytest.fixture
async def stub(request: pytest.FixtureRequest, model_dir: Path) -> AsyncIterator[Any]:  # noqa: F811
    server = await start_generator(config(model_dir, request.param))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield tokens_pb2_grpc.TokenGenerationServiceStub(channel)
    await server.stop(0)


async def generate(stub: Any, constraint: pb.Constraint) -> list[pb.GenerateResponse]:
    request = pb.GenerateRequest(prompt_token_ids=[10, 11], max_new_tokens=4, constraint=constraint)
    return [msg async for msg in stub.Generate(request)]


CONSTRAINTS = [
    (pb.Constraint(json_schema=SCHEMA), standin.GuidedDecodingParams(json=SCHEMA)),
    (pb.Constraint(json_object=True), standin.GuidedDecodingParams(json_object=True)),
    (pb.Constraint(regex="[0-9]+"), standin.GuidedDecodingParams(regex="[0-9]+")),
    (pb.Constraint(grammar='root ::= "a"'), standin.GuidedDecodingParams(grammar='root ::= "a"')),
    (pb.Constraint(choice=pb.ChoiceList(choices=["a.b", "(c)"])),
     standin.GuidedDecodingParams(regex=r"(a\.b)|(\(c\))")),
]


@pytest.mark.parametrize("stub", ["xgrammar"], indirect=True)
async def test_each_kind_reaches_guided_decoding_params(stub: Any) -> None:
    info = await stub.GetModelInfo(pb.GetModelInfoRequest())
    assert info.capabilities.constrained_decoding
    llm = standin.LLM.standin_last
    assert llm is not None and llm.args["guided_decoding_backend"] == "xgrammar"
    assert not llm.standin_skip_tokenizer_init  # the backend builds its tables from the LLM's tokenizer
    for constraint, expected in CONSTRAINTS:
        replies = await generate(stub, constraint)
        assert replies[-1].finish_reason != pb.FINISH_REASON_UNSPECIFIED
        assert llm.standin_guided[-1] == expected


@pytest.mark.parametrize("stub", [None], indirect=True)
async def test_without_a_backend_the_engine_refuses(stub: Any) -> None:
    info = await stub.GetModelInfo(pb.GetModelInfoRequest())
    assert not info.capabilities.constrained_decoding
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await generate(stub, pb.Constraint(regex="a"))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "engine 'trtllm' (TensorRT-LLM 1.2.1+standin) does not support constrained decoding" in (
        refused.value.details() or "")
    llm = standin.LLM.standin_last
    assert llm is not None and llm.standin_skip_tokenizer_init and "guided_decoding_backend" not in llm.args


def test_choice_escapes_every_regex_metacharacter() -> None:
    regex = guided_decoding_kwargs(Constraint(ConstraintKind.CHOICE, choices=("1+1=2?", "[x]|{y}^$\\")))["regex"]
    assert regex == r"(1\+1=2\?)|(\[x\]\|\{y\}\^\$\\)"


def test_the_standin_is_as_strict_as_the_real_one(model_dir: Path) -> None:  # noqa: F811
    with pytest.raises(TypeError):
        standin.GuidedDecodingParams(choice=["a"])  # type: ignore[call-arg]  # TensorRT-LLM has no choice guide
    with pytest.raises(TypeError):
        standin.GuidedDecodingParams("a")  # type: ignore[misc]  # keyword-only
    params = standin.GuidedDecodingParams(regex="a")
    with pytest.raises(AttributeError):
        params.choice = ["a"]  # type: ignore[attr-defined]  # slotted
    with pytest.raises(ValueError, match="Only one guide"):
        standin.SamplingParams(guided_decoding=standin.GuidedDecodingParams(regex="a", json_object=True))
    with pytest.raises(ValueError, match="guided_decoding_backend"):
        standin.LLM(str(model_dir), guided_decoding_backend="outlines")
    with pytest.raises(AssertionError):
        standin.LLM(str(model_dir), skip_tokenizer_init=True, guided_decoding_backend="xgrammar")


async def test_the_standin_refuses_guides_without_a_backend(model_dir: Path) -> None:  # noqa: F811
    llm = standin.LLM(str(model_dir), skip_tokenizer_init=True)
    guided = standin.SamplingParams(end_id=2, guided_decoding=standin.GuidedDecodingParams(regex="a"))
    with pytest.raises(ValueError, match="built without guided_decoding_backend"):
        llm.generate_async([10], sampling_params=guided, streaming=True)


def test_the_backend_flag_is_for_trtllm_only(model_dir: Path) -> None:  # noqa: F811
    native = dataclasses.replace(config(model_dir, "xgrammar"), engine="native")
    with pytest.raises(ValueError, match="--guided-decoding-backend is for --engine trtllm"):
        check(native)
