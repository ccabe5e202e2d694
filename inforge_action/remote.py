"""Releases on a host: probe, deliver, switch, restart and verify.

Host layout (``<parent>`` is the directory that holds ``<folder>``)::

    <parent>/.releases/<service>/<sha>/     one directory per release
    <parent>/.releases/<service>/.adopted/  the plain folder found first
    <parent>/.releases/<service>/.previous  link to the release before
    <folder> -> <parent>/.releases/<service>/<sha>

A release directory appears only complete (extracted aside, then
renamed), and ``<folder>`` is switched by renaming a new link over it,
so the unit never sees half a release. The scripts that change a host
ignore SIGHUP and SIGPIPE: a runner cancelled mid-switch loses only the
report, never the second half of a switch. Every script is a constant;
values travel as quoted arguments, never pasted into the script.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


ARCH_NAMES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64",
              "arm64": "arm64"}  # fmt: skip
PREVIOUS = ".previous"
ADOPTED = ".adopted"
JOURNAL_LINES = 20


@dataclass(frozen=True)
class Layout:
    """Where a service's releases live on a host."""

    service: str
    folder: str

    @property
    def parent(self) -> str:
        return posixpath.dirname(self.folder.rstrip("/"))

    @property
    def releases(self) -> str:
        return posixpath.join(self.parent, ".releases", self.service)

    def release_dir(self, name: str) -> str:
        return posixpath.join(self.releases, name)


@dataclass(frozen=True)
class Probe:
    """What one round trip learnt about a host before any change."""

    arch: str
    machine: str
    has_sudo: bool
    folder_kind: str  # "link", "dir" or "missing"
    active: str  # release name the folder points at, or ""
    previous: str  # release name of .previous, or ""
    releases: frozenset[str] = field(default_factory=frozenset)
    free_kb: int | None = None
    unit_state: str = ""
    has_parent: bool = True

    def holds(self, sha: str) -> bool:
        return sha in self.releases


PROBE_SCRIPT = r"""
folder=$1 releases=$2 unit=$3
parent=$(dirname "$folder")
echo "machine=$(uname -m)"
if sudo -n true 2>/dev/null; then echo sudo=yes; else echo sudo=no; fi
if [ -L "$folder" ]; then
    echo folder=link; echo "active=$(readlink "$folder")"
elif [ -d "$folder" ]; then echo folder=dir
else echo folder=missing; fi
if [ -d "$parent" ]; then
    echo parent=yes
    echo "free_kb=$(df -Pk "$parent" | awk 'NR == 2 {print $4}')"
else echo parent=no; fi
if [ -L "$releases/.previous" ]; then
    echo "previous=$(readlink "$releases/.previous")"
fi
if [ -d "$releases" ]; then
    for entry in "$releases"/*; do
        [ -d "$entry" ] && echo "release=${entry##*/}"
    done
fi
echo "unit=$(systemctl show -p LoadState --value "$unit" 2>/dev/null)"
"""


def probe(session: Any, layout: Layout, unit: str) -> Probe:
    """Learn the host's arch, sudo, active release and disk in one trip."""
    result = session.run(
        ["sh", "-c", PROBE_SCRIPT, "probe", layout.folder, layout.releases,
         unit],
        phase="probe",
    )  # fmt: skip
    values: dict[str, list[str]] = {}
    for line in result.stdout.splitlines():
        name, _, value = line.partition("=")
        values.setdefault(name, []).append(value)

    def one(name: str) -> str:
        return values.get(name, [""])[0]

    machine = one("machine")
    free = one("free_kb")
    return Probe(
        arch=ARCH_NAMES.get(machine, ""),
        machine=machine,
        has_sudo=one("sudo") == "yes",
        folder_kind=one("folder"),
        active=_release_name(one("active"), layout),
        previous=_release_name(one("previous"), layout),
        releases=frozenset(values.get("release", [])),
        free_kb=int(free) if free.isdigit() else None,
        unit_state=one("unit"),
        has_parent=one("parent") == "yes",
    )


def _release_name(target: str, layout: Layout) -> str:
    if target and posixpath.dirname(target) == layout.releases:
        return posixpath.basename(target)
    return ""


DELIVER_SCRIPT = r"""
set -eu
releases=$1 want=$2 name=$3
mkdir -p "$releases"
chmod 0755 "$(dirname "$releases")" "$releases"
if [ -d "$releases/$name" ]; then
    cat > /dev/null
    exit 0
fi
incoming=$(mktemp -d "$releases/.incoming.XXXXXXXX")
trap 'rm -rf "$incoming" "$incoming.pipe"' EXIT
mkfifo -m 0600 "$incoming.pipe"
tar -xzf "$incoming.pipe" -C "$incoming" --no-same-owner &
unpacking=$!
got=$(tee "$incoming.pipe" | sha256sum | cut -d ' ' -f 1)
if ! wait "$unpacking"; then
    echo "tar could not unpack the upload" >&2
    exit 5
fi
if [ "$got" != "$want" ]; then
    echo "the upload's sha256 is $got, expected $want" >&2
    exit 3
fi
chmod 0755 "$incoming"
mv -T "$incoming" "$releases/$name"
touch "$releases/$name"
"""


def deliver(
    session: Any, layout: Layout, name: str, tarball: Path, sha256: str
) -> None:
    """Stream a release into its own directory, checking its sha256.

    The upload is unpacked while it arrives, into a private directory
    that takes the release's name only once every byte matched.
    """
    with tarball.open("rb") as source:
        session.run(
            ["sh", "-c", DELIVER_SCRIPT, "deliver", layout.releases, sha256,
             name],
            sudo=True,
            stdin=source,
            phase="deliver",
        )  # fmt: skip


SWITCH_SCRIPT = r"""
trap '' HUP PIPE
set -eu
folder=$1 releases=$2 target=$3
current=
if [ -L "$folder" ]; then
    current=$(readlink "$folder")
elif [ -d "$folder" ]; then
    if [ -z "$(ls -A "$folder")" ]; then
        rmdir "$folder"
    elif [ -e "$releases/.adopted" ]; then
        echo "$folder is a directory and $releases/.adopted exists" >&2
        exit 4
    else
        mv -T "$folder" "$releases/.adopted"
        current="$releases/.adopted"
    fi
fi
link="$(dirname "$folder")/.$(basename "$folder").switch.$$"
ln -sfn "$target" "$link"
mv -T "$link" "$folder"
touch -h "$target" 2>/dev/null || true
echo "$current"
"""

REMEMBER_SCRIPT = r"""
set -eu
releases=$1 previous=$2
ln -sfn "$previous" "$releases/.previous.$$"
mv -T "$releases/.previous.$$" "$releases/.previous"
"""

UNLINK_SCRIPT = r"""
trap '' HUP PIPE
set -eu
folder=$1 unit=$2
if [ -L "$folder" ]; then rm -f "$folder"; fi
systemctl stop "$unit"
"""


def switch(session: Any, layout: Layout, target: str) -> str:
    """Point ``<folder>`` at ``target`` atomically; return the old target.

    A plain directory found at ``<folder>`` is adopted once as
    ``.adopted`` (an empty one is removed), so a first deploy still has
    something to go back to.
    """
    result = session.run(
        ["sh", "-c", SWITCH_SCRIPT, "switch", layout.folder,
         layout.releases, target],
        sudo=True,
        phase="switch",
    )  # fmt: skip
    return result.stdout.strip()


def remember_previous(session: Any, layout: Layout, previous: str) -> None:
    """Record ``previous`` as the release a plain rollback returns to.

    Called only once the new release is verified, so a release that
    failed and was reverted never becomes the rollback target.
    """
    session.run(
        ["sh", "-c", REMEMBER_SCRIPT, "remember", layout.releases,
         previous],
        sudo=True,
        phase="switch",
    )  # fmt: skip


def unlink(session: Any, layout: Layout, unit: str) -> None:
    """Go back to no release at all: remove the link, stop the unit."""
    session.run(
        ["sh", "-c", UNLINK_SCRIPT, "unlink", layout.folder, unit],
        sudo=True,
        phase="revert",
    )


RESTART_SCRIPT = r"""
trap '' HUP PIPE
unit=$1 seconds=$2 url=$3
snapshot() {
    state= sub= invocation= restarts= pid=
    while IFS='=' read -r key value; do
        case $key in
            ActiveState) state=$value ;;
            SubState) sub=$value ;;
            InvocationID) invocation=$value ;;
            NRestarts) restarts=$value ;;
            MainPID) pid=$value ;;
        esac
    done <<EOF
$(systemctl show -p ActiveState -p SubState -p InvocationID -p NRestarts \
    -p MainPID "$unit")
EOF
}
snapshot
before=$invocation
if ! systemctl restart "$unit"; then
    echo "verdict=restart-failed"; exit 0
fi
snapshot
started=$invocation
counted=$restarts
echo "started=$started"
answered=no
[ -z "$url" ] && answered=yes
ticks=$(awk -v s="$seconds" 'BEGIN {print int(s * 4 + 0.999)}')
i=0
while [ "$i" -lt "$ticks" ]; do
    snapshot
    if [ "$state/$sub" != "active/running" ] || [ "$started" = "$before" ] \
        || [ "$invocation" != "$started" ] || [ "$restarts" != "$counted" ]
    then
        echo "verdict=unhealthy"
        echo "state=$state/$sub restarts=$restarts invocation=$invocation"
        exit 0
    fi
    if [ "$answered" = no ] \
        && curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null; then
        answered=yes
    fi
    sleep 0.25
    i=$((i + 1))
done
if [ "$answered" = no ]; then
    echo "verdict=no-health"
    echo "state=$state/$sub, but $url never answered 2xx"
    exit 0
fi
echo "verdict=healthy"
echo "state=$state/$sub pid=$pid"
"""


@dataclass(frozen=True)
class Verdict:
    healthy: bool
    detail: str
    invocation: str = ""


def restart_and_verify(
    session: Any, unit: str, seconds: float, health_url: str = ""
) -> Verdict:
    """Restart ``unit`` and watch it; healthy only if it stays running.

    Healthy means active and running for the whole window under a new
    InvocationID with no added NRestarts, and, when ``health_url`` is
    set, a 2xx answer from the host within the window.
    """
    result = session.run(
        ["sh", "-c", RESTART_SCRIPT, "verify", unit, str(seconds),
         health_url],
        sudo=True,
        phase="restart",
        timeout=seconds + 60,
    )  # fmt: skip
    said: dict[str, str] = {}
    details = []
    for line in result.stdout.strip().splitlines():
        key, _, value = line.partition("=")
        if key in ("verdict", "started"):
            said[key] = value
        else:
            details.append(line)
    verdict = said.get("verdict", "no-output")
    detail = " ".join(details) or verdict
    return Verdict(verdict == "healthy", detail, said.get("started", ""))


def journal_tail(session: Any, unit: str, invocation: str = "") -> str:
    """The unit's last journal lines, for a failure report.

    With ``invocation``, only that run of the unit: the lines of the
    service itself and systemd's own about it.
    """
    if invocation:
        match = [f"_SYSTEMD_INVOCATION_ID={invocation}", "+",
                 f"INVOCATION_ID={invocation}"]  # fmt: skip
    else:
        match = ["-u", unit]
    result = session.run(
        ["journalctl", *match, "-n", str(JOURNAL_LINES), "--no-pager",
         "-o", "short-iso"],
        sudo=True,
        phase="journal",
        check=False,
    )  # fmt: skip
    return result.stdout.strip()


CLEANUP_SCRIPT = r"""
set -eu
releases=$1 keep=$2
shift 2
cd "$releases"
kept=0
for name in $(ls -1t); do
    [ -d "$name" ] || continue
    skip=no
    for protected in "$@"; do
        [ "$name" = "$protected" ] && skip=yes
    done
    [ "$skip" = yes ] && continue
    if [ "$kept" -lt "$keep" ]; then kept=$((kept + 1)); continue; fi
    rm -rf -- "$name"
    echo "$name"
done
"""


def clean_releases(
    session: Any, layout: Layout, keep: int, protect: list[str]
) -> list[str]:
    """Keep ``keep`` release directories beside the protected ones."""
    others = max(keep - len([p for p in protect if p]), 0)
    result = session.run(
        ["sh", "-c", CLEANUP_SCRIPT, "cleanup", layout.releases,
         str(others), *[p for p in protect if p]],
        sudo=True,
        phase="cleanup",
    )  # fmt: skip
    return result.stdout.split()
