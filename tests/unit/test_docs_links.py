"""What the docs cite exists: every relative link (and the anchor it names), every
repository path and every ``tunelens.*`` name in README.md, CONTRIBUTING.md, the
benchmarks' pages and every page under docs/.

A cited path is an inline code span (fenced blocks are examples, not citations) that
names the repository: it starts with one of the repository's folders (``src/``,
``tests/``, ``examples/``, ``bench/``, ``scripts/``, ``docs/``, ``.ci/``) or with
``assets/`` (the package's), or it is a ``.py`` / ``.j2`` file (from the repository root,
from ``src/tunelens/``, or, as a bare name, anywhere in the code), a bare ``.md`` page
or ``.toml`` file, or a package folder of ``src/tunelens`` written with its slash
(``runs/``). Paths of the user's (``models/Llama-2-7b-hf``, ``runs/x``) and another
project's files (``their_repo/eval.py``, or any span written as the text of a link to a
web address) name none of these and are left alone.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import markdown
import pytest

from tunelens import docs_gen

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "tunelens"
ROOT_FOLDERS = ("src", "tests", "examples", "bench", "scripts", "docs", ".ci")
CODE_FOLDERS = ("src", "tests", "bench", "scripts")


def pages() -> list[Path]:
    found = [ROOT / "README.md", ROOT / "CONTRIBUTING.md"]
    found += [ROOT / "bench" / "README.md", ROOT / "bench" / "RESULTS.md"]
    return found + sorted((ROOT / "docs").rglob("*.md"))


PAGES = pages()


def ids(path: Path) -> set[str]:
    """The anchors a page has once rendered as the site renders it (markers expanded)."""
    text = path.read_text(encoding="utf-8")
    if path.is_relative_to(ROOT / "docs"):
        text = docs_gen.expand(text)
    md = markdown.Markdown(extensions=["toc", "attr_list", "tables", "md_in_html"])
    md.convert(text)
    found: set[str] = set()

    def walk(tokens: list[dict]) -> None:
        for token in tokens:
            found.add(token["id"])
            walk(token["children"])

    walk(md.toc_tokens)
    return found


def without_fences(text: str) -> str:
    return re.sub(r"^(```|~~~).*?^\1", "", text, flags=re.S | re.M)


def links(text: str) -> list[str]:
    return re.findall(r"!?\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", without_fences(text))


def code_spans(text: str) -> list[str]:
    """Inline code outside fenced blocks; a span that is the text of a link to a web
    address names a file elsewhere (another project's script), not this repository's."""
    text = re.sub(r"\[[^\]\n]*\]\([a-z]+://[^)\s]*\)", "", without_fences(text))
    return re.findall(r"(?<!`)`([^`\n]+)`(?!`)", text)


def is_cited_path(span: str) -> bool:
    if (
        re.search(r"[\s<>*{}$~|\[\]()=,]|\.\.\.|^/|^\.\./|://", span)
        or "/" not in span
        and "." not in span
    ):
        return False
    first = span.split("/")[0]
    if first in ROOT_FOLDERS or first == "assets":
        return True
    if span.endswith((".py", ".j2")):
        return "/" not in span or (PACKAGE / first).is_dir()
    if "/" not in span and span.endswith((".md", ".toml")):
        return True
    return span.endswith("/") and (PACKAGE / first / "__init__.py").exists()


def path_exists(span: str) -> bool:
    span = span.rstrip("/")
    if span.split("/")[0] == "assets":
        return (PACKAGE / span).exists()
    if (ROOT / span).exists() or (PACKAGE / span).exists():
        return True
    if "/" in span:
        return False
    if span.endswith(".md"):
        return any((folder / span).exists() for folder in (ROOT / "docs", ROOT / "bench"))
    return any(next((ROOT / folder).rglob(span), None) for folder in CODE_FOLDERS)


def name_exists(dotted: str) -> bool:
    """``tunelens.a.b.c``: the longest importable module, then attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[cut:]:
            if not hasattr(target, attribute):
                return False
            target = getattr(target, attribute)
        return True
    return False


def name(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.mark.parametrize("path", PAGES, ids=name)
def test_every_relative_link_leads_to_a_file_and_its_anchor(path):
    broken = []
    for target in links(path.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve()
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in ids(linked):
            broken.append(f"{target}: {name(linked)} has no heading #{anchor}")
    assert not broken, f"{name(path)}: " + "; ".join(broken)


@pytest.mark.parametrize("path", PAGES, ids=name)
def test_every_cited_repository_path_and_tunelens_name_exists(path):
    missing = []
    for span in code_spans(path.read_text(encoding="utf-8")):
        dotted = re.match(r"tunelens(?:\.\w+)+(?=$|\()", span)
        if dotted and not name_exists(dotted[0]):
            missing.append(dotted[0])
        elif not dotted and is_cited_path(span) and not path_exists(span):
            missing.append(span)
    assert not missing, f"{name(path)} cites what does not exist: {sorted(set(missing))}"


def test_the_checks_catch_what_they_are_for(tmp_path):
    """The rules reject a missing path, a missing name and a wrong anchor."""
    assert is_cited_path("src/tunelens/nothing_here.py") and not path_exists(
        "src/tunelens/nothing_here.py"
    )
    assert is_cited_path("DESIGN.md") and not path_exists("DESIGN.md")
    assert is_cited_path("models/nothing.py") and not path_exists("models/nothing.py")
    assert path_exists("models/patching.py") and path_exists("runs/")
    assert not is_cited_path("models/Llama-2-7b-hf") and not is_cited_path("runs/default")
    assert not is_cited_path("their_repo/eval.py")
    assert code_spans("[`eval.py`](https://example.org/eval.py) and `mine.py`") == ["mine.py"]
    assert name_exists("tunelens.runs.costs.CPU_COSTS")
    assert not name_exists("tunelens.runs.costs.NO_SUCH_THING")
    assert not name_exists("tunelens.no_such_module")
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n## A heading: `code`\n", encoding="utf-8")
    assert ids(page) == {"title", "a-heading-code"}


def test_the_readme_is_short_and_keeps_the_two_commands_ci_runs():
    readme = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(readme) <= 200
    first = "bash scripts/setup.sh && .venv/bin/tunelens run --out runs/default"
    tests = "bash scripts/setup.sh && .venv/bin/python -m pytest -q"
    assert first in readme and tests in readme
    # CI runs the README's test command: the set-up, then the same pytest line.
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    setup, _, command = tests.partition(" && ")
    assert setup in ci and command in ci and ci.index(setup) < ci.index(command)
    assert any("mkdocs build --strict" in line for line in ci)
