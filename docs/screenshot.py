"""Screenshot of a Prefect UI page with Debian's headless Chromium (apt-get install chromium), no other
package: the README's picture of a pipeline run is made with

    python docs/screenshot.py http://127.0.0.1:4200/runs docs/prefect-ui-runs.png
"""
import subprocess
import sys
import tempfile

url, out = sys.argv[1], sys.argv[2]
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # no calls out

with tempfile.TemporaryDirectory() as profile:
    # virtual time: the page's scripts get 60 s to fetch the runs and draw before the picture is taken (20 s
    # left it half-faded on a loaded machine)
    subprocess.run(["chromium", *FLAGS, f"--user-data-dir={profile}", "--window-size=1500,1560",
                    "--virtual-time-budget=60000", f"--screenshot={out}", url],
                   check=True, timeout=120, stderr=subprocess.DEVNULL)  # its D-Bus complaints in a container
