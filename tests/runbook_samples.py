"""Small runbooks shared by tests (kept as text: tests assert on line numbers)."""

MINIMAL = """\
version: 1
name: test
cluster:
  public_ip: 192.0.2.10
  nodes:
    - {name: bm1, host: 127.0.0.11, port: 2201}
    - {name: bm2, host: 127.0.0.12, port: 2202}
vars:
  target_version: "4.9.3"
  password: {value: hunter2secret, secret: true}
preflight:
  - {id: vip, builtin: single_vip_holder}
  - {id: ver, on: all, run: "dpkg-query -W -f='${Version}' bm-full", same_on_all_nodes: true, capture: from_version, until: packages}
  - {id: fence, on: primary, run: crm_attribute -n stonith-enabled -G -q, expect: "true", fencing: true}
steps:
  - id: ha-off
    on: primary
    ha: disable
    run: crm_attribute --type crm_config --name maintenance-mode --update true
    rollback: crm_attribute --type crm_config --name maintenance-mode --update false
  - id: packages
    on: all
    parallel: true
    run: apt-get install -y bm-full={{ target_version }}
    rollback: apt-get install -y --allow-downgrades bm-full={{ from_version }}
    timeout: 45m
  - id: post-install
    on: primary
    run: bm-cli setup upgrade --password {{ password }}
  - id: ha-on
    on: primary
    ha: enable
    run: crm_attribute --type crm_config --name maintenance-mode --update false
postflight:
  - {id: vip-after, builtin: single_vip_holder}
"""
