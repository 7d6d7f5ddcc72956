"""The README's configuration reference, rendered from the declarations.

    python -m gateway.config.reference                    # print it
    python -m gateway.config.reference --write README.md  # put it in the README
    python -m gateway.config.reference --check README.md  # fail if the README differs

The reference is the ```toml block under the README's "## Configuration" heading: every
table in document order, every key with its default (or its example, when the default is
"absent"), and the key's one line of doc as a comment. Keys that are absent by default are
commented out; the live lines make a valid config on their own.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from .fields import bare, hints, toml_value
from .schema import Config
from .sections import PricesConfig

# Comments start at this column (lines longer than it put three spaces before theirs) and
# wrap before this width.
COLUMN = 34
WIDTH = 100

_HEADING = "\n## Configuration\n"
_FENCE = "```toml\n"


def render() -> str:
    """The reference, as TOML text."""
    blocks = []
    for name, field in Config.model_fields.items():
        declared = bare(field.annotation)
        many = get_origin(declared) is tuple
        section = bare(get_args(declared)[0]) if many else declared
        header = f"[[{name}]]" if many else f"[{name}]"
        lines = _commented(header, field.description or "")
        lines += _section_lines(section)
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def _section_lines(section: type[BaseModel]) -> list[str]:
    if section is PricesConfig:
        lines = []
        for model, price, doc, live in PricesConfig.EXAMPLES:
            line = f"{json.dumps(model)} = {toml_value(price)}"
            lines += _commented(line if live else f"# {line}", doc)
        return lines
    return [line for key, f in section.model_fields.items() for line in setting_lines(key, f)]


def setting_lines(key: str, field: FieldInfo) -> list[str]:
    """One setting's line(s): `key = value   # doc`, commented out when absent by default."""
    hint = hints(field)
    if hint.legacy:
        return [f"# {key}: the older spelling of {hint.legacy}"]
    required = field.is_required()
    default = PydanticUndefined if required else field.get_default(call_default_factory=True)
    shown = default if hint.example is PydanticUndefined else hint.example
    if shown is PydanticUndefined:
        raise ValueError(f"{key}: a required setting needs an example to be shown")
    live = hint.active if hint.active is not None else required or not is_empty(default)
    doc = field.description or ""
    choices = literal_choices(field.annotation)
    if choices:
        doc = f"{doc}: {' | '.join(choices)}" if doc else " | ".join(choices)
    if not required and not is_empty(default) and shown != default:
        doc += f"; default {toml_value(default)}"
    line = f"{key} = {toml_value(shown)}"
    return _commented(line if live else f"# {line}", doc)


def is_empty(value: Any) -> bool:
    """None, "", [] or {}: a default that means "absent"."""
    if value is None or value == "":
        return True
    return isinstance(value, Sequence | Mapping) and not isinstance(value, str) and not value


def literal_choices(annotation: Any) -> tuple[str, ...]:
    declared = bare(annotation)
    if get_origin(declared) is Literal:
        return tuple(str(a) for a in get_args(declared))
    return ()


def _commented(code: str, doc: str) -> list[str]:
    if not doc:
        return [code]
    start = code.ljust(COLUMN) if len(code) < COLUMN else code + "   "
    chunks = textwrap.wrap(doc, max(WIDTH - len(start) - 2, 40), break_on_hyphens=False)
    return [start + "# " + chunks[0]] + [" " * COLUMN + "# " + c for c in chunks[1:]]


# --------------------------------------------------------------------------- the README


def _block_span(readme: str) -> tuple[int, int]:
    heading = readme.index(_HEADING)
    start = readme.index(_FENCE, heading) + len(_FENCE)
    end = readme.index("\n```", start) + 1
    following = readme.find("\n## ", heading + len(_HEADING))
    if following != -1 and end > following:
        raise ValueError("no ```toml block under the Configuration heading")
    return start, end


def readme_block(readme: str) -> str:
    """The reference as the README has it."""
    start, end = _block_span(readme)
    return readme[start:end]


def with_block(readme: str, block: str) -> str:
    """The README with `block` as its reference."""
    start, end = _block_span(readme)
    return readme[:start] + block + readme[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.config.reference",
        description="Render the README's configuration reference from the declarations.",
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", metavar="README", help="replace the reference in README")
    group.add_argument("--check", metavar="README", help="exit 1 if README's reference differs")
    args = parser.parse_args(argv)
    if args.write:
        path = Path(args.write)
        path.write_text(with_block(path.read_text(encoding="utf-8"), render()), encoding="utf-8")
    elif args.check:
        if readme_block(Path(args.check).read_text(encoding="utf-8")) != render():
            print(
                f"{args.check}: the configuration reference is out of date; run "
                f"python -m gateway.config.reference --write {args.check}",
                file=sys.stderr,
            )
            return 1
    else:
        sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
