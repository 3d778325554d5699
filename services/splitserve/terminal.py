"""`splitserve generate`: streams a generation to the terminal as it arrives."""

from __future__ import annotations

import argparse
import sys

import grpc

from splitserve_client import Chat, Client, GenerationOptions


def stream_to_terminal(args: argparse.Namespace) -> int:
    """Prints text deltas as they arrive, then a summary line on stderr."""
    prompt = Chat([("user", args.prompt)]) if args.chat else args.prompt
    options = GenerationOptions(max_new_tokens=args.max_new_tokens, temperature=args.temperature, stop=args.stop)
    try:
        with Client(args.address) as client:
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
