"""Downloading the images upstreams link to, bounded in size and time.

Used when the caller wants b64_json (or a re-encode). Some image hosts answer 403 to
clients that do not look like a browser, so the request carries a browser-like agent.
"""

from __future__ import annotations

import asyncio

import httpx

from .errors import GatewayError
from .http import make_client
from .media import decode_data_uri, sniff_mime

_BROWSER_UA = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/130.0 Safari/537.36"
)


def _fetch_failed(message: str) -> GatewayError:
    return GatewayError(502, message, type="server_error", code="image_download_failed")


class Fetcher:
    """One shared client for image downloads."""

    def __init__(self, *, max_bytes: int, timeout: float) -> None:
        self._max_bytes = max_bytes
        self._timeout = timeout
        self._client = make_client("", timeout=timeout)

    async def get(self, url: str) -> tuple[bytes, str]:
        """The image's bytes and sniffed mime type; data: URIs are decoded locally."""
        if url.startswith("data:"):
            try:
                decoded = decode_data_uri(url)
            except ValueError:
                decoded = None
            if decoded is None:
                raise _fetch_failed("The upstream returned an unreadable data: URI.")
            data = decoded[0]
        else:
            try:
                async with asyncio.timeout(self._timeout):
                    data = await self._download(url)
            except TimeoutError:
                raise GatewayError(
                    504,
                    "Timed out downloading the generated image from the upstream.",
                    type="server_error",
                    code="image_download_timeout",
                ) from None
        mime = sniff_mime(data)
        if mime is None:
            raise _fetch_failed("The upstream's image link did not return an image.")
        return data, mime

    async def _download(self, url: str) -> bytes:
        try:
            async with self._client.stream(
                "GET", url, headers={"user-agent": _BROWSER_UA, "accept": "image/*,*/*"}
            ) as resp:
                if resp.status_code != 200:
                    raise _fetch_failed(
                        f"Downloading the generated image failed: HTTP {resp.status_code}."
                    )
                declared = resp.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > self._max_bytes:
                    raise _fetch_failed("The generated image is larger than download_max_bytes.")
                chunks: list[bytes] = []
                total = 0
                async for chunk in resp.aiter_bytes():
                    total += len(chunk)
                    if total > self._max_bytes:
                        raise _fetch_failed(
                            "The generated image is larger than download_max_bytes."
                        )
                    chunks.append(chunk)
                return b"".join(chunks)
        except httpx.TransportError as exc:
            raise _fetch_failed(
                f"Downloading the generated image failed ({type(exc).__name__})."
            ) from None

    async def aclose(self) -> None:
        """Close the client."""
        await self._client.aclose()
