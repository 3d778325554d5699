"""A grpc.health.v1 check for Kubernetes exec probes: `python -m splitserve.probe 127.0.0.1:50051 [--tls-ca …]`.

The kubelet's own gRPC probe cannot speak TLS, so with TLS on the probe runs in the container: exit 0 when
the server reports SERVING, 1 otherwise (readiness). With `--live` it exits 0 whenever the server answers at
all, SERVING or not (liveness: a tokenizer with no usable generator is not ready, but restarting it would
not help). It imports only grpc, so a probe costs a fraction of a second.
"""

from __future__ import annotations

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from splitserve.common.tls import channel_credentials


def check(address: str, credentials: grpc.ChannelCredentials | None, server_name: str | None,
          timeout: float, live: bool = False) -> bool:
    """True when the server at `address` reports SERVING (with `live`: when it answers at all)."""
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    channel = (grpc.secure_channel(address, credentials, options) if credentials
               else grpc.insecure_channel(address, options))
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.RpcError as error:
            print(f"{address}: {error.code().name}", file=sys.stderr)
            return False
    return live or bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m splitserve.probe", description=__doc__)
    parser.add_argument("address", help="host:port, usually 127.0.0.1:PORT inside the pod")
    parser.add_argument("--tls-ca", default=None, help="PEM CA of the server's certificate (enables TLS)")
    parser.add_argument("--tls-cert", default=None, help="PEM client certificate, for servers requiring mutual TLS")
    parser.add_argument("--tls-key", default=None, help="PEM key of --tls-cert")
    parser.add_argument("--server-name", default=None, help="name in the server's certificate (TLS)")
    parser.add_argument("--timeout", type=float, default=2.0)
    parser.add_argument("--live", action="store_true", help="liveness: succeed on any answer, SERVING or not")
    args = parser.parse_args(argv)
    credentials = channel_credentials(args.tls_ca, args.tls_cert, args.tls_key)
    return 0 if check(args.address, credentials, args.server_name, args.timeout, args.live) else 1


if __name__ == "__main__":
    sys.exit(main())
