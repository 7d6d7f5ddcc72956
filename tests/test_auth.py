"""Client keys: plain or as their SHA-256, compared as digests; allowed models."""

from __future__ import annotations

import hashlib

import pytest
from starlette.requests import Request

from gateway.admission.clients import ClientAuth, check_model, model_allowed
from gateway.api.auth import bearer
from gateway.api.errors import openai_error
from gateway.config import ClientConfig, ConfigError
from gateway.errors import DomainError
from tests.support.gateway import make_config

BASE = '[[upstreams]]\nname = "m"\ntype = "mock"\n'
KEY_A = "sk-team-a-0123456789"
KEY_B = "sk-team-b-0123456789"
DIGEST_B = hashlib.sha256(KEY_B.encode()).hexdigest()


def request_with(headers: dict[str, str]) -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    return Request({"type": "http", "method": "POST", "path": "/", "headers": raw})


@pytest.fixture(scope="module")
def auth() -> ClientAuth:
    config = make_config(
        BASE
        + f'[[clients]]\nname = "team-a"\nkey = "{KEY_A}"\n'
        + f'[[clients]]\nname = "team-b"\nkey_sha256 = "{DIGEST_B.upper()}"\n'
    )
    return ClientAuth(config.clients)


@pytest.mark.parametrize(
    ("headers", "client"),
    [
        ({"authorization": f"Bearer {KEY_A}"}, "team-a"),
        ({"authorization": f"bearer {KEY_B}"}, "team-b"),  # found by its digest alone
        ({"api-key": KEY_B}, "team-b"),
        ({"authorization": f"Bearer {DIGEST_B}"}, None),  # the digest is not the key
        ({"authorization": f"Bearer {KEY_A}x"}, None),
        ({}, None),
    ],
)
def test_identify(auth: ClientAuth, headers: dict[str, str], client: str | None) -> None:
    if client is None:
        with pytest.raises(DomainError) as err:
            auth.identify(bearer(request_with(headers)))
        answer = openai_error(err.value)
        assert answer.status == 401
        assert answer.code == "invalid_api_key"
    else:
        assert auth.identify(bearer(request_with(headers))).name == client


def test_digest_keys_are_not_secrets_but_plain_keys_are() -> None:
    config = make_config(
        BASE
        + f'[[clients]]\nname = "a"\nkey = "{KEY_A}"\n'
        + f'[[clients]]\nname = "b"\nkey_sha256 = "{DIGEST_B}"\n'
    )
    assert KEY_A in config.secrets()
    assert DIGEST_B not in config.secrets()
    assert config.clients[1].key is None
    assert config.clients[1].digest == DIGEST_B


@pytest.mark.parametrize(
    ("clients", "where"),
    [
        (f'name = "a"\nkey = "{KEY_A}"\nkey_sha256 = "{DIGEST_B}"', "clients[0].key"),
        ('name = "a"\nkey_sha256 = "abc123"', "clients[0].key_sha256"),
        ('name = "a"\nkey_sha256 = "' + "g" * 64 + '"', "clients[0].key_sha256"),
        ('name = "a"', "clients[0].key"),
    ],
)
def test_key_errors_name_the_key(clients: str, where: str) -> None:
    with pytest.raises(ConfigError) as err:
        make_config(BASE + "[[clients]]\n" + clients + "\n")
    assert str(err.value).startswith(where + ":"), str(err.value)


def test_a_key_and_its_digest_clash() -> None:
    digest_a = hashlib.sha256(KEY_A.encode()).hexdigest()
    with pytest.raises(ConfigError, match="share one key"):
        make_config(
            BASE
            + f'[[clients]]\nname = "a"\nkey = "{KEY_A}"\n'
            + f'[[clients]]\nname = "b"\nkey_sha256 = "{digest_a}"\n'
        )


@pytest.mark.parametrize(
    ("patterns", "model", "allowed"),
    [
        ((), "nano-banana-pro", True),
        (("nano-banana",), "nano-banana", True),
        (("nano-banana",), "nano-banana-2", False),
        (("nano-banana",), "nano-banana:official", True),  # a variant of an allowed model
        (("nano-banana-pro:official",), "nano-banana-pro", False),
        (("nano-banana-pro*",), "nano-banana-pro:official", True),
        (("nano-banana-2*",), "nano-banana-2-lite", True),
        (("nano-banana-2*",), "nano-banana", False),
    ],
)
def test_model_allowed(patterns: tuple[str, ...], model: str, allowed: bool) -> None:
    client = ClientConfig(name="a", key=KEY_A, models=patterns)
    assert model_allowed(client, model) is allowed
    if not allowed:
        with pytest.raises(DomainError) as err:
            check_model(client, model)
        answer = openai_error(err.value)
        assert (answer.status, answer.param) == (403, "model")
        assert answer.code == "model_not_allowed"
