"""The `splitserve` command: run either tier, both together, or a client."""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
from pathlib import Path

from splitserve.common.model_store import DEFAULT_MODEL, default_cache_dir, resolve_model
from splitserve.common.request_log import configure_logging


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="a local Hugging Face model folder, or 'default' for the embedded SmolLM2-135M-Instruct")
    parser.add_argument("--model-name", default=None, help="name to serve the model under (default: folder name)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="where the default model is cached")
    parser.add_argument("--log-level", default="INFO")


def _model(args: argparse.Namespace) -> tuple[str, str]:
    path, name = resolve_model(args.model, args.cache_dir or default_cache_dir())
    return str(path), args.model_name or name


def _run_generator(args: argparse.Namespace) -> int:
    from splitserve.common.telemetry import from_command_line
    from splitserve.generator import config
    from splitserve.generator.engines.trtllm_mpi import run_worker_rank, serves_grpc
    from splitserve.generator.server import OTEL_SERVICE_NAME, run_generator

    generator_config = config.from_args(args, *_model(args))
    if not serves_grpc():  # tensor parallel: ranks > 0 only step the engine with rank 0
        run_worker_rank(generator_config)
        return 0
    asyncio.run(run_generator(generator_config, from_command_line(args, OTEL_SERVICE_NAME)))
    return 0


def _run_build_engine(args: argparse.Namespace) -> int:
    from splitserve.generator.engines.trtllm_build import run_build_engine

    args.model_path = _model(args)[0]
    return run_build_engine(args)


def _run_tokenizer(args: argparse.Namespace) -> int:
    from splitserve.common.telemetry import from_command_line
    from splitserve.tokenizer import config
    from splitserve.tokenizer.server import OTEL_SERVICE_NAME, run_tokenizer

    tokenizer_config = config.from_args(args, *_model(args))
    asyncio.run(run_tokenizer(tokenizer_config, from_command_line(args, OTEL_SERVICE_NAME)))
    return 0


def _run_up(args: argparse.Namespace) -> int:
    from splitserve.local_stack import run_up

    return run_up(args, *_model(args))


def _run_demo(args: argparse.Namespace) -> int:
    from splitserve.local_stack import run_demo

    return run_demo(args, *_model(args))


def _run_generate(args: argparse.Namespace) -> int:
    from splitserve.terminal import stream_to_terminal

    return stream_to_terminal(args)


def _run_fetch_model(args: argparse.Namespace) -> int:
    path, name = _model(args)
    print(f"{name}: {path}")
    return 0


def _add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", nargs="?", default="The capital of France is")
    parser.add_argument("--chat", action="store_true", help="send the prompt as one user chat message")
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--temperature", type=float, default=None, help="0 or unset: greedy")
    parser.add_argument("--stop", action="append", default=[], help="a stop string (repeatable)")
    parser.add_argument("--timeout", type=float, default=120.0)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Every command; with `command`, only that one gets its arguments (and imports what they need), so that
    `splitserve tokenizer` never imports the generator tier."""
    from splitserve.common import telemetry
    from splitserve.tokenizer import config as tokenizer_config

    parser = argparse.ArgumentParser(prog="splitserve", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generator", help="run the generator tier (token IDs in, token IDs out)")
    if command in (None, "generator"):
        from splitserve.generator import config as generator_config

        _add_model_arguments(gen)
        generator_config.add_arguments(gen)
        telemetry.add_arguments(gen, telemetry.DEFAULT_METRICS_PORTS["generator"])
    gen.set_defaults(func=_run_generator)

    tok = sub.add_parser("tokenizer", help="run the tokenizer tier (the public text API)")
    _add_model_arguments(tok)
    tokenizer_config.add_arguments(tok)
    telemetry.add_arguments(tok, telemetry.DEFAULT_METRICS_PORTS["tokenizer"])
    tok.set_defaults(func=_run_tokenizer)

    up_text = ("run both tiers on loopback until Ctrl-C or SIGTERM (exit 0); if any tier process exits (e.g. a "
               "generator killed), stop the others and exit 1: nothing is restarted")
    for name, func, text in (("up", _run_up, up_text),
                             ("demo", _run_demo, "start both tiers, stream one generation, stop")):
        cmd = sub.add_parser(name, help=text, description=text)
        _add_model_arguments(cmd)
        cmd.add_argument("--address", default="127.0.0.1:50051", help="public API address")
        cmd.add_argument("--generator-address", default="127.0.0.1:50052")
        cmd.add_argument("--engine", default="native")
        cmd.add_argument("--tokenizers", type=int, default=1, help="tokenizer processes (ports 10 apart)")
        cmd.add_argument("--generators", type=int, default=1, help="generator processes (ports 10 apart)")
        cmd.add_argument("--tokenizer-args", type=shlex.split, default=[], metavar="FLAGS",
                         help="more flags for each tokenizer, one string: '--tool-call-parser hermes'")
        cmd.add_argument("--generator-args", type=shlex.split, default=[], metavar="FLAGS",
                         help="more flags for each generator, one string: '--max-batch-size 64'")
        if name == "up":
            cmd.add_argument("--http-address", default="127.0.0.1:8000",
                             help="the OpenAI-compatible HTTP API of the (first) tokenizer; `off` disables it")
        if name == "demo":
            _add_generate_arguments(cmd)
        cmd.set_defaults(func=func)

    client = sub.add_parser("generate", help="stream a generation from a running service to the terminal")
    client.add_argument("--address", default="127.0.0.1:50051")
    _add_generate_arguments(client)
    client.add_argument("--tls-ca", default=None, help="PEM CA of the server's certificate (enables TLS)")
    client.add_argument("--tls-cert", default=None, help="PEM client certificate, for servers requiring mutual TLS")
    client.add_argument("--tls-key", default=None, help="PEM key of --tls-cert")
    client.add_argument("--auth-token-file", default=None, help="file holding the bearer token (else "
                        "$SPLITSERVE_AUTH_TOKEN)")
    client.set_defaults(func=_run_generate)

    build = sub.add_parser("build-engine", help="build a TensorRT-LLM engine (convert_checkpoint.py + trtllm-build)")
    if command in (None, "build-engine"):
        from splitserve.generator.engines.trtllm_build import add_build_engine_arguments

        _add_model_arguments(build)
        add_build_engine_arguments(build)
    build.set_defaults(func=_run_build_engine)

    bench = sub.add_parser("bench", help="load-test the public API and report throughput, latency and CPU cost")
    if command in (None, "bench"):
        from splitserve.bench import add_bench_arguments, run_bench

        add_bench_arguments(bench)
        bench.add_argument("--log-level", default="WARNING")
        bench.set_defaults(func=run_bench)

    fetch = sub.add_parser("fetch-model", help="fetch and convert the default model into the cache")
    _add_model_arguments(fetch)
    fetch.set_defaults(func=_run_fetch_model)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(next((a for a in argv if not a.startswith("-")), None)).parse_args(argv)
    configure_logging(getattr(args, "log_level", "WARNING"), getattr(args, "log_format", "text"))
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except (FileNotFoundError, ValueError) as error:
        print(f"splitserve: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
