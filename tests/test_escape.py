import pytest

from ui.escape import escape_outside_code, unescape_outside_code


@pytest.mark.parametrize(
    "text, shown",
    [
        ("<b>hi</b>", "&lt;b&gt;hi&lt;/b&gt;"),
        ("a & b", "a &amp; b"),
        ("already &lt; escaped", "already &amp;lt; escaped"),
        ("`<i>` stays", "`<i>` stays"),
        ("```\n<p>\n```\n<p>", "```\n<p>\n```\n&lt;p&gt;"),
        ("unclosed ```<x>", "unclosed ```<x>"),
        ("~~~\n<div>&nbsp;</div>\n~~~\n<p>", "~~~\n<div>&nbsp;</div>\n~~~\n&lt;p&gt;"),
        ("``<b>x</b>`` and <b>", "``<b>x</b>`` and &lt;b&gt;"),
        ("``a ` <b>`` <i>", "``a ` <b>`` &lt;i&gt;"),
        ("`<a>\n<b>`", "`&lt;a&gt;\n&lt;b&gt;`"),  # a span does not cross a line
        ("`` <x> `", "`` &lt;x&gt; `"),  # two backticks are not closed by one
        ("see ![i](http://x/y.png)!", "see &#33;[i](http://x/y.png)!"),
        ("typed &#33;[", "typed &amp;#33;["),
        ("`![i](u)`", "`![i](u)`"),
    ],
)
def test_escape_outside_code(text, shown):
    assert escape_outside_code(text) == shown
    assert unescape_outside_code(shown) == text
