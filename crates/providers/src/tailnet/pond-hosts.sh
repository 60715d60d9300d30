#!/bin/sh
# crabbox-pond-hosts TAG OUT [SYSTEM_HOSTS]
#
# Writes OUT (/etc/hosts.cbx) and a managed block of SYSTEM_HOSTS
# (/etc/hosts) with one line `<tailnet IPv4> <slug>.cbx` per peer of this
# node's tailnet that carries TAG (the pond's ACL tag), from the node's own
# `tailscale status --json`: no credential is needed. A peer's slug is its
# hostname without the `crabbox-` prefix every member is enrolled with.
# Without a running tailscale, nothing is changed. Run by a systemd timer.
set -eu
tag=$1
out=$2
system_hosts=${3:-/etc/hosts}
status=$(mktemp)
trap 'rm -f "$status" "$out.new" "$system_hosts.new"' EXIT
tailscale status --json >"$status" 2>/dev/null || exit 0
python3 - "$tag" "$status" "$out" "$system_hosts" <<'PY'
import json, os, sys

tag, status_path, out_path, hosts_path = sys.argv[1:5]
with open(status_path) as f:
    status = json.load(f)
lines, seen = [], set()
for peer in sorted((status.get("Peer") or {}).values(), key=lambda p: p.get("HostName") or ""):
    if tag not in (peer.get("Tags") or []):
        continue
    ipv4 = next((ip for ip in peer.get("TailscaleIPs") or [] if ":" not in ip), "")
    host = peer.get("HostName") or ""
    slug = host[len("crabbox-"):] if host.startswith("crabbox-") else host
    if not ipv4 or not slug or ipv4 in seen:
        continue
    seen.add(ipv4)
    lines.append(f"{ipv4} {slug}.cbx")

def replace(path, text):
    with open(path + ".new", "w") as f:
        f.write(text)
    os.chmod(path + ".new", 0o644)
    os.replace(path + ".new", path)

replace(out_path, "# managed by crabbox-pond-hosts; do not edit\n" + "".join(l + "\n" for l in lines))

begin, end = "# crabbox pond hosts begin", "# crabbox pond hosts end"
try:
    with open(hosts_path) as f:
        kept = f.read().splitlines()
except FileNotFoundError:
    kept = []
outside, inside = [], False
for line in kept:
    if line == begin:
        inside = True
    elif line == end:
        inside = False
    elif not inside:
        outside.append(line)
replace(hosts_path, "".join(l + "\n" for l in outside + [begin] + lines + [end]))
PY
