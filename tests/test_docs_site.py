"""`make docs` builds the pages as a site with warnings as errors, and every image and local link in it resolves."""

import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

from helpers import HANG_GUARD_S

ROOT = Path(__file__).resolve().parent.parent


def test_the_docs_site_builds_strictly_and_shows_every_figure(tmp_path):
    site = tmp_path / "site"
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)], cwd=ROOT,
                            capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert result.returncode == 0, result.stderr[-3000:]
    pages = sorted(site.rglob("index.html"))
    assert {p.parent.name for p in pages} >= {"results", "ladder", "atlas", "your-adapters", "usage", "studies", "security",
                                               "quantities", "performance", "design"}
    shown = 0
    for page in pages:
        html = page.read_text()
        for target in re.findall(r'(?:src|href)="([^"#?]+)', html):
            if target.startswith(("http:", "https:", "mailto:", "data:")):
                continue
            resolved = (page.parent / unquote(target)).resolve()
            assert resolved.exists(), f"{page.relative_to(site)} links {target}"
        shown += len(re.findall(r'<img [^>]*src="[^"]+\.png"', html))
    image = re.compile(r"!\[[^\]]*\]\((?:\.\./)?figures/[^)]+\.png\)")
    written = sum(len(image.findall(p.read_text())) for p in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
    assert shown == written > 0  # every figure a page shows is in the site
