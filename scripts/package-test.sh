#!/usr/bin/env bash
# Tests the Debian package that scripts/package.sh builds.
#
# 1. Always (where dpkg-deb exists): builds the package and checks it
#    without installing it: its name, control fields, files and modes, the
#    conffile, the maintainer scripts, the packaged environment file (what
#    the packaged binary's --env-file prints, nothing set), the packaged unit
#    (the operator kit's, `systemd-analyze verify` where available).
# 2. Only as root on a machine marked disposable (LIVECAST_TEST_INSTALL=1,
#    or CI=true as CI sets it): installs it with dpkg -i, runs the installed
#    binary as the livecast user with the packaged env file (edited to free
#    ports) sourced, checks /readyz and that SIGTERM exits 0; upgrades to a
#    bumped package and checks the edit survived; purges, and checks that
#    /usr/bin/livecast and /etc/livecast are gone and the user stays. The
#    unit is enabled by the install (its symlink), systemd running or not.
#    Where systemd runs (not in a container), the install started the unit
#    on its defaults: that is checked too.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "package-test: FAIL: $*" >&2; exit 1; }
say() { echo "package-test: $*"; }

if ! command -v dpkg-deb >/dev/null 2>&1; then
  say "skipped: no dpkg-deb here (not a Debian-based system)"
  exit 0
fi

deb=$(scripts/package.sh)
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
arch=$(dpkg --print-architecture)
case "$deb" in
  */debian/"livecast_${version}_${arch}.deb") [ -f "$deb" ] || fail "no file $deb" ;;
  *) fail "package path $deb, expected target/debian/livecast_${version}_${arch}.deb" ;;
esac
say "built $deb"

work=$(mktemp -d)
server_pid=
cleanup() {
  if [ -n "$server_pid" ]; then kill -KILL "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# --- 1. The package, not installed -----------------------------------------

field() { dpkg-deb --field "$deb" "$1"; }
[ "$(field Package)" = livecast ] || fail "Package: $(field Package)"
[ "$(field Version)" = "$version" ] || fail "Version: $(field Version)"
[ "$(field Architecture)" = "$arch" ] || fail "Architecture: $(field Architecture)"
case ", $(field Depends), " in
  *", adduser, "*) ;;
  *) fail "Depends lacks adduser (the postinst creates the user): $(field Depends)" ;;
esac

# Every file (directories aside) with its mode and owner (uid/gid 0): exactly these.
dpkg-deb --contents "$deb" | awk '$1 !~ /^d/ { print $1, $2, $6 }' | sort > "$work/files"
sort > "$work/files.expected" <<'EOF'
-rw-r----- 0/0 ./etc/livecast/livecast.env
-rw-r--r-- 0/0 ./usr/lib/systemd/system/livecast.service
-rw-r--r-- 0/0 ./usr/share/doc/livecast/copyright
-rwxr-xr-x 0/0 ./usr/bin/livecast
EOF
diff -u "$work/files.expected" "$work/files" || fail "the package's files or modes differ (above)"

dpkg-deb --control "$deb" "$work/control"
[ "$(cat "$work/control/conffiles")" = /etc/livecast/livecast.env ] \
  || fail "conffiles: $(cat "$work/control/conffiles")"
for script in postinst prerm postrm; do
  [ -x "$work/control/$script" ] || fail "no executable $script"
  sh -n "$work/control/$script" || fail "$script: shell syntax"
done
# grep_in FILE TEXT WHAT: FILE contains TEXT, a fixed string, else fail.
grep_in() { grep -qF -- "$2" "$1" || fail "$3"; }
grep_in "$work/control/postinst" "adduser --system" "postinst creates no system user"
grep_in "$work/control/postinst" "chmod 0640" "postinst sets no mode on the env file"
grep_in "$work/control/postinst" "deb-systemd-helper enable livecast.service" \
  "postinst does not enable the unit"
grep_in "$work/control/postinst" '_dh_action=restart' "postinst does not restart on upgrade"
# shellcheck disable=SC2016 # the script's own text, not expanded here
grep_in "$work/control/postinst" 'deb-systemd-invoke $_dh_action livecast.service' \
  "postinst does not start the unit"
grep_in "$work/control/prerm" "deb-systemd-invoke stop livecast.service" "prerm does not stop the unit"
grep_in "$work/control/postrm" "rm -rf /etc/livecast" "postrm does not remove /etc/livecast on purge"
if grep -q deluser "$work/control/postrm"; then fail "postrm removes the user"; fi

root="$work/root"
dpkg-deb --extract "$deb" "$root"
[ "$("$root/usr/bin/livecast" --version)" = "livecast $version" ] \
  || fail "packaged binary --version: $("$root/usr/bin/livecast" --version)"
"$root/usr/bin/livecast" --env-file | cmp -s - "$root/etc/livecast/livecast.env" \
  || fail "the packaged env file is not what the packaged binary's --env-file prints"
if grep -qv -e '^#' -e '^$' "$root/etc/livecast/livecast.env"; then
  fail "the packaged env file sets a variable: the service must start on its defaults"
fi
unit="$root/usr/lib/systemd/system/livecast.service"
cmp -s scripts/ops/livecast.service "$unit" || fail "the packaged unit is not scripts/ops/livecast.service"
for line in ExecStart=/usr/bin/livecast EnvironmentFile=/etc/livecast/livecast.env \
  User=livecast Group=livecast NoNewPrivileges=yes ProtectSystem=strict \
  CapabilityBoundingSet= SystemCallFilter=@system-service WantedBy=multi-user.target; do
  grep -qx -- "$line" "$unit" || fail "the packaged unit lacks $line"
done
if grep -q '^DynamicUser=' "$unit"; then fail "the unit has DynamicUser= (it runs as livecast)"; fi
if command -v systemd-analyze >/dev/null 2>&1; then
  # verify checks that ExecStart= is executable: point it at the extracted
  # binary. Unknown keys are only warned about: any output is a failure.
  sed "s|^ExecStart=/usr/bin/livecast|ExecStart=$root/usr/bin/livecast|" "$unit" \
    > "$work/livecast.service"
  out=$(systemd-analyze verify --man=no "$work/livecast.service" 2>&1) \
    || fail "systemd-analyze verify: $out"
  [ -z "$out" ] || fail "systemd-analyze verify: $out"
  say "unit verified by systemd-analyze"
else
  say "systemd-analyze not found: the unit is not verified"
fi
say "package contents, modes, conffile, scripts and unit: ok"

# --- 2. Install, run, upgrade, purge (disposable machines only) ------------

if [ "${LIVECAST_TEST_INSTALL:-}" != 1 ] && [ "${CI:-}" != true ]; then
  say "install test skipped: it installs into this machine; set LIVECAST_TEST_INSTALL=1 where that is fine"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  say "install test skipped: it needs root"
  exit 0
fi

env_file=/etc/livecast/livecast.env
mode_of() { stat -c '%a %U:%G' "$1"; }

# Leftovers of an interrupted run on this machine.
if dpkg-query -W livecast >/dev/null 2>&1; then
  say "purging a livecast package left installed"
  dpkg --purge livecast >/dev/null
fi
# From here on, whatever happens, leave no package behind.
cleanup_install() {
  cleanup
  dpkg --purge livecast >/dev/null 2>&1 || true
}
trap cleanup_install EXIT

dpkg -i "$deb" >"$work/dpkg.log" 2>&1 || { cat "$work/dpkg.log" >&2; fail "dpkg -i"; }
[ "$(dpkg-query -W -f '${Status}' livecast)" = "install ok installed" ] || fail "not installed"
getent passwd livecast >/dev/null || fail "no livecast user"
[ "$(id -u livecast)" -lt 1000 ] || fail "livecast is not a system user (uid $(id -u livecast))"
[ "$(mode_of /etc/livecast)" = "750 root:livecast" ] || fail "/etc/livecast: $(mode_of /etc/livecast)"
[ "$(mode_of "$env_file")" = "640 root:livecast" ] || fail "$env_file: $(mode_of "$env_file")"
[ "$(/usr/bin/livecast --version)" = "livecast $version" ] || fail "installed --version"
say "installed: /usr/bin/livecast, user livecast, $env_file 640 root:livecast"
# Enabled even where systemd is not running (a container), so that it
# starts when the machine boots with systemd.
wants=/etc/systemd/system/multi-user.target.wants/livecast.service
if command -v deb-systemd-helper >/dev/null 2>&1; then
  [ -L "$wants" ] || fail "livecast.service is not enabled ($wants)"
  say "livecast.service enabled"
fi

if [ -d /run/systemd/system ]; then
  # The install enabled and started the unit on its loopback defaults.
  systemctl is-enabled --quiet livecast || fail "livecast.service is not enabled"
  for _ in $(seq 100); do
    curl -fsS -o /dev/null http://127.0.0.1:9090/readyz 2>/dev/null && break
    sleep 0.1
  done
  systemctl is-active --quiet livecast || fail "livecast.service is not active"
  curl -fsS -o /dev/null http://127.0.0.1:9090/readyz || fail "the service's /readyz"
  say "livecast.service enabled, started, /readyz 200"
  systemctl stop livecast
fi

# The operator's edit: free ports (the defaults may be busy here), a mark.
sed -i -e 's/^#LIVE_WS_PORT=.*/LIVE_WS_PORT=0/' -e 's/^#HTTP_PORT=.*/HTTP_PORT=0/' "$env_file"
echo "# edited by the package test" >> "$env_file"
grep -qx LIVE_WS_PORT=0 "$env_file" || fail "edit of LIVE_WS_PORT"
grep -qx HTTP_PORT=0 "$env_file" || fail "edit of HTTP_PORT"
edited=$(sha256sum < "$env_file")

# run_installed: the installed binary as the livecast user, with the env
# file sourced as systemd would set it; waits for the banner, checks
# /readyz, stops it with SIGTERM and expects exit 0.
run_installed() {
  local out="$work/server.out"
  : > "$out"
  setpriv --reuid=livecast --regid=livecast --init-groups -- \
    env -i PATH=/usr/bin:/bin sh -c "set -a; . $env_file; exec /usr/bin/livecast" \
    > "$out" 2> "$work/server.err" &
  server_pid=$!
  local http=
  for _ in $(seq 200); do
    http=$(sed -n 's|^ *HTTP: *http://\([^/]*\)/.*|\1|p' "$out")
    [ -n "$http" ] && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.err" >&2; fail "livecast exited at start"; }
    sleep 0.05
  done
  [ -n "$http" ] || { cat "$work/server.err" >&2; fail "no banner within 10 s"; }
  [ "$(stat -c %U "/proc/$server_pid")" = livecast ] || fail "not running as livecast"
  case "$http" in
    127.0.0.1:9090) fail "the edited env file was not read (HTTP on the default port)" ;;
  esac
  local code
  code=$(curl -sS -o /dev/null -w '%{http_code}' "http://$http/readyz") || fail "curl /readyz"
  [ "$code" = 200 ] || fail "/readyz answered $code"
  kill -TERM "$server_pid"
  for _ in $(seq 400); do
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.05
  done
  kill -0 "$server_pid" 2>/dev/null && fail "still running 20 s after SIGTERM"
  local status=0
  wait "$server_pid" || status=$?
  server_pid=
  [ "$status" = 0 ] || { cat "$work/server.err" >&2; fail "exit code $status after SIGTERM"; }
  say "ran as livecast with $env_file: http://$http/readyz 200, SIGTERM -> exit 0"
}
run_installed

# An upgrade to a newer version keeps the edited conffile (and its modes).
# The same package with a higher version (cargo deb would delete $deb).
dpkg-deb --raw-extract "$deb" "$work/upgrade"
sed -i "s/^Version: .*/Version: $version+packagetest/" "$work/upgrade/DEBIAN/control"
dpkg-deb --root-owner-group -Zgzip --build "$work/upgrade" "$work/upgrade.deb" >/dev/null
dpkg -i "$work/upgrade.deb" </dev/null >"$work/dpkg.log" 2>&1 \
  || { cat "$work/dpkg.log" >&2; fail "dpkg -i (upgrade)"; }
[ "$(dpkg-query -W -f '${Version}' livecast)" = "$version+packagetest" ] || fail "not upgraded"
[ "$(sha256sum < "$env_file")" = "$edited" ] || fail "the upgrade changed the edited $env_file"
[ "$(mode_of "$env_file")" = "640 root:livecast" ] || fail "after upgrade $env_file: $(mode_of "$env_file")"
say "upgraded to $version+packagetest: the edited env file is kept"
run_installed

# A file of the operator's own beside the conffile (dpkg alone would leave
# it, and so /etc/livecast): purge removes it too.
echo '{}' > /etc/livecast/tokens.json
dpkg --purge livecast >"$work/dpkg.log" 2>&1 || { cat "$work/dpkg.log" >&2; fail "dpkg --purge"; }
dpkg-query -W livecast >/dev/null 2>&1 && fail "still known to dpkg after purge"
[ ! -e /usr/bin/livecast ] || fail "/usr/bin/livecast left after purge"
[ ! -e /etc/livecast ] || fail "/etc/livecast left after purge"
[ ! -e /usr/lib/systemd/system/livecast.service ] || fail "unit left after purge"
[ ! -L "$wants" ] || fail "$wants left after purge"
getent passwd livecast >/dev/null || fail "purge removed the livecast user (Debian keeps it)"
say "purged: /usr/bin/livecast and /etc/livecast gone, the livecast user kept"
