"""`splitserve generate`: streams a generation to the terminal as it arrives."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import grpc

from splitserve.common.auth import read_token
from splitserve_client import Chat, Client, GenerationOptions, Security


def client_security(args: argparse.Namespace) -> Security:
    """TLS files and the bearer token named by `splitserve generate`'s flags (or $SPLITSERVE_AUTH_TOKEN)."""
    def read(path: str | None) -> bytes | None:
        return Path(path).read_bytes() if path else None

    token = read_token(getattr(args, "auth_token_file", None), os.environ)
    return Security(read(getattr(args, "tls_ca", None)), read(getattr(args, "tls_cert", None)),
                    read(getattr(args, "tls_key", None)), token.value if token else None)


def stream_to_terminal(args: argparse.Namespace) -> int:
    """Prints text deltas as they arrive, then a summary line on stderr."""
    prompt = Chat([("user", args.prompt)]) if args.chat else args.prompt
    options = GenerationOptions(max_new_tokens=args.max_new_tokens, temperature=args.temperature, stop=args.stop)
    try:
        with Client(args.address, client_security(args)) as client:
            if not args.chat:
                print(args.prompt, end="", flush=True)
            for delta in client.generate_stream(prompt, options, timeout=args.timeout):
                print(delta.text, end="", flush=True)
                if delta.finish_reason:
                    print(f"\n[{delta.finish_reason}: {delta.prompt_tokens} prompt tokens, "
                          f"{delta.completion_tokens} generated]", file=sys.stderr)
    except grpc.RpcError as error:
        print(f"\nsplitserve: {error.code().name}: {error.details()}", file=sys.stderr)
        return 1
    return 0
