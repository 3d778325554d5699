"""Structured output end to end: every constraint kind, 50 seeded samples at temperature 1 through the public API
(half streamed, half unary), each parsed or matched; compile errors; batch invariance; engines that refuse."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import jsonschema
import pytest

from splitserve.api.text.v1 import text_pb2 as pb
from splitserve.common.errors import InvalidRequest
from splitserve.generator.validation import MAX_CONSTRAINT_CHARS, validate_request
from splitserve.link.types import (
    Constraint,
    ConstraintKind,
    EngineCapabilities,
    EngineInfo,
    GenerationRequest,
)
from splitserve_client import AsyncClient, GenerationOptions
from splitserve_client import Constraint as ClientConstraint

from .bench_stack import BenchStack, bench_stack

SAMPLES = 50
NATIVE = {"engine": "native", "max_batch_size": 64, "max_queued_requests": 64, "max_new_tokens": 256,
          "default_max_new_tokens": 32, "kv_cache_tokens": 16384, "kv_page_size": 16}

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 10},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "member": {"type": "boolean"},
        "colour": {"enum": ["red", "green", "blue"]},
    },
    "required": ["name", "age", "member", "colour"],
    "additionalProperties": False,
}
PHONE = r"\+1 [0-9]{3}-[0-9]{4}"
CHOICES = ["red", "green", "blue", "dark olive green"]
# Lark, as llguidance takes it; GBNF (`root ::= ...`) is accepted too, converted to Lark.
GREETING_LARK = 'start: greeting ", " NAME "!"\ngreeting: "hello" | "good morning"\nNAME: /[A-Z][a-z]{1,8}/'
GREETING_RE = r"(hello|good morning), [A-Z][a-z]{1,8}!"
GBNF = 'root ::= ("yes" | "no") " because " [a-z]{1,12}'


@dataclass(frozen=True)
class Case:
    constraint: pb.Constraint
    prompt: str
    max_new_tokens: int
    check: Callable[[str], object]  # raises (or returns False) when the text does not conform
    # Any JSON object is unbounded: at temperature 1 the small model writes long strings, and some samples
    # reach max_new_tokens first (21 of 50 at 64 tokens). Those are checked as cut short, not as conforming.
    min_finished: int = SAMPLES


def _schema_valid(text: str) -> None:
    jsonschema.validate(json.loads(text), PERSON)


def _an_object(text: str) -> None:
    assert isinstance(json.loads(text), dict)


CASES = {
    "json_schema": Case(pb.Constraint(json_schema=json.dumps(PERSON)), "Describe a person as JSON.", 48, _schema_valid),
    "json_object": Case(pb.Constraint(json_object=True), "Give a tiny JSON object with one key.", 64, _an_object,
                        min_finished=25),
    "regex": Case(pb.Constraint(regex=PHONE), "Write a US phone number.", 16,
                  lambda t: re.fullmatch(PHONE, t) is not None),
    "choice": Case(pb.Constraint(choice=pb.ChoiceList(choices=CHOICES)), "Name a colour.", 8, CHOICES.__contains__),
    "grammar": Case(pb.Constraint(grammar=GREETING_LARK), "Greet someone by name.", 16,
                    lambda t: re.fullmatch(GREETING_RE, t) is not None),
    "grammar_gbnf": Case(pb.Constraint(grammar=GBNF), "Answer yes or no, with a reason.", 16,
                         lambda t: re.fullmatch(r"(yes|no) because [a-z]{1,12}", t) is not None),
}


@pytest.fixture(scope="module")
async def native(model_dir: Path) -> AsyncIterator[BenchStack]:
    async with bench_stack(model_dir, generator=NATIVE) as stack:
        yield stack


def _chat(prompt: str) -> pb.ChatInput:
    return pb.ChatInput(messages=[pb.ChatMessage(role="user", content=prompt)])


async def _sample(stack: BenchStack, case: Case, seed: int, streamed: bool) -> tuple[str, int]:
    fields = {"chat": _chat(case.prompt), "sampling": pb.SamplingParams(temperature=1.0, seed=seed),
              "stopping": pb.StoppingCriteria(max_new_tokens=case.max_new_tokens), "constraint": case.constraint}
    if not streamed:
        reply = await stack.text.Generate(pb.GenerateRequest(**fields), timeout=120)
        return reply.text, reply.finish_reason
    text, reason = [], 0
    async for msg in stack.text.GenerateStream(pb.GenerateStreamRequest(**fields), timeout=120):
        text.append(msg.text)
        reason = msg.finish_reason or reason
    return "".join(text), reason


@pytest.mark.parametrize("kind", sorted(CASES))
async def test_every_sample_conforms(native: BenchStack, kind: str) -> None:
    case = CASES[kind]
    results = await asyncio.gather(*(_sample(native, case, seed, streamed=seed % 2 == 0) for seed in range(SAMPLES)))
    bad, cut_short = [], 0
    for seed, (text, reason) in enumerate(results):
        if reason == pb.FINISH_REASON_LENGTH and case.min_finished < SAMPLES:
            cut_short += 1
            continue
        try:
            ok = reason == pb.FINISH_REASON_EOS_TOKEN and case.check(text) is not False
        except (ValueError, AssertionError, jsonschema.ValidationError):
            ok = False
        if not ok:
            bad.append((seed, reason, text))
    assert not bad, f"{len(bad)} of {SAMPLES} {kind} samples do not conform: {bad[:3]}"
    assert SAMPLES - cut_short >= case.min_finished


async def test_the_python_client_sends_a_constraint(native: BenchStack) -> None:
    options = GenerationOptions(max_new_tokens=8, constraint=ClientConstraint(regex="[0-9]{2}"))
    async with AsyncClient(native.public_address) as client:
        completion = await client.generate("Pick a number:", options)
    assert re.fullmatch("[0-9]{2}", completion.text) and completion.finish_reason == "eos_token"
    with pytest.raises(ValueError, match="exactly one kind"):
        ClientConstraint(regex="a", grammar="start: x").to_pb()


async def test_a_choice_streams_and_ends_on_the_grammar(native: BenchStack) -> None:
    text, reason = await _sample(native, CASES["choice"], seed=7, streamed=True)
    assert text in CHOICES and reason == pb.FINISH_REASON_EOS_TOKEN


@pytest.mark.parametrize(("constraint", "kind", "says"), [
    (pb.Constraint(json_schema='{"type": "strin"}'), "json_schema", "strin"),
    (pb.Constraint(json_schema="{not json"), "json_schema", ""),
    (pb.Constraint(regex="a(b"), "regex", "unclosed group"),
    (pb.Constraint(grammar="start: (("), "grammar", ""),
])
async def test_a_spec_that_does_not_compile_is_invalid_argument(native: BenchStack, constraint: pb.Constraint,
                                                                kind: str, says: str) -> None:
    request = pb.GenerateRequest(prompt="Hi", constraint=constraint, stopping=pb.StoppingCriteria(max_new_tokens=4))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await native.text.Generate(request, timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = refused.value.details() or ""
    assert f"constraint {kind} does not compile (llguidance" in details and says in details
    ok = await native.text.Generate(pb.GenerateRequest(prompt="Hi", stopping=pb.StoppingCriteria(max_new_tokens=2)))
    assert ok.usage.completion_tokens == 2  # the engine goes on for everyone else


async def test_an_oversized_spec_is_refused_naming_the_limit(native: BenchStack) -> None:
    request = pb.GenerateRequest(prompt="Hi", constraint=pb.Constraint(regex="a" * (MAX_CONSTRAINT_CHARS + 1)))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await native.text.Generate(request, timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "max_constraint_chars=65536" in (refused.value.details() or "")


async def test_constrained_requests_leave_unconstrained_ones_unchanged(native: BenchStack) -> None:
    """Seeded, sampled, unconstrained requests: the same text alone as beside constrained ones."""
    prompts = ["Tell me about the sea.", "Write a line about trains.", "What is a prime number?"]

    def plain(i: int) -> pb.GenerateRequest:
        return pb.GenerateRequest(chat=_chat(prompts[i]), sampling=pb.SamplingParams(temperature=1.0, seed=100 + i),
                                  stopping=pb.StoppingCriteria(max_new_tokens=24))

    alone = [(await native.text.Generate(plain(i), timeout=60)).text for i in range(len(prompts))]
    constrained = [_sample(native, CASES[kind], seed, streamed=False)
                   for seed, kind in enumerate(["json_schema", "regex", "grammar", "choice"] * 2)]
    together = await asyncio.gather(*(native.text.Generate(plain(i), timeout=60) for i in range(len(prompts))),
                                    *constrained)
    assert [r.text for r in together[:len(prompts)]] == alone  # type: ignore[union-attr]


def _info(engine: str, constrained: bool) -> EngineInfo:
    caps = EngineCapabilities(constrained_decoding=constrained, min_new_tokens=True)
    return EngineInfo("m", engine, 100, (0,), 50, 100, 50, 10, 4, caps)


@pytest.mark.parametrize("engine", ["transformers", "bench"])
def test_engines_without_the_capability_refuse_naming_themselves(engine: str) -> None:
    request = GenerationRequest("r", [1], constraint=Constraint(ConstraintKind.REGEX, "a+"))
    with pytest.raises(InvalidRequest, match=f"engine '{engine}' does not support constrained decoding"):
        validate_request(request, _info(engine, constrained=False))


def test_only_the_native_engine_reports_the_capability() -> None:
    from splitserve.generator.engines.native import engine as native_engine

    assert native_engine.CAPABILITIES.constrained_decoding and not EngineCapabilities().constrained_decoding


async def test_the_bench_engine_refuses_through_the_public_api(model_dir: Path) -> None:
    async with bench_stack(model_dir) as stack:
        request = pb.GenerateRequest(prompt="Hi", constraint=pb.Constraint(json_object=True))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stack.text.Generate(request, timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "engine 'bench' does not support constrained decoding (constraint json_object)" in (
        refused.value.details() or "")


@pytest.mark.parametrize(("constraint", "message"), [
    (Constraint(ConstraintKind.CHOICE), "constraint choice needs 1..max_choices=1024"),
    (Constraint(ConstraintKind.CHOICE, choices=("a", "")), "non-empty"),
    (Constraint(ConstraintKind.REGEX, "  "), "constraint regex is empty"),
])
def test_malformed_constraints_are_refused(constraint: Constraint, message: str) -> None:
    with pytest.raises(InvalidRequest, match=re.escape(message)):
        validate_request(GenerationRequest("r", [1], constraint=constraint), _info("native", constrained=True))


@pytest.mark.parametrize("field", [{"ignore_eos": True}, {"min_new_tokens": 2}])
def test_fields_that_fight_the_grammar_are_refused(field: dict[str, object]) -> None:
    constraint = Constraint(ConstraintKind.JSON_OBJECT)
    request = GenerationRequest("r", [1], constraint=constraint, **field)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match="cannot be combined with a constraint"):
        validate_request(request, _info("native", constrained=True))
