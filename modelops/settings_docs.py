"""The settings table of docs/configuration.md, generated from :class:`modelops.settings.Settings` (``make docs``).

``python -m modelops.settings_docs --markdown`` prints it; ``--update-readme docs/configuration.md`` rewrites the block between
:data:`TABLE_START` and :data:`TABLE_END` in place (tests/unit/test_settings.py fails when the README is stale).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from modelops.settings import Settings, SettingsError, _Group

TABLE_START = "<!-- settings-table:start -->"
TABLE_END = "<!-- settings-table:end -->"


def _leaves(model: type[BaseModel]) -> Iterator[tuple[str, Any]]:
    for info in model.model_fields.values():
        if isinstance(info.annotation, type) and issubclass(info.annotation, _Group):
            yield from _leaves(info.annotation)
        elif isinstance(info.validation_alias, str):
            yield info.validation_alias, info


def _shown(info: Any) -> str:
    extra = info.json_schema_extra or {}
    if "shown_default" in extra:
        return str(extra["shown_default"])
    value = info.default
    if isinstance(value, tuple):
        return ",".join(value)
    if isinstance(value, bool):
        return str(value).lower()
    return "(empty)" if value in ("", None) else str(value)


def settings_table() -> str:
    """The Markdown table of every ``MODELOPS_*`` variable: name, default, description."""
    rows = ["| variable | default | description |", "|---|---|---|"]
    for var, info in _leaves(Settings):
        default = _shown(info).replace("|", "\\|")
        rows.append(f"| `{var}` | `{default}` | {(info.description or '').replace('|', chr(92) + '|')} |")
    return "\n".join(rows) + "\n"


def readme_with_table(text: str) -> str:
    """``text`` with the block between :data:`TABLE_START` and :data:`TABLE_END` replaced by the table."""
    start, end = text.find(TABLE_START), text.find(TABLE_END)
    if start < 0 or end < start:
        raise SettingsError(f"README has no {TABLE_START} ... {TABLE_END} block")
    return text[: start + len(TABLE_START)] + "\n" + settings_table() + text[end:]


def main(argv: list[str] | None = None) -> int:
    """``--markdown`` prints the table; ``--update-readme PATH`` rewrites it in place."""
    parser = argparse.ArgumentParser(prog="python -m modelops.settings_docs", description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--markdown", action="store_true", help="print the configuration table")
    group.add_argument("--update-readme", metavar="PATH", type=Path, help="rewrite the table in this README")
    args = parser.parse_args(argv)
    if args.markdown:
        print(settings_table(), end="")
    else:
        args.update_readme.write_text(readme_with_table(args.update_readme.read_text()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
