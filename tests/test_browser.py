"""The HTML report in a real browser: every figure loads and nothing is wider than the page.

Headless Chromium (Debian's ``chromium``, installed by ``.ci/run``) loads a report built from the
fabricated sweep, with a probe script appended that measures the page after load and writes the
result into the DOM, which ``--dump-dom`` prints; ``--screenshot`` renders the same page to a PNG.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from lora_analysis.analysis.compare import analyze
from lora_analysis.show.analysis_report import build_analysis_report
from lora_analysis.show.report import build_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine (apt-get install chromium)")

PROBE = """<script>
window.addEventListener('load', () => {
  const page = document.documentElement.clientWidth;
  const images = [...document.images];
  const out = {scrollWidth: document.documentElement.scrollWidth, clientWidth: page, images: images.length,
    broken: images.filter(i => !i.complete || i.naturalWidth === 0).length,
    wider: [...document.body.querySelectorAll('img, figure, .wide, p, h2')]
      .filter(e => e.getBoundingClientRect().right > page + 1).map(e => e.tagName)};
  const pre = document.createElement('pre'); pre.id = 'probe'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def chromium(tmp_path, *args: str) -> str:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000"]
    done = subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120)
    return done.stdout


@pytest.fixture(scope="module")
def adapters_analysis(tmp_path_factory):
    """The analysis of three plain PEFT adapters (two of one rank, one of another) in deep folders."""
    from _tiny_models import peft_adapter

    root = tmp_path_factory.mktemp("adapters") / "a-rather-long-folder-name-of-downloaded-adapters" / "v1"
    folders = [peft_adapter("bert", root / name, r=r, seed=seed)
               for name, r, seed in (("sentiment-lora", 4, 0), ("topic-lora", 4, 1), ("sentiment-lora-r8", 8, 2))]
    return analyze(folders, progress=False).save(root / "analysis")


@pytest.mark.parametrize("width", [1280, 800])
@pytest.mark.parametrize("kind", ["sweep", "adapters"])
def test_report_figures_load_and_nothing_overflows_the_page(sweep, adapters_analysis, tmp_path, width, kind):
    if kind == "sweep":
        html_path, _ = build_report(sweep, tmp_path / "report")
    else:
        html_path, _ = build_analysis_report(adapters_analysis, tmp_path / "report")
    page = tmp_path / "probed.html"
    page.write_text(html_path.read_text().replace("</body>", PROBE + "</body>"))
    dom = chromium(tmp_path, f"--window-size={width},900", "--dump-dom", page.as_uri())
    found = re.search(r'<pre id="probe">([^<]*)</pre>', dom)
    assert found, f"the probe did not run: {dom[:300]!r}"
    probe = json.loads(found.group(1))
    assert probe["images"] == len(list((tmp_path / "report" / "figures").glob("*.png"))) > 0
    assert probe["broken"] == 0
    assert probe["scrollWidth"] <= probe["clientWidth"], probe  # the page does not scroll sideways
    assert probe["wider"] == []
    shot = tmp_path / "shot.png"
    chromium(tmp_path, f"--window-size={width},900", f"--screenshot={shot}", html_path.as_uri())
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert int.from_bytes(shot.read_bytes()[16:20], "big") == width  # the screenshot is the page's width
