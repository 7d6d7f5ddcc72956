"""The gateway never fetches an internal address on anyone's behalf: not through the image
links an upstream answers with (or their redirects), and it refuses caller image URLs
that point inside a network.

The end-to-end tests aim at a canary server on a loopback address that is not a
configured upstream: the policy must refuse it like any internal address, and the canary
counts every connection, so "never connects there" is observed, not assumed. Addresses
outside the loopback range (169.254.169.254, 10.0.0.1) appear only as literals the
policy refuses before any socket is opened; a unit test checks that first.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import socket

import openai
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from gateway.shape.netguard import (
    BlockedAddress,
    GuardedResolver,
    RefusedUrl,
    UrlPolicy,
    is_public,
    parse_ip,
)
from tests.support.gateway import CLIENT_KEY, CLIENTS_TOML, upstream_toml
from tests.support.hostile import HostileServer, ace_success, answer, png, redirect

METADATA = "http://169.254.169.254/latest/meta-data/iam/security-credentials/"

# ------------------------------------------------------------------ the policy, as a table

REFUSED = [
    METADATA,
    "http://10.0.0.1/x.png",
    "http://172.16.5.4/x.png",
    "http://192.168.1.1/x.png",
    "http://127.0.0.1/x.png",
    "http://127.8.9.10:8080/x.png",
    "http://0.0.0.0/",
    "http://100.64.0.1/",  # shared address space (CGNAT)
    "http://224.0.0.1/",  # multicast
    "http://240.0.0.1/",  # reserved
    "http://255.255.255.255/",
    "http://[::1]/",
    "http://[::]/",
    "http://[fe80::1]/",
    "http://[fc00::1]/",
    "http://[fec0::1]/",  # site-local
    "http://[ff02::1]/",
    "http://[::ffff:127.0.0.1]/",  # IPv4-mapped
    "http://[::ffff:a9fe:a9fe]/",  # 169.254.169.254, mapped, in hex
    "http://[::127.0.0.1]/",  # IPv4-compatible
    "http://[2002:a00:1::]/",  # 6to4 around 10.0.0.1
    "http://[64:ff9b::a9fe:a9fe]/",  # NAT64 around 169.254.169.254
    "http://2130706433/",  # 127.0.0.1 as one decimal number
    "http://0x7f000001/",
    "http://0x7f.1/",
    "http://127.1/",
    "http://017700000001/",
    "http://localhost/x.png",
    "http://LOCALHOST./x.png",
    "http://api.localhost/",
    "http://metadata.google.internal/computeMetadata/v1/",
    "http://printer.local/",
    "http://intranet/",
    "file:///etc/passwd",
    "gopher://example.com/",
    "ftp://example.com/x.png",
    "http://user:secret@example.com/x.png",
    "http://example.com\\@127.0.0.1/",
    "http://exa mple.com/",
    "http:///x.png",
    "http://",
    "HTTP://.<",  # parsers normalise escaped hosts differently: checked != connected
    "http://exa%6dple.com/x.png",
]
ALLOWED = [
    "https://platform.cdn.acedata.cloud/nanobanana/1.png",
    "http://8.8.8.8/x.png",
    "https://[2606:4700::1111]/x.png",
    "https://cdn.example.com:8443/a/b.png?sig=abc",
    "https://bücher.example/x.png",  # a name in another script (sent as IDNA)
]


@pytest.mark.parametrize("url", REFUSED)
def test_policy_refuses_internal_and_odd_urls(url):
    with pytest.raises(RefusedUrl):
        UrlPolicy().check_url(url)


@pytest.mark.parametrize("url", ALLOWED)
def test_policy_allows_public_urls(url):
    assert UrlPolicy().check_url(url).startswith(url.split("/")[0])


def test_policy_allowances():
    trusted = UrlPolicy.build(trusted_urls=["http://127.0.0.1:9000/v1"])
    assert trusted.check_url("http://127.0.0.1:9000/cdn/x.png")
    with pytest.raises(RefusedUrl):
        trusted.check_url("http://127.0.0.1:9001/cdn/x.png")  # another port is not the upstream
    networks = UrlPolicy.build(allowed_networks=["10.20.0.0/16"])
    assert networks.check_url("http://10.20.3.4/x.png")
    with pytest.raises(RefusedUrl):
        networks.check_url("http://10.21.3.4/x.png")
    assert UrlPolicy(allow_private=True).check_url("http://10.0.0.1/x.png")
    # Names are for the resolver to judge when the gateway itself connects.
    assert UrlPolicy().check_url("http://localhost:9/x.png", names=False)


@pytest.mark.parametrize(
    ("text", "public"),
    [
        ("8.8.8.8", True),
        ("2606:4700::1111", True),
        ("169.254.169.254", False),
        ("::ffff:8.8.8.8", True),  # judged by the IPv4 address it maps
        ("::ffff:10.0.0.1", False),
        ("64:ff9b::808:808", True),  # NAT64 of a public address
        ("64:ff9b::a00:1", False),
        ("2001:db8::1", False),
    ],
)
def test_is_public(text, public):
    assert is_public(ipaddress.ip_address(text)) is public


@pytest.mark.parametrize(
    ("host", "ip"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("0177.0.0.01", "127.0.0.1"),
        ("[::1]", "::1"),
        ("example.com", None),
        ("1e3", None),
    ],
)
def test_parse_ip(host, ip):
    parsed = parse_ip(host)
    assert (str(parsed) if parsed else None) == ip


# ------------------------------------------------------------------ the resolver


class ScriptedDns(AbstractResolver):
    """Stands in for DNS: answers from a list, one answer per lookup (for rebinding)."""

    def __init__(self, answers: list[list[str]]) -> None:
        self.answers = answers
        self.lookups = 0

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        addresses = self.answers[min(self.lookups, len(self.answers) - 1)]
        self.lookups += 1
        return [
            ResolveResult(
                hostname=host,
                host=a,
                port=port,
                family=socket.AF_INET6 if ":" in a else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for a in addresses
        ]

    async def close(self) -> None:
        pass


def test_resolver_checks_every_lookup_so_rebinding_gets_nowhere():
    dns = ScriptedDns([["93.184.216.34"], ["10.0.0.1"], ["10.0.0.2", "93.184.216.34"]])
    resolver = GuardedResolver(UrlPolicy(), dns)

    async def lookups() -> None:
        first = await resolver.resolve("cdn.example.com", 443)
        assert [r["host"] for r in first] == ["93.184.216.34"]
        # The same name now points inside: refused, whatever the first answer was.
        with pytest.raises(BlockedAddress):
            await resolver.resolve("cdn.example.com", 443)
        # Mixed answers keep only the public address: the connection can only go there.
        mixed = await resolver.resolve("cdn.example.com", 443)
        assert [r["host"] for r in mixed] == ["93.184.216.34"]

    asyncio.run(lookups())


def test_resolver_with_the_real_system_resolver():
    async def lookups() -> None:
        guarded = GuardedResolver(UrlPolicy())
        with pytest.raises(BlockedAddress):
            await guarded.resolve("localhost", 80)
        await guarded.close()
        trusted = GuardedResolver(UrlPolicy.build(trusted_urls=["http://localhost:8000"]))
        assert await trusted.resolve("localhost", 8000)
        await trusted.close()

    asyncio.run(lookups())


# ------------------------------------------------------------------ end to end


@pytest.fixture
def servers():
    """A hostile upstream and a canary, both on 127.0.0.1 but on different ports: only the
    upstream's own origin is trusted."""
    upstream = HostileServer().start()
    canary = HostileServer().start()
    canary.route("/x.png", answer(200, png(), "image/png"))
    yield upstream, canary
    upstream.stop()
    canary.stop()


def _gateway(gateway_factory, upstream: HostileServer, images: str = ""):
    return gateway_factory(
        f'[[upstreams]]\nname = "evil"\ntype = "acedata"\nbase_url = "{upstream.origin}"\n'
        'tokens = ["evil-token-0123"]\n\n[pool]\nmax_attempts = 1\n\n'
        f"[images]\n{images}\n" + CLIENTS_TOML
    )


def _expect_refused(gw) -> None:
    with pytest.raises(openai.InternalServerError) as info:
        gw.client().images.generate(prompt="x", response_format="b64_json")
    assert info.value.status_code == 502
    assert info.value.body["code"] == "image_download_refused"
    assert set(info.value.body) == {"message", "type", "param", "code"}


@pytest.mark.parametrize(
    "target",
    [
        METADATA,
        "http://10.0.0.1/x.png",
        "http://[::ffff:169.254.169.254]/latest/meta-data/",
        "http://2130706433:{port}/x.png",
        "http://127.0.0.1:{port}/x.png",
        "http://localhost:{port}/x.png",  # a name: refused by the resolver, by its address
    ],
)
def test_upstream_link_redirecting_inside_is_refused(servers, gateway_factory, target):
    upstream, canary = servers
    # Safety first: these literals must be refused before anything connects.
    with pytest.raises(RefusedUrl):
        UrlPolicy().check_url(METADATA)
    upstream.route("/nano-banana/images", ace_success(upstream.url("/img.png")))
    upstream.route("/img.png", redirect(target.format(port=canary.port)))
    gw = _gateway(gateway_factory, upstream)
    _expect_refused(gw)
    assert "/img.png" in upstream.paths()  # the first hop, at the upstream, was followed
    assert canary.connections == 0


def test_upstream_link_to_an_internal_address_is_never_fetched(servers, gateway_factory):
    upstream, canary = servers
    upstream.route("/nano-banana/images", ace_success(canary.url("/x.png")))
    gw = _gateway(gateway_factory, upstream)
    _expect_refused(gw)
    assert canary.connections == 0
    # Asked for a link instead of bytes, the gateway fetches nothing at all.
    resp = gw.client().images.generate(prompt="x", response_format="url")
    assert resp.data[0].url == canary.url("/x.png")
    assert canary.connections == 0


def test_allowed_networks_let_an_internal_image_host_through(servers, gateway_factory):
    """The canary does see connections when the policy allows them: the tests above could
    fail."""
    upstream, canary = servers
    upstream.route("/nano-banana/images", ace_success(upstream.url("/img.png")))
    upstream.route("/img.png", redirect(canary.url("/x.png"), status=307))
    gw = _gateway(gateway_factory, upstream, 'allowed_networks = ["127.0.0.0/8"]')
    resp = gw.client().images.generate(prompt="x", response_format="b64_json")
    assert base64.b64decode(resp.data[0].b64_json) == png()
    assert canary.connections >= 1


def test_redirect_loops_are_bounded(servers, gateway_factory):
    upstream, _canary = servers
    upstream.route("/nano-banana/images", ace_success(upstream.url("/loop")))
    upstream.route("/loop", redirect("/loop"))
    gw = _gateway(gateway_factory, upstream)
    with pytest.raises(openai.InternalServerError) as info:
        gw.client().images.generate(prompt="x", response_format="b64_json")
    assert info.value.body["code"] == "image_download_failed"
    assert "redirected more than 5 times" in info.value.body["message"]
    assert upstream.paths().count("/loop") == 6


# ------------------------------------------------------------------ caller image URLs


@pytest.mark.parametrize(
    "url",
    [
        METADATA,
        "http://10.0.0.1/x.png",
        "http://[::ffff:10.0.0.1]/x.png",
        "http://localhost:8000/x.png",
        "http://metadata.google.internal/computeMetadata/v1/",
        "file:///etc/passwd",
    ],
)
def test_caller_image_urls_pointing_inside_are_400(fake_factory, gateway_factory, url):
    fake = fake_factory("acedata")
    gw = gateway_factory(upstream_toml("ace", fake, ["t1"]) + CLIENTS_TOML)
    with gw.http() as http:
        r = http.post(
            "/v1/images/edits",
            headers={"authorization": f"Bearer {CLIENT_KEY}"},
            json={
                "prompt": "x",
                "images": [{"image_url": "https://cdn.example.com/a.png"}, {"image_url": url}],
            },
        )
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == "images[1].image_url"
        # The multipart form of a URL input, as curl users send it.
        r = http.post(
            "/v1/images/edits",
            headers={"authorization": f"Bearer {CLIENT_KEY}"},
            files={"image": (None, url), "prompt": (None, "x")},
        )
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == "image"
    assert fake.generation_calls() == []


def test_caller_image_urls_follow_the_configured_policy(fake_factory, gateway_factory):
    fake = fake_factory("acedata")
    gw = gateway_factory(
        upstream_toml("ace", fake, ["t1"])
        + CLIENTS_TOML
        + "[images]\nallow_private_networks = true\n"
    )
    with gw.http() as http:
        r = http.post(
            "/v1/images/edits",
            headers={"authorization": f"Bearer {CLIENT_KEY}"},
            json={"prompt": "x", "images": [{"image_url": "http://10.0.0.1/x.png"}]},
        )
    assert r.status_code == 200, r.text
    # Handed on to the upstream (which fetches it in its own network), not fetched here.
    assert fake.generation_calls()[0].json["image_urls"] == ["http://10.0.0.1/x.png"]
