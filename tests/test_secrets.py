"""Issue 14: a secret (quotes, spaces, `$`) never appears in any file under the state dir nor in
what the CLI prints — sent quoted, echoed back split across output chunks, captured, a fact."""

from __future__ import annotations

import json
import random
import shlex

from bmupgrade.audit import AuditLog
from bmupgrade.templating import Redactor
from tests.e2e import bmupgrade, journal

SECRET = """it's a "$ecret" pw"""

RUNBOOK = """\
version: 1
name: secret test
cluster:
  public_ip: 192.0.2.10
  nodes:
    - {name: bm1, host: 127.0.0.1}
    - {name: bm2, host: 127.0.0.2}
vars:
  pw: {value: %s, secret: true}
facts:
  - {id: fact-echo, on: bm1, run: "printf '%%s\\\\n' {{ pw }}"}
preflight:
  - {id: vip, builtin: single_vip_holder}
  - {id: cap, on: primary, run: "printf 'got %%s\\\\n' {{ pw }}", capture: leaked}
steps:
  - id: echo-split
    on: all
    parallel: true
    run: "s={{ pw }}; printf '%%s' \\"${s%%?????????}\\"; sleep 0.3; printf '%%s\\\\n' \\"${s#\\"${s%%?????????}\\"}\\""
  - id: use-capture
    on: bm1
    run: "echo {{ leaked }} >/dev/null; echo done"
"""


def test_redactor_masks_the_shell_quoted_form():
    r = Redactor([SECRET])
    assert r("cmd " + shlex.quote(SECRET) + " and " + SECRET) == "cmd *** and ***"


def test_stream_redaction_masks_a_secret_split_anywhere():
    r = Redactor([SECRET, "abc"])
    text = f"x {SECRET} y {shlex.quote(SECRET)} abcd {SECRET}"
    rng = random.Random(14)
    for _ in range(500):
        cuts = sorted(rng.sample(range(1, len(text)), rng.randint(1, 8)))
        parts = [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)])]
        s = r.stream()
        out = "".join(s.feed(p) for p in parts) + s.flush()
        assert out == r(text) and SECRET not in out, parts


def test_audit_log_masks_split_secrets_and_says_whose_output_it_is(tmp_path):
    log = AuditLog(tmp_path, "r1", Redactor([SECRET]))
    log.begin("bm1", "step", "echo " + shlex.quote(SECRET))
    log.begin("bm2", "step", "echo " + shlex.quote(SECRET))
    log.output("bm1", "step", "bm1 says " + SECRET[:5])
    log.output("bm2", "step", "bm2 line\n")
    log.output("bm1", "step", SECRET[5:] + "\n")
    log.record(node="bm1", key="step", command="x", exit_code=0, output_tail="")
    text = (tmp_path / "r1.output.log").read_text()
    assert SECRET not in text and SECRET[:5] not in text  # the start was held back, then masked whole
    assert text.endswith("bm1 says \n### bm2 [step] (continued)\nbm2 line\n\n### bm1 [step] (continued)\n***\n")
    assert text.index("bm2 line") > text.index("### bm2 [step] (continued)") > text.index("bm2 [step] $ echo ***")
    records = [json.loads(line) for line in (tmp_path / "r1.audit.jsonl").read_text().splitlines()]
    assert [r["event"] for r in records] == ["sent", "sent", "result"]
    assert all(SECRET not in json.dumps(r) for r in records)
    log.close()


def test_no_file_and_no_output_ever_holds_the_secret(lab, tmp_path):
    rb = tmp_path / "rb.yaml"
    rb.write_text(RUNBOOK % json.dumps(SECRET))
    state = tmp_path / "state"
    r = bmupgrade("run", str(rb), "-i", str(lab.inventory_path), "--yes", state=state)
    assert r.returncode == 0, r.stdout + r.stderr
    j = journal(state)
    assert j["captured"]["leaked"] == "got ***"  # captured masked (the journal keeps captures)
    log = (state / "runs" / f"{j['run_id']}.output.log").read_text()
    assert log.count("***\n") >= 2  # both nodes echoed it, split in two chunks: masked whole
    assert "bm1 │ ***" in r.stdout and "bm2 │ ***" in r.stdout
    for text in (r.stdout, r.stderr):
        assert SECRET not in text and shlex.quote(SECRET) not in text
    files = [p for p in state.rglob("*") if p.is_file()]
    assert len(files) >= 3
    for p in files:
        data = p.read_bytes()
        for form in (SECRET, shlex.quote(SECRET), SECRET[:9], SECRET[9:]):
            assert form.encode() not in data, (p, form)
