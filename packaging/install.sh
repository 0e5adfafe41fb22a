#!/bin/sh
# Installs a `cargo xtask dist` tree (run from inside target/dist/):
# the binary, its man page and shell completions, the systemd unit, the
# Prometheus alert rules and the Grafana dashboard. PREFIX defaults to
# /usr/local; DESTDIR stages into another root (for packagers).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
prefix=${PREFIX:-/usr/local}
root=${DESTDIR:-}
install -Dm755 "$here/bin/switch" "$root$prefix/bin/switch"
install -Dm644 "$here/man/man1/switch.1" "$root$prefix/share/man/man1/switch.1"
install -Dm644 "$here/completions/switch.bash" "$root$prefix/share/bash-completion/completions/switch"
install -Dm644 "$here/completions/_switch" "$root$prefix/share/zsh/site-functions/_switch"
install -Dm644 "$here/completions/switch.fish" "$root$prefix/share/fish/vendor_completions.d/switch.fish"
# The unit names the binary where this prefix puts it.
mkdir -p "$root/etc/systemd/system"
sed "s|/usr/local/bin/switch|$prefix/bin/switch|g" "$here/systemd/switch.service" >"$root/etc/systemd/system/switch.service"
chmod 644 "$root/etc/systemd/system/switch.service"
install -Dm644 "$here/prometheus/switch-alerts.yml" "$root$prefix/share/switch/prometheus/switch-alerts.yml"
install -Dm644 "$here/grafana/switch.json" "$root$prefix/share/switch/grafana/switch.json"
echo "installed switch under $root$prefix (unit: $root/etc/systemd/system/switch.service)"
