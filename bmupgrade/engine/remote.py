"""Every shell snippet bmupgrade itself sends to a node (as opposed to the runbook's commands):
the cluster lock, the HA-off marker, and the "is that command still running?" check. Kept in
one place so their quoting and their answers' format are reviewed together.
"""

from __future__ import annotations

import json
import shlex

LOCK_EXIT = 75  # "held by someone else"
TAG_VAR = "BMUPGRADE_TAG"  # set in every step command's environment: how a lost command is found again


def lock_and_markers(state_dir: str, info: dict, run_id: str, *, break_lock: bool) -> str:
    """One round trip: take the lock (noclobber, or re-take our own) and read the HA-off marker.

    Prints `lock:acquired` or `lock:held <holder json>`, then `marker:<marker json or nothing>`."""
    d = shlex.quote(state_dir)
    text = shlex.quote(json.dumps(info))
    force = f"rm -f {d}/lock; " if break_lock else ""
    return (f"mkdir -p {d} && {force}"
            f"if ( set -C; printf '%s\\n' {text} > {d}/lock ) 2>/dev/null; then echo lock:acquired; "
            f"elif grep -qF {shlex.quote(run_id)} {d}/lock; then printf '%s\\n' {text} > {d}/lock && "
            f"echo lock:acquired; else printf 'lock:held '; head -c 2000 {d}/lock | tr '\\n' ' '; echo; fi; "
            f"printf 'marker:'; head -c 4000 {d}/ha-off 2>/dev/null | tr '\\n' ' '; echo")


def read_markers(state_dir: str) -> str:
    """`marker:<json>` (read-only: for `check`, which takes no lock)."""
    d = shlex.quote(state_dir)
    return f"printf 'marker:'; head -c 4000 {d}/ha-off 2>/dev/null | tr '\\n' ' '; echo"


def read_lock_and_marker(state_dir: str) -> str:
    """`lock:<json>` and `marker:<json>` (read-only: `status --cluster`, for a colleague)."""
    d = shlex.quote(state_dir)
    return (f"printf 'lock:'; head -c 2000 {d}/lock 2>/dev/null | tr '\\n' ' '; echo; "
            f"printf 'marker:'; head -c 4000 {d}/ha-off 2>/dev/null | tr '\\n' ' '; echo")


def parse_lock_and_marker(stdout: str) -> tuple[dict | str | None, dict | str | None]:
    lock = marker = None
    for line in stdout.splitlines():
        if line.startswith("lock:"):
            lock = _json_or_text(line[len("lock:"):])
        elif line.startswith("marker:"):
            marker = _json_or_text(line[len("marker:"):])
    return lock, marker


def parse_lock_answer(stdout: str) -> tuple[bool | None, dict | str | None, dict | str | None]:
    """(acquired, holder, marker) from `lock_and_markers`/`read_markers` output."""
    acquired: bool | None = None
    holder: dict | str | None = None
    marker: dict | str | None = None
    for line in stdout.splitlines():
        if line.startswith("lock:acquired"):
            acquired = True
        elif line.startswith("lock:held"):
            acquired, holder = False, _json_or_text(line[len("lock:held"):])
        elif line.startswith("marker:"):
            marker = _json_or_text(line[len("marker:"):]) or None
    return acquired, holder, marker


def _json_or_text(text: str) -> dict | str | None:
    text = text.strip()
    if not text:
        return None
    try:
        value = json.loads(text)
        return value if isinstance(value, dict) else text
    except ValueError:
        return text[:300]


def unlock(state_dir: str, run_id: str) -> str:
    d = shlex.quote(state_dir)
    return f"grep -qF {shlex.quote(run_id)} {d}/lock 2>/dev/null && rm -f {d}/lock; true"


def write_marker(state_dir: str, info: dict) -> str:
    """The HA-off marker, written (and read back) before HA goes off: intent first."""
    d = shlex.quote(state_dir)
    text = shlex.quote(json.dumps(info))
    return f"mkdir -p {d} && printf '%s\\n' {text} > {d}/ha-off && test -s {d}/ha-off"


def remove_marker(state_dir: str) -> str:
    return f"rm -f {shlex.quote(state_dir)}/ha-off"


def tagged(command: str, tag: str) -> str:
    """The command with a tag in its environment (inherited by every process it starts)."""
    return f"{TAG_VAR}={shlex.quote(tag)}; export {TAG_VAR}; {command}"


def still_running(tag: str) -> str:
    """Prints the pids of processes whose environment carries the tag (none: it is over).
    Exit 0 always; the check itself is read-only."""
    needle = shlex.quote(f"{TAG_VAR}={tag}")
    return ("for p in /proc/[0-9]*; do [ \"${p#/proc/}\" = \"$$\" ] && continue; "
            f"{{ tr '\\0' '\\n' < $p/environ; }} 2>/dev/null | grep -qxF {needle} && echo \"${{p#/proc/}}\"; done; true")


# ------------------------------------------------------------------------------ for the in-memory transport

_TOKEN = r"((?:'[^']*'|\"[^\"]*\"|\\.|[^\s'\"\\;])+)"


def _unquote(token: str) -> str:
    return shlex.split(token)[0] if token else ""


def parse_snippet(command: str) -> dict | None:
    """Which of the snippets above `command` is, with its arguments — so the in-memory transport
    can play a node's lock and marker files faithfully. None for any other command."""
    import re

    if "lock:acquired" in command:
        d = re.search(r"^mkdir -p " + _TOKEN + " && ", command)
        text = re.search(r"printf '%s\\n' " + _TOKEN + " > ", command)
        rid = re.search(r"grep -qF " + _TOKEN + " ", command)
        return {"op": "lock", "dir": _unquote(d.group(1)), "info": _unquote(text.group(1)),
                "run_id": _unquote(rid.group(1)), "force": "/lock; if ( set -C" in command}
    if command.startswith("printf 'marker:'; head -c 4000 "):
        return {"op": "read-marker", "dir": _unquote(re.search(r"head -c 4000 " + _TOKEN, command).group(1)[:-7])}
    if command.endswith("/ha-off && test -s " + command.rsplit("test -s ", 1)[-1]) and "printf '%s\\n'" in command:
        d = re.search(r"^mkdir -p " + _TOKEN + " && ", command)
        text = re.search(r"printf '%s\\n' " + _TOKEN + " > ", command)
        return {"op": "write-marker", "dir": _unquote(d.group(1)), "info": _unquote(text.group(1))}
    m = re.fullmatch(r"rm -f " + _TOKEN + "/ha-off", command)
    if m:
        return {"op": "remove-marker", "dir": _unquote(m.group(1))}
    m = re.fullmatch(r"grep -qF " + _TOKEN + " " + _TOKEN + "/lock 2>/dev/null && rm -f \\S+; true", command)
    if m:
        return {"op": "unlock", "run_id": _unquote(m.group(1)), "dir": _unquote(m.group(2))}
    return None
