"""`orthofed serve`'s TLS settings: HTTPS needs both files, files must exist, and each
mistake is exit 2 naming the setting (no traceback)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from server.api.settings import ServeSettings
from server.cli.commands import main
from server.security.credentials import make_credentials


def test_https_needs_both_files(tmp_path) -> None:
    make_credentials(tmp_path, ["localhost"], nodes=0)
    with pytest.raises(ValidationError, match="ssl_keyfile: needed with ssl_certfile"):
        ServeSettings(ssl_certfile=tmp_path / "api.crt")
    with pytest.raises(ValidationError, match="ssl_certfile: needed with ssl_keyfile"):
        ServeSettings(ssl_keyfile=tmp_path / "api.key")
    both = ServeSettings(ssl_certfile=tmp_path / "api.crt", ssl_keyfile=tmp_path / "api.key",
                         superlink_ca=tmp_path / "ca.crt")
    assert both.superlink_ca == tmp_path / "ca.crt"


@pytest.mark.parametrize("flag", ["--superlink-ca", "--ssl-certfile"])
def test_a_missing_file_is_exit_2_naming_the_setting(tmp_path, capsys, flag) -> None:
    missing = tmp_path / "nope.pem"
    extra = ["--ssl-keyfile", str(missing)] if flag == "--ssl-certfile" else []
    assert main(["serve", flag, str(missing), *extra]) == 2
    err = capsys.readouterr().err
    assert f"serve: {flag[2:].replace('-', '_')}:" in err and "Traceback" not in err, err
