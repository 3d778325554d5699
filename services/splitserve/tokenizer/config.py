"""The tokenizer tier's configuration: one frozen object built from the command line."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

from splitserve.common.auth import TOKEN_ENV, Secret, read_token
from splitserve.common.server_flags import add_server_security_arguments
from splitserve.tokenizer.pool_targets import parse_pool


@dataclass(frozen=True)
class TokenizerConfig:
    """Everything the tokenizer tier needs to start."""

    model_path: str
    model_name: str
    address: str = "127.0.0.1:50051"
    http_address: str | None = None  # the OpenAI-compatible HTTP API, host:port (None: not served)
    generator_address: str = "127.0.0.1:50052"
    generator_transport: str = "many"  # "many": one GenerateMany stream per generator; "stream": a call per request
    stream_interval_ms: float = 0.0  # at most one message per request per interval, held by the generator
    max_stop_sequences: int = 16
    max_stop_sequence_length: int = 256
    max_prompt_chars: int = 1_000_000
    generator_wait_seconds: float = 600.0
    grace_seconds: float = 10.0
    generator_pools: tuple[tuple[str, str], ...] = ()  # (model, "addr,addr") from --pool; see pool_targets
    max_inflight_requests: int = 1024  # generation calls in this process; more is RESOURCE_EXHAUSTED
    max_chat_messages: int = 512
    max_receive_message_bytes: int = 16 * 1024 * 1024  # larger requests: RESOURCE_EXHAUSTED from gRPC itself
    max_concurrent_streams: int = 0  # per client connection (HTTP/2); 0 keeps gRPC's default, no limit
    tls_cert: str | None = None  # the public port's PEM certificate and key; with tls_client_ca, mutual TLS
    tls_key: str | None = None
    tls_client_ca: str | None = None
    generator_tls_ca: str | None = None  # TLS to the generator: the CA that signed its certificate
    generator_tls_cert: str | None = None  # and this tier's client certificate (mutual TLS)
    generator_tls_key: str | None = None
    generator_tls_server_name: str | None = None  # name the generators' certificate holds, when dialled by IP
    auth_token: Secret | None = None  # bearer token the public API requires (none: no check)
    tool_call_parser: str = "auto"  # hermes, llama3_json, none; auto: by the model's family (TextCodec)
    reasoning_parser: str = "think"  # think, none; used by requests that set separate_reasoning


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the tokenizer tier's flags (model flags are added by the caller)."""
    d = TokenizerConfig("", "")
    parser.add_argument("--address", default=d.address, help="host:port of the public API")
    parser.add_argument("--http-address", default=None,
                        help="host:port of the OpenAI-compatible HTTP API, in the same process (default: off)")
    parser.add_argument("--generator", action="append", default=None,
                        help="generator replicas of this model: host:port[,host:port…] or dns:///name:port "
                             f"(repeatable; default {d.generator_address} unless --pool is given)")
    parser.add_argument("--pool", action="append", default=[], type=parse_pool, metavar="MODEL=TARGETS",
                        help="generator replicas serving another model name, e.g. smol-trt=dns:///gen-trt:50052")
    parser.add_argument("--generator-transport", default=d.generator_transport, choices=["many", "stream"],
                        help="many: requests share one multiplexed stream per generator; stream: one call each")
    parser.add_argument("--stream-interval-ms", type=float, default=d.stream_interval_ms,
                        help="send each stream at most one message per interval (fewer, larger deltas; 0: off)")
    parser.add_argument("--max-stop-sequences", type=int, default=d.max_stop_sequences)
    parser.add_argument("--max-stop-sequence-length", type=int, default=d.max_stop_sequence_length)
    parser.add_argument("--max-prompt-chars", type=int, default=d.max_prompt_chars)
    parser.add_argument("--generator-wait-seconds", type=float, default=d.generator_wait_seconds,
                        help="how long to wait at start-up for the generator to answer")
    parser.add_argument("--grace-seconds", type=float, default=d.grace_seconds)
    parser.add_argument("--max-inflight-requests", type=int, default=d.max_inflight_requests,
                        help="generation calls in flight before RESOURCE_EXHAUSTED")
    parser.add_argument("--max-chat-messages", type=int, default=d.max_chat_messages)
    add_server_security_arguments(parser, d.max_receive_message_bytes, d.max_concurrent_streams)
    parser.add_argument("--generator-tls-ca", default=None, help="PEM CA of the generator's certificate (enables TLS)")
    parser.add_argument("--generator-tls-cert", default=None, help="PEM client certificate for mutual TLS")
    parser.add_argument("--generator-tls-key", default=None, help="PEM key of --generator-tls-cert")
    parser.add_argument("--generator-tls-server-name", default=None,
                        help="expected name in the generators' certificate (needed with dns:/// targets)")
    parser.add_argument("--tool-call-parser", default=d.tool_call_parser,
                        choices=["auto", "hermes", "llama3_json", "none"],
                        help="tool-call format read from the output of requests with tools (auto: llama3_json "
                             "for tokenizers with <|python_tag|>, else hermes; none: requests with tools are refused)")
    parser.add_argument("--reasoning-parser", default=d.reasoning_parser, choices=["think", "none"],
                        help="how separate_reasoning finds the reasoning: <think>...</think> (none: refused)")
    parser.add_argument("--auth-token-file", default=None,
                        help=f"file holding the bearer token the public API requires (else ${TOKEN_ENV})")


def from_args(args: argparse.Namespace, model_path: str, model_name: str) -> TokenizerConfig:
    return TokenizerConfig(
        model_path=model_path, model_name=model_name, address=args.address, http_address=args.http_address,
        generator_address=_generator_flag(args),
        max_stop_sequences=args.max_stop_sequences, max_stop_sequence_length=args.max_stop_sequence_length,
        max_prompt_chars=args.max_prompt_chars, generator_wait_seconds=args.generator_wait_seconds,
        generator_pools=tuple(args.pool), generator_transport=args.generator_transport,
        stream_interval_ms=args.stream_interval_ms,
        grace_seconds=args.grace_seconds, max_inflight_requests=args.max_inflight_requests,
        max_chat_messages=args.max_chat_messages,
        max_receive_message_bytes=args.max_receive_message_bytes, max_concurrent_streams=args.max_concurrent_streams,
        tls_cert=args.tls_cert, tls_key=args.tls_key, tls_client_ca=args.tls_client_ca,
        generator_tls_ca=args.generator_tls_ca, generator_tls_cert=args.generator_tls_cert,
        generator_tls_key=args.generator_tls_key, generator_tls_server_name=args.generator_tls_server_name,
        auth_token=read_token(args.auth_token_file, os.environ),  # from_args runs at the entry point only
        tool_call_parser=args.tool_call_parser, reasoning_parser=args.reasoning_parser,
    )


def _generator_flag(args: argparse.Namespace) -> str:
    """Every --generator value joined; without any, the default address unless pools were given."""
    if args.generator:
        return ",".join(args.generator)
    return "" if args.pool else TokenizerConfig("", "").generator_address
