"""A chapter page at phone width, in a real browser (issue 22): headless Chromium (Debian's
``apt-get install chromium``; GitHub's Ubuntu runners ship Chromium and Chrome). Without one the
test is skipped, saying how to get it.

The page is loaded in a 400 px frame with the network unused (everything it needs is in the built
book), and measured from inside: nothing makes the page scroll sideways, every paragraph, table
and figure fits in the width, and MathJax, served by the book itself, has typeset the equations.
A screenshot at the same width is written next to the book for a person to look at.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGE = "notebooks/02_self_attention.html"  # prose, equations, figures, code and an exercise
PHONE = 400  # CSS px

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium here: apt-get install chromium")

MEASURE = """<html><body style="margin:0">
<iframe id="page" src="{src}" style="width:{width}px;height:900px;border:0"></iframe>
<script>
document.getElementById("page").onload = function () {{
  var doc = document.getElementById("page").contentDocument, right = 0;
  doc.querySelectorAll("article p, article table, article img, article li").forEach(function (e) {{
    right = Math.max(right, e.getBoundingClientRect().right);
  }});
  var out = document.createElement("pre");
  out.id = "measured";
  out.textContent = JSON.stringify({{
    scrollWidth: doc.documentElement.scrollWidth,
    clientWidth: doc.documentElement.clientWidth,
    right: right,
    typeset: doc.querySelectorAll("mjx-container").length,
    math: doc.querySelectorAll(".math").length
  }});
  document.body.appendChild(out);
}};
</script></body></html>"""


def chromium(*args: str) -> str:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files"]
    run = subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout


def test_page_fits_a_phone_and_its_mathematics_is_typeset_offline(html, tmp_path):
    wrapper = tmp_path / "measure.html"
    wrapper.write_text(MEASURE.format(src=(html / PAGE).as_uri(), width=PHONE))
    dom = chromium("--virtual-time-budget=20000", "--dump-dom", wrapper.as_uri())
    measured = json.loads(re.search(r'<pre id="measured">(.*?)</pre>', dom).group(1))
    assert measured["scrollWidth"] <= measured["clientWidth"], f"the page scrolls sideways: {measured}"
    assert 0 < measured["right"] <= measured["clientWidth"], f"content wider than the phone: {measured}"
    assert measured["typeset"] >= measured["math"] > 0, f"equations not typeset by the local MathJax: {measured}"


def test_screenshot_at_phone_width(html):
    import matplotlib.image

    shot = html / "phone-02_self_attention.png"
    chromium(f"--window-size={PHONE},900", f"--screenshot={shot}", (html / PAGE).as_uri())
    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[1] == PHONE
    assert pixels[..., :3].std() > 0.05, "the screenshot is blank"
