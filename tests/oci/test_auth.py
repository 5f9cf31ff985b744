"""Credentials from the docker config, challenge parsing."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from provision.oci.auth import (
    Credentials,
    CredentialStore,
    parse_challenge,
)


def write_config(tmp_path: Path, config: dict[str, object]) -> CredentialStore:
    (tmp_path / "config.json").write_text(json.dumps(config))
    return CredentialStore(env={"DOCKER_CONFIG": str(tmp_path)})


def test_auths_entries(tmp_path: Path) -> None:
    auth = base64.b64encode(b"alice:pa:ss").decode()
    store = write_config(
        tmp_path,
        {
            "auths": {
                "reg.example:5000": {"auth": auth},
                "https://other.example": {"username": "bob", "password": "pw"},
                "https://legacy.docker.io/v1/": {"auth": base64.b64encode(b"hub:tok").decode()},
            }
        },
    )
    assert store.get("reg.example:5000") == Credentials("alice", "pa:ss")
    assert store.get("other.example") == Credentials("bob", "pw")
    assert store.get("docker.io") == Credentials("hub", "tok")
    assert store.get("unknown.example") is None
    assert "pa:ss" not in repr(store.get("reg.example:5000"))


def test_credential_helper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    helper = tmp_path / "bin" / "docker-credential-fake"
    helper.parent.mkdir()
    helper.write_text(
        "#!/bin/sh\nread server\n"
        'if [ "$server" = "helped.example" ]; then\n'
        '  echo "{\\"Username\\":\\"carol\\",\\"Secret\\":\\"from-helper\\"}"\n'
        "else echo 'credentials not found' >&2; exit 1; fi\n"
    )
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{helper.parent}:/usr/bin:/bin")
    store = write_config(
        tmp_path, {"credHelpers": {"helped.example": "fake"}, "credsStore": "fake"}
    )
    assert store.get("helped.example") == Credentials("carol", "from-helper")
    assert store.get("nothing.example") is None


def test_parse_challenge() -> None:
    challenge = parse_challenge(
        'Bearer realm="https://auth.example/token",service="reg",scope="repository:a/b:pull,push"'
    )
    assert challenge.scheme == "bearer"
    assert challenge.params == {
        "realm": "https://auth.example/token",
        "service": "reg",
        "scope": "repository:a/b:pull,push",
    }
    assert parse_challenge('Basic realm="x"').scheme == "basic"
