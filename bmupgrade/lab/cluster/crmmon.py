"""`crm_mon -1 --output-as=xml`, parsed: what Pacemaker itself says about the cluster."""

from __future__ import annotations

import xml.etree.ElementTree as ET


def parse(xml_text: str) -> dict:
    """nodes (online/unclean/maintenance), resources (role, managed, failed, where), cluster
    options (maintenance-mode, stonith-enabled), DC, failures and fencing history."""
    root = ET.fromstring(xml_text)
    out: dict = {"nodes": {}, "resources": {}, "failures": [], "fencing": [], "dc": None, "options": {}}
    summary = root.find("summary")
    if summary is not None:
        dc = summary.find("current_dc")
        if dc is not None and dc.get("present") == "true":
            out["dc"] = dc.get("name")
        opts = summary.find("cluster_options")
        if opts is not None:
            out["options"] = dict(opts.attrib)
    for n in root.iter("node"):
        if n.get("online") is not None:
            out["nodes"][n.get("name")] = {k: n.get(k) == "true" for k in ("online", "unclean", "maintenance", "standby")}
    resources = root.find("resources")
    for r in (resources.iter("resource") if resources is not None else []):
        where = [n.get("name") for n in r.findall("node")]
        out["resources"][r.get("id")] = {"role": r.get("role"), "active": r.get("active") == "true",
                                         "managed": r.get("managed") == "true", "failed": r.get("failed") == "true",
                                         "nodes": where, "agent": r.get("resource_agent")}
    for f in root.iter("failure"):
        out["failures"].append(dict(f.attrib))
    for f in root.iter("fence_event"):
        out["fencing"].append(dict(f.attrib))
    return out


def maintenance(parsed: dict) -> bool:
    return parsed["options"].get("maintenance-mode") == "true"
