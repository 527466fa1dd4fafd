"""Keep the README and the docs honest: their Python snippets run as written."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# the pages whose snippets are complete programs (others show fragments with a comment per line)
PAGES = [README, ROOT / "docs" / "models.md", ROOT / "docs" / "engine.md"]
SNIPPETS = [(p.relative_to(ROOT).as_posix(), i, code) for p in PAGES
            for i, code in enumerate(re.findall(r"```python\n(.*?)```", p.read_text(), flags=re.S))]


def test_every_page_has_snippets():
    assert {p for p, _, _ in SNIPPETS} == {p.relative_to(ROOT).as_posix() for p in PAGES}


@pytest.mark.parametrize("page,index,code", SNIPPETS, ids=[f"{p}:{i}" for p, i, _ in SNIPPETS])
def test_python_snippet_runs(page, index, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"{page} snippet {index}", "exec"), {"__name__": "__readme__"})


def test_readme_starts_with_the_two_commands():
    first_block = re.search(r"```bash\n(.*?)```", README.read_text(), flags=re.S).group(1).strip().splitlines()
    assert first_block == [
        "bash scripts/setup.sh && .venv/bin/botnet demo",
        "bash scripts/setup.sh && .venv/bin/python -m pytest -q",
    ]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash scripts/setup.sh" in ci and ".venv/bin/python -m pytest -q" in ci


def test_docs_links_resolve():
    for page in [README, ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#:]+\.md)\)", page.read_text()):
            assert (page.parent / target).is_file(), (page.name, target)
