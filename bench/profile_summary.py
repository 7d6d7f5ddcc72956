"""Where a process spent its CPU, from the collapsed stacks `bench/run.py --py-spy DIR`
records (py-spy's raw format: `frame;frame;... count` per line).

    python bench/profile_summary.py /tmp/prof/overhead-0-gateway.txt [--per-request N]

Prints the share of samples per layer (by the package of the innermost frame: the code
that was running, not what called it) and the functions with the most samples on their
stack. With --per-request N (the requests the run answered) and --cpu-ms (the run's CPU
time), shares become microseconds per request.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

# Innermost frame's file -> layer; the first match wins.
_LAYERS: tuple[tuple[str, str], ...] = (
    ("gateway/", "gateway"),
    ("bench/", "bench"),
    ("uvicorn/", "uvicorn"),
    ("starlette/", "starlette"),
    ("httpx_aiohttp/", "httpx"),
    ("httpx/", "httpx"),
    ("aiohttp/", "aiohttp"),
    ("prometheus_client/", "prometheus"),
    ("logging/", "logging"),
    ("json/", "json"),
    ("asyncio/", "asyncio"),
    ("cookiejar", "cookies"),
    ("PIL/", "pillow"),
)
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


def _split(frame: str) -> tuple[str, str]:
    m = _FRAME.match(frame)
    return (m.group("func"), m.group("file")) if m else (frame, "")


def layer_of(path: str) -> str:
    """The layer a source file belongs to."""
    for needle, layer in _LAYERS:
        if needle in path:
            return layer
    return "event loop, C and other" if not path or path.startswith("<") else "other Python"


def summarize(path: Path) -> tuple[int, Counter[str], Counter[str]]:
    """Total samples, samples per layer (innermost frame), samples per function (anywhere
    on the stack, counted once per sample)."""
    total = 0
    layers: Counter[str] = Counter()
    functions: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_split(f) for f in stack.split(";")]
        layers[layer_of(frames[-1][1])] += n
        seen = {f"{func} ({file.rsplit('site-packages/', 1)[-1]})" for func, file in frames}
        for name in seen:
            functions[name] += n
    return total, layers, functions


def main() -> None:
    """Command line entry."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--per-request", type=int, help="requests answered during the run")
    parser.add_argument("--cpu-ms", type=float, help="the process's CPU time during the run")
    args = parser.parse_args()
    total, layers, functions = summarize(args.profile)
    if not total:
        raise SystemExit("no samples")
    scale = None
    if args.per_request and args.cpu_ms:
        scale = args.cpu_ms * 1000 / args.per_request / total  # microseconds per sample

    def show(n: int) -> str:
        share = f"{100 * n / total:5.1f}%"
        return f"{share} {n * scale:7.1f} us/req" if scale else share

    print(f"{total} samples")
    print("\nby layer (innermost frame):")
    for layer, n in layers.most_common():
        print(f"  {show(n)}  {layer}")
    print(f"\ntop {args.top} functions (on the stack):")
    for name, n in functions.most_common(args.top):
        print(f"  {show(n)}  {name}")


if __name__ == "__main__":
    main()
