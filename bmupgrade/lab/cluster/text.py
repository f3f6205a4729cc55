"""Plain-text `lab up --cluster` and `lab status` output for people."""

from __future__ import annotations


def usage_text(lab) -> str:
    cfg = lab.cfg
    return "\n".join([
        "cluster lab %s ready in %s (%.1f s)" % (cfg.name, lab.dir, lab.startup_seconds or 0),
        "  " + "  ".join("%s %s" % (n.name, n.address) for n in cfg.nodes) + "  VIP %s" % cfg.vip,
        ("  real Corosync/Pacemaker, STONITH on (fence_bmlab), bm-full from the lab apt repository"
         if cfg.ha == "pacemaker" else "  real keepalived (VRRP, unicast), bm-full from the lab apt repository"),
        "  by hand:  ssh -F %s bm1" % lab.ssh_config,
        "  rehearse: bmupgrade run runbooks/bluemind-ha-%s.yaml -i %s" % (cfg.ha, lab.inventory_path),
        "  break:    bmupgrade lab fault power-off --node bm1 --dir %s" % lab.dir,
        "  stop:     bmupgrade lab down --dir %s" % lab.dir,
    ])


def format_status(st: dict) -> str:
    out = ["cluster lab %s in %s (subnet %s, VIP %s)" % (st["name"], st["dir"], st["subnet"], st["public_ip"])]
    if not st["supervisor"]:
        out.append("  DOWN (no supervisor): bmupgrade lab up --cluster --dir %s" % st["dir"])
        return "\n".join(out)
    mon = st.get("crm_mon") or {"nodes": {}, "resources": {}, "failures": [], "options": {}, "dc": None,
                                 "fencing": []}
    for name, n in st["nodes"].items():
        pm = mon["nodes"].get(name, {})
        state = "online" if pm.get("online") else ("UNCLEAN" if pm.get("unclean") else "offline")
        v = n["versions"]
        kind, state = ("keepalived", n["keepalived"]) if "keepalived" in n else ("pacemaker", state)
        out.append("  %-4s %-15s power %-3s  %s %-8s  bm-full %s%s" % (
            name, n["address"], n["power"], kind, state if n["power"] == "on" else "-", v.get("bm-full", "-"),
            "  (%s)" % ", ".join("%s=%s" % kv for kv in sorted(v.items()) if kv[0] != "bm-full"
                                  and kv[1] != v.get("bm-full")) if any(x != v.get("bm-full") for x in v.values()) else ""))
    holders = st["vip_holders"]
    out.append("  VIP %s: %s" % (st["public_ip"], holders[0] if len(holders) == 1 else
                                  ("NOBODY" if not holders else "SPLIT BRAIN (%s)" % ", ".join(holders))))
    if st.get("ha") == "keepalived":
        out += ["  inventory: %s" % st["inventory"], "  by hand:   %s" % st["ssh"]]
        return "\n".join(out)
    for rid, r in sorted(mon["resources"].items()):
        out.append("  resource %-10s %-8s on %s%s" % (rid, r["role"], ",".join(r["nodes"]) or "-",
                                                    "" if r["managed"] else "  (unmanaged)"))
    opts = mon["options"]
    out.append("  DC %s  maintenance-mode %s  stonith-enabled %s" % (
        mon["dc"] or "-", opts.get("maintenance-mode", "?"), opts.get("stonith-enabled", "?")))
    for f in mon["failures"]:
        out.append("  failed: %s %s on %s (%s)" % (f.get("op_key"), f.get("status"), f.get("node"), f.get("exitreason", "")))
    for f in mon["fencing"]:
        out.append("  fenced: %s %s by %s: %s" % (f.get("target"), f.get("action"), f.get("delegate"), f.get("status")))
    if st.get("crm_mon_error"):
        out.append("  crm_mon: %s" % st["crm_mon_error"])
    out.append("  inventory: %s" % st["inventory"])
    out.append("  by hand:   %s" % st["ssh"])
    return "\n".join(out)
