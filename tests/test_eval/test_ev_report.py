"""The per-prompt HTML report."""

from eval.report import highlight, html_report

STORED = ('Tips for <b>you</b> & "me":<promise topic="sleep well" tokens="20"/><async>\n1. Sleep 8 h & rest.</async>'
          '<promise topic="water" tokens="9"/><async>\n2. Drink.</async><sync/>\nDone.')


def test_the_report_marks_every_tag_of_a_stored_answer_and_escapes_the_text(tmp_path):
    gen = {"text": "Tips", "stored": STORED, "tokens": 30, "steps": 20, "threads": 3, "wall_time": 0.5}
    path = tmp_path / "report.html"
    html_report([{"id": "p1", "instruction": "Tips?", "category": "c"}], {"pasta · m": {"p1": gen}}, {}, path,
                "proxy", "| table |")
    page = path.read_text()
    for tag in ['&lt;promise topic=&quot;sleep well&quot; tokens=&quot;20&quot;/&gt;',
                '&lt;promise topic=&quot;water&quot; tokens=&quot;9&quot;/&gt;', "&lt;async&gt;", "&lt;/async&gt;",
                "&lt;sync/&gt;"]:
        assert f"<mark>{tag}</mark>" in page, tag
    assert page.count("<mark>") == 7
    assert "Tips for &lt;b&gt;you&lt;/b&gt; &amp; &quot;me&quot;:" in page and "1. Sleep 8 h &amp; rest." in page
    assert "<promise" not in page and "<async>" not in page


def test_a_malformed_tag_is_marked_with_its_rule():
    assert highlight('a <promise topic="x"/> b') == (
        "a <mark class='bad' title='a promise needs the attribute &#x27;tokens&#x27;'>"
        "&lt;promise topic=&quot;x&quot;/&gt;</mark> b")
