"""How a request on a GenerateMany stream is traced: as if it were its own Generate call, on both sides."""

from __future__ import annotations

SPAN_NAME = "/splitserve.api.tokens.v1.TokenGenerationService/Generate"
RPC_ATTRIBUTES = {"rpc.system": "grpc", "rpc.service": "splitserve.api.tokens.v1.TokenGenerationService",
                  "rpc.method": "Generate"}
