"""The README's and docs/your-adapters.md's Python snippets run verbatim, after a small ``reproduce``
(so that they cannot go stale again). A block holding ``...`` is a sketch with a placeholder, not run."""

import re
from pathlib import Path

import pytest

from tlora_analysis.config import ReproduceOptions
from tlora_analysis.reproduce import reproduce

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = ["README.md", "docs/your-adapters.md"]


def python_blocks(document: str) -> list[str]:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / document).read_text(), flags=re.S)
    return [block for block in blocks if "..." not in block]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A directory where `make reproduce` has run (1 epoch, 2 seeds, a few examples)."""
    root = tmp_path_factory.mktemp("user")
    options = ReproduceOptions(out=str(root / "figures"), runs_dir=str(root / "runs" / "reproduce"), epochs=1, seeds=2,
                               max_train_samples=32, max_eval_samples=16)
    reproduce(options, progress=False, log=lambda _: None)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("document", DOCUMENTS)
def test_python_snippets_run_verbatim(workdir, monkeypatch, document):
    blocks = python_blocks(document)
    assert blocks, f"{document} has no runnable Python block"
    monkeypatch.chdir(workdir)
    for number, block in enumerate(blocks, start=1):
        exec(compile(block, f"{document} block {number}", "exec"), {"__name__": "__snippet__"})
    if document == "README.md":
        assert (workdir / "runs" / "my-figures" / "figures.json").is_file()
