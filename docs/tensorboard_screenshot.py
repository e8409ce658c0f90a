"""Take docs/tensorboard.png: a real TensorBoard on a loopback port, shot in headless Chromium.

Usage: python docs/tensorboard_screenshot.py runs/demo docs/tensorboard.png  (after `make demo`)
"""

import socket
import subprocess
import sys
import time

import httpx
from playwright.sync_api import sync_playwright

TAGS = "loss%2Fval%24%7Croc_auc%7Caccuracy%2Fval%7Cdense%2Fbelow"  # loss/val$|roc_auc|...


def main(logdir: str, out: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", logdir, "--host", "127.0.0.1"]
    proc = subprocess.Popen([*command, "--port", str(port)], stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                if httpx.get(url).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        with sync_playwright() as p:
            # Debian's chromium; software WebGL, or the charts stay blank.
            flags = ["--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader"]
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=flags)
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            local = url
            page.route(
                "**/*", lambda r: r.continue_() if r.request.url.startswith(local) else r.abort()
            )
            page.goto(f"{url}/#scalars&_smoothingWeight=0&tagFilter={TAGS}")
            time.sleep(30)  # the charts draw after their data arrives
            page.screenshot(path=out)
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=20)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
