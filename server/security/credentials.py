"""Make what a secure federation needs, in one folder:

    ca.crt, ca.key            a self-signed certificate authority (ECDSA P-384)
    superlink.crt/.key        the SuperLink's TLS certificate, signed by the CA, valid for
                              the given host names and IP addresses, and loopback
                              (subjectAltName)
    node-<i>, node-<i>.pub    SuperNode i's authentication key pair (EC P-384, OpenSSH
                              format: `flower-supernode --auth-supernode-private-key` reads
                              the first, `flwr supernode register` the second)
    api.crt/.key              the REST API's HTTPS certificate (the same hosts), signed by
                              the CA

Flower verifies TLS against ca.crt (`--root-certificates`, or `root-certificates` of a
connection in FLWR_HOME/config.toml); with `flower-superlink --enable-supernode-auth`,
only SuperNodes whose public key was registered join. Private keys are written 0600.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALID_DAYS = 365


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_private(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    os.chmod(path, 0o600)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _alt_names(hosts: list[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def make_ca(folder: Path, common_name: str = "orthofed federation CA"):
    """A self-signed CA: (certificate, private key), written as ca.crt and ca.key."""
    key = ec.generate_private_key(ec.SECP384R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(common_name))
            .issuer_name(_name(common_name)).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .sign(key, hashes.SHA384()))
    (folder / "ca.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_private(folder / "ca.key", _pem_key(key))
    return cert, key


def make_server_certificate(folder: Path, name: str, hosts: list[str], ca_cert, ca_key) -> Path:
    """`name`.crt and `name`.key: a TLS server certificate for `hosts`, signed by the CA."""
    if not hosts:
        raise ValueError("hosts: at least one host name or IP address, got none")
    key = ec.generate_private_key(ec.SECP384R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(hosts[0]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
            .add_extension(x509.SubjectAlternativeName(_alt_names(hosts)), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA384()))
    (folder / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_private(folder / f"{name}.key", _pem_key(key))
    return folder / f"{name}.crt"


def make_node_keys(folder: Path, index: int) -> tuple[Path, Path]:
    """node-`index` (private, OpenSSH) and node-`index`.pub (public, OpenSSH)."""
    key = ec.generate_private_key(ec.SECP384R1())
    private, public = folder / f"node-{index}", folder / f"node-{index}.pub"
    _write_private(private, key.private_bytes(serialization.Encoding.PEM,
                                              serialization.PrivateFormat.OpenSSH,
                                              serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                     serialization.PublicFormat.OpenSSH))
    return private, public


def credential_files(nodes: int) -> list[str]:
    """The names make_credentials writes for `nodes` SuperNodes."""
    fixed = ["ca.crt", "ca.key", "superlink.crt", "superlink.key", "api.crt", "api.key"]
    return fixed + [name for i in range(nodes) for name in (f"node-{i}", f"node-{i}.pub")]


def make_credentials(folder: Path, hosts: list[str], nodes: int) -> list[Path]:
    """Everything above in `folder` (created); the files written."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = make_ca(folder)
    # The SuperLink's own processes (its SuperExec, the ServerApp) reach it on loopback,
    # over the same TLS: its certificate must name 127.0.0.1 and localhost as well.
    loopback = [h for h in ("127.0.0.1", "localhost") if h not in hosts]
    make_server_certificate(folder, "superlink", [*hosts, *loopback], ca_cert, ca_key)
    make_server_certificate(folder, "api", hosts, ca_cert, ca_key)
    for index in range(nodes):
        make_node_keys(folder, index)
    return sorted(folder.iterdir())
