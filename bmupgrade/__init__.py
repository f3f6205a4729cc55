"""bmupgrade: guided, resumable upgrades of a two-node BlueMind HA cluster.

Kept import-light on purpose: `bmupgrade --help` and `plan` must start fast, so the SSH
stack (fabric/paramiko) and questionary are imported only by the modules that need them.
"""

__version__ = "0.1.0"
