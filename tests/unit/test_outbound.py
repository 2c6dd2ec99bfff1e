"""The SSRF rules of outbound provider calls, without any network: URL syntax, the allow-list, IP-literal
spellings, every resolved address checked (through test resolvers), and refusals before any connection."""

from __future__ import annotations

import asyncio
import ipaddress
import socket

import pytest

from adapters.outbound import DEFAULT_ALLOWED_HOSTS, Endpoint, OutboundClient, OutboundPolicy, Resolver, address_class
from domain.errors import EndpointRefused, ProviderUnavailable


def resolver_of(*answers: str, calls: list[tuple[str, int]] | None = None) -> Resolver:
    async def resolve(host: str, port: int) -> list[str]:
        if calls is not None:
            calls.append((host, port))
        return list(answers)

    return resolve


def refused_rule(policy: OutboundPolicy, url: str, *answers: str) -> tuple[str, str]:
    with pytest.raises(EndpointRefused) as caught:
        endpoint = policy.check_url(url)
        asyncio.run(policy.resolve(endpoint, resolver_of(*answers)))
    return caught.value.rule, caught.value.message


@pytest.mark.parametrize(
    ("url", "answers", "rule", "named"),
    [
        ("http://api.openai.com/v1/embeddings", (), "https_only", ""),
        ("HTTP://api.openai.com/", (), "https_only", ""),
        ("file:///etc/passwd", (), "https_only", ""),
        ("https://127.1/", (), "ip_literal", "127.0.0.1"),
        ("https://2130706433/", (), "ip_literal", "127.0.0.1"),
        ("https://0177.0.0.1/", (), "ip_literal", "0177.0.0.1"),
        ("https://0x7f.0.0.1/", (), "ip_literal", "127.0.0.1"),
        ("https://0x7f.1/", (), "ip_literal", "127.0.0.1"),
        ("https://127.0.0.1/", (), "ip_literal", "loopback"),
        ("https://10.0.0.1/", (), "ip_literal", "private"),
        ("https://1.2.3.4.5/", (), "ip_literal", "1.2.3.4.5"),
        ("https://%31%32%37.0.0.1/", (), "ip_literal", ""),
        ("https://[::1]/", (), "ip_literal", "loopback"),
        ("https://[::ffff:10.0.0.1]/", (), "ip_literal", "IPv4-mapped form of 10.0.0.1"),
        ("https://[64:ff9b::a00:1]/", (), "ip_literal", "NAT64 form of 10.0.0.1"),
        ("https://169.254.169.254/latest/meta-data/", (), "ip_literal", "cloud metadata"),
        ("https://[fd00:ec2::254]/", (), "ip_literal", "cloud metadata"),
        ("https://100.64.0.1/", (), "ip_literal", "CGNAT"),
        ("https://8.8.8.8/", (), "ip_literal", "8.8.8.8"),
        ("https://evil.example/", (), "host_not_allowed", "evil.example"),
        ("https://api.openai.com.evil.example/", (), "host_not_allowed", "api.openai.com.evil.example"),
        ("https://evil.example#@api.openai.com/", (), "host_not_allowed", "evil.example"),
        ("https://user:pass@api.openai.com/v1/embeddings", (), "userinfo", ""),
        ("https://api.openai.com\\@evil.example/", (), "userinfo", ""),
        ("https:///v1/embeddings", (), "bad_url", ""),
        ("https://api.openai.com:0/", (), "bad_url", "port 0"),
        ("https://api.openai.com:99999/", (), "bad_url", "port 99999"),
        ("https://api.openai.com/ x", (), "bad_url", ""),
        ("https://api_.openai.com\n/", (), "bad_url", ""),
        ("https://api.openai.com/v1/embeddings", ("10.0.0.1",), "private_address", "10.0.0.1 (private)"),
        ("https://api.openai.com/", ("8.8.8.8", "10.0.0.1"), "private_address", "10.0.0.1"),
        ("https://api.openai.com/", ("127.0.0.1",), "private_address", "loopback"),
        ("https://api.openai.com/", ("169.254.169.254",), "private_address", "cloud metadata"),
        ("https://api.openai.com/", ("fd00:ec2::254",), "private_address", "cloud metadata"),
        ("https://api.openai.com/", ("100.64.0.1",), "private_address", "CGNAT"),
        ("https://api.openai.com/", ("::ffff:127.0.0.1",), "private_address", "IPv4-mapped form of 127.0.0.1"),
        ("https://api.openai.com/", ("64:ff9b::a9fe:a9fe",), "private_address", "cloud metadata: NAT64"),
        ("https://api.openai.com/", ("2002:a00:1::",), "private_address", "6to4 form of 10.0.0.1"),
        ("https://api.openai.com/", ("0.0.0.0",), "private_address", "unspecified"),
        ("https://api.openai.com/", ("::",), "private_address", "unspecified"),
        ("https://api.openai.com/", ("224.0.0.1",), "private_address", "multicast"),
        ("https://api.openai.com/", ("fe80::1",), "private_address", "link-local"),
        ("https://api.openai.com/", ("169.254.1.1",), "private_address", "link-local"),
        ("https://api.openai.com/", ("fc00::5",), "private_address", "private"),
        ("https://api.openai.com/", ("240.0.0.1",), "private_address", "reserved"),
        ("https://api.openai.com/", (), "unresolvable", "api.openai.com"),
        ("https://api.openai.com/", ("not-an-address",), "unresolvable", ""),
    ],
)
def test_ssrf_attempts_are_refused_naming_their_rule(url: str, answers: tuple[str, ...], rule: str, named: str) -> None:
    policy = OutboundPolicy(allowed_hosts=DEFAULT_ALLOWED_HOSTS)

    refused, message = refused_rule(policy, url, *answers)

    assert refused == rule
    assert f"({rule})" in message
    assert named in message


def test_an_allowed_host_resolving_to_public_addresses_passes() -> None:
    calls: list[tuple[str, int]] = []
    policy = OutboundPolicy()
    endpoint = policy.check_url("https://API.OpenAI.com.:443/v1/embeddings?x=1#fragment")

    addresses = asyncio.run(policy.resolve(endpoint, resolver_of("8.8.8.8", "2606:4700::1111", calls=calls)))

    assert endpoint == Endpoint(
        url="https://api.openai.com/v1/embeddings?x=1", host="api.openai.com", port=443, path="/v1/embeddings?x=1"
    )
    assert addresses == [ipaddress.ip_address("8.8.8.8"), ipaddress.ip_address("2606:4700::1111")]
    assert calls == [("api.openai.com", 443)]


def test_a_public_address_wrapped_in_ipv6_is_judged_by_the_address_inside() -> None:
    for public in ("::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::"):
        assert address_class(ipaddress.ip_address(public)) is None
    for private in ("::ffff:192.168.1.1", "64:ff9b::7f00:1", "2002:c0a8:101::"):
        assert address_class(ipaddress.ip_address(private)) is not None


def test_a_private_host_may_resolve_to_a_private_address() -> None:
    policy = OutboundPolicy(allowed_hosts=frozenset(), private_hosts=frozenset({"Embedder.Internal."}))
    endpoint = policy.check_url("https://embedder.internal:8443/embed")

    addresses = asyncio.run(policy.resolve(endpoint, resolver_of("10.0.0.7")))

    assert (endpoint.host, endpoint.port, endpoint.url) == (
        "embedder.internal",
        8443,
        "https://embedder.internal:8443/embed",
    )
    assert addresses == [ipaddress.ip_address("10.0.0.7")]


def test_an_ip_literal_is_allowed_only_when_private_hosts_names_it_in_its_plain_spelling() -> None:
    policy = OutboundPolicy(private_hosts=frozenset({"10.0.0.5", "[::1]"}))
    calls: list[tuple[str, int]] = []

    endpoint = policy.check_url("https://10.0.0.5/embed")
    addresses = asyncio.run(policy.resolve(endpoint, resolver_of("8.8.8.8", calls=calls)))
    v6 = policy.check_url("https://[0:0::1]:9443/")

    assert addresses == [ipaddress.ip_address("10.0.0.5")]
    assert calls == []
    assert (v6.host, v6.url) == ("::1", "https://[::1]:9443/")
    for spelling in ("https://10.0.5/", "https://167772165/", "https://012.0.0.5/", "https://10.0.0.6/"):
        assert refused_rule(policy, spelling)[0] == "ip_literal"


def test_an_unresolvable_name_is_refused() -> None:
    async def failing(host: str, port: int) -> list[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    async def hanging(host: str, port: int) -> list[str]:
        await asyncio.sleep(10)
        return ["8.8.8.8"]

    policy = OutboundPolicy(connect_timeout_s=0.05)
    endpoint = policy.check_url("https://api.openai.com/")

    for resolver in (failing, hanging):
        with pytest.raises(EndpointRefused) as caught:
            asyncio.run(policy.resolve(endpoint, resolver))
        assert caught.value.rule == "unresolvable"


def test_policy_entries_are_normalized_and_garbage_is_rejected() -> None:
    policy = OutboundPolicy(allowed_hosts=frozenset({"API.OpenAI.com.", "bücher.example"}))

    assert policy.allowed_hosts == {"api.openai.com", "xn--bcher-kva.example"}
    assert policy.check_url("https://bücher.example/").host == "xn--bcher-kva.example"
    for garbage in ("https://api.openai.com", "api.openai.com:443", "", "user@host", "a b", "10.0.5", "0x7f.1"):
        with pytest.raises(ValueError):
            OutboundPolicy(allowed_hosts=frozenset({garbage}))


def test_a_refused_endpoint_is_never_resolved_nor_connected() -> None:
    calls: list[tuple[str, int]] = []
    client = OutboundClient(OutboundPolicy(), resolver=resolver_of("10.0.0.1", calls=calls))

    async def scenario() -> list[str]:
        rules = []
        for url in ("http://api.openai.com/", "https://127.1/", "https://evil.example/", "https://api.openai.com/"):
            with pytest.raises(EndpointRefused) as caught:
                await client.post_json(url, b"{}", {})
            rules.append(caught.value.rule)
        await client.aclose()
        return rules

    assert asyncio.run(scenario()) == ["https_only", "ip_literal", "host_not_allowed", "private_address"]
    assert calls == [("api.openai.com", 443)]


def test_a_name_that_stops_resolving_at_call_time_is_a_passing_outage() -> None:
    async def failing(host: str, port: int) -> list[str]:
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    client = OutboundClient(OutboundPolicy(), resolver=failing)

    with pytest.raises(ProviderUnavailable, match=r"could not resolve api\.openai\.com"):
        asyncio.run(client.post_json("https://api.openai.com/v1/embeddings", b"{}", {}))


def test_the_system_resolver_is_used_by_default() -> None:
    policy = OutboundPolicy(allowed_hosts=frozenset({"localhost"}))
    endpoint = policy.check_url("https://localhost/")

    with pytest.raises(EndpointRefused, match="loopback") as caught:
        asyncio.run(policy.resolve(endpoint))

    assert caught.value.rule == "private_address"


def test_a_private_host_may_be_private_but_never_the_clouds_metadata_service() -> None:
    import asyncio

    policy = OutboundPolicy(allowed_hosts=frozenset(), private_hosts=frozenset({"gateway.internal"}))
    endpoint = policy.check_url("https://gateway.internal:8443/embed")  # a private host may name its port

    async def resolver_to(address: str) -> list[str]:
        return [address]

    assert asyncio.run(policy.resolve(endpoint, lambda host, port: resolver_to("10.1.2.3")))
    for metadata in ("169.254.169.254", "fd00:ec2::254"):
        with pytest.raises(EndpointRefused) as refused:
            asyncio.run(policy.resolve(endpoint, lambda host, port, m=metadata: resolver_to(m)))
        assert refused.value.rule == "private_address" and "cloud metadata" in refused.value.message


def test_an_allowed_public_host_is_called_on_443_only() -> None:
    policy = OutboundPolicy(allowed_hosts=frozenset({"api.openai.com"}))
    with pytest.raises(EndpointRefused) as refused:
        policy.check_url("https://api.openai.com:22/v1/embeddings")
    assert refused.value.rule == "port_not_allowed"
    assert policy.check_url("https://api.openai.com:443/v1/embeddings").url == "https://api.openai.com/v1/embeddings"
