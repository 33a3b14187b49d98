"""The documentation stays true to the tree: the CLI reference is what the commands say,
every local link resolves, the README stays short and its test command is CI's."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOCS = sorted((REPO / "docs").glob("*.md"))
#: a markdown link's target: ](target) or ](target "title")
LINK = re.compile(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _cli_docs():
    spec = importlib.util.spec_from_file_location("cli_docs", REPO / "scripts" / "cli_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reference_is_what_the_commands_say():
    expected = _cli_docs().render()
    current = (REPO / "docs" / "cli.md").read_text(encoding="utf-8")
    assert current == expected, "docs/cli.md is stale: run python scripts/cli_docs.py"


def local_links(path: Path) -> list[str]:
    """Relative link targets in one markdown file (web links and in-page anchors left out)."""
    targets = LINK.findall(path.read_text(encoding="utf-8"))
    return [t.split("#")[0] for t in targets
            if not re.match(r"[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")]


def test_every_local_link_resolves():
    pages = [REPO / "README.md", *DOCS]
    assert len(pages) > 1, "no docs/*.md found"
    broken = [f"{page.relative_to(REPO)}: {target}" for page in pages
              for target in local_links(page) if not (page.parent / target).exists()]
    assert broken == []


def test_link_finder_sees_links():
    """The check above would pass vacuously if the pattern found nothing."""
    links = local_links(REPO / "README.md")
    assert "docs/cli.md" in links and "docs/architecture.md" in links


def test_readme_is_short_and_links_every_doc():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 300
    missing = [d.name for d in DOCS if f"docs/{d.name}" not in readme]
    assert missing == []


def test_readme_test_command_is_what_ci_runs():
    command = "python -m pytest -q"
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert any(line.strip() == command for line in ci.splitlines())
    assert command in (REPO / "README.md").read_text(encoding="utf-8")
