"""The project's documentation: every relative markdown link resolves to a file in the repository,
the README stays short, no tracked file cites a document outside the repository, and `fvlm info`
points at the shipped model's card."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from fvlm.cli import main
from fvlm.hub import DEFAULT_MODEL_DIR

REPO = Path(__file__).resolve().parents[1]
DOCS = sorted({
    REPO / "README.md",
    *(REPO / "docs").glob("*.md"),
    *(REPO / "experiments").rglob("*.md"),
    REPO / "trainer" / "README.md",
    REPO / "eval" / "README.md",
    REPO / "benchmarks" / "README.md",
    DEFAULT_MODEL_DIR / "README.md",
})
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")  # [text](target) and ![alt](target)
FENCE = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)


def local_links(path: Path) -> list[str]:
    """Link targets in a markdown file outside code blocks, without URLs and in-page anchors."""
    text = FENCE.sub("", path.read_text())
    targets = [m.group(1).split("#")[0] for m in LINK.finditer(text)]
    return [t for t in targets if t and not re.match(r"^[a-z][a-z0-9+.-]*:", t)]


def tracked_text_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    paths = [REPO / p for p in out.decode().split("\0") if p]
    return [p for p in paths if p.is_file() and b"\0" not in p.read_bytes()[:8192]]


def test_link_finder_sees_links_and_skips_urls_anchors_and_code(tmp_path: Path):
    page = tmp_path / "page.md"
    page.write_text("[a](a.md) ![img](img/x.png) [web](https://x.org/y.md) [here](#top) [b](b.md#part)\n"
                    "```\n[not](code.md)\n```\n")
    assert local_links(page) == ["a.md", "img/x.png", "b.md"]


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(REPO)) for d in DOCS])
def test_relative_links_resolve_to_files_in_the_repository(doc: Path):
    assert doc.is_file(), doc
    for target in local_links(doc):
        resolved = (doc.parent / target).resolve()
        assert resolved.exists(), f"{doc.relative_to(REPO)}: link {target!r} -> {resolved} does not exist"
        assert resolved.is_relative_to(REPO), f"{doc.relative_to(REPO)}: link {target!r} leaves the repository"


def test_readme_is_at_most_300_lines():
    assert len((REPO / "README.md").read_text().splitlines()) <= 300


def test_no_tracked_file_cites_documents_outside_the_repository():
    # the two strings are split so that this file does not cite them itself
    banned = ("design" + ".md", "../" + "shared")
    offenders = [f"{p.relative_to(REPO)}: {b}" for p in tracked_text_files()
                 for b in banned if b in p.read_text(errors="replace")]
    assert not offenders, offenders


def test_info_prints_the_model_card_path(capsys):
    assert main(["info"]) == 0
    card = DEFAULT_MODEL_DIR / "README.md"
    assert card.is_file()
    assert f"model card:   {card}" in capsys.readouterr().out
