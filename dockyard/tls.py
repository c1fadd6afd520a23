"""The listening socket's ``SSLContext``, read from ``http.tls`` as Distribution does.

``certificate`` and ``key``, ``clientcas`` (every client must then present a
certificate signed by one of them), ``minimumtls`` (default tls1.2) and
``ciphersuites`` by their Go names. Only the standard library's ``ssl`` is needed, so
serving TLS does not load ``cryptography`` (about 14 MiB per process).
"""

from __future__ import annotations

import os
import ssl

from dockyard.config.model import TLS


class TLSConfigError(ValueError):
    """``http.tls`` cannot be used; the message names the key and the problem."""


MINIMUM_TLS = {
    "tls1.0": ssl.TLSVersion.TLSv1,
    "tls1.1": ssl.TLSVersion.TLSv1_1,
    "tls1.2": ssl.TLSVersion.TLSv1_2,
    "tls1.3": ssl.TLSVersion.TLSv1_3,
}

# Go's cipher suite names (what Distribution's ``ciphersuites`` takes) in OpenSSL's
# spelling. They govern TLS 1.2 and below; TLS 1.3 suites are not configurable in Go
# either, so those names are accepted and change nothing.
GO_CIPHER_SUITES = {
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256": "ECDHE-ECDSA-AES128-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256": "ECDHE-RSA-AES128-SHA256",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA256": "AES128-SHA256",
}
TLS13_SUITES = frozenset({"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"})


def server_ssl_context(tls: TLS) -> ssl.SSLContext | None:
    """The context for the listening socket, or None when ``http.tls`` names no certificate.

    Built from the files each time it is called, so every worker process loads them
    itself; a problem raises ``TLSConfigError`` naming the key at fault.
    """
    if not tls.certificate and not tls.key:
        if tls.clientcas:
            raise TLSConfigError("http.tls.clientcas needs http.tls.certificate and key")
        return None
    if not tls.certificate or not tls.key:
        raise TLSConfigError("http.tls needs both certificate and key")
    for key, path in (("certificate", tls.certificate), ("key", tls.key), *(("clientcas", p) for p in tls.clientcas)):
        if not os.path.isfile(path):
            raise TLSConfigError(f"http.tls.{key}: {path}: no such file")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(tls.certificate, tls.key)
    except (ssl.SSLError, OSError) as error:
        raise TLSConfigError(
            f"http.tls: cannot load certificate {tls.certificate} with key {tls.key}: {error}"
        ) from None
    minimum = (tls.minimumtls or "tls1.2").lower()
    if minimum not in MINIMUM_TLS:
        raise TLSConfigError(
            f"http.tls.minimumtls {tls.minimumtls!r} is not one of {', '.join(MINIMUM_TLS)}"
        )
    context.minimum_version = MINIMUM_TLS[minimum]
    if tls.ciphersuites:
        unknown = [s for s in tls.ciphersuites if s not in GO_CIPHER_SUITES and s not in TLS13_SUITES]
        if unknown:
            raise TLSConfigError(f"http.tls.ciphersuites: unknown suite(s) {', '.join(unknown)}")
        names = [GO_CIPHER_SUITES[s] for s in tls.ciphersuites if s in GO_CIPHER_SUITES]
        if names:
            try:
                context.set_ciphers(":".join(names))
            except ssl.SSLError as error:
                raise TLSConfigError(f"http.tls.ciphersuites: {error}") from None
    for path in tls.clientcas:
        try:
            context.load_verify_locations(cafile=path)
        except (ssl.SSLError, OSError) as error:
            raise TLSConfigError(f"http.tls.clientcas: cannot load {path}: {error}") from None
    if tls.clientcas:
        # Distribution's RequireAndVerifyClientCert: no certificate, no connection.
        context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(["http/1.1"])
    return context
