"""mkdocs hooks for ``make docs``: the README is the site's front page, and the figures the pages show
come from the repository's figures/ folder, so that pages read the same on GitHub and in the site."""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent
SHOWN = (".png", ".html")  # what a page may show or link under figures/


def on_files(files: Files, config) -> Files:
    readme = (ROOT / "README.md").read_text()
    files.append(File.generated(config, "index.md", content=readme.replace("](docs/", "](")))
    for path in sorted((ROOT / "figures").rglob("*")):
        if path.suffix in SHOWN and path.is_file():
            files.append(File(str(path.relative_to(ROOT)), src_dir=str(ROOT), dest_dir=config["site_dir"],
                              use_directory_urls=config["use_directory_urls"]))
    return files


IMAGE = re.compile(r"(?<!\[)!\[([^\]]*)\]\(([^)\s]+\.png)\)")
"""A figure shown on a page, not already inside a link."""


def on_page_markdown(markdown: str, page, config, files) -> str:
    """A page in docs/ links figures as ../figures/ (right on GitHub); in the site they sit beside the pages. Every
    figure links to its own file, so a small one in a table opens full size."""
    markdown = re.sub(r"\]\(\.\./figures/", "](figures/", markdown)
    return IMAGE.sub(lambda m: f"[![{m.group(1)}]({m.group(2)})]({m.group(2)})", markdown)
