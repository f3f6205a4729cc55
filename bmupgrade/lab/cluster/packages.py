"""The lab's local apt repository: BlueMind-shaped .deb packages in two versions.

Real packages, built with `dpkg-deb --build` and indexed with `apt-ftparchive`, so a node's
real apt-get and dpkg resolve, unpack and configure them exactly as on a BlueMind server:
`bm-full` pins the others to its own version, `bm-conf`'s postinst starts `bluemind.target`
(the passive-node trap), `bm-client-access`'s postinst restarts `bm-nginx` under `set -e`, and
`bm-plugin-filehosting` depends on exactly `bm-core (= version)`, so a partial upgrade would
remove it. The stand-in commands (bm-cli, bmctl) are shipped by these packages; the node's
`systemctl` stand-in is part of the node's OS (rootfs: a lab node has no systemd).
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

VERSIONS = ("4.9.2", "4.9.3")
FILES = Path(__file__).with_name("files")
BM_PACKAGES = ("bm-core", "bm-conf", "bm-client-access", "bm-core-upgraders", "bm-plugin-cli-setup",
               "bm-plugin-filehosting")
FAIL_ONCE = "/var/lib/bmlab/faults/postinst-fail-once"  # the "postinst fails once" fault's switch
STAMP = "bmlab-packages.sha256"  # in the repository: the fingerprint() it was built from

# name -> (depends template, files {path in package: source file in files/}, postinst body)
SPECS = {
    "bm-core": ("", {"usr/bin/bmctl": "bmctl"}, ""),
    "bm-conf": ("bm-core (= {v})", {}, (
        "if [ -e %s ]; then rm -f %s; echo 'bm-conf: postinst failed (lab fault)' >&2; exit 1; fi\n"
        "systemctl start bluemind.target || true\n") % (FAIL_ONCE, FAIL_ONCE)),
    "bm-client-access": ("bm-core (= {v})", {}, "systemctl enable bm-nginx\nsystemctl restart bm-nginx\n"),
    "bm-core-upgraders": ("bm-core (= {v})", {}, ""),
    "bm-plugin-cli-setup": ("bm-core (= {v})", {"usr/bin/bm-cli": "bm-cli"}, ""),
    "bm-plugin-filehosting": ("bm-core (= {v})", {}, ""),
    "bm-full": ("bm-core (= {v}), bm-conf (= {v}), bm-client-access (= {v}), bm-core-upgraders (= {v}), "
                "bm-plugin-cli-setup (= {v})", {}, ""),
}


def control(name: str, version: str) -> str:
    """The DEBIAN/control text of one package."""
    depends = SPECS[name][0].format(v=version)
    lines = ["Package: %s" % name, "Version: %s" % version, "Architecture: all",
             "Maintainer: bmupgrade lab <lab@invalid>", "Section: misc", "Priority: optional"]
    if depends:
        lines.append("Depends: %s" % depends)
    lines.append("Description: %s (bmupgrade lab stand-in, BlueMind-shaped)" % name)
    return "\n".join(lines) + "\n"


def _stage(root: Path, name: str, version: str) -> Path:
    """Lay out one package's tree (control, postinst, files) under root/NAME_VERSION."""
    _, files, postinst = SPECS[name]
    tree = root / ("%s_%s" % (name, version))
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(control(name, version))
    body = "#!/bin/sh\nset -e\n%s# version %s\nexit 0\n" % (postinst, version)
    (tree / "DEBIAN" / "postinst").write_text(body)
    (tree / "DEBIAN" / "postinst").chmod(0o755)
    doc = tree / "usr/share/doc" / name
    doc.mkdir(parents=True)
    (doc / "VERSION").write_text(version + "\n")
    for dest, src in files.items():
        path = tree / dest
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes((FILES / src).read_bytes())
        path.chmod(0o755)
    return tree


def fingerprint() -> str:
    """What the packages are made of: a repository built from other SPECS or files is rebuilt
    (an older lab's `lab up --reset` then installs today's packages)."""
    h = hashlib.sha256(repr((VERSIONS, SPECS)).encode())
    for src in sorted({src for _, files, _ in SPECS.values() for src in files.values()}):
        h.update(src.encode() + b"\0" + (FILES / src).read_bytes())
    return h.hexdigest()


def build_repo(repo: Path) -> Path:
    """Build every package in both versions into `repo` (a flat apt repository); idempotent."""
    stamp = fingerprint()
    try:
        if (repo / "Release").is_file() and (repo / STAMP).read_text().strip() == stamp:
            return repo
    except FileNotFoundError:
        pass
    stage = repo.with_name(repo.name + ".stage")
    subprocess.run(["rm", "-rf", str(repo), str(stage)], check=True)
    repo.mkdir(parents=True)
    stage.mkdir()
    procs = []
    for version in VERSIONS:
        for name in SPECS:
            tree = _stage(stage, name, version)
            deb = repo / ("%s_%s_all.deb" % (name, version))
            procs.append(subprocess.Popen(["dpkg-deb", "--root-owner-group", "-Zgzip", "-z1", "--build",
                                           str(tree), str(deb)], stdout=subprocess.DEVNULL,
                                          stderr=subprocess.PIPE))
    for p in procs:
        err = p.communicate()[1]
        if p.returncode:
            raise RuntimeError("dpkg-deb failed: %s" % err.decode(errors="replace").strip())
    subprocess.run(["rm", "-rf", str(stage)], check=True)
    _index(repo)
    (repo / STAMP).write_text(stamp + "\n")
    return repo


def _index(repo: Path) -> None:
    packages = subprocess.run(["apt-ftparchive", "packages", "."], cwd=repo, check=True,
                              capture_output=True).stdout
    (repo / "Packages").write_bytes(packages)
    release = subprocess.run(["apt-ftparchive", "-o", "APT::FTPArchive::Release::Origin=bmupgrade-lab",
                              "release", "."], cwd=repo, check=True, capture_output=True).stdout
    (repo / "Release").write_bytes(release)
