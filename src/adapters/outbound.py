"""SSRF-safe outbound HTTPS calls to a caller's embedding provider: https only, an allow-list of host names, the
name resolved once and every address checked (no loopback, private, link-local, CGNAT, cloud-metadata, multicast,
unspecified or reserved address, however spelled), the connection pinned to the checked address while TLS is
verified against the URL's host name, no redirect followed, the answer's size capped and every wait bounded."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import os
import re
import socket
import ssl
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import certifi
import httpcore
import httpx

from domain.errors import EndpointRefused, ProviderBadResponse, ProviderTimeout, ProviderUnavailable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]

# httpx logs every request's full URL at INFO: a provider taking its key in the query string would have it logged
logging.getLogger("httpx").setLevel(logging.WARNING)

DEFAULT_ALLOWED_HOSTS = frozenset(
    {"api.openai.com", "api.cohere.ai", "api.voyageai.com", "api.mistral.ai", "api.together.xyz"}
)

_CLOUD_METADATA = (ipaddress.ip_network("169.254.169.254/32"), ipaddress.ip_network("fd00:ec2::254/128"))
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_PRIVATE_V4 = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))
_PRIVATE_V6 = tuple(ipaddress.ip_network(n) for n in ("fc00::/7", "fec0::/10"))
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")
_RESERVED = tuple(
    ipaddress.ip_network(n)
    for n in (
        "192.0.0.0/24",
        "192.0.2.0/24",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "240.0.0.0/4",
        "255.255.255.255/32",
        "64:ff9b:1::/48",
        "100::/64",
        "2001::/23",
        "2001:db8::/32",
    )
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")
_HOST_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_DROPPED_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection", "accept-encoding", "te"})


async def system_resolver(host: str, port: int) -> list[str]:
    """The operating system's resolver (getaddrinfo), every address once, in its order."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def address_class(address: IPAddress) -> str | None:
    """Why `address` may not be called (e.g. "loopback", "private", "cloud metadata"), or None for a public one.
    IPv4 addresses inside IPv6 (IPv4-mapped, NAT64 64:ff9b::/96, 6to4 2002::/16) are judged by the IPv4 inside."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id:
            address = ipaddress.IPv6Address(str(address).split("%", 1)[0])
        if address.ipv4_mapped is not None:
            return _wrapped("IPv4-mapped", address.ipv4_mapped)
        if address in _NAT64:
            return _wrapped("NAT64", ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        if address.sixtofour is not None and (inner := _wrapped("6to4", address.sixtofour)):
            return inner
    if any(address in network for network in _CLOUD_METADATA):
        return "cloud metadata"
    if address.is_unspecified or address in _THIS_NETWORK:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address in _CGNAT:
        return "CGNAT"
    if address.is_multicast:
        return "multicast"
    if any(address in network for network in (_PRIVATE_V4 if address.version == 4 else _PRIVATE_V6)):
        return "private"
    if address.is_reserved or address.is_private or not address.is_global or any(address in n for n in _RESERVED):
        return "reserved"
    return None


def _wrapped(form: str, inner: ipaddress.IPv4Address) -> str | None:
    why = address_class(inner)
    return None if why is None else f"{why}: {form} form of {inner}"


def _numeric_host(host: str) -> IPAddress | None:
    """The IPv4 address a host made of numbers means to a lenient parser (127.1, 2130706433, 0177.0.0.1, 0x7f.1),
    or None when the host is a name. Raises ValueError for a host ending in a number that is no valid address."""
    labels = host.split(".")
    if not _NUMERIC_LABEL.fullmatch(labels[-1]):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        raise ValueError(host) from None


def normalize_host(name: str) -> str:
    """A host name as endpoints are compared: lowercase, no trailing dot, IDNA-encoded; an IP address in its
    canonical spelling. Raises ValueError for anything else (a URL, a port, an empty name)."""
    text = name.strip().lower()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    with contextlib.suppress(ValueError):
        return str(ipaddress.ip_address(text))
    if not text or any(ch in text for ch in ":/@?#[]\\"):
        raise ValueError(f"{name!r} is not a host name")
    try:
        host = httpx.URL(f"https://{text}/").raw_host.decode("ascii").rstrip(".")
        numeric = _numeric_host(host)
    except (httpx.InvalidURL, ValueError):
        raise ValueError(f"{name!r} is not a host name") from None
    if numeric is not None:
        raise ValueError(f"{name!r} is an IP address in an unusual spelling; write it as {numeric}")
    if not _valid_name(host):
        raise ValueError(f"{name!r} is not a host name")
    return host


def _valid_name(host: str) -> bool:
    return 0 < len(host) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in host.split("."))


@dataclass(frozen=True)
class Endpoint:
    """A URL that passed the syntax rules; `host` is normalized (lowercase, no trailing dot, IDNA-encoded) and `url`
    is rebuilt from the checked parts, so what is called is what was checked."""

    url: str
    host: str
    port: int
    path: str


@dataclass(frozen=True)
class OutboundPolicy:
    """Which provider endpoints may be called. `allowed_hosts` (BYOK_ALLOWED_HOSTS) are matched exactly;
    `private_hosts` (BYOK_ALLOW_PRIVATE_HOSTS) are also allowed and may resolve to any address (an operator's own
    internal provider), still over verified https, resolved once and pinned. Entries are normalized on creation."""

    allowed_hosts: frozenset[str] = DEFAULT_ALLOWED_HOSTS
    private_hosts: frozenset[str] = frozenset()
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 30.0
    max_response_bytes: int = 8 * 1024 * 1024
    ca_file: str | None = None
    _all_hosts: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "allowed_hosts", frozenset(map(normalize_host, self.allowed_hosts)))
        object.__setattr__(self, "private_hosts", frozenset(map(normalize_host, self.private_hosts)))
        object.__setattr__(self, "_all_hosts", self.allowed_hosts | self.private_hosts)
        if self.connect_timeout_s <= 0 or self.read_timeout_s <= 0 or self.max_response_bytes <= 0:
            raise ValueError("timeouts and max_response_bytes must be positive")

    def check_url(self, url: str) -> Endpoint:
        """The endpoint `url` names, if its syntax obeys every rule (no DNS here); raises EndpointRefused."""
        if not url or any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
            raise EndpointRefused("bad_url", "the URL is empty or holds spaces or control characters")
        if not url[:8].lower() == "https://":
            raise EndpointRefused("https_only", "only https:// endpoints are called")
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL:
            raise self._unparsable(url) from None
        if parsed.userinfo:
            raise EndpointRefused("userinfo", "the URL may not hold a user name or password (user:pass@host)")
        raw = parsed.raw_host.decode("ascii")
        if not raw:
            raise EndpointRefused("bad_url", "the URL names no host")
        port = 443 if parsed.port is None else parsed.port
        if not 0 < port < 65536:
            raise EndpointRefused("bad_url", f"port {port} is out of range")
        host = self._check_host(raw.rstrip(".") if ":" not in raw else raw)
        if port != 443 and host not in self.private_hosts:  # a provider's API is on 443; a gateway may be elsewhere
            raise EndpointRefused("port_not_allowed", f"port {port}: only 443 is called on {host}")
        path = parsed.raw_path.decode("ascii")
        shown = f"[{host}]" if ":" in host else host
        rebuilt = f"https://{shown}{'' if port == 443 else f':{port}'}{path}"
        return Endpoint(url=rebuilt, host=host, port=port, path=path)

    def _check_host(self, host: str) -> str:
        if ":" in host:
            try:
                v6 = ipaddress.IPv6Address(host)
            except ValueError:
                raise EndpointRefused("ip_literal", f"{host} is not a usable IPv6 address") from None
            if str(v6) in self.private_hosts:
                return str(v6)
            raise self._literal_refused(host, v6)
        try:
            literal = _numeric_host(host)
        except ValueError:
            raise EndpointRefused("ip_literal", f"the host {host} ends in a number but is no valid address") from None
        if literal is not None:
            if str(literal) == host and host in self.private_hosts:
                return host
            raise self._literal_refused(host, literal)
        if not _valid_name(host):
            raise EndpointRefused("bad_url", "the host is not a valid host name")
        if host not in self._all_hosts:
            raise EndpointRefused(
                "host_not_allowed",
                f"{host} is not an allowed provider host (allowed: {', '.join(sorted(self.allowed_hosts))})",
            )
        return host

    @staticmethod
    def _literal_refused(host: str, literal: IPAddress) -> EndpointRefused:
        why = address_class(literal)
        means = "" if str(literal) == host else f" (meaning {literal})"
        kind = f" ({why})" if why else ""
        return EndpointRefused("ip_literal", f"the host {host} is an IP address{means}{kind}; use the host name")

    @staticmethod
    def _unparsable(url: str) -> EndpointRefused:
        with contextlib.suppress(ValueError):
            host = (urlsplit(url).hostname or "").rstrip(".")
            if host and _NUMERIC_LABEL.fullmatch(host.split(".")[-1]):
                return EndpointRefused("ip_literal", f"the host {host} is an IP address spelling; use the host name")
        return EndpointRefused("bad_url", "the URL cannot be parsed")

    async def resolve(self, endpoint: Endpoint, resolver: Resolver | None = None) -> list[IPAddress]:
        """Every address `endpoint.host` resolves to, asked once; raises EndpointRefused ("unresolvable", or
        "private_address" naming the first address that may not be called, unless the host is a private host)."""
        with contextlib.suppress(ValueError):
            return [ipaddress.ip_address(endpoint.host)]  # an IP literal check_url let through (a private host)
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                answers = await (resolver or system_resolver)(endpoint.host, endpoint.port)
        except TimeoutError:
            raise EndpointRefused(
                "unresolvable", f"{endpoint.host} did not resolve within {self.connect_timeout_s:g} s"
            ) from None
        except (OSError, UnicodeError):
            raise EndpointRefused("unresolvable", f"{endpoint.host} does not resolve") from None
        addresses: list[IPAddress] = []
        for answer in answers:
            try:
                address = ipaddress.ip_address(answer)
            except ValueError:
                raise EndpointRefused("unresolvable", f"{endpoint.host} resolved to something not an address") from None
            why = address_class(address)
            # an operator's internal host may be private, never the cloud's metadata service
            if why is not None and (endpoint.host not in self.private_hosts or "cloud metadata" in why):
                raise EndpointRefused(
                    "private_address",
                    f"{endpoint.host} resolves to {address} ({why}); only public addresses are called",
                )
            addresses.append(address)
        if not addresses:
            raise EndpointRefused("unresolvable", f"{endpoint.host} resolves to no address")
        return addresses

    def ssl_context(self) -> ssl.SSLContext:
        """A verifying TLS context: `ca_file`, else SSL_CERT_FILE, else certifi's bundle."""
        return ssl.create_default_context(cafile=self.ca_file or os.environ.get("SSL_CERT_FILE") or certifi.where())


@dataclass(frozen=True)
class OutboundResponse:
    status: int
    headers: dict[str, str]
    body: bytes


class _PinnedBackend(httpcore.AsyncNetworkBackend):
    """Connects every TCP connection for `host` to `address`, and refuses any other host: no DNS lookup here."""

    def __init__(self, host: str, address: IPAddress) -> None:
        self._host, self._address = host, address
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        if host != self._host:
            raise httpcore.ConnectError(f"this connection is pinned to {self._host}, not {host}")
        return await self._inner.connect_tcp(
            str(self._address), port, timeout=timeout, local_address=local_address, socket_options=socket_options
        )

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not used for outbound calls")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


_HTTPCORE_ERRORS: tuple[tuple[type[Exception], type[httpx.TransportError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
)


@contextlib.contextmanager
def _httpx_errors() -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        for source, target in _HTTPCORE_ERRORS:
            if isinstance(exc, source):
                raise target(str(exc)) from exc
        raise


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, stream: Any) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _httpx_errors():
            async for part in self._stream:
                yield part

    async def aclose(self) -> None:
        if hasattr(self._stream, "aclose"):
            await self._stream.aclose()


class PinnedTransport(httpx.AsyncBaseTransport):
    """An httpx transport whose connections for `host` go to the already checked `address` (never a second DNS
    lookup); TLS still sends `host` as SNI and verifies the certificate against it. HTTP/1.1, no retries."""

    def __init__(self, host: str, address: IPAddress, ssl_context: ssl.SSLContext) -> None:
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=1,
            http1=True,
            http2=False,
            retries=0,
            network_backend=_PinnedBackend(host, address),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.AsyncByteStream)
        extensions = {k: v for k, v in request.extensions.items() if k != "sni_hostname"}
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=extensions,
        )
        with _httpx_errors():
            response = await self._pool.handle_async_request(core_request)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseStream(response.stream),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()


class OutboundClient:
    """POSTs JSON to a provider endpoint under an OutboundPolicy; one pinned connection per call."""

    def __init__(self, policy: OutboundPolicy, resolver: Resolver | None = None) -> None:
        self._policy = policy
        self._resolver = resolver
        self._ssl_context = policy.ssl_context()

    async def post_json(self, url: str, body: bytes, headers: Mapping[str, str]) -> OutboundResponse:
        """Check `url`, resolve its host once and check every address, connect to the first (pinned), verify TLS
        against the URL's host, POST `body`, follow no redirect (a 3xx comes back as it is) and read at most
        `max_response_bytes`. Raises EndpointRefused, ProviderTimeout, ProviderUnavailable, ProviderBadResponse."""
        policy = self._policy
        endpoint = policy.check_url(url)
        try:
            addresses = await policy.resolve(endpoint, self._resolver)
        except EndpointRefused as exc:
            if exc.rule == "unresolvable":  # a passing DNS failure: retryable, not the endpoint's fault
                raise ProviderUnavailable(f"could not resolve {endpoint.host}") from exc
            raise
        sent = {k: v for k, v in headers.items() if k.lower() not in _DROPPED_HEADERS}
        sent.setdefault("content-type", "application/json")
        sent["accept-encoding"] = "identity"
        timeout = httpx.Timeout(
            connect=policy.connect_timeout_s,
            read=policy.read_timeout_s,
            write=policy.read_timeout_s,
            pool=policy.connect_timeout_s,
        )
        transport = PinnedTransport(endpoint.host, addresses[0], self._ssl_context)
        deadline = policy.connect_timeout_s + policy.read_timeout_s
        try:
            async with (
                asyncio.timeout(deadline),
                httpx.AsyncClient(
                    transport=transport, follow_redirects=False, trust_env=False, timeout=timeout
                ) as client,
                client.stream("POST", endpoint.url, content=body, headers=sent) as response,
            ):
                raw = await self._read_capped(response)
                encoding = response.headers.get("content-encoding", "identity")
                return OutboundResponse(
                    status=response.status_code,
                    headers={k.lower(): v for k, v in response.headers.items()},
                    body=self._decode(raw, encoding),
                )
        except httpx.ConnectTimeout:
            raise ProviderTimeout(policy.connect_timeout_s) from None
        except httpx.TimeoutException:
            raise ProviderTimeout(policy.read_timeout_s) from None
        except TimeoutError:
            raise ProviderTimeout(deadline) from None
        except httpx.ConnectError as exc:
            raise ProviderUnavailable(f"could not connect: {_short_reason(exc)}") from exc
        except httpx.TransportError as exc:
            raise ProviderUnavailable(f"the connection failed: {_short_reason(exc)}") from exc

    async def _read_capped(self, response: httpx.Response) -> bytes:
        limit = self._policy.max_response_bytes
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise ProviderBadResponse(f"the answer is larger than {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_raw():
            size += len(chunk)
            if size > limit:
                raise ProviderBadResponse(f"the answer is larger than {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    def _decode(self, raw: bytes, encoding: str) -> bytes:
        """The body without its content-encoding, decompressed no further than the size cap (no zip bombs)."""
        limit = self._policy.max_response_bytes
        encoding = encoding.strip().lower()
        if encoding in ("", "identity"):
            return raw
        if encoding not in ("gzip", "x-gzip", "deflate"):
            raise ProviderBadResponse(f"the answer uses content-encoding {encoding[:40]!r}, which is not supported")
        wbits = 16 + zlib.MAX_WBITS if encoding != "deflate" else (zlib.MAX_WBITS if raw[:1] == b"\x78" else -15)
        decompressor = zlib.decompressobj(wbits)
        try:
            body = decompressor.decompress(raw, limit + 1)
        except zlib.error:
            raise ProviderBadResponse(f"the answer's {encoding} encoding is corrupt") from None
        if len(body) > limit or decompressor.unconsumed_tail:
            raise ProviderBadResponse(f"the answer is larger than {limit} bytes")
        return body

    async def aclose(self) -> None:
        """Nothing is pooled between calls; kept so the client can be closed like every other adapter."""


def _short_reason(exc: BaseException) -> str:
    """A few fixed words naming a connection failure (OpenSSL's verify message at most, never the exception text)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            detail = (seen.verify_message or "").rstrip(".")
            return "TLS certificate verification failed" + (f" ({detail})" if detail else "")
        if isinstance(seen, ssl.SSLError):
            return "TLS handshake failed"
        if isinstance(seen, ConnectionRefusedError):
            return "connection refused"
        if isinstance(seen, ConnectionResetError):
            return "connection reset"
        if isinstance(seen, OSError) and seen.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
            return "address unreachable"
        seen = seen.__cause__ or seen.__context__
    return "the provider closed the connection" if isinstance(exc, httpx.RemoteProtocolError) else "network error"
