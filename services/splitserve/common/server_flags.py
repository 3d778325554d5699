"""Command-line flags both tiers share for their listening port: message and stream limits, TLS."""

from __future__ import annotations

import argparse


def add_server_security_arguments(parser: argparse.ArgumentParser, max_receive_message_bytes: int,
                                  max_concurrent_streams: int) -> None:
    """Adds --max-receive-message-bytes, --max-concurrent-streams and --tls-cert/--tls-key/--tls-client-ca."""
    parser.add_argument("--max-receive-message-bytes", type=int, default=max_receive_message_bytes,
                        help="largest request message; gRPC refuses larger ones with RESOURCE_EXHAUSTED")
    parser.add_argument("--max-concurrent-streams", type=int, default=max_concurrent_streams,
                        help="concurrent calls per client connection (HTTP/2); 0: gRPC's default, no limit")
    parser.add_argument("--tls-cert", default=None, help="PEM certificate of this port (enables TLS)")
    parser.add_argument("--tls-key", default=None, help="PEM private key of --tls-cert")
    parser.add_argument("--tls-client-ca", default=None,
                        help="PEM CA that client certificates must chain to (mutual TLS: no certificate, no call)")
