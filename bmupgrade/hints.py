"""Every "next command" bmupgrade prints, built so that it works when pasted into the same shell.

A hint that says `bmupgrade resume RUN` to someone who ran with `--state-dir /srv/bm` finds no
run; an `ssh bm1` hint fails where bmupgrade used the lab's ssh_config, key and known_hosts.
So hints are built here, from what this invocation was given, and quoted with shlex:

* `command(ctx, "resume", run_id)` -> `bmupgrade resume RUN --state-dir /srv/bm`
* `qualify(ctx, text)` adds the same to every `bmupgrade resume|rollback|status|runs ...` that a
  message (e.g. the engine's) already contains — the CLI passes every summary through it;
* `ssh_command(rb, node)` -> `ssh -F CONFIG -i KEY -o UserKnownHostsFile=... -p PORT user@host`.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass

PROG = "bmupgrade"
# commands that take --state-dir; those also taking -i/--inventory
STATE_DIR_COMMANDS = ("resume", "rollback", "status", "runs", "run")
INVENTORY_COMMANDS = ("run", "plan", "validate")


@dataclass(frozen=True)
class Context:
    """What this invocation was given that a next command must repeat."""

    state_dir: str | None = None  # --state-dir as given (made absolute: the user may cd)
    inventory: str | None = None  # -i as given (absolute)

    @classmethod
    def of(cls, state_dir=None, inventory=None) -> "Context":
        return cls(os.path.abspath(state_dir) if state_dir else None,
                   os.path.abspath(inventory) if inventory else None)

    def flags(self, verb: str) -> list[str]:
        out: list[str] = []
        if self.state_dir and verb in STATE_DIR_COMMANDS:
            out += ["--state-dir", self.state_dir]
        if self.inventory and verb in INVENTORY_COMMANDS:
            out += ["-i", self.inventory]
        return out


def command(ctx: Context, verb: str, *args: str) -> str:
    """`bmupgrade VERB ARGS... [--state-dir D] [-i INV]`, shell-quoted."""
    return shlex.join([PROG, verb, *args, *ctx.flags(verb)])


# `bmupgrade VERB` and, for a run id (YYYYMMDD-HHMMSS-xxxx, or a prefix of one), `bmupgrade VERB RUN`
_MENTION = re.compile(r"\bbmupgrade (resume|rollback|status|runs)\b((?: \d{8}-\d{6}-[0-9a-f]+\b)?)")


def qualify(ctx: Context, text: str | None) -> str | None:
    """Every `bmupgrade resume|rollback|status|runs [RUN]` in text, with this invocation's flags."""
    if not text or not (ctx.state_dir or ctx.inventory):
        return text

    def add(m: re.Match) -> str:
        run = m.group(2).strip()
        return command(ctx, m.group(1), *([run] if run else []))

    return _MENTION.sub(add, text)


def ssh_command(rb, node: str) -> str:
    """The ssh command line that reaches `node` the way bmupgrade does: its ssh config, key,
    known_hosts files (strict, as bmupgrade is), port and user."""
    n = rb.node(node)
    words = ["ssh"]
    if rb.cluster.ssh_config:
        words += ["-F", os.path.expanduser(rb.cluster.ssh_config)]
    if n.identity_file:
        words += ["-i", os.path.expanduser(n.identity_file)]
    if rb.cluster.known_hosts:
        files = ["~/.ssh/known_hosts", *(os.path.expanduser(f) for f in rb.cluster.known_hosts)]
        words += ["-o", "UserKnownHostsFile=" + " ".join(files)]
    words += ["-o", "StrictHostKeyChecking=yes"]
    if n.port:
        words += ["-p", str(n.port)]
    words.append(f"{n.user}@{n.host}" if n.user else n.host)
    return shlex.join(words)


def qualify_summary(ctx: Context, summary) -> None:
    """A run's Summary (report.Summary) with copy-paste-ready commands, in place."""
    summary.message = qualify(ctx, summary.message)
    summary.ha_restore_hint = qualify(ctx, summary.ha_restore_hint)
    summary.next_commands = [qualify(ctx, c) for c in summary.next_commands]
