"""What the terminal shows of remote output: everything normally, a bounded echo of a flood."""

import io

from hypothesis import assume, given, settings, strategies as st

from rich.console import Console

from bmupgrade.ui import report
from bmupgrade.ui.report import ConsoleReporter


def reporter():
    buf = io.StringIO()
    return ConsoleReporter(Console(file=buf, width=200, color_system=None)), buf


def test_ordinary_output_is_echoed_whole_with_node_prefix():
    r, buf = reporter()
    r.output("bm1", "stdout", "Reading package lists...\nBuilding dep")
    r.output("bm1", "stdout", "endency tree\n")
    r.node_done("s", "bm1", True, "exit 0", 0.1)
    lines = buf.getvalue().splitlines()
    assert lines[:2] == ["  bm1 │ Reading package lists...", "  bm1 │ Building dependency tree"]
    assert "not shown" not in buf.getvalue()


def test_a_flood_is_echoed_bounded_and_says_how_much_was_left_out(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(report.time, "monotonic", lambda: clock[0])
    r, buf = reporter()
    r.output("bm2", "stdout", "".join("line %d\n" % i for i in range(10_000)))
    r.output("bm2", "stdout", "more\n")          # same instant: no budget left, hidden
    clock[0] += 0.05                              # 50 ms later: 50 more lines allowed
    r.output("bm2", "stdout", "".join("late %d\n" % i for i in range(100)))
    r.node_done("s", "bm2", True, "exit 0", 1.0)
    out = buf.getvalue().splitlines()
    body = [l for l in out if l.startswith("  bm2 │ line") or l.startswith("  bm2 │ late")]
    assert len(body) == report.EchoBudget.BURST + 50
    assert body[0] == "  bm2 │ line 9800" and body[-1] == "  bm2 │ late 99"   # the newest lines win
    assert "  bm2 │ … 9,800 lines not shown here (all in the run's output log)" in out
    assert "  bm2 │ … 51 lines not shown here (all in the run's output log)" in out  # "more" + 50 late


def test_the_last_lines_of_a_flood_are_shown_when_the_command_ends(monkeypatch):
    monkeypatch.setattr(report.time, "monotonic", lambda: 1000.0)   # no budget comes back
    r, buf = reporter()
    r.output("bm1", "stdout", "".join("line %d\n" % i for i in range(1000)))
    r.output("bm1", "stderr", "E: Sub-process /usr/bin/dpkg returned an error code (1)\n")
    for i in range(1000, 1300):
        r.output("bm1", "stdout", "line %d\n" % i)
    r.node_done("s", "bm1", False, "exit 100", 1.0)
    out = buf.getvalue().splitlines()
    tail = report.EchoBudget.TAIL
    assert out[-tail - 1:-1] == ["  bm1 │ line %d" % i for i in range(1300 - tail, 1300)]
    assert "  bm1 │ … %d lines not shown here (all in the run's output log)" % (300 - tail) in out
    assert "  bm1 │ E: Sub-process /usr/bin/dpkg returned an error code (1)" in out  # other stream, own budget


def test_a_log_line_written_without_rich_layout_is_what_rich_would_write():
    """The plain path (a file or a pipe) gives the same text as rich's own rendering."""
    texts = ["[bold]▶ [1/2] Stop [x] :warning: now[/bold] [dim]\\[id][/dim] on bm1", "tab\there",
             "[bold red]✗[/bold red] failed: \\[exit 3]", "a\nb", "   spaces   "]
    for markup in (True, False):
        for t in texts:
            fast, slow = io.StringIO(), io.StringIO()
            for out, plain in ((fast, True), (slow, False)):
                console = Console(file=out, highlight=False, soft_wrap=True, width=report.LOG_WIDTH, emoji=False)
                rep = ConsoleReporter(console, timestamps=True)
                if not plain:
                    rep._plain = lambda objects, kw: None
                rep._print(t, markup=markup)
            strip = [ln.split(" ", 1)[1] for ln in fast.getvalue().splitlines()]
            assert strip == [ln.split(" ", 1)[1] for ln in slow.getvalue().splitlines()], (t, markup)


_text_pieces = st.sampled_from(["[bold]", "[/]", "\\", "\\[", "[", "]", "[x]", "[1/2]", ":warning:", "é", " ", "a",
                                "\x1b[2J", "\r", "\u202e", "\x07", "✓"])


@settings(max_examples=300, deadline=None)
@given(st.lists(_text_pieces, max_size=8).map("".join), st.lists(_text_pieces, max_size=8).map("".join),
       st.booleans(), st.integers(0, 3))
def test_step_lines_written_directly_are_what_rich_would_write(title, detail, ok, total):
    """A log's per-step lines skip the markup round trip (_log_line); same text, byte for byte
    (but for backslashes, which rich's escape/render round trip can double or drop: shown as
    written now, see the next test)."""
    assume("\\" not in title + detail)
    outs = []
    for direct in (True, False):
        out = io.StringIO()
        console = Console(file=out, highlight=False, soft_wrap=True, width=report.LOG_WIDTH, emoji=False)
        rep = ConsoleReporter(console, timestamps=True)
        if not direct:
            rep._log_line = lambda text: False
        rep.step_start(1, total, "step-" + title[:3], title, "bm1, bm2")
        rep.node_done("s", "bm1", ok, detail, 1.25)
        outs.append([ln.split(" ", 1)[1] for ln in out.getvalue().splitlines()])
    assert outs[0] == outs[1]


def test_backslashes_in_a_step_line_are_shown_as_written():
    out = io.StringIO()
    rep = ConsoleReporter(Console(file=out, highlight=False, soft_wrap=True, width=report.LOG_WIDTH, emoji=False),
                          timestamps=True)
    rep.step_start(1, 2, "s", "copy to C:\\", "bm1")
    rep.node_done("s", "bm1", False, "grep: Unmatched \\[", 0.5)  # rich showed "C:\\\\" and "Unmatched ["
    assert [ln.split(" ", 1)[1] for ln in out.getvalue().splitlines()] == [
        "▶ [1/2] copy to C:\\ [s] on bm1", "  ✗ bm1: grep: Unmatched \\[ (0.5s)"]


_markup_pieces = st.sampled_from(["[bold]", "[/bold]", "[dim]", "[/dim]", "[/]", "\\", "\\[", "[", "]", "[x]",
                                  "[1/2]", "[@click]", "[#fff]", "[a=b]", ":warning:", "é", " ", "a", "\t"])


@settings(max_examples=500, deadline=None)
@given(st.lists(_markup_pieces, max_size=10).map("".join))
def test_markup_plain_is_the_text_rich_renders(markup):
    """The plain log path strips markup itself; rich's parser is the reference (markup rich
    refuses, an unmatched closing tag, never comes from bmupgrade)."""
    from rich.errors import MarkupError
    from rich.markup import escape, render

    assert report.markup_plain(escape(markup)) == render(escape(markup), emoji=False).plain
    try:
        want = render(markup, emoji=False).plain
    except MarkupError:
        return
    assert report.markup_plain(markup) == want


def test_emoji_codes_in_output_and_titles_are_shown_as_written():
    for plain in (True, False):
        out = io.StringIO()
        rep = ConsoleReporter(report.make_console(), timestamps=True)
        rep.console.file = out
        if not plain:
            rep._plain = lambda objects, kw: None
        rep.step_start(1, 1, "s", "Warn :warning: now", "bm1")
        rep.output("bm1", "stdout", "deploy :fire: done\n")
        rep.node_done("s", "bm1", True, "exit 0", 0.1)
        text = out.getvalue()
        assert "Warn :warning: now" in text and "bm1 │ deploy :fire: done" in text, text
