"""Write the config key tables of the docs from the declared schemas (``--check``: only compare).

Each table sits between ``<!-- config-table: NAME -->`` and ``<!-- /config-table -->`` in its page;
``tests/test_config_docs.py`` fails when a page and the declaration disagree.

    python scripts/config_tables.py            # rewrite the tables
    python scripts/config_tables.py --check    # exit 1 when one is out of date
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARK = re.compile(r"(<!-- config-table: (\w+) -->\n)(.*?)(<!-- /config-table -->)", re.S)


def tables() -> dict[str, tuple[str, str]]:
    """``{name: (page, table)}``: the shared keys, and each task's own keys and changed defaults."""
    from botnet.classification.config import CLASSIFICATION_SCHEMA
    from botnet.detection.config import DETECTION_SCHEMA
    from botnet.engine.config import ENGINE_SCHEMA

    return {
        "engine": ("docs/engine.md", ENGINE_SCHEMA.markdown_table()),
        "classification": ("docs/classification.md", CLASSIFICATION_SCHEMA.markdown_table(exclude=ENGINE_SCHEMA)),
        "detection": ("docs/detection.md", DETECTION_SCHEMA.markdown_table(exclude=ENGINE_SCHEMA)),
    }


def in_page(text: str) -> dict[str, str]:
    """The tables a page holds, by name."""
    return {m.group(2): m.group(3) for m in MARK.finditer(text)}


def main(argv: list[str]) -> int:
    stale = []
    for name, (page, table) in tables().items():
        path = ROOT / page
        text = path.read_text()
        if name not in in_page(text):
            raise SystemExit(f"{page} has no <!-- config-table: {name} --> marker")
        if in_page(text)[name] == table:
            continue
        stale.append(page)
        if "--check" not in argv:
            new = MARK.sub(lambda m: m.group(1) + table + m.group(4) if m.group(2) == name else m.group(0), text)
            path.write_text(new)
    verb = "out of date" if "--check" in argv else "rewritten"
    print(f"{verb}: {', '.join(stale)}" if stale else "the tables match the declaration")
    return 1 if stale and "--check" in argv else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    sys.exit(main(sys.argv[1:]))
