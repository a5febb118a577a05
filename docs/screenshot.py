"""Screenshot of a Prefect UI page with Debian's Chromium (apt-get install chromium), driven by
playwright-core's Python package (pip install playwright; no browser download needed):

    python docs/screenshot.py http://127.0.0.1:4200/runs docs/prefect-ui-runs.png
"""
import sys
from playwright.sync_api import sync_playwright
url, out = sys.argv[1], sys.argv[2]
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]  # no calls out of this closed network

with sync_playwright() as playwright:
    browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=FLAGS)
    page = browser.new_page(viewport={"width": 1500, "height": 1500})
    page.goto(url, wait_until="networkidle")
    page.wait_for_timeout(4000)
    page.screenshot(path=out, full_page=True)
    browser.close()
