"""The public port's guards: bearer token, in-flight bound, TLS; and TLS towards the generator tier."""

from __future__ import annotations

import grpc

from splitserve.api.text.v1 import text_pb2
from splitserve.common import tls
from splitserve.common.admission import AdmissionInterceptor, InflightLimit
from splitserve.common.auth import BearerTokenInterceptor
from splitserve.tokenizer.config import TokenizerConfig

_SERVICE = text_pb2.DESCRIPTOR.services_by_name["TextGenerationService"].full_name
# Only generation holds resources for long; tokenize and model info stay cheap and unbounded.
GENERATE_METHODS = (f"/{_SERVICE}/Generate", f"/{_SERVICE}/GenerateStream")


def public_interceptors(config: TokenizerConfig, limit: InflightLimit) -> list[grpc.aio.ServerInterceptor]:
    """Authentication first (an unauthenticated call takes no slot), then admission (the in-flight bound
    the HTTP API shares)."""
    guards: list[grpc.aio.ServerInterceptor] = []
    if config.auth_token is not None:
        guards.append(BearerTokenInterceptor(config.auth_token))
    guards.append(AdmissionInterceptor(limit, GENERATE_METHODS))
    return guards


def public_credentials(config: TokenizerConfig) -> grpc.ServerCredentials | None:
    return tls.server_credentials(config.tls_cert, config.tls_key, config.tls_client_ca)


def generator_credentials(config: TokenizerConfig) -> grpc.ChannelCredentials | None:
    return tls.channel_credentials(config.generator_tls_ca, config.generator_tls_cert, config.generator_tls_key)
