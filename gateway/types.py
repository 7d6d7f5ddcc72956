"""The request as the caller asked for it, and the job as upstreams will do it.

These are plain data: `api/` fills an ImageRequest from the wire, `translate.py` turns it
into a Job (what to make) and an Output (how to hand it back), and the rest of the
gateway only ever sees those two; what comes back is an ImagesResult.

Slotted: every waiting request holds several of them, and an instance dict was about 300
bytes of each.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Action = Literal["generate", "edit"]
ResponseFormat = Literal["url", "b64_json"]
# How the cache answered a request (off: the cache is disabled).
CacheResult = Literal["hit", "miss", "coalesced", "bypass", "off"]
# Where an image's reported size came from: read from its bytes (all of them, or the
# header of a link's first bytes), or Google's table for what was asked, when the image
# could not be read.
SizeSource = Literal["measured", "expected"]


@dataclass(frozen=True, slots=True)
class ImageRequest:
    """An OpenAI images request after parsing; None means 'not sent / default'."""

    endpoint: Literal["generations", "edits"]
    prompt: str
    model: str | None = None
    n: int | None = None
    size: str | None = None
    quality: str | None = None
    response_format: str | None = None
    output_format: str | None = None
    output_compression: int | None = None
    background: str | None = None
    stream: bool = False
    partial_images: int | None = None
    images: tuple[str, ...] = ()  # URLs or data: URIs, in the caller's order
    first_image_size: tuple[int, int] | None = None  # known when the first image was uploaded
    mask: str | None = None  # a data: URI or a URL; applies to the first image
    user: str | None = None


@dataclass(frozen=True, slots=True)
class Job:
    """One unit of upstream work, independent of any provider's JSON."""

    action: Action
    prompt: str
    model: str  # a Nano Banana model name, e.g. "nano-banana-pro"
    count: int = 1
    images: tuple[str, ...] = ()
    aspect_ratio: str | None = None  # None: the upstream's default (1:1, or the first image's)
    resolution: str | None = None  # "1K" | "2K" | "4K"; None: the upstream's default

    def with_count(self, count: int) -> Job:
        """The same job asking for a different number of images."""
        return Job(
            self.action,
            self.prompt,
            self.model,
            count,
            self.images,
            self.aspect_ratio,
            self.resolution,
        )


@dataclass(frozen=True, slots=True)
class Composite:
    """A masked edit's answer is built by the gateway: the first input image where the
    mask is opaque, the model's picture where the mask is fully transparent."""

    base: str  # the first input image: a data: URI or a URL
    mask: str  # the mask: a data: URI or a URL


@dataclass(frozen=True, slots=True)
class Output:
    """How to shape the answer for the caller."""

    response_format: ResponseFormat
    output_format: str | None = None  # None: keep what the upstream made
    output_compression: int | None = None
    stream: bool = False
    expected_size: tuple[int, int] | None = None
    # Read the true size of links passed on (a ranged GET each): where a provider ignoring
    # the resolution asked would change the price, i.e. above 1K.
    measure_links: bool = False
    quality: str = "auto"  # as the answer reports it (OpenAI's low / medium / high)
    size_adjusted: str | None = None  # the size asked, when the model makes a smaller one
    composite: Composite | None = None  # a masked edit: each image composited

    @property
    def wants_bytes(self) -> bool:
        """The answer carries the image itself (b64_json, a stream, a re-encode, a
        composite), not only a link to it."""
        return (
            self.response_format == "b64_json"
            or self.stream
            or self.output_format not in (None, "png")
            or self.composite is not None
        )


@dataclass(frozen=True, slots=True)
class Attempt:
    """What one call to one upstream token came to."""

    upstream: str
    outcome: str  # "ok" or a FailureKind value
    seconds: float


@dataclass(slots=True)
class ProducedImage:
    """One finished image: a link, bytes, or both."""

    url: str | None = None
    data: bytes | None = None
    mime: str | None = None
    size: tuple[int, int] | None = None
    size_source: SizeSource | None = None  # None: not known (a stored answer, say)


@dataclass(slots=True)
class ImagesResult:
    """What the gateway made for one caller request."""

    images: list[ProducedImage]
    upstreams: list[str] = field(default_factory=list)
    task_ids: list[str] = field(default_factory=list)
    trace_ids: list[str] = field(default_factory=list)
    # The providers' own charge for the calls, where they report one (defapi's `consumed`)
    consumed: list[str] = field(default_factory=list)
    cache: CacheResult = "off"
    age: int | None = None  # seconds since a cached result was made
    attempts: list[Attempt] = field(default_factory=list)  # upstream calls made for it
    calls_saved: int = 0  # upstream calls a stored or coalesced answer did not make
