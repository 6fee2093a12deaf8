"""The credentials `orthofed credentials` makes: a server certificate that verifies
against the CA for the hosts asked (and loopback), keys in the formats Flower reads."""

from __future__ import annotations

import ssl
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key
from flwr.supercore.primitives.asymmetric import public_key_to_bytes

from server.cli.commands import main
from server.security.credentials import make_credentials


def test_the_superlink_certificate_verifies_against_the_ca_for_each_host(tmp_path) -> None:
    make_credentials(tmp_path, ["10.213.0.1", "superlink"], nodes=2)
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())
    cert = x509.load_pem_x509_certificate((tmp_path / "superlink.crt").read_bytes())
    cert.verify_directly_issued_by(ca)  # raises unless the CA signed it
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(ip) for ip in names.get_values_for_type(x509.IPAddress)} == {"10.213.0.1",
                                                                           "127.0.0.1"}
    assert set(names.get_values_for_type(x509.DNSName)) == {"superlink", "localhost"}
    # Python's TLS stack accepts the pair as a server's, with the CA as a client's trust.
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "superlink.crt", tmp_path / "superlink.key")
    ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))


def test_node_keys_are_p384_openssh_pairs_with_private_files_0600(tmp_path) -> None:
    make_credentials(tmp_path, ["superlink"], nodes=2)
    for index in range(2):
        private = load_ssh_private_key((tmp_path / f"node-{index}").read_bytes(), None)
        public = load_ssh_public_key((tmp_path / f"node-{index}.pub").read_bytes())
        assert isinstance(private.curve, ec.SECP384R1)
        assert public_key_to_bytes(private.public_key()) == public_key_to_bytes(public)
        assert stat.S_IMODE((tmp_path / f"node-{index}").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "ca.key").stat().st_mode) == 0o600
    first = (tmp_path / "node-0.pub").read_bytes()
    assert first != (tmp_path / "node-1.pub").read_bytes()


def test_a_bad_node_count_is_refused_naming_the_flag(tmp_path, capsys) -> None:
    assert main(["credentials", str(tmp_path / "c"), "--host", "x", "--nodes", "-1"]) == 2
    assert "--nodes: must be between 0 and 10000, got -1" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_no_host_is_a_usage_error(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["credentials", str(tmp_path / "c")])
    assert exit_.value.code == 2
    assert "the following arguments are required: --host" in capsys.readouterr().err


def test_a_folder_with_a_ca_is_never_overwritten(tmp_path, capsys) -> None:
    assert main(["credentials", str(tmp_path), "--host", "a"]) == 0
    before = (tmp_path / "ca.key").read_bytes()
    assert main(["credentials", str(tmp_path), "--host", "a"]) == 2
    assert (tmp_path / "ca.key").read_bytes() == before
    assert "already holds a CA" in capsys.readouterr().err


def test_keep_existing_keeps_a_whole_set_and_names_what_a_partial_one_lacks(tmp_path, capsys) -> None:
    args = ["credentials", str(tmp_path), "--host", "a", "--nodes", "2", "--keep-existing"]
    assert main(args) == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert main(args) == 0 and "kept" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    # More nodes than the folder holds: refused, naming the missing keys, nothing made.
    assert main([*args[:4], "--nodes", "3", "--keep-existing"]) == 2
    assert "lacks node-2, node-2.pub for --nodes 3" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_register_refuses_bad_input_naming_the_flag(tmp_path, capsys) -> None:
    key = tmp_path / "node-0.pub"
    key.write_text("not used")
    with pytest.raises(SystemExit) as missing:
        main(["register", str(tmp_path / "absent.pub"), "--superlink", "127.0.0.1:9"])
    assert missing.value.code == 2 and "KEY.pub: no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["register", str(key), "--superlink", "nowhere"])
    assert "--superlink: expected HOST:PORT" in capsys.readouterr().err
    assert main(["register", str(key), "--superlink", "127.0.0.1:9", "--wait-s", "0"]) == 2
    assert "--wait-s: must be in (0, 86400] seconds, got 0.0" in capsys.readouterr().err


def test_register_says_which_superlink_did_not_answer(tmp_path, capsys) -> None:
    from server.orchestration.launcher import free_port

    key = tmp_path / "node-0.pub"
    key.write_text("not used")
    address = f"127.0.0.1:{free_port()}"
    assert main(["register", str(key), "--superlink", address, "--wait-s", "1"]) == 1
    assert f"no SuperLink answered at {address} within 1 s" in capsys.readouterr().err
