"""What the admin sees: live step status, remote output with a node prefix, the final report.

`ConsoleReporter` writes for people (rich; NO_COLOR honoured by rich; a live "current step,
node, elapsed" line on a terminal only). `JsonReporter` writes one JSON event per line for
schedulers and wrappers (`--json`).
"""

from __future__ import annotations

import functools
import json
import re
import sys
import threading
import time
from collections import deque
from typing import Any

from bmupgrade.checks import CheckResult
from bmupgrade.sanitize import for_terminal


from bmupgrade.outcome import StepRow, Summary  # noqa: E402,F401 (re-exported for the UI)


class _Elapsed:
    def __init__(self, text: str):
        self.text = text
        self.t0 = time.monotonic()

    def __rich__(self):
        from rich.text import Text

        return Text(f"⏳ {self.text} — {time.monotonic() - self.t0:,.0f}s", style="cyan")


class EchoBudget:
    """How many remote output lines reach the terminal: a burst, then RATE lines a second.

    Nobody reads a 200 MB flood on a terminal, and echoing it line by line would make the tool,
    not the node, the bottleneck (3.5 MB/s instead of 150 MB/s). The output log has it all, and
    the last TAIL hidden lines are shown when the command ends: that is where errors are."""

    BURST = 200
    RATE = 1000.0  # lines per second, per node and stream
    TAIL = 20

    def __init__(self) -> None:
        self.tokens = float(self.BURST)
        self.last = time.monotonic()
        self.hidden = 0  # lines dropped since the last one shown
        self.recent: deque[str] = deque(maxlen=self.TAIL)  # the newest of those

    def take(self, lines: list[str]) -> tuple[list[str], int]:
        """(lines to show, lines hidden before them); the most recent lines win."""
        now = time.monotonic()
        self.tokens = min(self.BURST, self.tokens + (now - self.last) * self.RATE)
        self.last = now
        n = min(len(lines), int(self.tokens + 1e-6))
        self.tokens -= n
        self.hidden += len(lines) - n
        if not n:
            self.recent.extend(lines[-self.TAIL:])
            return [], 0
        hidden, self.hidden = self.hidden, 0
        self.recent.clear()
        return lines[len(lines) - n:], hidden

    def leftover(self) -> tuple[int, list[str]]:
        """At the end of the command: (hidden lines not in the tail, the tail)."""
        tail = list(self.recent)[-self.hidden:] if self.hidden else []
        return self.hidden - len(tail), tail


LOG_WIDTH = 1 << 16  # "no wrapping" for a file or pipe: one line stays one line


def make_console(*, stderr: bool = False):
    """A rich Console for people; for a file or a pipe (a scheduler's log, `| less`, `| grep`),
    one that never wraps nor cuts a line at 80 columns. Never emoji: a node's `:fire:` or a
    step title's `:warning:` is shown as written."""
    from rich.console import Console

    console = Console(highlight=False, stderr=stderr, emoji=False)
    if not console.is_terminal:
        console = Console(highlight=False, stderr=stderr, soft_wrap=True, width=LOG_WIDTH, emoji=False)
    return console


_RICH_TAG = re.compile(r"((\\*)\[([a-z#/@][^[]*?)])")  # rich.markup.RE_TAGS


def markup_plain(markup: str) -> str:
    """The text of rich markup (rich.markup.render(markup, emoji=False).plain), without
    building rich's Text: tags dropped, `\\[` shown as `[`, as rich's own parser does."""
    if "[" not in markup:
        return markup
    out, pos = [], 0
    for m in _RICH_TAG.finditer(markup):
        full, escapes, _tag = m.groups()
        start, end = m.span()
        if start > pos:
            out.append(markup[pos:start].replace("\\[", "["))
        pos = end
        if escapes:
            backslashes, escaped = divmod(len(escapes), 2)
            out.append("\\" * backslashes)
            if escaped:
                out.append(full[len(escapes):].replace("\\[", "["))
    if pos < len(markup):
        out.append(markup[pos:].replace("\\[", "["))
    return "".join(out)


def stamp() -> str:
    return _stamp_at(int(time.time()))


@functools.lru_cache(maxsize=2)
def _stamp_at(second: int) -> str:  # a log writes many lines a second: formatted once
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(second))


class ConsoleReporter:
    """`timestamps` (default: when it makes its own console and that is no terminal, i.e. a log
    for a scheduler) puts the local time at the start of every line."""

    def __init__(self, console=None, *, show_output: bool = True, timestamps: bool | None = None):
        if console is None:
            console = make_console()
            if timestamps is None:
                timestamps = not console.is_terminal
        self.console = console
        self.timestamps = bool(timestamps)
        self._print_lock = threading.RLock()
        self.show_output = show_output
        self._lock = threading.Lock()
        self._partial: dict[tuple[str, str], str] = {}
        self._echo = {}  # (node, stream) -> EchoBudget
        self._live = None
        self._plain_console: bool | None = None  # a file or pipe rich need not lay out (see _plain)
        self._is_terminal: bool | None = None

    def _terminal(self) -> bool:
        """console.is_terminal, asked once (rich asks isatty and the environment every time)."""
        if self._is_terminal is None:
            self._is_terminal = self.console.is_terminal
        return self._is_terminal

    # ------------------------------------------------------------- simple lines
    def verdict(self, text: str, *, ok: bool) -> None:
        """The one-line outcome (green or red)."""
        from rich.markup import escape

        style = "green" if ok else "red"
        self._print(f"[bold {style}]{escape(text)}[/bold {style}]")

    def info(self, text: str) -> None:

        self._print(for_terminal(text), markup=False, highlight=False)

    def warn(self, text: str) -> None:
        self._print(f"[bold yellow]![/bold yellow] {_esc(text)}")

    def error(self, text: str) -> None:
        self._print(f"[bold red]✗[/bold red] {_esc(text)}")

    def banner(self, text: str) -> None:
        """Loud: used for the HA debt."""
        self._print(f"[bold white on red] {_esc(text)} [/bold white on red]")

    def phase(self, title: str) -> None:
        if self.timestamps or self.console.width >= LOG_WIDTH:
            self._print(f"[bold]── {_esc(title)} ──[/bold]")
        else:
            self.console.rule(f"[bold]{_esc(title)}[/bold]", align="left")

    def _print(self, *objects, **kw) -> None:
        """console.print, with the time at the start of every line when timestamps are on."""
        if not self.timestamps:
            self.console.print(*objects, **kw)
            return
        with self._print_lock:
            text = self._plain(objects, kw)
            if text is None:
                with self.console.capture() as cap:
                    self.console.print(*objects, **kw)
                text = cap.get()
            self._write_stamped(text.splitlines())

    def _write_stamped(self, lines: list[str]) -> None:
        """A log's lines, each after the local time, straight to the console's file (the caller
        holds _print_lock)."""
        prefix = stamp() + " "
        self.console.file.write("".join(prefix + line + "\n" for line in lines))
        self.console.file.flush()

    def _plain_ok(self) -> bool:
        """A console that neither colours, wraps nor replaces emoji codes (a file or a pipe):
        asked once, as rich recomputes width and isatty per call."""
        if self._plain_console is None:
            c = self.console
            self._plain_console = not (self._terminal() or c.color_system is not None or c.width != LOG_WIDTH
                                       or getattr(c, "_emoji", True))
        return self._plain_console

    def _log_line(self, text: str) -> bool:
        """The per-step lines of a log (`text` already terminal-safe, no markup): written as they
        are, without a markup round trip (3 lines a step were ~0.15 ms of its CPU). False: not a
        timestamped plain log, or a tab or line break rich must lay out; the caller prints."""
        if not (self.timestamps and self._plain_ok()) or "\t" in text or "\n" in text:
            return False
        with self._print_lock:
            self._write_stamped([text])
        return True

    def _plain(self, objects, kw) -> str | None:
        """A log's line without rich (~0.25 ms a line through its markup parser and Text): for
        markup strings on a plain console (_plain_ok); None: let rich render it (tabs too: rich
        expands them by cell width)."""
        if not self._plain_ok() or set(kw) - {"markup", "highlight"} or not all(isinstance(o, str) for o in objects):
            return None
        markup = kw.get("markup") is not False
        line = " ".join(markup_plain(o) if markup else o for o in objects)
        return None if "\t" in line else line + "\n"

    # ------------------------------------------------------------- checks
    def check(self, res: CheckResult) -> None:
        if res.ok:
            self._print(f"[green]✓[/green] {_esc(res.title)} [dim]{_esc('[' + res.id + ']')}[/dim]")
            return
        mark = "[yellow]![/yellow]" if res.severity == "warning" else "[red]✗[/red]"
        self._print(f"{mark} {_esc(res.title)} [dim]{_esc('[' + res.id + ']')}[/dim]")
        for p in res.problems:
            self._print(f"    {_esc(p)}")
        if res.diff:
            for line in res.diff.splitlines()[:40]:
                style = "red" if line.startswith("-") else "green" if line.startswith("+") else "dim"
                self._print(f"    [{style}]{_esc(line)}[/{style}]")
        if res.why:
            self._print(f"    [dim]{_esc(res.why)}[/dim]")

    # ------------------------------------------------------------- steps
    def step_start(self, seq: int, total: int, step_id: str, title: str, where: str) -> None:
        if self._log_line(f"▶ {f'[{seq}/{total}] ' if total else ''}{for_terminal(title)} "
                          f"[{for_terminal(step_id)}] on {for_terminal(where)}"):
            return
        counter = _esc(f"[{seq}/{total}] ") if total else ""
        self._print(f"[bold]▶ {counter}{_esc(title)}[/bold] [dim]{_esc('[' + step_id + ']')}[/dim] "
                           f"on {_esc(where)}")
        if self._live is None and self._terminal():
            from rich.live import Live

            self._live = Live(_Elapsed(f"{step_id} on {where}"), console=self.console, transient=True,
                              refresh_per_second=4)
            self._live.start()

    def output(self, node: str, stream: str, text: str) -> None:
        if not self.show_output:
            return
        with self._lock:
            key = (node, stream)
            buf = self._partial.get(key, "") + text
            *lines, rest = buf.split("\n")
            self._partial[key] = rest[-65536:]
            if not lines:
                return
            shown, hidden = self._echo.setdefault(key, EchoBudget()).take(lines)
            out = [self._hidden_line(node, hidden)] if hidden else []
            out += [self._echo_line(node, line) for line in shown]
            if out:  # one print per chunk: rich's per-call cost dominates on a flood
                self._print("\n".join(out), highlight=False)

    @staticmethod
    def _echo_line(node: str, line: str) -> str:
        return f"  [dim]{node} │[/dim] {_esc(line)}"

    @staticmethod
    def _hidden_line(node: str, count: int) -> str:
        return f"  [dim]{node} │ … {count:,} lines not shown here (all in the run's output log)[/dim]"

    def _flush(self, node: str) -> None:
        for stream in ("stdout", "stderr"):
            rest = self._partial.pop((node, stream), "")
            budget = self._echo.pop((node, stream), None)
            if not self.show_output:
                continue
            if budget and budget.hidden:
                count, tail = budget.leftover()
                out = [self._hidden_line(node, count)] if count else []
                out += [self._echo_line(node, line) for line in tail]
                self._print("\n".join(out), highlight=False)
            if rest:
                self._print(self._echo_line(node, rest), highlight=False)

    def node_done(self, step_id: str, node: str, ok: bool, detail: str, duration: float) -> None:
        with self._lock:
            self._flush(node)
        if self._log_line(f"  {'✓' if ok else '✗'} {node}: {for_terminal(str(detail))} ({duration:.1f}s)"):
            return
        mark = "[green]✓[/green]" if ok else "[red]✗[/red]"
        self._print(f"  {mark} {node}: {_esc(detail)} ({duration:.1f}s)")

    def step_end(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    # ------------------------------------------------------------- the end
    SUMMARY_TABLE_MAX = 50  # steps; a longer run's summary is plain lines (a table costs ~1 ms a row)

    def _plain_rows(self, s: Summary) -> None:
        width = max(len(r.id) for r in s.rows)
        lines = [f"Run {s.run_id}: {s.status}"]
        for r in s.rows:
            nodes = ", ".join(f"{n}={st}" for n, st in r.nodes.items()) or "-"
            outcome = r.state + (f", rollback {r.rollback_state}" if r.rollback_state else "")
            took = f"  {r.duration:.1f}s" if r.duration is not None else ""
            lines.append(f"  {r.id:<{width}}  {outcome}  {nodes}{took}")
        if not self.timestamps:
            self.console.out("\n".join(lines), highlight=False)
            return
        with self._print_lock:  # as _print does, without laying 5000 lines out through rich
            self._write_stamped(lines)

    def final(self, s: Summary) -> None:
        self.step_end()
        if len(s.rows) > self.SUMMARY_TABLE_MAX:
            self._plain_rows(s)
            self._final_tail(s)
            return
        from rich.table import Table

        table = Table(title=f"Run {s.run_id}: {s.status}", title_justify="left")
        table.add_column("step")
        table.add_column("outcome")
        table.add_column("nodes")
        table.add_column("time", justify="right")
        for r in s.rows:
            nodes = ", ".join(f"{n}={st}" for n, st in r.nodes.items()) or "-"
            outcome = r.state + (f", rollback {r.rollback_state}" if r.rollback_state else "")
            table.add_row(r.id, outcome, nodes, f"{r.duration:.1f}s" if r.duration is not None else "")
        self._print(table)
        self._final_tail(s)

    def _final_tail(self, s: Summary) -> None:
        if s.ha_window is not None:
            self._print(f"HA-off window: {s.ha_window:.1f}s (HA-off step started → HA-on command returned)")
        for item in s.cannot_undo:
            self._print(f"[yellow]Cannot be undone automatically:[/yellow] {_esc(item)}")
        if s.ha_off_open:
            self.banner("HA handling is OFF: the cluster will not fail over. Restore it with:")
            self._print(f"    {_esc(s.ha_restore_hint or '')}", soft_wrap=True)  # commands: never cut
        for cmd in s.next_commands:
            self._print(f"Next: {_esc(cmd)}", soft_wrap=True)
        for p in s.log_paths:
            self._print(f"[dim]log: {_esc(p)}[/dim]")
        style = "green" if s.exit_code == 0 else "red"
        self._print(f"[bold {style}]{_esc(s.message)}[/bold {style}]", soft_wrap=True)


class JsonReporter:
    """One JSON object per line on stdout: {"event": ..., ...}."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout
        self._lock = threading.Lock()

    def _emit(self, event: str, **fields: Any) -> None:
        with self._lock:
            self.stream.write(json.dumps({"event": event, "time": time.time(), **fields}) + "\n")
            self.stream.flush()

    def info(self, text):
        self._emit("info", text=text)

    def warn(self, text):
        self._emit("warning", text=text)

    def error(self, text):
        self._emit("error", text=text)

    def banner(self, text):
        self._emit("warning", text=text, loud=True)

    def phase(self, title):
        self._emit("phase", title=title)

    def check(self, res: CheckResult):
        self._emit("check", id=res.id, ok=res.ok, severity=res.severity, problems=res.problems, diff=res.diff)

    def step_start(self, seq, total, step_id, title, where):
        self._emit("step_start", seq=seq, total=total, id=step_id, title=title, where=where)

    def output(self, node, stream, text):
        self._emit("output", node=node, stream=stream, text=text)

    def node_done(self, step_id, node, ok, detail, duration):
        self._emit("node_done", id=step_id, node=node, ok=ok, detail=detail, duration=duration)

    def step_end(self):
        pass

    def final(self, s: Summary):
        self._emit("summary", run_id=s.run_id, status=s.status, exit_code=s.exit_code, message=s.message,
                   ha_window=s.ha_window, ha_off=s.ha_off_open, ha_restore=s.ha_restore_hint,
                   next=s.next_commands, cannot_undo=s.cannot_undo,
                   steps=[{"id": r.id, "state": r.state, "nodes": r.nodes, "duration": r.duration,
                           "rollback": r.rollback_state} for r in s.rows])


def _esc(text: str) -> str:
    """For rich markup: brackets shown as written, control characters (a node's escape
    sequences) shown escaped instead of obeyed."""
    from rich.markup import escape

    return escape(for_terminal(str(text)))


class NullReporter:
    """Says nothing (`check -f json` prints one document at the end, nothing else)."""

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


def print_errors(lines: list[str]) -> None:
    """Errors on stderr, one per line, prefixed so they are greppable in a scheduler's log."""
    from rich.console import Console
    from rich.markup import escape

    err = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)
    for line in lines:
        err.print(f"[bold red]bmupgrade:[/bold red] {escape(line)}", markup=True, highlight=False)
