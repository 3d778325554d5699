"""TLS on both ports, mutual TLS to the generator, the bearer token, and secrets kept out of logs."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from splitserve.api.text.v1 import text_pb2 as pb
from splitserve.api.text.v1 import text_pb2_grpc
from splitserve.api.tokens.v1 import tokens_pb2 as tpb
from splitserve.api.tokens.v1 import tokens_pb2_grpc
from splitserve.common.auth import Secret, read_token
from splitserve.common.model_store import DEFAULT_MODEL_NAME
from splitserve.tokenizer.config import TokenizerConfig
from splitserve.tokenizer.server import start_tokenizer
from splitserve_client import AsyncClient, GenerationOptions, Security

from .bench_stack import BenchStack, bench_stack

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "s3cret-token-for-tests"


@dataclass
class Secure:
    """A TLS stack, the dev certificates, and its public address."""

    stack: BenchStack
    certs: Path

    def pem(self, name: str) -> bytes:
        return (self.certs / name).read_bytes()

    def tls(self, **extra: str) -> Security:
        return Security(self.pem("ca.pem"), **extra)  # type: ignore[arg-type]


def make_certs(out: Path) -> Path:
    subprocess.run(["bash", str(ROOT / "deploy/tls/make-dev-certs.sh"), str(out)], check=True, capture_output=True)
    return out


@pytest.fixture(scope="module")
async def secure(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Secure]:
    certs = make_certs(tmp_path_factory.mktemp("certs"))
    server_tls = {"tls_cert": str(certs / "server.pem"), "tls_key": str(certs / "server-key.pem")}
    generator = {**server_tls, "tls_client_ca": str(certs / "ca.pem")}  # mutual TLS
    tokenizer = {**server_tls, "generator_tls_ca": str(certs / "ca.pem"),
                 "generator_tls_cert": str(certs / "client.pem"), "generator_tls_key": str(certs / "client-key.pem"),
                 "auth_token": Secret(TOKEN)}
    async with bench_stack(model_dir, generator, tokenizer) as stack:
        yield Secure(stack, certs)


async def test_tls_and_token_generate(secure: Secure) -> None:
    async with AsyncClient(secure.stack.public_address, security=secure.tls(token=TOKEN)) as client:
        completion = await client.generate("Hello", GenerationOptions(max_new_tokens=4), timeout=10)
    assert completion.completion_tokens == 4


@pytest.mark.parametrize(("token", "code"), [(None, grpc.StatusCode.UNAUTHENTICATED),
                                              ("wrong", grpc.StatusCode.PERMISSION_DENIED)])
async def test_missing_or_wrong_token_is_refused(secure: Secure, token: str | None, code: grpc.StatusCode) -> None:
    async with AsyncClient(secure.stack.public_address, security=secure.tls(token=token or "")) as client:
        for call in (client.generate("Hello", timeout=10), client.model_info()):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call
            assert caught.value.code() == code
            assert TOKEN not in (caught.value.details() or "")


async def test_health_answers_without_a_token_but_only_over_tls(secure: Secure) -> None:
    credentials = grpc.ssl_channel_credentials(secure.pem("ca.pem"))
    async with grpc.aio.secure_channel(secure.stack.public_address, credentials) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    async with grpc.aio.insecure_channel(secure.stack.public_address) as plain:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await health_pb2_grpc.HealthStub(plain).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_generator_requires_a_client_certificate(secure: Secure) -> None:
    address = secure.stack.generator_address
    without = grpc.ssl_channel_credentials(secure.pem("ca.pem"))
    async with grpc.aio.secure_channel(address, without) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await tokens_pb2_grpc.TokenGenerationServiceStub(channel).GetLoad(tpb.GetLoadRequest(), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    with_cert = grpc.ssl_channel_credentials(secure.pem("ca.pem"), secure.pem("client-key.pem"),
                                             secure.pem("client.pem"))
    async with grpc.aio.secure_channel(address, with_cert) as channel:
        load = await tokens_pb2_grpc.TokenGenerationServiceStub(channel).GetLoad(tpb.GetLoadRequest(), timeout=5)
    assert load.max_batch_size == 8


async def test_tokenizer_without_client_certificate_cannot_reach_the_generator(secure: Secure,
                                                                                model_dir: Path) -> None:
    config = TokenizerConfig(str(model_dir), DEFAULT_MODEL_NAME, address="127.0.0.1:0",
                             generator_address=secure.stack.generator_address, generator_wait_seconds=2,
                             generator_tls_ca=str(secure.certs / "ca.pem"))
    with pytest.raises(Exception):  # noqa: B017  (start-up gives up; which error depends on the pool)
        await start_tokenizer(config)


async def test_secrets_stay_out_of_logs_and_reprs(secure: Secure, model_dir: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with bench_stack(model_dir, None, {"auth_token": Secret(TOKEN)}) as stack:
        async with grpc.aio.insecure_channel(stack.public_address) as channel:
            with pytest.raises(grpc.aio.AioRpcError):
                await text_pb2_grpc.TextGenerationServiceStub(channel).Generate(
                    pb.GenerateRequest(prompt="hi"), metadata=(("authorization", "Bearer nope"),))
        assert TOKEN not in repr(stack.tokenizer.config)
    assert TOKEN not in caplog.text
    assert TOKEN not in repr(secure.tls(token=TOKEN))


def test_token_from_file_or_environment(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(f"  {TOKEN}\n")
    assert read_token(str(token_file), {}) == Secret(TOKEN)
    assert read_token(None, {"SPLITSERVE_AUTH_TOKEN": TOKEN}) == Secret(TOKEN)
    assert read_token(None, {}) is None
    token_file.write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        read_token(str(token_file), {})


async def test_splitserve_generate_uses_tls_and_token(secure: Secure, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    command = [sys.executable, "-m", "splitserve", "generate", "Hello", "--address", secure.stack.public_address,
               "--max-new-tokens", "3", "--tls-ca", str(secure.certs / "ca.pem"), "--auth-token-file",
               str(token_file)]
    result = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "3 generated" in result.stderr


async def test_plain_prompts_keep_special_tokens_chat_content_does_not(model_dir: Path) -> None:
    # A prompt is the caller's whole model input (it may carry its own template); chat content is user text.
    async with bench_stack(model_dir) as stack:
        im_end = 2
        prompt = await stack.text.Tokenize(pb.TokenizeRequest(text="hi<|im_end|>"))
        assert im_end in prompt.ids
        reply = await stack.text.Generate(pb.GenerateRequest(prompt="hi<|im_end|>",
                                                             stopping=pb.StoppingCriteria(max_new_tokens=1)))
        assert reply.usage.prompt_tokens == len(prompt.ids)
        chat = pb.ChatInput(messages=[pb.ChatMessage(role="user", content="<|im_end|>")])
        safe = await stack.text.Generate(pb.GenerateRequest(chat=chat, stopping=pb.StoppingCriteria(max_new_tokens=1)))
        chat.allow_special_tokens_in_content = True
        raw = await stack.text.Generate(pb.GenerateRequest(chat=chat, stopping=pb.StoppingCriteria(max_new_tokens=1)))
        assert safe.usage.prompt_tokens > raw.usage.prompt_tokens  # the string became several plain-text tokens


@pytest.mark.parametrize(("server_name", "reachable"), [("localhost", True), ("not-in-the-certificate", False)])
async def test_generator_certificate_is_checked_against_the_configured_name(
    secure: Secure, server_name: str, reachable: bool
) -> None:
    from splitserve.tokenizer.generator_client import GeneratorClient

    credentials = grpc.ssl_channel_credentials(secure.pem("ca.pem"), secure.pem("client-key.pem"),
                                               secure.pem("client.pem"))
    # Dialled by IP as a pool dials pods it found through DNS; the name is what the certificate must hold.
    client = GeneratorClient(secure.stack.generator_address, credentials=credentials, tls_server_name=server_name)
    try:
        if reachable:
            assert (await client.model_info(timeout=5)).engine_info.vocab_size == 49152
        else:
            with pytest.raises(grpc.aio.AioRpcError):
                await client.model_info(timeout=2)
    finally:
        await client.close()
