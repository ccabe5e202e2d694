#!/usr/bin/env bash
# Build the Debian rootfs that the tests boot as hosts with systemd-nspawn.
#
# Idempotent: a stamp in the rootfs holds the hash of this script, and a
# matching stamp means there is nothing to do. The tree is built in a
# temporary directory beside the target and renamed into place at the end,
# so an interrupted build never leaves a half rootfs behind.
#
# Environment:
#   INFORGE_TEST_ROOTFS  where the rootfs goes
#                        (default /var/cache/inforge-action/rootfs)
#   INFORGE_TEST_MIRROR  the Debian mirror (default deb.debian.org)
set -euo pipefail

rootfs=${INFORGE_TEST_ROOTFS:-/var/cache/inforge-action/rootfs}
mirror=${INFORGE_TEST_MIRROR:-http://deb.debian.org/debian}
suite=bookworm
packages=systemd,systemd-sysv,dbus,openssh-server,sudo,python3,curl,age
stamp=.inforge-rootfs-stamp
script_hash=$(sha256sum "${BASH_SOURCE[0]}" | cut -d' ' -f1)

is_current() {
    [[ -f $rootfs/$stamp && $(<"$rootfs/$stamp") == "$script_hash" ]]
}

if is_current; then
    exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
    echo "build_rootfs.sh: must run as root (debootstrap, chroot)" >&2
    exit 1
fi
for tool in debootstrap systemctl flock; do
    if ! command -v "$tool" >/dev/null; then
        echo "build_rootfs.sh: $tool is missing; install it with:" \
            "apt-get install systemd-container debootstrap util-linux" >&2
        exit 1
    fi
done

# Concurrent test runs may all find the stamp stale: one builds, the others
# wait for it and then find the rootfs current.
mkdir -p "$(dirname "$rootfs")"
exec 8>"$rootfs.build.lock"
flock 8
if is_current; then
    exit 0
fi

# A build killed outright leaves its temporary tree; only a builder holding
# the build lock can own one, so whatever is left now is garbage.
for stale in "$rootfs".new.* "$rootfs".old.*; do
    if [[ -e $stale ]]; then
        rm -rf --one-file-system "$stale"
    fi
done

work=$(mktemp -d "$rootfs.new.XXXXXX")
trap 'rm -rf --one-file-system "$work"' EXIT
chmod 0755 "$work"
echo "build_rootfs.sh: debootstrap $suite into $work" >&2
debootstrap --variant=minbase --include="$packages" \
    "$suite" "$work" "$mirror" >"$rootfs.build.log" 2>&1 || {
    tail -n 30 "$rootfs.build.log" >&2
    echo "build_rootfs.sh: debootstrap failed; full log in" \
        "$rootfs.build.log" >&2
    exit 1
}

in_root() {
    chroot "$work" "$@"
}

# The SSH login and the run-as users of the services under test.
in_root useradd --create-home --shell /bin/bash deploy
# '*' rather than the locked '!': no password works, yet the account is
# not locked, which some sshd and PAM setups treat as "no login at all".
in_root usermod --password '*' deploy
install -d -m 0700 "$work/home/deploy/.ssh"
install -m 0600 /dev/null "$work/home/deploy/.ssh/authorized_keys"
in_root chown -R deploy:deploy /home/deploy/.ssh
printf 'deploy ALL=(ALL) NOPASSWD: ALL\n' >"$work/etc/sudoers.d/deploy"
chmod 0440 "$work/etc/sudoers.d/deploy"
for user in api web worker; do
    in_root useradd --system --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin "$user"
done

install -d -m 0755 "$work/srv/wardnet" "$work/etc/wardnet/services"

# Each host brings its own keys and sshd drop-in: none may come from the
# image, and without the drop-in sshd must not start (it would listen on
# 0.0.0.0:22 of the machine, whose network the containers share).
rm -f "$work"/etc/ssh/ssh_host_*
install -d -m 0755 "$work/etc/systemd/system/ssh.service.d"
cat >"$work/etc/systemd/system/ssh.service.d/inforge-test.conf" <<'UNIT'
[Unit]
ConditionPathExists=/etc/ssh/sshd_config.d/inforge-host.conf
UNIT
if ! grep -q '^Include /etc/ssh/sshd_config.d/\*.conf' \
    "$work/etc/ssh/sshd_config"; then
    echo "build_rootfs.sh: sshd_config lacks the sshd_config.d Include" >&2
    exit 1
fi
# The audit login uid cannot always be set inside a container; a failure
# there must not end every SSH session.
sed -i 's/^session\s\+required\s\+pam_loginuid.so/session optional pam_loginuid.so/' \
    "$work/etc/pam.d/sshd"

# Units that slow the boot down or have nothing to do in a test host.
systemctl --root="$work" mask --quiet \
    console-getty.service getty@.service getty.target \
    systemd-timesyncd.service systemd-firstboot.service \
    apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer \
    e2scrub_all.timer e2scrub_reap.service fstrim.timer \
    systemd-pstore.service

# The hostname comes from nspawn and the machine id from the container
# manager, so each host has its own; an empty machine-id file means "not
# the first boot", and the one dbus wrote at install time would be shared.
rm -f "$work/etc/hostname" "$work/var/lib/dbus/machine-id"
: >"$work/etc/machine-id"

# Stand-in for the bootstrapper of the host image (see CONTRACT.md, "On
# the host"): it reads the service's descriptor, drops to the run-as user
# and execs <folder>/run from <folder>.
cat >"$work/usr/local/bin/inforge-bootstrap" <<'BOOTSTRAP'
#!/bin/sh
# Test stand-in for inforge-bootstrap: no secrets, just the hand-over.
set -eu

if [ "$#" -ne 1 ]; then
    echo "usage: inforge-bootstrap /etc/wardnet/services/<service>" >&2
    exit 2
fi
descriptor="$1/descriptor.yaml"
if [ ! -r "$descriptor" ]; then
    echo "inforge-bootstrap: cannot read $descriptor" >&2
    exit 1
fi

# Only flat "key: value" lines are read; quotes around a value are dropped.
read_key() {
    sed -n "s/^$1:[[:space:]]*//p" "$descriptor" | head -n 1 |
        sed -e 's/[[:space:]]*$//' -e "s/^[\"']//" -e "s/[\"']\$//"
}

folder=$(read_key folder)
user=$(read_key user)
if [ -z "$folder" ]; then
    echo "inforge-bootstrap: $descriptor names no folder" >&2
    exit 1
fi
cd "$folder"

if [ -z "$user" ]; then
    exec "$folder/run"
fi
home=$(getent passwd "$user" | cut -d: -f6)
export USER="$user" LOGNAME="$user" HOME="${home:-/}"
exec setpriv --reuid="$user" --regid="$user" --init-groups -- "$folder/run"
BOOTSTRAP
chmod 0755 "$work/usr/local/bin/inforge-bootstrap"

in_root apt-get clean
rm -rf "$work"/var/lib/apt/lists/*
echo "$script_hash" >"$work/$stamp"

# Swap the new tree in while no running host boots from the old one: hosts
# hold a shared lock on this file for as long as they run.
exec 9>"$rootfs.lock"
if ! flock -n -x 9; then
    echo "build_rootfs.sh: waiting for test hosts booted from" \
        "$rootfs to stop" >&2
    flock -x 9
fi
old=
if [[ -e $rootfs ]]; then
    old=$(mktemp -u "$rootfs.old.XXXXXX")
    mv "$rootfs" "$old"
fi
mv "$work" "$rootfs"
trap - EXIT
flock -u 9
if [[ -n $old ]]; then
    rm -rf --one-file-system "$old"
fi
echo "build_rootfs.sh: rootfs ready at $rootfs" >&2
