// Open a report in headless Chromium (no download at run time: @sparticuz/chromium ships the browser as an npm
// package), print the page width, every table or figure wider than the page, broken images and where each
// section starts, and save a screenshot of the first screen.
// Run:  cd benchmarks/browser && npm install && node check_report.mjs file://$PWD/../../figures/report.html /tmp/shot.png [WIDTH [full]]
// (the docs site too: make docs, then file://$PWD/../../site/results/index.html at widths 800 and 1280)
import chromium from '@sparticuz/chromium';
import puppeteer from 'puppeteer-core';
const [,, url, out, width = '1280', whole = ''] = process.argv;  // whole = 'full': the whole page
const browser = await puppeteer.launch({ args: chromium.args, executablePath: await chromium.executablePath(), headless: 'shell' });
const page = await browser.newPage();
await page.setViewport({ width: Number(width), height: 900 });
await page.goto(url, { waitUntil: 'load', timeout: 60000 });
const report = await page.evaluate(() => {
  const body = document.body.getBoundingClientRect();
  const wide = [...document.querySelectorAll('table, figure, dl')].filter(e => e.scrollWidth > e.clientWidth + 1 || e.getBoundingClientRect().right > window.innerWidth)
    .map(e => `${e.tagName} ${e.getBoundingClientRect().width.toFixed(0)}px: ${e.textContent.slice(0, 60)}`);
  const images = [...document.images].map(i => `${i.alt} ${i.naturalWidth}x${i.naturalHeight} shown ${i.width}x${i.height}`);
  const sidebar = document.querySelector('.bs-sidebar');  // the docs site's table of contents: its names stay inside it
  const spill = sidebar ? [...sidebar.querySelectorAll('a')].filter(a => a.getBoundingClientRect().right > sidebar.getBoundingClientRect().right + 1)
    .map(a => a.textContent.trim()) : [];
  const broken = [...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.alt);
  const headings = [...document.querySelectorAll('h1, h2')].map(h => `${h.textContent} @${(h.getBoundingClientRect().top + window.scrollY).toFixed(0)}`);
  return { width: body.width, spill, height: document.documentElement.scrollHeight, wide, broken, images: images.length, headings, pageWidth: document.documentElement.scrollWidth };
});
console.log(JSON.stringify(report, null, 1));
await page.screenshot({ path: out, fullPage: whole === 'full' });
await browser.close();
