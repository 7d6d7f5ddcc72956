"""The bare pass-through proxy the gateway is compared with, run in its own process.

    python bench/passthrough.py --port 9002 --upstream http://127.0.0.1:9001 --token t1

The same stack as the gateway (Starlette, httpx over the aiohttp transport, uvicorn on
uvloop + httptools) with nothing else: no auth, no parsing beyond what it must, no
translation, no metrics, no logging. It forwards the caller's body to the upstream's
`POST /nano-banana/images` unchanged and hands back the upstream's answer, so its numbers
are the practical floor for any proxy written on this stack.

One concession, so the big-image case compares like with like: when the caller asks for
`b64_json`, it downloads the linked images and answers `{"data": [{"b64_json": ...}]}`,
sent as the base64 bytes with the JSON around them, never joined (the cheapest way this
stack has to put an image in a JSON answer).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import time

import aiohttp
import httpx
import uvicorn
from httpx_aiohttp import AiohttpTransport
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send


def make_client(base_url: str) -> httpx.AsyncClient:
    """httpx over aiohttp, with the connection limit raised for thousands of waiting calls
    (the gateway's own setting)."""

    def session() -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=4096, limit_per_host=0), trust_env=False
        )

    return httpx.AsyncClient(
        base_url=base_url,
        transport=AiohttpTransport(client=session),
        timeout=httpx.Timeout(600.0, connect=30.0),
        trust_env=False,
    )


class PartsResponse(Response):
    """A JSON body sent as the pieces it was made of, never joined into one copy."""

    def __init__(self, parts: list[bytes]) -> None:
        super().__init__(media_type="application/json")
        self.parts = parts
        self.headers["content-length"] = str(sum(len(p) for p in parts))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        for i, part in enumerate(self.parts, 1):
            more = i < len(self.parts)
            await send({"type": "http.response.body", "body": part, "more_body": more})


def create_app(upstream: str, token: str) -> Starlette:
    """The pass-through as an ASGI app."""
    client = make_client(upstream)
    headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}

    async def fetch(url: str) -> bytes:
        async with client.stream("GET", url) as resp:
            return b"".join([chunk async for chunk in resp.aiter_bytes()])

    async def generations(request: Request) -> Response:
        body = await request.body()
        resp = await client.post("/nano-banana/images", content=body, headers=headers)
        raw = await resp.aread()
        # A substring test, not a parse: the floor should not pay for what it need not do.
        if resp.status_code != 200 or b'"b64_json"' not in body:
            return Response(raw, resp.status_code, media_type="application/json")
        links = [item["image_url"] for item in json.loads(raw)["data"]]
        images = await asyncio.gather(*(fetch(link) for link in links))
        parts = [b'{"created":%d,"data":[' % int(time.time())]
        for i, img in enumerate(images):
            parts += [b',{"b64_json":"' if i else b'{"b64_json":"', base64.b64encode(img), b'"}']
        parts.append(b"]}")
        return PartsResponse(parts)

    async def healthz(request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    return Starlette(
        routes=[
            Route("/v1/images/generations", generations, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ]
    )


def main() -> None:
    """Command line entry."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="base URL of the fake upstream")
    parser.add_argument("--token", default="bench-token")
    args = parser.parse_args()
    uvicorn.run(
        create_app(args.upstream, args.token),
        host="127.0.0.1",
        port=args.port,
        # The fastest settings the stack offers, named rather than left to "auto".
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        timeout_keep_alive=75,
    )


if __name__ == "__main__":
    main()
