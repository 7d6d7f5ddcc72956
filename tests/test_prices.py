"""The [prices] table and cost estimates."""

from __future__ import annotations

import pytest

from gateway.admission.prices import PriceList
from gateway.config import ConfigError
from gateway.models import MODELS
from tests.support.gateway import make_config

BASE = '[[upstreams]]\nname = "m"\ntype = "mock"\n'

PRICES = """
[prices]
"nano-banana" = 0.039
"nano-banana-pro" = { "1K" = 0.134, "2k" = 0.134, "4K" = 0.24 }
"nano-banana-pro:official" = { "1K" = 0.2, "2K" = 0.2, "4K" = 0.3 }
"nano-banana-2" = 0
"""


@pytest.fixture(scope="module")
def prices() -> PriceList:
    return PriceList(make_config(BASE + PRICES).prices)


@pytest.mark.parametrize(
    ("model", "resolution", "images", "cost"),
    [
        ("nano-banana", None, 1, 0.039),
        ("nano-banana", "1K", 3, 0.117),
        ("nano-banana-pro", None, 1, 0.134),  # no size: the upstream's default, 1K
        ("nano-banana-pro", "2K", 2, 0.268),
        ("nano-banana-pro", "4K", 4, 0.96),
        ("nano-banana-pro:official", "4K", 1, 0.3),  # a variant's own price
        ("nano-banana:official", None, 2, 0.078),  # a variant without one: its base model's
        ("nano-banana-2", "4K", 10, 0.0),  # free is a price, not unknown
        ("nano-banana-2-lite", None, 1, None),  # not in the table: unknown
        ("nano-banana", None, 0, 0.0),
    ],
)
def test_estimates(
    prices: PriceList, model: str, resolution: str | None, images: int, cost: float | None
) -> None:
    assert prices.estimate(model, resolution, images) == (
        None if cost is None else pytest.approx(cost)
    )


def test_no_prices_means_unknown_costs() -> None:
    empty = PriceList(make_config(BASE).prices)
    assert all(empty.per_image(m, r) is None for m in MODELS for r in ("1K", "2K", "4K"))
    assert empty.estimate("nano-banana", None, 1) is None


@pytest.mark.parametrize(
    ("toml", "where"),
    [
        ('[prices]\n"gpt-image-1" = 0.04\n', "prices.gpt-image-1"),
        ('[prices]\n"nano-banana" = -0.01\n', "prices.nano-banana"),
        ('[prices]\n"nano-banana" = "cheap"\n', "prices.nano-banana"),
        ('[prices]\n"nano-banana" = { "2K" = 0.1 }\n', "prices.nano-banana.2K"),
        ('[prices]\n"nano-banana-pro" = { "1K" = 0.1, "2K" = 0.1 }\n', "prices.nano-banana-pro.4K"),
        (
            '[prices]\n"nano-banana-pro" = { "1K" = 0.1, "2K" = 0.1, "4K" = "x" }\n',
            "prices.nano-banana-pro.4K",
        ),
        ("prices = 3\n", "prices"),
    ],
)
def test_price_errors_name_the_key(toml: str, where: str) -> None:
    with pytest.raises(ConfigError) as err:
        make_config(toml + BASE if toml.startswith("prices =") else BASE + toml)
    assert str(err.value).startswith(where + ":"), str(err.value)
