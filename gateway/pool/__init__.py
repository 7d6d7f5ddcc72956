"""The token pool: every token of every upstream, its health, the choice between them,
and the retries that move a failed call elsewhere.

    health.py   the state machines of a token and an upstream, and an attempt's verdict
    select.py   the slots, and which one takes the next call
    run.py      the Pool: one job, run with retries within a deadline
    stall.py    noticing this process stood still, so its own pause blames no upstream
    view.py     the typed state /admin/upstreams and the metrics read
"""

from .health import State, token_id
from .run import Pool, Run
from .view import TokenView, UpstreamView

__all__ = ["Pool", "Run", "State", "TokenView", "UpstreamView", "token_id"]
