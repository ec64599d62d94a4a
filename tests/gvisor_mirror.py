"""A private instance of the test mirror (tests/mirror/server.py) and its fault control.

Tests that inject faults, or move `latest`, start their own server on a free port over their
own copy of the mirror, so they never disturb the shared server on port 18080. A server may
speak HTTPS with a certificate from a throwaway CA (make_test_ca) and ask for basic auth.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import os
import shutil
import ssl
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from gvisor_testinfra import REPO, mirror_dir

SERVER = REPO / "tests" / "mirror" / "server.py"


def copy_mirror(dest, source=None):
    """Copy a built mirror to dest (hard links where the filesystem allows) and return dest."""
    source = Path(source or mirror_dir())
    if not (source / ".complete").exists():
        raise RuntimeError(f"{source} is not a built mirror; run tests/mirror/build first")

    def link_or_copy(src, dst):
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, dest, symlinks=True, copy_function=link_or_copy)
    return Path(dest)


def point_latest(root, version):
    """Make release/latest of a mirror copy point at another release, atomically."""
    release = Path(root) / "release"
    new = release / ".latest.new"
    new.unlink(missing_ok=True)
    new.symlink_to(version)
    new.replace(release / "latest")


@dataclass(frozen=True)
class MirrorTLS:
    """The files of a throwaway CA and of a server certificate it signed (PEM)."""

    ca: Path  # the CA certificate clients verify the server against
    cert: Path  # the server certificate, for 127.0.0.1 (IP SAN) and localhost
    key: Path  # the server certificate's private key

    def client_context(self):
        """An SSL context that trusts this CA alone."""
        return ssl.create_default_context(cafile=str(self.ca))


def make_test_ca(directory, days=7):
    """Create a throwaway CA and a server certificate for 127.0.0.1 and localhost in directory
    (ca.pem, server.pem, server-key.pem; the CA's key is never written) and return their paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)

    def name(common_name):
        return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "containerd-gvisor tests"),
                          x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(name("containerd-gvisor throwaway test CA"))
        .issuer_name(name("containerd-gvisor throwaway test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name("localhost"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                    x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    tls = MirrorTLS(ca=directory / "ca.pem", cert=directory / "server.pem", key=directory / "server-key.pem")
    tls.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    tls.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(tls.key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    return tls


class MirrorServer:
    """One server.py on a free 127.0.0.1 port, with its access log and fault table.

    tls: None for http://; a MirrorTLS (from make_test_ca) or True (a new CA in a folder beside
    the log) for https://, with the CA's file in ca_file. auth: None, or (user, password) or
    "user:password" that every request (fault control included) must send as basic auth.
    """

    def __init__(self, root, log, tls=None, auth=None):
        self.root, self.log = Path(root), Path(log)
        if tls is True:
            tls = make_test_ca(self.log.with_name(self.log.name + ".tls"))
        self.tls = tls or None
        self.ca_file = self.tls.ca if self.tls else None
        if isinstance(auth, str):
            user, _ignored, password = auth.partition(":")
            auth = (user, password)
        self.auth = tuple(auth) if auth else None
        argv = [sys.executable, str(SERVER), "--root", str(self.root), "--port", "0", "--log", str(self.log)]
        if self.tls:
            argv += ["--tls-cert", str(self.tls.cert), "--tls-key", str(self.tls.key)]
        if self.auth:
            argv += ["--basic-auth", ":".join(self.auth)]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("serving "):
            self.proc.kill()
            raise RuntimeError(f"server.py did not start: {line}{self.proc.stderr.read()}")
        self.port = int(line.rsplit(":", 1)[1].strip().rstrip("/"))
        self.url = f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)

    def ssl_context(self):
        """A client SSL context that trusts the server's CA, or None for plain HTTP."""
        return self.tls.client_context() if self.tls else None

    def auth_headers(self):
        """The Authorization header the server wants, as a dict (empty without auth)."""
        if not self.auth:
            return {}
        return {"Authorization": "Basic " + base64.b64encode(":".join(self.auth).encode()).decode()}

    def open(self, path, method="GET", data=None):
        """urlopen a path of the server with its CA and credentials; the caller closes the response."""
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=self.auth_headers())
        return urllib.request.urlopen(request, timeout=10, context=self.ssl_context())

    def _control(self, method, body=None):
        data = None if body is None else json.dumps(body).encode()
        with self.open("/_control/faults", method=method, data=data) as response:
            return json.loads(response.read())

    def set_faults(self, faults):
        """Replace the fault table, e.g. {"/release/20261005.0/x86_64/gvisor.tar.bz2": {"kind": "corrupt"}}."""
        return self._control("PUT", faults)

    def clear_faults(self):
        return self._control("DELETE")

    def faults(self):
        """The fault table, each fault with the number of requests it changed ("hits")."""
        return self._control("GET")

    def requests(self):
        """Every request served so far, oldest first, as the access log's JSON objects."""
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]


def served_bytes(data, kind):
    """The body server.py sends for a file's bytes under a "corrupt" or "truncate" fault."""
    if kind == "truncate":
        return data[: len(data) // 2]
    if kind == "corrupt" and data:
        body = bytearray(data)
        for pos in sorted({0, len(data) // 2, len(data) - 1}):  # first, middle and last byte, flipped
            body[pos] ^= 0xFF
        return bytes(body)
    return data
