"""Graphite plaintext over TLS: the certificate files of the topology, and a real TLS client to Whisper."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from dsat.errors import ConfigError
from dsat.tls import server_options
from dsat.tools.stack import free_port
from tests.harness import BASE, Carbon, Processes, only_problem, problems, wait_for


def make_certificate(folder: Path, name: str = "server") -> tuple[Path, Path]:
    """A self-signed EC certificate for 127.0.0.1, valid for a day, and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dsat-test")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / f"{name}.pem", folder / f"{name}.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def test_server_options_load_a_pem_certificate_and_its_key(tmp_path: Path) -> None:
    """A matching certificate and key give TLS options offering TLS 1.2 at least."""
    cert, key = make_certificate(tmp_path)
    options = server_options(cert, key)
    from OpenSSL import SSL

    assert isinstance(options.getContext(), SSL.Context)


def test_a_key_of_another_certificate_or_a_bad_file_is_a_config_error(tmp_path: Path) -> None:
    """A key that does not match, a file that is not PEM and a missing file are refused, naming the files."""
    cert, _ = make_certificate(tmp_path, "one")
    _, other_key = make_certificate(tmp_path, "two")
    with pytest.raises(ConfigError, match="two.key: not the PEM private key of the certificate in .*one.pem"):
        server_options(cert, other_key)
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(ConfigError, match="junk.pem: not a PEM certificate"):
        server_options(tmp_path / "junk.pem", other_key)
    with pytest.raises(ConfigError, match="missing.pem: cannot read"):
        server_options(tmp_path / "missing.pem", other_key)


def test_plaintext_tls_needs_its_certificate_and_key_in_the_topology(tmp_path: Path) -> None:
    """plaintext_tls without tls_certificate and tls_key is refused with the keys to add; files that do not
    load are the preflight's problem."""
    found = problems(BASE + '[ingress]\nplaintext_tls = "127.0.0.1:2443"\n')
    assert [p.split(": ")[1] for p in found] == ["ingress.tls_certificate", "ingress.tls_key"]
    problem = only_problem(
        BASE + f'[ingress]\nplaintext_tls = "127.0.0.1:2443"\ntls_certificate = "{tmp_path}/no.pem"\n'
        f'tls_key = "{tmp_path}/no.key"\n',
        files=True,
    )
    assert "ingress.plaintext_tls: " in problem and "no.pem: cannot read" in problem


@pytest.mark.integration
def test_a_tls_client_reaches_whisper_and_a_plain_one_gets_nothing_in(
    short_tmp: Path, carbon: Carbon, processes: Processes
) -> None:
    """Lines sent by Python's ssl client (checking the server's certificate) land in Whisper; the same lines
    sent without TLS to the TLS port do not."""
    cert, key = make_certificate(short_tmp)
    port = free_port()
    topo = short_tmp / "t.toml"
    topo.write_text(
        f"""
[dsat]
where = "testhost"
run_dir = "run"
[tracker]
metrics_every = "1h"
[ingress]
plaintext_tls = "127.0.0.1:{port}"
tls_certificate = "{cert.name}"
tls_key = "{key.name}"
[carbon]
destinations = ["127.0.0.1:{carbon.port}"]
"""
    )
    carbon.start()
    processes.dsat("up", str(topo), name="up")
    context = ssl.create_default_context(cafile=str(cert))

    def tls_send(line: str) -> bool:
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
                context.wrap_socket(raw, server_hostname="127.0.0.1") as client,
            ):
                assert client.version() in ("TLSv1.2", "TLSv1.3")
                client.sendall(line.encode())
        except ConnectionRefusedError:
            return False
        return True

    now = int(time.time())
    wait_for(lambda: tls_send(f"dsat.testhost.tls.ok 4.5 {now}\n"), 30, "the TLS listener")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as plain:
        plain.sendall(f"dsat.testhost.tls.plain 9 {now}\n".encode())
        # the refusal: the server reads the line as a broken TLS record and closes the connection
        assert closed_by_server(plain, within=10), "the TLS port kept a plain connection open"
    # a TLS line sent after the refused plain one lands: the plain one, had it been taken, would be there too
    assert tls_send(f"dsat.testhost.tls.after 5.5 {now}\n")
    wait_for(lambda: carbon.values("dsat.testhost.tls.ok") == [4.5], 30, "the point sent over TLS")
    wait_for(lambda: carbon.values("dsat.testhost.tls.after") == [5.5], 30, "the point sent over TLS after")
    assert not (carbon.stack.whisper_dir / "dsat" / "testhost" / "tls" / "plain.wsp").exists()


def closed_by_server(sock: socket.socket, within: float) -> bool:
    """Whether the peer closes *sock* (end of stream or reset) within *within* seconds; what it sends is read."""
    deadline = time.monotonic() + within
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            if not sock.recv(4096):
                return True
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
    return False
