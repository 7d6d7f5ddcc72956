"""Fake upstream servers for the gateway's tests.

The fakes are real HTTP servers on 127.0.0.1 that speak the documented
AceDataCloud / XHuoAPI / defapi.org schemas (see ``/work/shared/upstreams.md``).
They deliberately import nothing from the ``gateway`` package, so a bug in the
code under test can never leak into the yardstick it is measured against.
"""

from .upstreams import (
    ACEDATA_BEHAVIOURS,
    ACEDATA_RATIOS,
    CDN_BEHAVIOURS,
    DEFAPI_BEHAVIOURS,
    DEFAPI_RATIOS,
    FakeUpstream,
    Recorded,
    data_uri,
    expected_size,
    jpeg_bytes,
    nearest_ratio,
    png_bytes,
    webp_bytes,
)

__all__ = [
    "ACEDATA_BEHAVIOURS",
    "ACEDATA_RATIOS",
    "CDN_BEHAVIOURS",
    "DEFAPI_BEHAVIOURS",
    "DEFAPI_RATIOS",
    "FakeUpstream",
    "Recorded",
    "data_uri",
    "expected_size",
    "jpeg_bytes",
    "nearest_ratio",
    "png_bytes",
    "webp_bytes",
]
