"""The layout holds: the README's architecture section names every module that exists (and
only those), and no layer reaches across: nothing below the HTTP edge imports Starlette or
the API layer, upstreams know nothing of the pool, cache or pipeline above them."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "gateway"


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py")


def architecture() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Architecture", 1)[1].split("\n## ", 1)[0]
    return section


def tree() -> dict[str, str]:
    """The README's gateway/ tree, as folder ('' for the top) -> the text that lists it."""
    block = architecture().split("```\ngateway/\n", 1)[1].split("```", 1)[0]
    block = block.split("\ntests/", 1)[0]
    folders: dict[str, str] = {"": ""}
    current = ""
    for line in block.splitlines():
        entry = re.match(r"  ([a-z_]+)/\s", line + " ")
        if entry:
            current = entry.group(1)
            folders[current] = line
        elif re.match(r"  \S", line):
            current = ""
            folders[""] += line + "\n"
        else:
            folders[current] += line + "\n"
    return folders


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_every_module_is_in_the_readme_tree(path: Path) -> None:
    relative = path.relative_to(PACKAGE)
    folder = relative.parts[0] if len(relative.parts) > 1 else ""
    listed = tree()
    assert folder in listed, f"README's tree has no {folder}/"
    stem = relative.stem
    assert re.search(rf"\b{re.escape(stem)}(\.py)?\b", listed[folder]), (
        f"{relative} is not named under {folder or 'gateway'}/ in the README's tree"
    )


def test_every_module_the_readme_names_exists() -> None:
    named = set(re.findall(r"\b((?:[a-z_]+/)*)([a-z_]+)\.py\b", architecture()))
    for folder, stem in named:
        if folder:
            candidates = [PACKAGE / folder / f"{stem}.py", ROOT / folder / f"{stem}.py"]
        else:
            candidates = list(PACKAGE.rglob(f"{stem}.py"))
        assert any(c.exists() for c in candidates), f"README names {folder}{stem}.py"


def imports(path: Path) -> set[str]:
    """Absolute names of the modules a file imports (relative imports resolved)."""
    package = ".".join(("gateway", *path.relative_to(PACKAGE).parent.parts))
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            found.add(name)
            found |= {f"{name}.{a.name}" for a in node.names}
    return found


EDGE = ("gateway/api/", "gateway/app.py", "gateway/__main__.py")


@pytest.mark.parametrize(
    "path",
    [p for p in modules() if not str(p.relative_to(ROOT)).startswith(EDGE)],
    ids=lambda p: str(p.relative_to(PACKAGE)),
)
def test_nothing_below_the_edge_knows_http_serving(path: Path) -> None:
    used = imports(path)
    assert not {m for m in used if m.split(".")[0] == "starlette"}, "imports Starlette"
    assert not {m for m in used if m.startswith("gateway.api")}, "imports the API layer"
    assert not {m for m in used if m.startswith("gateway.app")}, "imports the wiring"


ABOVE_UPSTREAMS = ("gateway.pool", "gateway.cache", "gateway.pipeline", "gateway.fanout")


@pytest.mark.parametrize("path", sorted((PACKAGE / "upstreams").glob("*.py")), ids=lambda p: p.name)
def test_upstreams_know_nothing_above_them(path: Path) -> None:
    used = imports(path)
    assert not {m for m in used if m.startswith(ABOVE_UPSTREAMS)}


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_over_400_lines(path: Path) -> None:
    assert len(path.read_text().splitlines()) <= 400


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_function_above_complexity_15(path: Path) -> None:
    from radon.complexity import cc_visit

    blocks = cc_visit(path.read_text())
    over = [f"{b.name} ({b.complexity})" for b in blocks if b.complexity > 15]
    assert not over, f"{path.name}: {', '.join(over)}"
