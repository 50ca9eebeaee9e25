"""TLS for the Graphite plaintext ingress: the certificate and key of ``[ingress] plaintext_tls``.

A thin layer: it only turns the topology's PEM files into the OpenSSL context
Twisted's TLS listener encrypts connections with (pyOpenSSL, the
``dsat[tls]`` extra); the connections are the plaintext ones of
:mod:`dsat.ingress`, parsed by the same code.  TLS 1.2 is the lowest version
offered.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet.interfaces import IOpenSSLContextFactory
from zope.interface import implementer

from dsat.errors import ConfigError


@implementer(IOpenSSLContextFactory)
class ServerContext:
    """A Twisted context factory (``getContext``) for one certificate chain and its private key."""

    def __init__(self, context: Any) -> None:
        self._context = context

    def getContext(self) -> Any:  # noqa: N802 (Twisted's name)
        return self._context


def server_options(certificate: Path, key: Path) -> ServerContext:
    """The TLS server context of a PEM certificate (chain) file and its PEM private key file.

    Raises ConfigError naming the file and what is wrong with it.
    """
    try:
        from OpenSSL import SSL
    except ImportError:
        raise ConfigError("ingress.plaintext_tls: TLS needs pyOpenSSL; install dsat[tls]") from None
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    for path in (certificate, key):
        if not path.is_file():
            raise ConfigError(f"{path}: cannot read (no such file); fix [ingress] tls_certificate and tls_key")
    try:
        context.use_certificate_chain_file(str(certificate))
    except SSL.Error as exc:
        raise ConfigError(f"{certificate}: not a PEM certificate ({exc}); check [ingress] tls_certificate") from None
    try:
        context.use_privatekey_file(str(key))  # also checks that it is the certificate's key
    except SSL.Error as exc:
        raise ConfigError(
            f"{key}: not the PEM private key of the certificate in {certificate} ({exc}); check [ingress] tls_key"
        ) from None
    return ServerContext(context)
