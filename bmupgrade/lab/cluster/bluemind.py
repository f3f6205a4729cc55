"""The BlueMind configuration of a node: API key, TLS certificate, /etc/bm, the csync2 set.

The runbooks ask BlueMind's REST API (bm-nginx, shipped by bm-client-access) with the key of
/etc/bm/bm-core.tok, over HTTPS with BlueMind's /etc/ssl/certs/bm_cert.pem (certificate and
key in one file). The HA guide wants those identical on both nodes, so both are made once per
lab (in DIR/keys) and written to both nodes, as after a sync. /etc/csync2.cfg names what the
site's sync pushes (the runbooks' sync_paths); /usr/sbin/csync2 is a stand-in that pushes it
with real rsync over ssh, from the node it runs on to the other one.
"""

from __future__ import annotations

import os
import secrets as _secrets
import subprocess
from pathlib import Path

from bmupgrade.lab.cluster.config import ClusterConfig, ClusterLabError
from bmupgrade.lab.cluster.rootfs import FILES, put, upper

SYNC_PATHS = ("/etc/aliases", "/etc/aliases.db", "/etc/sysctl.conf", "/etc/ssl/certs/bm_cert.pem",
              "/var/lib/bm-ca/ca-cert.pem", "/usr/share/bm-elasticsearch/config/elasticsearch.yml",
              "/etc/apt/sources.list.d/bm.list", "/etc/bm", "/etc/nginx")  # the runbooks' sync_paths
TOKEN, CERT = "bm-core.tok", "bm_cert.pem"


def secrets(kdir: Path) -> dict[str, Path]:
    """The lab's API token and self-signed certificate (once per lab, not per boot)."""
    token, cert = kdir / TOKEN, kdir / CERT
    if not token.exists():
        fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(_secrets.token_hex(16) + "\n")
    if not cert.exists():
        _make_cert(cert)
    return {"token": token, "cert": cert}


def _make_cert(path: Path) -> None:
    """An EC P-256 self-signed certificate for localhost (curl -k in the runbooks), then its key,
    in one file like BlueMind's bm_cert.pem. EC: generated in milliseconds, unlike RSA."""
    crt, key = path.with_suffix(".crt.tmp"), path.with_suffix(".key.tmp")
    r = subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-days", "3650", "-subj", "/CN=localhost/O=bmupgrade lab",
                        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                        "-keyout", str(key), "-out", str(crt)], capture_output=True, text=True)
    if r.returncode:
        raise ClusterLabError("openssl could not make the lab's certificate: %s" % r.stderr.strip())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(crt.read_bytes() + key.read_bytes())
    crt.unlink()
    key.unlink()


def csync2_cfg(cfg: ClusterConfig) -> str:
    return "\n".join(
        ["# bmupgrade cluster lab %s: what csync2 keeps identical on both nodes (BlueMind's HA guide)." % cfg.name,
         "# The lab's csync2 (a stand-in) pushes it from the node it runs on to the other host.",
         "group bluemind", "{", "  host %s;" % " ".join(n.name for n in cfg.nodes)]
        + ["  include %s;" % p for p in SYNC_PATHS] + ["}", ""])


def prepare(cfg: ClusterConfig, node: str, sec: dict[str, Path]) -> None:
    """Write the node's BlueMind files. The token, bm.ini and the certificate only where missing
    (a node keeps its own changes across down/up; a placeholder certificate of an older lab,
    without a key, is replaced); csync2 and its configuration are the lab's own: rewritten."""
    up = upper(cfg, node)
    if not (up / "etc/bm/bm-core.tok").exists():
        put(cfg, node, "etc/bm/bm-core.tok", sec["token"].read_bytes(), 0o600)
    if not (up / "etc/bm/bm.ini").exists():
        put(cfg, node, "etc/bm/bm.ini", "[global]\nhost = %s\nexternal-url = mail.example.org\n" % cfg.vip)
    cert = up / "etc/ssl/certs/bm_cert.pem"
    if not cert.exists() or b"PRIVATE KEY" not in cert.read_bytes():
        put(cfg, node, "etc/ssl/certs/bm_cert.pem", sec["cert"].read_bytes(), 0o600)
    put(cfg, node, "etc/csync2.cfg", csync2_cfg(cfg))
    put(cfg, node, "usr/sbin/csync2", (FILES / "csync2").read_bytes(), 0o755)
