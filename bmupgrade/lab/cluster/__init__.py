"""The real cluster lab (`bmupgrade lab up --cluster`): two namespaced nodes, real Corosync and
Pacemaker, real apt/dpkg with BlueMind-shaped packages, a fence agent that pulls plugs.

One concept per module: config (names, addresses), netns (bridge, veths, namespaces),
packages (the apt repository), cib (corosync.conf and the CIB), rootfs (a node's overlay
layers), bluemind (its API key, certificate, /etc/bm, csync2 set), init (a node's PID 1),
supervisor (the nodes' parent and power switch), node (commands inside a node), crmmon
(crm_mon XML), faults, lab (ClusterLab, the facade).
Needs root with CAP_SYS_ADMIN and CAP_NET_ADMIN; the stand-in lab (bmupgrade.lab) does not.
"""

__all__ = ["ClusterLab", "ClusterLabError"]


def __getattr__(name):
    if name == "ClusterLab":
        from bmupgrade.lab.cluster.lab import ClusterLab
        return ClusterLab
    if name == "ClusterLabError":
        from bmupgrade.lab.cluster.config import ClusterLabError
        return ClusterLabError
    raise AttributeError(name)
