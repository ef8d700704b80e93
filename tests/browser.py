"""A real headless Chromium driven over the DevTools protocol, in real time.

Chromium's one-shot --dump-dom/--screenshot flags run on virtual time, which skips ahead while the page waits
on its WebSocket: a Streamlit page may be captured before the app has drawn anything. Here we navigate, poll
the page's text until it shows what we wait for, and only then take the screenshot.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import subprocess
import time
import urllib.request

from websockets.sync.client import connect

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--remote-debugging-port=0", "--window-size=1600,1400"]


def wait_and_capture(browser: str, url: str, expected: list[str], profile: str, timeout: float = 120):
    """(page text, PNG bytes) once every string in `expected` shows on the page, or when time runs out."""
    proc = subprocess.Popen([browser, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        port = None
        for line in proc.stderr:
            found = re.search(r"DevTools listening on ws://127.0.0.1:(\d+)/", line)
            if found:
                port = found.group(1)
                break
        page = next(t for t in json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list"))
                    if t["type"] == "page")
        return drive(page["webSocketDebuggerUrl"], url, expected, timeout)
    finally:
        proc.kill()
        proc.wait()


def drive(socket_url: str, url: str, expected: list[str], timeout: float):
    ids = itertools.count(1)
    with connect(socket_url, max_size=64 * 1024 * 1024) as connection:

        def call(method: str, **params):
            message_id = next(ids)
            connection.send(json.dumps({"id": message_id, "method": method, "params": params}))
            while True:
                reply = json.loads(connection.recv(timeout=timeout))
                if reply.get("id") == message_id:
                    return reply.get("result", {})

        call("Page.navigate", url=url)
        deadline, text = time.time() + timeout, ""
        while time.time() < deadline:
            result = call("Runtime.evaluate", expression="document.body ? document.body.innerText : ''")
            text = result.get("result", {}).get("value", "")
            if all(item in text for item in expected):
                break
            time.sleep(0.5)
        shot = call("Page.captureScreenshot", format="png")
    return text, base64.b64decode(shot["data"])
