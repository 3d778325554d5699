"""TLS credentials from PEM files: server side (optionally requiring client certificates) and channel side."""

from __future__ import annotations

from pathlib import Path

import grpc


def _read(path: str) -> bytes:
    return Path(path).read_bytes()


def server_credentials(cert_file: str | None, key_file: str | None,
                       client_ca_file: str | None = None) -> grpc.ServerCredentials | None:
    """TLS for a listening port, or None (plaintext); a client CA makes it mutual TLS."""
    if not cert_file and not key_file:
        if client_ca_file:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if not (cert_file and key_file):
        raise ValueError("--tls-cert and --tls-key go together")
    client_ca = _read(client_ca_file) if client_ca_file else None
    return grpc.ssl_server_credentials([(_read(key_file), _read(cert_file))], root_certificates=client_ca,
                                       require_client_auth=client_ca is not None)


def channel_credentials(ca_file: str | None, cert_file: str | None = None,
                        key_file: str | None = None) -> grpc.ChannelCredentials | None:
    """TLS to a server trusted through `ca_file`, with a client certificate for mutual TLS; None: plaintext."""
    if not ca_file:
        if cert_file or key_file:
            raise ValueError("a client certificate needs the CA that signed the server's (--generator-tls-ca)")
        return None
    if bool(cert_file) != bool(key_file):
        raise ValueError("the client certificate and its key go together")
    return grpc.ssl_channel_credentials(
        root_certificates=_read(ca_file),
        private_key=_read(key_file) if key_file else None,
        certificate_chain=_read(cert_file) if cert_file else None,
    )
