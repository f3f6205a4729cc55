#!/usr/bin/env python3
"""Speed and footprint of bmupgrade on the lab, against raw OpenSSH, Fabric and Ansible (issue 6).

    python bench/run.py            # full run (~8-10 min on 2 cores); writes bench/results.json
    python bench/run.py --quick    # smoke: 5 steps, 1 repetition, no ansible, small streams

Starts its own lab (two real sshd on loopback, see bmupgrade/lab/core.py) in a temporary
directory and measures, each over --reps repetitions (default 5; median and min-max):

1. per-step overhead: N trivial steps (`run: "true"`, `on: all`) run by `bmupgrade run`, in
   two shapes (parallel: both nodes at once; sequential: bm1 then bm2), against the same 2*N
   commands done by raw `ssh` (one process per command), `ssh` over a ControlMaster, a plain
   Fabric script (one Connection per node) and `ansible-playbook` (default settings, and with
   pipelining + ControlPersist). bmupgrade's fixed cost (a 1-step run) and its marginal cost
   per step ((t_N - t_1) / (N - 1)) are reported separately; the targets use the marginal one.
2. start-up: `bmupgrade --help`, `bmupgrade plan runbooks/bluemind-ha-pacemaker.yaml`,
   `ansible-playbook --version`.
3. streaming memory: a 1-step runbook printing 200 MB (one line without newline, and 41-byte
   lines); peak RSS of the bmupgrade process (/usr/bin/time -v), stdout sent to /dev/null;
   the run's output log must stay bounded (bmupgrade.audit.OUTPUT_CAP per command).
4. HA-off window with slow apt (download 3 s, install 2 s) and the bundled Pacemaker runbook:
   as is, without the prefetch step, and with sequential packages and no prefetch. The window
   is the journal's ha.on_t - ha.off_t; the install times come from the lab's ledgers.

Ansible runs from its own venv (bench/.venv-compare, created here; never a bmupgrade
dependency). Python processes run with their bytecode cached (PYTHONDONTWRITEBYTECODE removed,
PYTHONPYCACHEPREFIX=bench/.pycache, one warm-up run first), as an installed tool would.
Stdlib only: works with the system python3 or .venv/bin/python.
"""

from __future__ import annotations

import argparse
import datetime as dt
import glob
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
VENV_PY = REPO / ".venv" / "bin" / "python"
BMUPGRADE = REPO / ".venv" / "bin" / "bmupgrade"
COMPARE_VENV = BENCH / ".venv-compare"
ANSIBLE_PLAYBOOK = COMPARE_VENV / "bin" / "ansible-playbook"
PYCACHE = BENCH / ".pycache"
RESULTS = BENCH / "results.json"
BUNDLED = REPO / "runbooks" / "bluemind-ha-pacemaker.yaml"
TIME_BIN = "/usr/bin/time"
BM_CMD: list = [BMUPGRADE]

sys.path.insert(0, str(REPO))
from bmupgrade.audit import OUTPUT_CAP  # noqa: E402  (stdlib only)
from bmupgrade.lab import Lab  # noqa: E402  (stdlib only)

DEVNULL = subprocess.DEVNULL
T_START = time.monotonic()


# =========================================================================== helpers
def log(msg: str) -> None:
    print("[%6.1fs] %s" % (time.monotonic() - T_START, msg), file=sys.stderr, flush=True)


def bench_env(**extra: str) -> dict[str, str]:
    """The environment of every measured process: bytecode cached like an installed tool."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(PYCACHE)
    env["NO_COLOR"] = "1"
    env.update(extra)
    return env


def cold_env() -> dict[str, str]:
    """No bytecode cache at all: every module compiled at each start (read-only install, or
    PYTHONDONTWRITEBYTECODE=1 with stale or missing __pycache__)."""
    env = dict(os.environ)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PYTHONPYCACHEPREFIX"] = str(Path(tempfile.gettempdir()) / "bmbench-no-pycache")  # never written
    env["NO_COLOR"] = "1"
    return env


def run(cmd: list[str], *, env=None, stdout=DEVNULL, cwd=None, timeout: float = 900, check: bool = True,
        input: str | None = None) -> subprocess.CompletedProcess:
    p = subprocess.run([str(c) for c in cmd], env=env or bench_env(), stdout=stdout, stderr=subprocess.PIPE,
                       cwd=cwd, timeout=timeout, text=True, input=input)
    if check and p.returncode != 0:
        raise SystemExit("benchmark command failed (exit %s): %s\n%s" % (
            p.returncode, " ".join(map(str, cmd)), (p.stderr or "")[-3000:]))
    return p


def timed(cmd: list[str], **kw) -> float:
    t = time.perf_counter()
    run(cmd, **kw)
    return time.perf_counter() - t


def stats(samples: list[float]) -> dict:
    return {"n": len(samples), "median": statistics.median(samples), "min": min(samples), "max": max(samples),
            "samples": [round(s, 6) for s in samples]}


def paired(a: list[float], b: list[float], scale: float) -> dict:
    """(a_i - b_i) * scale per repetition: the marginal cost with its spread."""
    return stats([(x - y) * scale for x, y in zip(a, b)])


def fmt_s(st: dict | None, unit: str = "s") -> tuple[str, str]:
    if not st:
        return "-", "-"
    if unit == "ms":
        return "%.1f ms" % (st["median"] * 1000), "%.1f–%.1f" % (st["min"] * 1000, st["max"] * 1000)
    if unit == "MB":
        return "%.1f MB" % st["median"], "%.1f–%.1f" % (st["min"], st["max"])
    return "%.3f s" % st["median"], "%.3f–%.3f" % (st["min"], st["max"])


def machine_info() -> dict:
    def out(cmd):
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
            return (p.stdout + p.stderr).strip()
        except (OSError, subprocess.SubprocessError):
            return None
    cpu = None
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ansible = out([str(ANSIBLE_PLAYBOOK), "--version"]) if ANSIBLE_PLAYBOOK.exists() else None
    commit = out(["git", "-C", str(REPO), "rev-parse", "HEAD"])
    dirty = out(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no", "bmupgrade"])
    return {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "python_bench": sys.version.split()[0],
        "python_bmupgrade": out([str(VENV_PY), "-c", "import sys; print(sys.version.split()[0])"]),
        "openssh": out(["ssh", "-V"]),
        "ansible": ansible.splitlines()[0] if ansible else None,
        "paramiko_fabric": out([str(VENV_PY), "-c",
                                "import paramiko, fabric; print(paramiko.__version__, fabric.__version__)"]),
        "bmupgrade_commit": commit,
        "bmupgrade_modified_files": dirty.splitlines() if dirty else [],
        "env": {"PYTHONDONTWRITEBYTECODE_in_caller": os.environ.get("PYTHONDONTWRITEBYTECODE"),
                "measured_with": "PYTHONDONTWRITEBYTECODE unset, PYTHONPYCACHEPREFIX=bench/.pycache, "
                                 "one warm-up run before timing; NO_COLOR=1"},
    }


def ensure_compare_venv() -> None:
    """ansible-core in its own venv (never a bmupgrade dependency)."""
    if ANSIBLE_PLAYBOOK.exists():
        return
    log("creating %s with ansible-core (pip, from PyPI)" % COMPARE_VENV)
    base = getattr(sys, "_base_executable", None) or sys.executable
    run([base, "-m", "venv", str(COMPARE_VENV)], env=dict(os.environ))
    run([COMPARE_VENV / "bin" / "pip", "install", "-q", "ansible-core"], env=dict(os.environ), timeout=1200)


def ensure_time_bin() -> None:
    if os.access(TIME_BIN, os.X_OK):
        return
    if os.geteuid() != 0:
        raise SystemExit("%s missing: apt-get install time (as root)" % TIME_BIN)
    log("installing the Debian package `time` (for /usr/bin/time -v)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(["apt-get", "update", "-qq"], env=env, timeout=600)
    run(["apt-get", "install", "-y", "-qq", "time"], env=env, timeout=600)


# =========================================================================== runbooks
HEAD = """\
version: 1
name: bench {name}
cluster:
  public_ip: 192.0.2.10
  nodes:
    - {{name: bm1, host: 127.0.0.11}}
    - {{name: bm2, host: 127.0.0.12}}
steps:
"""


def trivial_runbook(path: Path, n: int, parallel: bool) -> Path:
    body = "".join('  - id: s%03d\n    on: all\n    parallel: %s\n    run: "true"\n'
                   % (i, "true" if parallel else "false") for i in range(n))
    path.write_text(HEAD.format(name="%d steps %s" % (n, "parallel" if parallel else "sequential")) + body)
    return path


def stream_runbook(path: Path, command: str) -> Path:
    path.write_text(HEAD.format(name="stream") + "  - id: stream\n    on: bm1\n    run: %s\n" % json.dumps(command))
    return path


def _drop_step(text: str, step_id: str) -> str:
    lines = text.splitlines(keepends=True)
    start = next(i for i, l in enumerate(lines) if l.rstrip() == "  - id: %s" % step_id)
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("  - id:") or
               (lines[i].strip() and not lines[i].startswith(" ")))
    return "".join(lines[:start] + lines[end:])


def _set_in_step(text: str, step_id: str, old: str, new: str) -> str:
    lines = text.splitlines(keepends=True)
    start = next(i for i, l in enumerate(lines) if l.rstrip() == "  - id: %s" % step_id)
    for i in range(start + 1, len(lines)):
        if lines[i].startswith("  - id:"):
            break
        if lines[i].rstrip() == old:
            lines[i] = new + "\n"
            return "".join(lines)
    raise SystemExit("bundled runbook changed: %r not found in step %s" % (old, step_id))


def ha_variants(work: Path) -> dict[str, Path]:
    text = BUNDLED.read_text()
    out = {
        "prefetch+parallel (as is)": text,
        "no prefetch, parallel": _drop_step(text, "prefetch"),
        "no prefetch, sequential": _set_in_step(_drop_step(text, "prefetch"), "packages",
                                                "    parallel: true", "    parallel: false"),
    }
    paths = {}
    for i, (name, body) in enumerate(out.items(), 1):
        p = work / ("ha-variant-%d.yaml" % i)
        p.write_text(body)
        run([*BM_CMD, "validate", p])  # the loader is strict: fail here, not mid-benchmark
        paths[name] = p
    return paths


# =========================================================================== 1. per-step
def bm_run(runbook: Path, inv: Path, state: Path, *extra: str, stdout=DEVNULL, env=None) -> float:
    return timed([*BM_CMD, "run", runbook, "-i", inv, "--yes", "--state-dir", state, *extra],
                 stdout=stdout, env=env)


def check_trivial_run(state: Path, n: int) -> None:
    """The run really did N steps on both nodes (guards against measuring a no-op)."""
    j = json.loads(Path(glob.glob(str(state / "runs" / "*.json"))[0]).read_text())
    steps = j["steps"]
    ok = (j["status"] == "succeeded" and len(steps) == n and
          all(s["state"] == "done" and sorted(s["nodes"]) == ["bm1", "bm2"] for s in steps.values()))
    if not ok:
        raise SystemExit("bmupgrade run in %s did not do %d steps on both nodes" % (state, n))


def bench_bmupgrade(lab: Lab, work: Path, n: int, reps: int, long_n: int | None) -> dict:
    """bmupgrade on N trivial steps in both shapes, and on 1 step (its fixed cost); long_n: also
    the parallel shape at long_n steps (info: does the cost per step grow with the run's length?)."""
    inv = lab.inventory_path
    books = {(shape, k): trivial_runbook(work / ("steps-%s-%d.yaml" % (shape, k)), k, shape == "parallel")
             for shape in ("parallel", "sequential") for k in (1, n)}
    if long_n:
        books[("parallel", long_n)] = trivial_runbook(work / ("steps-parallel-%d.yaml" % long_n), long_n, True)
    bm_run(books[("parallel", 1)], inv, work / "state-warmup")  # bytecode cache, page cache
    t = {key: [] for key in books}
    for rep in range(reps):
        for key, book in books.items():  # interleaved: drift hits every configuration alike
            state = work / ("state-%s-%d-%d" % (key[0], key[1], rep))
            t[key].append(bm_run(book, inv, state))
            check_trivial_run(state, key[1])
            shutil.rmtree(state)
    out = {}
    for shape in ("parallel", "sequential"):
        t1, tn = t[(shape, 1)], t[(shape, n)]
        out[shape] = {"fixed_1_step": stats(t1), "total_n_steps": stats(tn),
                      "marginal_per_step": paired(tn, t1, 1.0 / (n - 1)),
                      "total_per_step": stats([x / n for x in tn])}
    if long_n:
        tl, t1 = t[("parallel", long_n)], t[("parallel", 1)]
        out["parallel_long"] = {"n": long_n, "total_n_steps": stats(tl),
                                "marginal_per_step": paired(tl, t1, 1.0 / (long_n - 1))}
    return out


def ssh_base(lab: Lab) -> list[str]:
    return ["ssh", "-F", str(lab.ssh_config)]


def bench_ssh_raw(lab: Lab, n: int, reps: int) -> dict:
    """One ssh process per command (full handshake each time), bm1 then bm2 per step."""
    base = ssh_base(lab)
    run(base + ["bm1", "true"])
    samples = []
    for _ in range(reps):
        t = time.perf_counter()
        for _ in range(n):
            for node in ("bm1", "bm2"):
                run(base + [node, "true"])
        samples.append(time.perf_counter() - t)
    return {"sequential": {"total_n_steps": stats(samples), "per_step": stats([s / n for s in samples])}}


def bench_ssh_cm(lab: Lab, work: Path, n: int, reps: int) -> dict:
    """ssh over a ControlMaster: the floor. Masters opened outside the loop's timing (the open
    is timed separately); sequential = bm1 then bm2 per step, parallel = both at once."""
    out: dict = {"sequential": {"loop": [], "open_masters": []}, "parallel": {"loop": [], "open_masters": []}}
    for _ in range(reps):
        for shape in ("sequential", "parallel"):
            cp = str(work / "cm-%C")
            base = ssh_base(lab) + ["-o", "ControlPath=" + cp]
            t = time.perf_counter()  # both masters, one after the other (as a script would)
            for node in ("bm1", "bm2"):
                run(base + ["-o", "ControlMaster=yes", "-o", "ControlPersist=120", node, "true"])
            out[shape]["open_masters"].append(time.perf_counter() - t)
            t = time.perf_counter()
            for _ in range(n):
                if shape == "sequential":
                    run(base + ["bm1", "true"])
                    run(base + ["bm2", "true"])
                else:
                    procs = [subprocess.Popen(base + [node, "true"], stdout=DEVNULL, stderr=DEVNULL)
                             for node in ("bm1", "bm2")]
                    if any(p.wait() for p in procs):
                        raise SystemExit("ssh over ControlMaster failed")
            out[shape]["loop"].append(time.perf_counter() - t)
            for node in ("bm1", "bm2"):
                run(base + ["-O", "exit", node], check=False)
    res = {}
    for shape, d in out.items():
        with_open = [a + b for a, b in zip(d["loop"], d["open_masters"])]
        res[shape] = {"total_n_steps": stats(d["loop"]), "per_step": stats([s / n for s in d["loop"]]),
                      "open_masters": stats(d["open_masters"]), "total_incl_open": stats(with_open)}
    return res


FABRIC_SCRIPT = r'''
import json, sys, time
from concurrent.futures import ThreadPoolExecutor
t0 = time.perf_counter()
import fabric, paramiko
cfg = json.loads(sys.argv[1])
t1 = time.perf_counter()
conns = []
for host, port in cfg["nodes"]:
    c = fabric.Connection(host, port=port, user=cfg["user"],
                          config=fabric.Config(overrides={"load_ssh_configs": False}),
                          connect_kwargs={"key_filename": [cfg["key"]], "look_for_keys": False,
                                          "allow_agent": False})
    c.client.load_host_keys(cfg["known_hosts"])           # strict host keys, as bmupgrade
    c.client.set_missing_host_key_policy(paramiko.RejectPolicy())
    c.open()
    conns.append(c)
t2 = time.perf_counter()
if cfg["parallel"]:
    pool = ThreadPoolExecutor(max_workers=len(conns))
    for _ in range(cfg["n"]):
        for f in [pool.submit(c.run, "true", hide=True) for c in conns]:
            f.result()
else:
    for _ in range(cfg["n"]):
        for c in conns:
            c.run("true", hide=True)
t3 = time.perf_counter()
for c in conns:
    c.close()
print(json.dumps({"import": t1 - t0, "connect": t2 - t1, "loop": t3 - t2}))
'''


def bench_fabric(lab: Lab, work: Path, n: int, reps: int) -> dict:
    script = work / "fabric_bench.py"
    script.write_text(FABRIC_SCRIPT)
    cfg = {"nodes": [[nd.host, nd.port] for nd in lab.nodes], "user": lab.user, "key": str(lab.client_key),
           "known_hosts": str(lab.known_hosts), "n": n}
    run([VENV_PY, script, json.dumps(dict(cfg, n=1, parallel=False))])  # warm-up
    res = {}
    data: dict = {s: {"wall": [], "loop": [], "connect": []} for s in ("sequential", "parallel")}
    for _ in range(reps):
        for shape in ("sequential", "parallel"):
            t = time.perf_counter()
            p = run([VENV_PY, script, json.dumps(dict(cfg, parallel=shape == "parallel"))], stdout=subprocess.PIPE)
            data[shape]["wall"].append(time.perf_counter() - t)
            inner = json.loads(p.stdout)
            data[shape]["loop"].append(inner["loop"])
            data[shape]["connect"].append(inner["connect"])
    for shape, d in data.items():
        res[shape] = {"total_process": stats(d["wall"]), "total_n_steps": stats(d["loop"]),
                      "per_step": stats([x / n for x in d["loop"]]), "connect": stats(d["connect"])}
    return res


def ansible_files(lab: Lab, work: Path, n: int) -> tuple[Path, dict[int, Path]]:
    inv = work / "ansible-inventory.ini"
    lines = ["[lab]"]
    for nd in lab.nodes:
        lines.append("%s ansible_host=%s ansible_port=%d" % (nd.name, nd.host, nd.port))
    lines += ["[lab:vars]", "ansible_user=%s" % lab.user, "ansible_ssh_private_key_file=%s" % lab.client_key,
              "ansible_ssh_common_args='-o UserKnownHostsFile=%s -o StrictHostKeyChecking=yes "
              "-o GlobalKnownHostsFile=/dev/null -o IdentitiesOnly=yes'" % lab.known_hosts]
    inv.write_text("\n".join(lines) + "\n")
    books = {}
    for k in (1, n):
        p = work / ("playbook-%d.yaml" % k)
        p.write_text("- hosts: lab\n  gather_facts: false\n  tasks:\n" + "".join(
            "    - name: t%03d\n      command: \"true\"\n" % i for i in range(k)))
        books[k] = p
    return inv, books


ANSIBLE_MODES = {
    # ansible-core's own defaults: ssh_args "-C -o ControlMaster=auto -o ControlPersist=60s",
    # pipelining off (each task copies the module over sftp/scp, then runs it)
    "default": {},
    "pipelining+ControlPersist": {"ANSIBLE_PIPELINING": "True",
                                  "ANSIBLE_SSH_ARGS": "-o ControlMaster=auto -o ControlPersist=60s"},
}


def bench_ansible(lab: Lab, work: Path, n: int, reps: int) -> dict:
    inv, books = ansible_files(lab, work, n)
    home = work / "ansible-home"

    def once(mode: str, book: Path) -> float:
        cpdir = Path(tempfile.mkdtemp(prefix="cp", dir=work))  # fresh masters every run
        env = bench_env(ANSIBLE_HOME=str(home), ANSIBLE_LOCAL_TEMP=str(home / "tmp"), ANSIBLE_NOCOLOR="1",
                        ANSIBLE_HOST_KEY_CHECKING="True", ANSIBLE_RETRY_FILES_ENABLED="False",
                        ANSIBLE_SSH_CONTROL_PATH_DIR=str(cpdir), **ANSIBLE_MODES[mode])
        try:
            return timed([ANSIBLE_PLAYBOOK, "-i", inv, book], env=env)
        finally:  # close this run's ControlPersist masters, outside the timing
            for sock in cpdir.iterdir():
                run(["ssh", "-o", "ControlPath=%s" % sock, "-O", "exit", "x"], check=False)
            shutil.rmtree(cpdir, ignore_errors=True)

    for mode in ANSIBLE_MODES:
        once(mode, books[1])  # warm-up
    t = {(m, k): [] for m in ANSIBLE_MODES for k in (1, n)}
    for _ in range(reps):
        for (m, k) in t:
            t[(m, k)].append(once(m, books[k]))
    return {m: {"fixed_1_task": stats(t[(m, 1)]), "total_n_steps": stats(t[(m, n)]),
                "marginal_per_step": paired(t[(m, n)], t[(m, 1)], 1.0 / (n - 1)),
                "total_per_step": stats([x / n for x in t[(m, n)]])} for m in ANSIBLE_MODES}


# =========================================================================== 2. start-up
def bench_startup(reps: int, with_ansible: bool) -> dict:
    cmds = {"bmupgrade --help": [*BM_CMD, "--help"],
            "bmupgrade plan (bundled runbook)": [*BM_CMD, "plan", BUNDLED]}
    if with_ansible:
        cmds["ansible-playbook --version"] = [ANSIBLE_PLAYBOOK, "--version"]
    res = {}
    for name, cmd in cmds.items():
        timed(cmd)  # warm-up (bytecode and page cache)
    for name, cmd in cmds.items():
        res[name] = stats([timed(cmd, cwd=REPO) for _ in range(reps)])
    cold = {}
    for name in ("bmupgrade --help", "bmupgrade plan (bundled runbook)"):
        cold[name] = stats([timed(cmds[name], env=cold_env(), cwd=REPO) for _ in range(reps)])
    return {"warm": res, "no_bytecode_cache": cold}


# =========================================================================== 3. streaming
STREAMS = {
    "{mb} MB, no newline": "head -c {size} /dev/zero | tr '\\0' x",
    "{mb} MB in 41-byte lines": "yes 0123456789012345678901234567890123456789 | head -c {size}",
}


def bench_streaming(lab: Lab, work: Path, size: int, reps: int, budget: float) -> dict:
    res = {}
    for name, cmd in STREAMS.items():
        name = name.format(mb=size // 1_000_000)
        book = stream_runbook(work / ("stream-%d.yaml" % len(res)), cmd.format(size=size))
        rss, wall, logs = [], [], []
        while len(rss) < reps:
            state = work / ("state-stream-%d-%d" % (len(res), len(rss)))
            tfile = work / "time-v.txt"
            t = time.perf_counter()
            run([TIME_BIN, "-v", "-o", tfile, *BM_CMD, "run", book, "-i", lab.inventory_path, "--yes",
                 "--state-dir", state])  # bmupgrade's stdout -> /dev/null
            wall.append(time.perf_counter() - t)
            m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", tfile.read_text())
            rss.append(int(m.group(1)) / 1024.0)
            runs = state / "runs"
            out_log = next(runs.glob("*.output.log"))
            sizes = {"output_log": out_log.stat().st_size,
                     "audit_jsonl": next(runs.glob("*.audit.jsonl")).stat().st_size,
                     "journal": next(p for p in runs.glob("*.json")).stat().st_size}
            with open(out_log, "rb") as f:
                f.seek(max(0, sizes["output_log"] - 4096))
                sizes["cap_marker"] = b"not logged" in f.read()
            logs.append(sizes)
            shutil.rmtree(state)
            # a full run must fit in ~10 min: a stream slower than `budget` s gets 3 repetitions
            if len(rss) == 1 and wall[0] > budget and reps > 3:
                log("  %s took %.0f s: 3 repetitions instead of %d" % (name, wall[0], reps))
                reps = 3
        bound = OUTPUT_CAP + 64 * 1024
        res[name] = {"command": cmd.format(size=size), "bytes": size, "peak_rss_mb": stats(rss),
                     "wall": stats(wall), "throughput_mb_s": size / 1e6 / statistics.median(wall),
                     "logs": logs[-1], "output_log_bound": bound,
                     "output_log_bounded": all(l["output_log"] <= bound and l["cap_marker"] for l in logs)
                     if size > OUTPUT_CAP else all(l["output_log"] <= bound for l in logs)}
    return res


# =========================================================================== 4. HA-off window
def standin_cost(lab: Lab, work: Path, reps: int = 21) -> dict:
    """What one lab stand-in (a Python script) adds to a command: `ip ...` minus `true`, both
    over an open ControlMaster (the HA window is mostly a chain of such commands)."""
    base = ssh_base(lab) + ["-o", "ControlPath=" + str(work / "cm-%C")]
    run(base + ["-o", "ControlMaster=yes", "-o", "ControlPersist=60", "bm1", "true"])
    try:
        t = {c: stats([timed(base + ["bm1", c]) for _ in range(reps)])
             for c in ("true", "ip -o addr show to 192.0.2.10")}
    finally:
        run(base + ["-O", "exit", "bm1"], check=False)
    return {"ssh_cm_true": t["true"], "ssh_cm_standin": t["ip -o addr show to 192.0.2.10"],
            "standin_extra": t["ip -o addr show to 192.0.2.10"]["median"] - t["true"]["median"]}


def window_commands(lab: Lab, off: float, on: float) -> tuple[int, int]:
    """Stand-in calls inside the window other than the package install: (all, serial), where
    calls on different nodes starting within 5 ms of each other (one parallel probe) count once."""
    calls = sorted((c["time"], nd.name) for nd in lab.nodes for c in nd.calls()
                   if off <= c["time"] <= on and not bmlab_is_install(c["argv"]))
    serial, last = 0, None
    for t, node in calls:
        if last is None or t - last[0] > 0.005 or node == last[1]:
            serial += 1
        last = (t, node)
    return len(calls), serial


def bmlab_is_install(argv: list[str]) -> bool:
    return argv[:1] == ["apt-get"] and "install" in argv and "--download-only" not in argv


def bench_ha(lab: Lab, work: Path, reps: int, variants: list[str]) -> dict:
    books = ha_variants(work)
    res = {"_lab_command_cost": standin_cost(lab, work)}
    data = {v: [] for v in variants}
    for rep in range(reps):
        for name in variants:
            lab.up(reset=True)  # a fresh 4.9.2 cluster: state, ledgers, remote locks
            lab.fault("slow-apt", download=3, install=2)
            state = work / ("state-ha-%d" % rep)
            outfile = work / "ha-run.out"
            with open(outfile, "w") as f:
                wall = bm_run(books[name], lab.inventory_path, state, "--ack", "backup,prepare", stdout=f)
            text = outfile.read_text()
            m = re.search(r"HA-off window: ([0-9.]+)s", text)
            j = json.loads(next(p for p in (state / "runs").glob("*.json")).read_text())
            if j["status"] != "succeeded":
                raise SystemExit("HA run %s did not succeed:\n%s" % (name, text[-2000:]))
            window = j["ha"]["on_t"] - j["ha"]["off_t"]
            installs = {nd.name: [c["duration"] for c in nd.calls("apt-get install !--download-only")]
                        for nd in lab.nodes}
            allc, serial = window_commands(lab, j["ha"]["off_t"], j["ha"]["on_t"])
            data[name].append({"wall": wall, "window": window, "printed": float(m.group(1)) if m else None,
                               "install": {k: v[-1] for k, v in installs.items()},
                               "standin_calls_in_window": allc, "serial_standin_calls_in_window": serial})
            shutil.rmtree(state)
    lab.clear_faults()
    for name, rs in data.items():
        slowest = [max(r["install"].values()) for r in rs]
        total = [sum(r["install"].values()) for r in rs]
        windows = [r["window"] for r in rs]
        seq = "sequential" in name
        base = total if seq else slowest  # what the window cannot be shorter than
        res[name] = {"window": stats(windows), "printed_window": [r["printed"] for r in rs],
                     "wall": stats([r["wall"] for r in rs]), "slowest_install": stats(slowest),
                     "installs_sum": stats(total),
                     "overhead_over_installs": stats([w - b for w, b in zip(windows, base)]),
                     "window_over_slowest_install": stats([w / s for w, s in zip(windows, slowest)]),
                     "standin_calls_in_window": [r["standin_calls_in_window"] for r in rs],
                     "serial_standin_calls_in_window": [r["serial_standin_calls_in_window"] for r in rs]}
        k = statistics.median(res[name]["serial_standin_calls_in_window"])
        over = res[name]["overhead_over_installs"]["median"]
        extra = res["_lab_command_cost"]["standin_extra"]
        res[name]["overhead_split"] = {"lab_standin_startup_s": k * extra,
                                       "rest_s (bmupgrade + ssh + shell)": over - k * extra}
    return res


# =========================================================================== report
def build_table(r: dict) -> tuple[list[tuple], list[tuple]]:
    n = r["config"]["n_steps"]
    rows: list[tuple] = []
    ps = r.get("per_step", {})
    bm = ps.get("bmupgrade", {})

    def add(section, what, st, unit="s", per=None, note=""):
        med, rng = fmt_s(st, unit)
        rows.append((section, what, str(st["n"]) if st else "-", med, rng, per or "", note))

    sec = "1 per step (N=%d, 2 nodes)" % n
    for shape in ("parallel", "sequential"):
        d = bm.get(shape)
        if not d:
            continue
        add(sec, "bmupgrade %s: fixed (1-step run)" % shape, d["fixed_1_step"])
        add(sec, "bmupgrade %s: %d steps, total" % (shape, n), d["total_n_steps"],
            per="%.1f" % (d["total_per_step"]["median"] * 1000))
        add(sec, "bmupgrade %s: marginal/step" % shape, d["marginal_per_step"], "ms",
            per="%.1f" % (d["marginal_per_step"]["median"] * 1000), note="(tN-t1)/(N-1), used for targets")
    d = bm.get("parallel_long")
    if d:
        add(sec, "bmupgrade parallel: %d steps, total" % d["n"], d["total_n_steps"], note="info: length effect")
        add(sec, "bmupgrade parallel: marginal/step @%d" % d["n"], d["marginal_per_step"], "ms",
            per="%.1f" % (d["marginal_per_step"]["median"] * 1000), note="info: (t%d-t1)/%d" % (d["n"], d["n"] - 1))
    d = ps.get("ssh_raw", {}).get("sequential")
    if d:
        add(sec, "ssh, 1 process/command (seq)", d["total_n_steps"], per="%.1f" % (d["per_step"]["median"] * 1000),
            note="full handshake each")
    for shape in ("sequential", "parallel"):
        d = ps.get("ssh_controlmaster", {}).get(shape)
        if d:
            add(sec, "ssh ControlMaster %s: loop" % shape[:3], d["total_n_steps"],
                per="%.1f" % (d["per_step"]["median"] * 1000), note="masters open (floor)")
            add(sec, "ssh ControlMaster %s: incl. open" % shape[:3], d["total_incl_open"],
                note="+ opening both masters")
    for shape in ("sequential", "parallel"):
        d = ps.get("fabric", {}).get(shape)
        if d:
            add(sec, "Fabric %s: loop" % shape[:3], d["total_n_steps"], per="%.1f" % (d["per_step"]["median"] * 1000),
                note="1 Connection/node, open")
            add(sec, "Fabric %s: process total" % shape[:3], d["total_process"], note="import+connect+loop")
    for mode, d in ps.get("ansible", {}).items():
        add(sec, "ansible %s: fixed (1 task)" % mode, d["fixed_1_task"])
        add(sec, "ansible %s: %d tasks, total" % (mode, n), d["total_n_steps"],
            per="%.1f" % (d["total_per_step"]["median"] * 1000))
        add(sec, "ansible %s: marginal/step" % mode, d["marginal_per_step"], "ms",
            per="%.1f" % (d["marginal_per_step"]["median"] * 1000), note="hosts in parallel (forks)")
    for name, val in r.get("ratios", {}).items():
        rows.append((sec, name, "", "%.2f×" % val, "", "", "ratio of medians"))

    su = r.get("startup", {})
    for name, st in su.get("warm", {}).items():
        add("2 start-up", name, st, note="warm bytecode cache")
    for name, st in su.get("no_bytecode_cache", {}).items():
        add("2 start-up", name + " [no .pyc]", st, note="info: PYTHONDONTWRITEBYTECODE=1, no cache")

    for name, d in r.get("streaming", {}).items():
        add("3 streaming", name + ": peak RSS", d["peak_rss_mb"], "MB", note="stdout -> /dev/null")
        add("3 streaming", name + ": wall", d["wall"], note="%.1f MB/s" % d["throughput_mb_s"])
        lg = d["logs"]
        rows.append(("3 streaming", name + ": logs", "", "%.1f MiB" % (lg["output_log"] / 1048576), "",
                     "", "output.log (cap %d MiB%s); audit %d kB; journal %d kB" % (
                         OUTPUT_CAP // 1048576, ", marker" if lg["cap_marker"] else "",
                         lg["audit_jsonl"] // 1024, lg["journal"] // 1024)))

    for name, d in r.get("ha", {}).items():
        if name.startswith("_"):
            rows.append(("4 HA-off window", "lab stand-in start-up (per call)", "", "%.1f ms" % (
                d["standin_extra"] * 1000), "", "", "info: ssh-CM `ip ...` %.1f ms - `true` %.1f ms" % (
                d["ssh_cm_standin"]["median"] * 1000, d["ssh_cm_true"]["median"] * 1000)))
            continue
        add("4 HA-off window", name + ": window", d["window"], note="journal ha.on_t - ha.off_t")
        base = "installs_sum" if "sequential" in name else "slowest_install"
        add("4 HA-off window", name + ": " + ("sum of installs" if base == "installs_sum" else "slowest install"),
            d[base], note="lab ledger, apt-get install")
        sp = d["overhead_split"]
        add("4 HA-off window", name + ": overhead", d["overhead_over_installs"], "ms",
            note="window - install(s): %d serial stand-in calls ≈ %.0f ms, rest %.0f ms" % (
                statistics.median(d["serial_standin_calls_in_window"]), sp["lab_standin_startup_s"] * 1000,
                sp["rest_s (bmupgrade + ssh + shell)"] * 1000))

    targets = []
    for t in r.get("targets", []):
        targets.append(("targets", t["name"], "", t["value"], t["limit"], "", ("MET" if t["met"] else "MISSED")
                        + (" (quick: smoke only)" if r["config"]["quick"] else "")))
    return rows, targets


def print_table(rows: list[tuple]) -> str:
    head = ("section", "measurement", "reps", "median", "min–max", "ms/step", "note")
    widths = [max(len(str(x[i])) for x in rows + [head]) for i in range(len(head))]
    sep = "  "
    lines = [sep.join(str(h).ljust(w) for h, w in zip(head, widths)),
             sep.join("-" * w for w in widths)]
    prev = None
    for row in rows:
        if prev is not None and row[0] != prev:
            lines.append("")
        cells = [("" if row[0] == prev else row[0])] + list(row[1:])
        lines.append(sep.join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip())
        prev = row[0]
    return "\n".join(lines)


def evaluate(r: dict) -> tuple[list[dict], dict]:
    targets, ratios = [], {}
    ps = r.get("per_step", {})
    bm = ps.get("bmupgrade", {})
    cm = ps.get("ssh_controlmaster", {})
    for shape in ("parallel", "sequential"):
        if shape in bm and shape in cm:
            ratio = bm[shape]["marginal_per_step"]["median"] / cm[shape]["per_step"]["median"]
            ratios["bmupgrade/ssh-CM per step (%s)" % shape] = ratio
            targets.append({"name": "per step ≤ 1.5× ssh ControlMaster (%s)" % shape, "value": "%.2f×" % ratio,
                            "limit": "≤ 1.50×", "met": ratio <= 1.5})
    an = ps.get("ansible", {})
    if "parallel" in bm:
        b = bm["parallel"]["marginal_per_step"]["median"]
        for mode, need in (("pipelining+ControlPersist", 2.5), ("default", 5.0)):
            if mode in an:
                ratio = an[mode]["marginal_per_step"]["median"] / b
                ratios["ansible %s / bmupgrade per step" % mode] = ratio
                ratios["ansible %s / bmupgrade, total N steps" % mode] = (
                    an[mode]["total_n_steps"]["median"] / bm["parallel"]["total_n_steps"]["median"])
                targets.append({"name": "≥ %.1f× faster than ansible %s" % (need, mode), "value": "%.1f×" % ratio,
                                "limit": "≥ %.1f×" % need, "met": ratio >= need})
    for name, st in r.get("startup", {}).get("warm", {}).items():
        if name.startswith("bmupgrade"):
            targets.append({"name": "%s ≤ 0.3 s" % name, "value": "%.3f s" % st["median"], "limit": "≤ 0.300 s",
                            "met": st["median"] <= 0.3})
    for name, d in r.get("streaming", {}).items():
        targets.append({"name": "peak RSS ≤ 150 MB, %s" % name, "value": "%.1f MB" % d["peak_rss_mb"]["max"],
                        "limit": "≤ 150 MB", "met": d["peak_rss_mb"]["max"] <= 150 and d["output_log_bounded"]})
    ha = r.get("ha", {}).get("prefetch+parallel (as is)")
    if ha:
        ratio = ha["window_over_slowest_install"]["median"]
        targets.append({"name": "HA-off window ≤ slowest install + 10% (prefetch+parallel)",
                        "value": "%.2f× (%.3f s / %.3f s)" % (ratio, ha["window"]["median"],
                                                             ha["slowest_install"]["median"]),
                        "limit": "≤ 1.10×", "met": ratio <= 1.10})
    return targets, ratios


# =========================================================================== main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="5-step smoke, 1 repetition, no ansible (CI)")
    ap.add_argument("--reps", type=int, default=None, help="repetitions (default 5; --quick: 1)")
    ap.add_argument("--steps", type=int, default=None, help="N trivial steps (default 50; --quick: 5)")
    ap.add_argument("--no-ansible", action="store_true", help="skip ansible (and its venv)")
    ap.add_argument("--only", default="", help="comma list of sections to run: steps,startup,stream,ha")
    ap.add_argument("--keep", action="store_true", help="keep the temporary work directory")
    ap.add_argument("--output", default=str(RESULTS), help="results JSON (default bench/results.json)")
    a = ap.parse_args()
    reps = a.reps or (1 if a.quick else 5)
    n = a.steps or (5 if a.quick else 50)
    if n < 2:
        ap.error("--steps must be at least 2")
    with_ansible = not (a.quick or a.no_ansible)
    only = set(filter(None, a.only.split(","))) or {"steps", "startup", "stream", "ha"}
    stream_size = 20_000_000 if a.quick else 200_000_000

    if not BMUPGRADE.exists():
        raise SystemExit("%s missing: run scripts/setup.sh first" % BMUPGRADE)
    ensure_time_bin()
    if with_ansible:
        ensure_compare_venv()
    PYCACHE.mkdir(exist_ok=True)

    work = Path(tempfile.mkdtemp(prefix="bmbench-"))  # short: ControlPath sockets live here
    # The stand-in crm_* always: the numbers must not depend on whether pacemaker-cli-utils
    # happens to be installed (the real tools on a CIB *file* parse, validate and rewrite the
    # whole file per call, ~45 ms, which says nothing about a live cluster's CIB round trip).
    lab = Lab(work / "lab", pacemaker="standin")
    r: dict = {"config": {"quick": a.quick, "reps": reps, "n_steps": n, "ansible": with_ansible,
                          "lab_crm_tools": "standin",
                          "bmupgrade_command": " ".join(map(str, BM_CMD)),
                          "stream_bytes": stream_size, "sections": sorted(only)},
               "machine": machine_info()}
    try:
        lab.up()
        log("lab up in %s (%.2f s)" % (lab.dir, lab.startup_seconds or 0))
        if "steps" in only:
            ps: dict = {}
            log("1. per-step: bmupgrade (N=%d, %d reps)" % (n, reps))
            ps["bmupgrade"] = bench_bmupgrade(lab, work, n, reps, None if a.quick else 4 * n)
            log("1. per-step: ssh, one process per command")
            ps["ssh_raw"] = bench_ssh_raw(lab, n, reps)
            log("1. per-step: ssh over ControlMaster")
            ps["ssh_controlmaster"] = bench_ssh_cm(lab, work, n, reps)
            log("1. per-step: Fabric")
            ps["fabric"] = bench_fabric(lab, work, n, reps)
            if with_ansible:
                log("1. per-step: ansible-playbook (default; pipelining+ControlPersist)")
                ps["ansible"] = bench_ansible(lab, work, n, reps)
            r["per_step"] = ps
        if "startup" in only:
            log("2. start-up")
            r["startup"] = bench_startup(max(reps, 5) if not a.quick else reps, with_ansible)
        if "stream" in only:
            log("3. streaming %d MB (%d reps)" % (stream_size // 1_000_000, reps))
            r["streaming"] = bench_streaming(lab, work, stream_size, reps, budget=20.0)
        if "ha" in only:
            variants = list(ha_variants(work))
            if a.quick:
                variants = variants[:1]
            log("4. HA-off window, slow apt (%d variants x %d reps)" % (len(variants), reps))
            r["ha"] = bench_ha(lab, work, reps, variants)
    finally:
        try:
            lab.down()
        finally:
            if not a.keep:
                shutil.rmtree(work, ignore_errors=True)
            else:
                log("work directory kept: %s" % work)

    r["targets"], r["ratios"] = evaluate(r)
    r["elapsed_s"] = round(time.monotonic() - T_START, 1)
    rows, targets = build_table(r)
    table = print_table(rows + targets)
    r["table"] = table
    Path(a.output).write_text(json.dumps(r, indent=1) + "\n")
    print(table)
    print("\n%s; full results: %s; elapsed %.0f s" % (
        "quick smoke (5 steps, 1 repetition, no ansible)" if a.quick else "%d repetitions" % reps,
        a.output, r["elapsed_s"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
