"""`make docs` builds the pages as a site with warnings as errors, and every image and local link in it resolves."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

import pytest

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
    shown = linked = 0
    for page in pages:
        html = page.read_text()
        for target in re.findall(r'(?:src|href)="([^"#?]+)', html):
            if target.startswith(("http:", "https:", "mailto:", "data:")):
                continue
            resolved = (page.parent / unquote(target)).resolve()
            assert resolved.exists(), f"{page.relative_to(site)} links {target}"
        shown += len(re.findall(r'<img [^>]*src="[^"]+\.png"', html))
        linked += len(re.findall(r'<a href="([^"]+\.png)"><img [^>]*src="\1"', html))  # each opens full size
    image = re.compile(r"!\[[^\]]*\]\((?:\.\./)?figures/[^)]+\.png\)")
    written = sum(len(image.findall(p.read_text())) for p in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
    assert shown == written > 0  # every figure a page shows is in the site
    assert linked == shown


BROWSER = ROOT / "benchmarks" / "browser"
PAGES = ("", "results", "ladder", "atlas", "your-adapters", "usage", "studies", "security", "quantities", "performance", "design")


@pytest.mark.skipif(shutil.which("node") is None or not (BROWSER / "node_modules" / "puppeteer-core").is_dir(),
                    reason="headless Chromium is not installed here: make docs-check installs it (npm) and runs this test")
def test_every_page_shows_every_table_column_at_1280_px_and_keeps_its_width_at_800(tmp_path):
    """In headless Chromium: at 1280 px no table or figure is wider than the page's column (nothing behind a scroll);
    at 800 px the page keeps the window's width (wide tables scroll inside themselves); at both the sidebar's names stay inside it."""
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(site)], cwd=ROOT, check=True,
                   timeout=HANG_GUARD_S)
    for page in PAGES:
        for width in (1280, 800):
            shot = tmp_path / f"{page or 'index'}-{width}.png"
            done = subprocess.run(["node", "check_report.mjs", (site / page / "index.html").as_uri(), str(shot), str(width), "full"],
                                  cwd=BROWSER, capture_output=True, text=True, timeout=HANG_GUARD_S)
            assert done.returncode == 0, done.stderr[-2000:]
            seen = json.loads(done.stdout)
            assert seen["pageWidth"] == width and not seen["broken"], (page, width, seen)
            assert width != 1280 or not seen["wide"], (page, seen["wide"])
            assert not seen["spill"], (page, width, seen["spill"])
