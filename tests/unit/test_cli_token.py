from __future__ import annotations

import asyncio

import pytest
from pydantic import SecretStr

from taskevents.auth import TokenVerifier
from taskevents.settings import DEVELOPMENT_JWT_SECRET
from taskevents_cli.main import main


def test_the_development_helper_mints_a_token_the_services_accept(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TASKEVENTS_JWT_SECRET", raising=False)
    monkeypatch.setenv("TASKEVENTS_ENV", "development")
    with pytest.raises(SystemExit) as exited:
        main(["token", "--user", "ada", "--operator"])
    assert exited.value.code == 0
    token = capsys.readouterr().out.strip()
    verifier = TokenVerifier(SecretStr(DEVELOPMENT_JWT_SECRET), operator_role="operator")
    identity = asyncio.run(verifier.verify(token))
    assert (identity.user_id, identity.operator) == ("ada", True)


def test_the_development_helper_refuses_outside_development(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TASKEVENTS_ENV", "production")
    with pytest.raises(SystemExit) as exited:
        main(["token", "--user", "ada"])
    assert exited.value.code == 2
    assert "development tokens only" in capsys.readouterr().err
