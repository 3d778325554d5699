"""TLS and bearer-token options of the client (the token travels as `authorization: Bearer ...`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc


@dataclass(frozen=True)
class Security:
    """What a client needs to reach a TLS and/or token-protected server; all PEM values as bytes."""

    root_certificates: bytes | None = None  # CA of the server's certificate; None: plaintext
    certificate_chain: bytes | None = None  # client certificate, for servers that require mutual TLS
    private_key: bytes | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        if self.root_certificates is None:
            return None
        return grpc.ssl_channel_credentials(self.root_certificates, self.private_key, self.certificate_chain)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()
