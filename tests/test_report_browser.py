"""explain's report.html in a real headless browser (Debian's chromium, driven by tinyld.browser): the summary
table and every pair's figure are drawn, the page asks nothing of the network and raises no script error. The
checker itself is checked on pages that do fetch and do fail."""
import pytest

from tinyld.browser import find_browser, visit

pytestmark = pytest.mark.skipif(find_browser() is None, reason="no headless browser: apt-get install chromium")

QUERIES = {"summary_rows": "document.querySelectorAll('#summary tr').length",
           "sections": "document.querySelectorAll('section[id^=pair-]').length",
           "figures": "Array.from(document.querySelectorAll('section[id^=pair-]')).filter(s => "
                      "s.querySelector('figure svg polyline') && s.querySelector('figure svg').getBBox().width > 0)"
                      ".length",
           "tokens": "document.querySelectorAll('span.tok').length",
           "verdict": "document.getElementById('verdict').textContent",
           "fixes_rows": "document.querySelectorAll('#fixes tr').length"}


def test_the_report_renders_in_a_browser(tmp_path):
    import json

    from test_explain import _explain_files

    from tinyld.__main__ import main

    assert main(_explain_files(tmp_path)) == 0
    res = json.loads((tmp_path / "o" / "explain.json").read_text())
    seen = visit(tmp_path / "o" / "report.html", QUERIES, screenshot=tmp_path / "shot.png")
    assert seen["requests"] == [] and seen["errors"] == []
    v = seen["values"]
    n = len(res["pairs"])
    assert v["summary_rows"] == n + 1 and v["sections"] == n and v["figures"] == n
    assert v["tokens"] == sum(len(t[s]) for t in res["run"]["tokens"] for s in ("chosen", "rejected"))
    assert f"y⁺ fell in {res['verdict']['fell']} of {n} pairs" in " ".join(v["verdict"].split())
    assert v["fixes_rows"] == len(res["fixes"]) + 1
    assert (tmp_path / "shot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_checker_sees_requests_and_script_errors(tmp_path):
    page = tmp_path / "bad.html"
    page.write_text('<!DOCTYPE html><html><body><img src="http://127.0.0.1:9/x.png">'
                    "<script>notDefinedAnywhere()</script></body></html>")
    seen = visit(page, {"imgs": "document.images.length"})
    assert seen["requests"] == ["http://127.0.0.1:9/x.png"] and seen["values"] == {"imgs": 1}
    assert any("notDefinedAnywhere" in e or "Uncaught" in e for e in seen["errors"])
