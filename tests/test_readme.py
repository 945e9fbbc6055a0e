"""The README and its pages under docs/ document what the code has (every config key, layer class
and optimizer), the README keeps the test command, and every relative link leads somewhere."""
import pathlib
import re

import pytest

from config import DEFAULTS
from nn_module import LAYERS, LOSSES
from optim import OPTIMIZERS

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
TEXT = "\n".join(page.read_text() for page in PAGES)

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")          # [text](target) and ![alt](target)


def relative_links(page):
    """The targets of a page's links that are not web addresses, outside code blocks and spans."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    return [t for t in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


def anchors(page):
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces as '-'."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    seen, result = {}, set()
    for heading in re.findall(r"^#{1,6} +(.+?) *$", text, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        result.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return result


def test_every_config_key_is_documented():
    assert [k for k in DEFAULTS if f"| `{k}` |" not in TEXT] == []


def test_every_class_and_optimizer_is_documented():
    built_in = [n for n, cls in {**LAYERS, **LOSSES}.items() if not cls.__module__.startswith("layers.")]
    assert [n for n in built_in if f"`{n}`" not in TEXT] == []
    assert [n for n in OPTIMIZERS if f"`{n}`" not in TEXT] == []


def test_ci_runs_the_readme_test_command():
    command = "python3 -m pytest -q"
    assert f"pip install -r requirements.txt && {command}" in README.read_text()
    assert command in (ROOT / ".ci" / "run").read_text()


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(ROOT).as_posix())
def test_every_relative_link_leads_to_a_file_and_heading_that_exist(page):
    broken = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(target)
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(target)
    assert broken == []


def test_every_docs_page_links_back_to_the_readme_and_is_linked_from_it():
    assert DOCS, "docs/ holds the README's pages"
    linked_from_readme = {(ROOT / t.partition("#")[0]).resolve() for t in relative_links(README)}
    assert [p.name for p in DOCS if p.resolve() not in linked_from_readme] == []
    assert [p.name for p in DOCS if README.resolve() not in
            {(p.parent / t.partition("#")[0]).resolve() for t in relative_links(p)}] == []
