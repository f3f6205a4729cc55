"""The cluster's configuration: corosync.conf and the pre-written CIB.

Timings are shortened (token 1000 ms, dc-deadtime 2 s) so the cluster is up in seconds instead
of ~25 s. The CIB's `crm_feature_set`/`validate-with` come from the installed `cibadmin --empty`:
a CIB newer than the daemons is discarded and the controller restarts in a loop.
"""

from __future__ import annotations

import subprocess
import xml.etree.ElementTree as ET

from bmupgrade.lab.cluster.config import ClusterConfig

VIP_RESOURCE = "vip"
BM_RESOURCE = "bluemind"


def corosync_conf(cfg: ClusterConfig) -> str:
    nodes = "".join("  node {\n    name: %s\n    nodeid: %d\n    ring0_addr: %s\n  }\n" % (n.name, n.index, n.address)
                    for n in cfg.nodes)
    return (
        "# bmupgrade cluster lab %s (written by `bmupgrade lab up --cluster`)\n"
        "totem {\n  version: 2\n  cluster_name: bmlab-%s\n  transport: knet\n  token: 1000\n"
        "  crypto_cipher: none\n  crypto_hash: none\n}\n"
        "nodelist {\n%s}\n"
        "quorum {\n  provider: corosync_votequorum\n  two_node: 1\n  wait_for_all: 1\n}\n"
        "logging {\n  to_logfile: yes\n  logfile: /var/log/corosync/corosync.log\n  to_syslog: no\n"
        "  to_stderr: no\n  timestamp: on\n}\n") % (cfg.name, cfg.name, nodes)


def _nv(parent: ET.Element, tag: str, id: str, pairs: dict) -> ET.Element:
    s = ET.SubElement(parent, tag, id=id)
    for k, v in pairs.items():
        ET.SubElement(s, "nvpair", id="%s-%s" % (id, k), name=k, value=str(v))
    return s


def _primitive(rscs: ET.Element, id: str, cls: str, type: str, provider: str | None, params: dict,
               monitor: str, meta: dict | None = None) -> None:
    p = ET.SubElement(rscs, "primitive", {"id": id, "class": cls, "type": type, **({"provider": provider} if provider else {})})
    if params:
        _nv(p, "instance_attributes", id + "-params", params)
    if meta:
        _nv(p, "meta_attributes", id + "-meta", meta)
    ops = ET.SubElement(p, "operations")
    ET.SubElement(ops, "op", id=id + "-monitor", name="monitor", interval=monitor, timeout="20s")


def empty_cib() -> ET.Element:
    out = subprocess.run(["cibadmin", "--empty"], capture_output=True, text=True, check=True).stdout
    return ET.fromstring(out)


def cib_xml(cfg: ClusterConfig) -> str:
    """The initial CIB: STONITH on with one lab fence device per node, VIP then BlueMind."""
    cib = empty_cib()
    conf = cib.find("configuration")
    _nv(conf.find("crm_config"), "cluster_property_set", "cib-bootstrap-options", {
        "stonith-enabled": "true", "cluster-name": "bmlab-" + cfg.name, "dc-deadtime": "2s",
        "stonith-timeout": "30s", "priority-fencing-delay": "2s", "cluster-recheck-interval": "1min"})
    nodes = conf.find("nodes")
    for n in cfg.nodes:
        ET.SubElement(nodes, "node", id=str(n.index), uname=n.name)
    rscs = conf.find("resources")
    for n in cfg.nodes:
        _primitive(rscs, "fence-" + n.name, "stonith", "fence_bmlab", None,
                   {"pcmk_host_list": n.name, "pcmk_host_check": "static-list"}, "60s")
    prefix = cfg.prefixlen
    _primitive(rscs, VIP_RESOURCE, "ocf", "IPaddr2", "heartbeat",
               {"ip": cfg.vip, "cidr_netmask": prefix, "nic": "eth0"}, "5s", {"priority": "10"})
    _primitive(rscs, BM_RESOURCE, "ocf", "bluemind", "bmlab", {}, "5s", {"priority": "10"})
    cons = conf.find("constraints")
    ET.SubElement(cons, "rsc_colocation", {"id": "bluemind-with-vip", "rsc": BM_RESOURCE, "with-rsc": VIP_RESOURCE,
                                           "score": "INFINITY"})
    ET.SubElement(cons, "rsc_order", {"id": "vip-then-bluemind", "first": VIP_RESOURCE, "then": BM_RESOURCE,
                                      "kind": "Mandatory"})
    ET.SubElement(cons, "rsc_location", {"id": "vip-prefers-bm1", "rsc": VIP_RESOURCE, "node": cfg.nodes[0].name,
                                         "score": "50"})
    for n in cfg.nodes:  # a node's fence device runs on its peer
        ET.SubElement(cons, "rsc_location", {"id": "fence-%s-not-on-self" % n.name, "rsc": "fence-" + n.name,
                                             "node": n.name, "score": "-INFINITY"})
    defaults = ET.SubElement(conf, "rsc_defaults")
    _nv(defaults, "meta_attributes", "rsc-options", {"resource-stickiness": "100"})
    return ET.tostring(cib, encoding="unicode") + "\n"
