"""The tokenizer tier's configuration: one frozen object built from the command line."""

from __future__ import annotations

import argparse
from dataclasses import dataclass


@dataclass(frozen=True)
class TokenizerConfig:
    """Everything the tokenizer tier needs to start."""

    model_path: str
    model_name: str
    address: str = "127.0.0.1:50051"
    generator_address: str = "127.0.0.1:50052"
    max_stop_sequences: int = 16
    max_stop_sequence_length: int = 256
    max_prompt_chars: int = 1_000_000
    generator_wait_seconds: float = 600.0
    grace_seconds: float = 10.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the tokenizer tier's flags (model flags are added by the caller)."""
    d = TokenizerConfig("", "")
    parser.add_argument("--address", default=d.address, help="host:port of the public API")
    parser.add_argument("--generator", default=d.generator_address, help="host:port of the generator tier")
    parser.add_argument("--max-stop-sequences", type=int, default=d.max_stop_sequences)
    parser.add_argument("--max-stop-sequence-length", type=int, default=d.max_stop_sequence_length)
    parser.add_argument("--max-prompt-chars", type=int, default=d.max_prompt_chars)
    parser.add_argument("--generator-wait-seconds", type=float, default=d.generator_wait_seconds,
                        help="how long to wait at start-up for the generator to answer")
    parser.add_argument("--grace-seconds", type=float, default=d.grace_seconds)


def from_args(args: argparse.Namespace, model_path: str, model_name: str) -> TokenizerConfig:
    return TokenizerConfig(
        model_path=model_path, model_name=model_name, address=args.address, generator_address=args.generator,
        max_stop_sequences=args.max_stop_sequences, max_stop_sequence_length=args.max_stop_sequence_length,
        max_prompt_chars=args.max_prompt_chars, generator_wait_seconds=args.generator_wait_seconds,
        grace_seconds=args.grace_seconds,
    )
