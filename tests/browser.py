"""A real headless Chromium driven over the DevTools protocol, in real time.

Chromium's one-shot --dump-dom/--screenshot flags run on virtual time, which skips ahead while the page waits
on its WebSocket: a Streamlit page may be captured before the app has drawn anything. Here we navigate, poll
the page until it shows what we wait for and its charts have stopped changing, and only then read it.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import re
import subprocess
import time
import urllib.request
from dataclasses import dataclass

from websockets.sync.client import connect

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--remote-debugging-port=0", "--window-size=1600,1400"]

# Streamlit draws Vega-Lite charts as SVG: each data mark is a `g.role-mark` group (outside axes, legends and
# titles) with one child per drawn item, labelled for screen readers with the item's fields.
CHARTS = """
Array.from(document.querySelectorAll('[data-testid=stVegaLiteChart]')).map(chart => ({
  text: chart.textContent,
  marks: Array.from(chart.querySelectorAll('g.role-mark'))
    .filter(g => !g.closest('.role-axis, .role-legend, .role-title'))
    .map(g => ({
      kind: g.getAttribute('aria-roledescription') || g.getAttribute('class'),
      items: g.children.length,
      labels: Array.from(g.children).map(c => c.getAttribute('aria-label') || ''),
      geometry: Array.from(g.children).map(c => [c.getAttribute('d'), c.getAttribute('transform')].join(' ')),
    })),
}))
"""


# The page's text, and the cells of its data grids: st.dataframe draws on a canvas, and its cells' text is only in
# the grid's hidden accessibility table.
TEXT = """
(document.body ? document.body.innerText : '') + '\\n' +
Array.from(document.querySelectorAll('[data-testid^=glide-cell]')).map(cell => cell.textContent).join('\\n')
"""


@dataclass
class Page:
    text: str
    charts: list[dict]  # one a chart: {"text": ..., "marks": [{"kind", "items", "labels", "geometry"}]}
    png: bytes


@contextlib.contextmanager
def chromium_session(browser: str, profile: str):
    """A function url, expected -> Page, on one headless Chromium for all the pages a test visits."""
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
        with connect(page["webSocketDebuggerUrl"], max_size=64 * 1024 * 1024) as connection:
            yield lambda url, expected, charts=0, timeout=120: visit(connection, url, expected, charts, timeout)
    finally:
        proc.kill()
        proc.wait()


IDS = itertools.count(1)


def visit(connection, url: str, expected: list[str], charts_expected: int, timeout: float) -> Page:
    """The page once its text shows every string in `expected`, it holds at least `charts_expected` charts, and
    those have not changed for half a second (Streamlit sends text first and charts after)."""
    def call(method: str, **params):
        message_id = next(IDS)
        connection.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            reply = json.loads(connection.recv(timeout=timeout))
            if reply.get("id") == message_id:
                return reply.get("result", {})

    def evaluate(expression: str):
        return call("Runtime.evaluate", expression=expression, returnByValue=True).get("result", {}).get("value")

    call("Page.navigate", url=url)
    deadline, text, charts, previous = time.time() + timeout, "", [], None
    while time.time() < deadline:
        text = evaluate(TEXT) or ""
        charts = evaluate(CHARTS) or []
        if all(item in text for item in expected) and len(charts) >= charts_expected and charts == previous:
            break  # the text is there and the charts were the same half a second ago: drawing has finished
        previous = charts
        time.sleep(0.5)
    shot = call("Page.captureScreenshot", format="png")
    return Page(text, charts, base64.b64decode(shot["data"]))
