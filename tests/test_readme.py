"""The README's quickstarts and the docs' Python snippets run verbatim, after a small ``reproduce`` (so that they
cannot go stale again). Every Python block must be valid Python; a block holding ``...`` or starting with
``# a sketch`` is an outline with placeholders, compiled but not run."""

import re
import shlex
from pathlib import Path

import pytest

from helpers import cli
from tlora_analysis.config import ReproduceOptions
from tlora_analysis.reproduce import reproduce

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = ["README.md", "docs/your-adapters.md", "docs/usage.md", "docs/studies.md"]
BLOCK = re.compile(r"```(python|bash)\n(.*?)```", flags=re.S)


def blocks(document: str, language: str | None = None) -> list[tuple[str, str]]:
    found = BLOCK.findall((ROOT / document).read_text())
    return [(lang, text) for lang, text in found if language in (None, lang)]


def runnable(text: str) -> bool:
    return "..." not in text and not text.startswith("# a sketch")


def commands(text: str) -> list[list[str]]:
    """The ``tlora-analysis`` lines of a bash block, their comments cut (``make`` lines are the Makefile's)."""
    return [shlex.split(line, comments=True)[1:] for line in text.splitlines() if line.startswith("tlora-analysis ")]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A directory where `make reproduce` has run (1 epoch, 2 seeds, a few examples)."""
    root = tmp_path_factory.mktemp("user")
    options = ReproduceOptions(out=str(root / "figures"), runs_dir=str(root / "runs" / "reproduce"), epochs=1, seeds=2,
                               max_train_samples=32, max_eval_samples=16)
    reproduce(options, progress=False, log=lambda _: None)
    return root


@pytest.mark.parametrize("document", ["README.md", *(str(p.relative_to(ROOT)) for p in sorted((ROOT / "docs").glob("*.md")))])
def test_every_python_block_is_valid_python(document):
    for number, (_, text) in enumerate(blocks(document, "python"), start=1):
        compile(text, f"{document} block {number}", "exec")


@pytest.mark.slow
@pytest.mark.parametrize("document", DOCUMENTS)
def test_snippets_run_verbatim(workdir, monkeypatch, document):
    """Python blocks and the ``tlora-analysis`` lines of bash blocks, in the document's order, in one directory."""
    found = [(lang, text) for lang, text in blocks(document) if lang == "bash" or runnable(text)]
    assert any(lang == "python" for lang, _ in found), f"{document} has no runnable Python block"
    monkeypatch.chdir(workdir)
    for number, (lang, text) in enumerate(found, start=1):
        if lang == "python":
            exec(compile(text, f"{document} block {number}", "exec"), {"__name__": "__snippet__"})
        elif document == "README.md":  # the other pages' commands name placeholder paths
            for args in commands(text):
                result = cli(*args)
                assert result.returncode == 0, (args, result.stderr[-2000:])
    if document == "README.md":
        assert (workdir / "runs" / "loha-vs-lora" / "figures.json").is_file()
        assert (workdir / "runs" / "my-trainer-figures" / "figures.json").is_file()
        assert (workdir / "runs" / "my-report.html").is_file()


def test_the_readme_is_a_front_door():
    """Under 200 lines; its two commands first; every page it links exists."""
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) < 200
    first = blocks("README.md", "bash")[0][1]
    assert [line.split()[:2] for line in first.splitlines()] == [["make", "reproduce"], ["make", "test"]]
    for link in re.findall(r"\]\(((?:docs|figures)/[^)#]+)\)", text):
        assert (ROOT / link).is_file(), link
