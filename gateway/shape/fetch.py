"""Downloading the images upstreams link to: bounded in size and time, never inward.

Used when the caller wants b64_json (or a re-encode), and for the first bytes of an
image passed on as a link, to read its true size (shape/probe.py). The links come from
upstream answers, so they are untrusted: every hop of a redirect chain is checked against the
network policy (netguard) before it is followed, names are resolved by a resolver that
refuses internal addresses, and what arrives must be a whole image of sane size.

Some image hosts answer 403 to clients that do not look like a browser, so the request
carries a browser-like agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import urllib.parse
from collections.abc import AsyncIterable, AsyncIterator

import httpx

from ..errors import DownloadFailed, DownloadRefused, DownloadTimeout
from ..http import TooLarge, make_client, read_capped
from .media import BadImage, ImageInfo, data_uri_head, decode_data_uri, inspect_image
from .netguard import GuardedResolver, RefusedUrl, UrlPolicy, refused_cause

_BROWSER_UA = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/130.0 Safari/537.36"
)
_HEADERS = {
    "user-agent": _BROWSER_UA,
    "accept": "image/*,*/*",
    # Images are compressed already; a compressed transfer only adds a way to inflate a
    # small answer into a huge one.
    "accept-encoding": "identity",
}
_REDIRECTS = (301, 302, 303, 307, 308)
# CDNs redirect once or twice (to a regional host, a signed URL); more is a loop.
MAX_REDIRECTS = 5
# Downloads are short and fewer than upstream calls; this bounds sockets, not requests.
_MAX_CONNECTIONS = 1024


_TOO_LARGE = "The generated image is larger than download_max_bytes."


class Fetcher:
    """One shared client for image downloads."""

    def __init__(
        self,
        *,
        max_bytes: int,
        timeout: float,
        policy: UrlPolicy | None = None,
        max_redirects: int = MAX_REDIRECTS,
    ) -> None:
        self._max_bytes = max_bytes
        self._timeout = timeout
        self._policy = policy or UrlPolicy()
        self._max_redirects = max_redirects
        self._client = make_client(
            timeout=timeout,
            max_connections=_MAX_CONNECTIONS,
            resolver=lambda: GuardedResolver(self._policy),
        )

    async def get(self, url: str, *, decode: bool = True) -> tuple[bytes, ImageInfo]:
        """The image's bytes, type and size; data: URIs are decoded locally. Raises
        DownloadFailed, DownloadRefused or DownloadTimeout.

        The image is always checked whole (type, pixel count, PNG checksums, JPEG at 1/8
        scale); `decode` also decodes every pixel, for callers about to re-encode it. An
        8 MB PNG costs ~25 ms of CPU to decode, so bytes passed on as they are skip it.
        """
        if url.startswith("data:"):
            try:
                decoded = decode_data_uri(url)
            except ValueError:
                decoded = None
            if decoded is None:
                raise DownloadFailed("The upstream returned an unreadable data: URI.")
            data = decoded[0]
            if len(data) > self._max_bytes:
                raise DownloadFailed(_TOO_LARGE)
        else:
            try:
                async with asyncio.timeout(self._timeout):
                    data = await self._download(url)
            except TimeoutError:
                raise DownloadTimeout() from None
        try:
            # Off the event loop; decoded here when asked, so re-encoding later cannot fail.
            info = await asyncio.to_thread(inspect_image, data, decode=decode)
        except BadImage as exc:
            raise DownloadFailed(
                f"The upstream's image link did not return an image: {exc}."
            ) from None
        return data, info

    async def first_bytes(self, url: str, limit: int) -> bytes:
        """At most the first `limit` bytes of the image at url, through the same checks
        as a download; data: URIs decode only that much. Raises DownloadFailed,
        DownloadRefused or DownloadTimeout.

        Asked for as a range; a host that ignores it and sends the whole image is read
        only as far as `limit` and then cut off."""
        if url.startswith("data:"):
            head = data_uri_head(url, limit)
            if head is None:
                raise DownloadFailed("The upstream returned an unreadable data: URI.")
            return head
        try:
            async with asyncio.timeout(self._timeout):
                headers = {**_HEADERS, "range": f"bytes=0-{limit - 1}"}
                async with self._final(url, headers) as resp:
                    if resp.status_code not in (200, 206):
                        raise DownloadFailed(
                            f"Reading the generated image failed: HTTP {resp.status_code}."
                        )
                    return await _read_prefix(resp.aiter_bytes(), limit)
        except TimeoutError:
            raise DownloadTimeout() from None

    async def _download(self, url: str) -> bytes:
        async with self._final(url, _HEADERS) as resp:
            if resp.status_code != 200:
                raise DownloadFailed(
                    f"Downloading the generated image failed: HTTP {resp.status_code}."
                )
            try:
                return await read_capped(
                    resp.aiter_bytes(),
                    self._max_bytes,
                    declared=resp.headers.get("content-length"),
                )
            except TooLarge:
                raise DownloadFailed(_TOO_LARGE) from None

    @contextlib.asynccontextmanager
    async def _final(self, url: str, headers: dict[str, str]) -> AsyncIterator[httpx.Response]:
        """The answer at the end of url's redirects, its body not read yet; every hop is
        checked against the policy before it is followed."""
        for _hop in range(self._max_redirects + 1):
            try:
                # Names are left to the resolver, which judges them by their addresses.
                target = self._policy.check_url(url, names=False)
            except RefusedUrl as exc:
                raise DownloadRefused(str(exc)) from None
            try:
                async with self._client.stream("GET", target, headers=headers) as resp:
                    if resp.status_code in _REDIRECTS:
                        location = resp.headers.get("location")
                        if not location:
                            raise DownloadFailed("The image link redirected nowhere.")
                        url = urllib.parse.urljoin(target, location)
                        continue
                    yield resp
                    return
            except httpx.TransportError as exc:
                blocked = refused_cause(exc)
                if blocked is not None:
                    raise DownloadRefused(str(blocked)) from None
                raise DownloadFailed(
                    f"Downloading the generated image failed ({type(exc).__name__})."
                ) from None
        raise DownloadFailed(f"The image link redirected more than {self._max_redirects} times.")

    async def aclose(self) -> None:
        """Close the client."""
        await self._client.aclose()


async def _read_prefix(chunks: AsyncIterable[bytes], limit: int) -> bytes:
    """The first `limit` bytes of a body, and no more read: leaving the stream then
    drops the rest (and the connection with it, which is cheaper than reading an image
    nobody needs)."""
    parts: list[bytes] = []
    total = 0
    async for chunk in chunks:
        parts.append(chunk)
        total += len(chunk)
        if total >= limit:
            break
    return b"".join(parts)[:limit]
