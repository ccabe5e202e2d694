"""Provision: make every host of a service ready for its first deploy.

Per target, as CONTRACT.md "On the host" describes: the folder's parent
and the releases directory, the unit ``wardnet-<service>.service`` that
runs ``inforge-bootstrap``, ``descriptor.yaml`` under
``/etc/wardnet/services/<service>`` and, for a service with a credential,
``credential.age``: the credential encrypted to the host's own SSH host
key, the one known-hosts pins and the connection verified.

One read-only round trip inspects every host before anything changes; a
second, only where something differs, writes each file atomically (a
temporary file in the same directory, then a rename). Service code and
release directories are never touched.
"""

from __future__ import annotations

import base64
import difflib
import hashlib
import json
import posixpath
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.nodes import MappingNode, ScalarNode

from . import remote
from .commands import Run
from .errors import ActionError, HostError, HostKeyError, ProvisionError
from .report import host_lines, markdown_table


SERVICES_DIR = "/etc/wardnet/services"
UNITS_DIR = "/etc/systemd/system"
BOOTSTRAP = "/usr/local/bin/inforge-bootstrap"
DESCRIPTOR_VERSION = 1
INSPECT_PARALLEL = 8
# age encrypts to ssh-ed25519 and ssh-rsa keys only; ed25519 is preferred.
CREDENTIAL_KEY_TYPES = ("ssh-ed25519", "ssh-rsa")
SHOWN_FINGERPRINT = 16
STR_TAG = "tag:yaml.org,2002:str"
INT_TAG = "tag:yaml.org,2002:int"
MAP_TAG = "tag:yaml.org,2002:map"
# `systemctl is-active` answers; "activating" includes a pending restart.
RUNNING_STATES = ("active", "activating", "reloading")


def render_unit(service: str, folder: str) -> str:
    """The unit provisioning owns, as CONTRACT.md "On the host" says."""
    return (
        "# Managed by inforge provisioning; changes here are overwritten.\n"
        "[Unit]\n"
        f"Description=wardnet service {service}\n"
        f"ConditionPathExists={folder}/run\n"
        "StartLimitIntervalSec=0\n"
        "\n"
        "[Service]\n"
        f"ExecStart={BOOTSTRAP} {service_dir(service)}\n"
        f"WorkingDirectory={folder}\n"
        "Restart=always\n"
        "RestartSec=5\n"
        f"RuntimeDirectory=wardnet/{service}\n"
        "\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
    )


def render_descriptor(target: Any, environment: str) -> str:
    """``descriptor.yaml``: where and as whom the service runs, no secrets.

    Flat ``key: value`` lines, so a line-based reader (the bootstrapper)
    finds ``folder`` and ``user`` as well as a YAML parser does. A value
    that some YAML reader could take for a number, bool or date is
    quoted, like the manifest's SHAs.
    """
    from .manifest import could_load_as_non_string

    fields = {
        "service": target.service,
        "environment": environment,
        "host": target.host_dns,
        "scope": target.scope,
        "folder": target.folder,
        "unit": target.unit,
        "user": target.user,
    }
    version = ScalarNode(INT_TAG, str(DESCRIPTOR_VERSION))
    pairs = [(_text("version"), version)]
    for name, value in fields.items():
        if value:
            quoted = could_load_as_non_string(value)
            pairs.append((_text(name), _text(value, quoted)))
    return yaml.serialize(
        MappingNode(MAP_TAG, pairs, flow_style=False),
        Dumper=yaml.SafeDumper,
        width=1 << 30,
    )


def _text(value: str, quoted: bool = False) -> ScalarNode:
    return ScalarNode(STR_TAG, value, style='"' if quoted else None)


def service_dir(service: str) -> str:
    return posixpath.join(SERVICES_DIR, service)


def credential_fingerprint(credential: str, recipient: str) -> str:
    """What ``credential.age.sha256`` holds: the credential and its key.

    age output differs on every run and cannot be decrypted here, so this
    is what tells whether ``credential.age`` must be written again.
    """
    digest = hashlib.sha256()
    digest.update(credential.encode())
    digest.update(b"\0")
    digest.update(recipient.encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class Paths:
    """The files provisioning owns for one target."""

    unit: str
    descriptor: str
    credential: str
    fingerprint: str

    @classmethod
    def of(cls, target: Any) -> Paths:
        directory = service_dir(target.service)
        credential = posixpath.join(directory, "credential.age")
        return cls(
            unit=posixpath.join(UNITS_DIR, target.unit),
            descriptor=posixpath.join(directory, "descriptor.yaml"),
            credential=credential,
            fingerprint=credential + ".sha256",
        )


@dataclass(frozen=True)
class HostState:
    """What the read-only round trip found on a host."""

    files: dict[str, str]  # path -> content, for the files that exist
    has_credential: bool
    missing_dirs: tuple[str, ...]
    has_folder: bool
    has_run: bool
    enabled: str
    active: str
    host_key_types: tuple[str, ...]


INSPECT_SCRIPT = r"""
folder=$1 releases=$2 unit=$3 credential=$4
shift 4
for path in "$@"; do
    if [ -f "$path" ]; then
        printf 'file=%s ' "$path"
        base64 -w 0 < "$path"
        echo
    fi
done
if [ -f "$credential" ]; then echo credential=yes; fi
parent=$(dirname "$folder")
for dir in "$parent" "$(dirname "$releases")" "$releases" \
    "$(dirname "$credential")"; do
    if [ ! -d "$dir" ]; then echo "missing=$dir"; fi
done
if [ -e "$folder" ] || [ -L "$folder" ]; then echo folder=yes; fi
if [ -e "$folder/run" ]; then echo run=yes; fi
echo "enabled=$(systemctl is-enabled "$unit" 2>/dev/null)"
echo "active=$(systemctl is-active "$unit" 2>/dev/null)"
for key in /etc/ssh/ssh_host_*_key.pub; do
    if [ -f "$key" ]; then echo "hostkey=$(cut -d ' ' -f 1 "$key")"; fi
done
"""


def inspect_host(session: Any, target: Any) -> HostState:
    """Read the owned files and the unit's state in one round trip."""
    paths = Paths.of(target)
    layout = remote.Layout(target.service, target.folder)
    result = session.run(
        ["sh", "-c", INSPECT_SCRIPT, "inspect", target.folder,
         layout.releases, target.unit, paths.credential, paths.unit,
         paths.descriptor, paths.fingerprint],
        sudo=True,
        check=False,
        phase="inspect",
    )  # fmt: skip
    if result.exit_code != 0:
        stderr = result.stderr.strip().splitlines()
        raise HostError(
            target.host_dns,
            "inspect",
            f"reading {paths.unit} and {paths.descriptor} as root failed "
            f"(exit {result.exit_code}: "
            f"{stderr[-1] if stderr else 'no output'}); the login "
            f"{target.ssh_user} needs password-less sudo (`sudo -n`)",
        )

    files: dict[str, str] = {}
    values: dict[str, list[str]] = {}
    for line in result.stdout.splitlines():
        name, _, value = line.partition("=")
        if name == "file":
            path, _, encoded = value.partition(" ")
            files[path] = base64.b64decode(encoded).decode(errors="replace")
        else:
            values.setdefault(name, []).append(value)

    def one(name: str) -> str:
        return values.get(name, [""])[0]

    return HostState(
        files=files,
        has_credential=one("credential") == "yes",
        missing_dirs=tuple(values.get("missing", [])),
        has_folder=one("folder") == "yes",
        has_run=one("run") == "yes",
        enabled=one("enabled"),
        active=one("active"),
        host_key_types=tuple(values.get("hostkey", [])),
    )


@dataclass(frozen=True)
class FileWrite:
    """One file to write: where, with which mode and bytes."""

    path: str
    mode: str
    content: bytes


@dataclass
class HostPlan:
    """What provisioning changes on one host, decided before any change."""

    target: Any
    session: Any
    state: HostState
    writes: list[FileWrite] = field(default_factory=list)
    diffs: list[str] = field(default_factory=list)
    credential: str = ""  # "", "current" or "due"
    credential_shown: str = ""  # key type and fingerprint, for the log
    reload: bool = False
    enable: bool = False
    start: bool = False

    @property
    def host(self) -> str:
        return self.target.host_dns

    @property
    def created_dirs(self) -> list[str]:
        missing = list(self.state.missing_dirs)
        if not self.state.has_folder:
            missing.append(self.target.folder)
        return missing

    @property
    def changed(self) -> list[str]:
        """Directories created and files written; the sidecar goes unsaid."""
        sidecar = Paths.of(self.target).fingerprint
        written = [w.path for w in self.writes if w.path != sidecar]
        return self.created_dirs + written

    @property
    def unit_actions(self) -> list[str]:
        actions = [("enabled", self.enable), ("started", self.start)]
        return [name for name, due in actions if due]

    @property
    def outcome(self) -> str:
        if not self.changed and not self.unit_actions:
            return "unchanged"
        paths = Paths.of(self.target)
        existed = {paths.unit, paths.descriptor} & self.state.files.keys()
        return "changed" if existed else "created"


def plan_host(
    run: Run, target: Any, session: Any, state: HostState, recipient: str
) -> HostPlan:
    """Compare what the host has with what it should have."""
    plan = HostPlan(target, session, state)
    paths = Paths.of(target)

    texts = [
        (paths.descriptor, "0644",
         render_descriptor(target, run.inputs.environment)),
        (paths.unit, "0644", render_unit(target.service, target.folder)),
    ]  # fmt: skip
    for path, mode, wanted in texts:
        current = state.files.get(path)
        if current == wanted:
            continue
        plan.writes.append(FileWrite(path, mode, wanted.encode()))
        plan.diffs.append(_diff(path, current, wanted))
    plan.reload = any(w.path == paths.unit for w in plan.writes)

    credential = run.inputs.credential
    if credential:
        fingerprint = credential_fingerprint(credential, recipient)
        plan.credential_shown = (
            f"for {recipient.split()[0]}, "
            f"sha256:{fingerprint[:SHOWN_FINGERPRINT]}"
        )
        stored = state.files.get(paths.fingerprint, "").strip()
        if stored == fingerprint and state.has_credential:
            plan.credential = "current"
        else:
            # Encrypted in a dry run too, so it proves the key works. The
            # sidecar follows the file it describes, and both come before
            # the unit, so a start finds them in place.
            ciphertext = _encrypt(target.host_dns, credential, recipient)
            plan.writes[:0] = [
                FileWrite(paths.credential, "0600", ciphertext),
                FileWrite(paths.fingerprint, "0600",
                          f"{fingerprint}\n".encode()),
            ]  # fmt: skip
            plan.credential = "due"

    # enabled-runtime lasts until the next boot only: enable it for good.
    plan.enable = state.enabled != "enabled"
    plan.start = state.has_run and state.active not in RUNNING_STATES
    return plan


def _diff(path: str, current: str | None, wanted: str) -> str:
    lines = difflib.unified_diff(
        (current or "").splitlines(keepends=True),
        wanted.splitlines(keepends=True),
        fromfile=path if current is not None else "/dev/null",
        tofile=path,
    )
    return "".join(lines).rstrip("\n")


def _encrypt(host: str, credential: str, recipient: str) -> bytes:
    import pyrage

    try:
        key = pyrage.ssh.Recipient.from_str(recipient)
        return pyrage.encrypt(credential.encode(), [key])
    except (pyrage.RecipientError, pyrage.EncryptError) as error:
        raise HostKeyError(
            host,
            "credential",
            f"age cannot encrypt to the host's {recipient.split()[0]} key "
            f"({error}); pin the host's ssh-ed25519 key in known-hosts",
        ) from error


def credential_recipient(
    target: Any, session: Any, known_hosts: Any, port: int, state: HostState
) -> str:
    """The verified host key as an age recipient, ``ssh-ed25519 AAAA...``.

    Only a key that known-hosts pins counts: one accepted on first use
    (accept-new) could belong to anybody.
    """
    from .ssh import fingerprint

    host = target.host_dns
    key = session.host_key
    name = key.get_name()
    lookup = host if port == 22 else f"[{host}]:{port}"
    pinned = dict((known_hosts.lookup(lookup) or {}).items())
    pinned_types = ", ".join(sorted(pinned)) or "none"
    on_host = ", ".join(state.host_key_types) or "none found"
    scan = f"`ssh-keyscan -t ed25519 -p {port} {host}`"

    if pinned.get(name) != key:
        raise HostKeyError(
            host,
            "credential",
            f"the {name} host key {fingerprint(key)} is not pinned in "
            "known-hosts (it was accepted as new), and a credential is "
            "only encrypted to a pinned key. Check the key out of band, "
            f"then add the line from {scan} to known-hosts",
        )
    if name not in CREDENTIAL_KEY_TYPES:
        raise HostKeyError(
            host,
            "credential",
            f"the credential needs an ssh-ed25519 (preferred) or ssh-rsa "
            f"host key, but the host presented {name}; known-hosts pins "
            f"{pinned_types} for it, and its /etc/ssh has {on_host}. Give "
            "the host an ed25519 host key (ssh-keygen -A), check it out of "
            f"band and add the line from {scan} to known-hosts",
        )
    return f"{name} {key.get_base64()}"


APPLY_SCRIPT = r"""
trap '' HUP PIPE
set -eu
umask 022
folder=$1 releases=$2 unit=$3 reload=$4
shift 4
tmp=
trap 'if [ -n "$tmp" ]; then rm -f -- "$tmp"; fi' EXIT
mkdir -p -- "$releases"
if [ ! -e "$folder" ] && [ ! -L "$folder" ]; then mkdir -- "$folder"; fi
while [ "$#" -ge 2 ]; do
    dest=$1 mode=$2
    shift 2
    IFS= read -r data
    dir=$(dirname "$dest")
    mkdir -p -- "$dir"
    tmp=$(mktemp "$dir/.${dest##*/}.XXXXXXXX")
    printf '%s' "$data" | base64 -d > "$tmp"
    chmod "$mode" "$tmp"
    sync -- "$tmp" 2>/dev/null || true
    mv -f -- "$tmp" "$dest"
    tmp=
done
if [ "$reload" = yes ]; then systemctl daemon-reload; fi
if [ "$(systemctl is-enabled "$unit" 2>/dev/null)" != enabled ]; then
    systemctl enable --quiet "$unit"
fi
if [ -e "$folder/run" ] && ! systemctl is-active --quiet "$unit"; then
    systemctl start "$unit"
fi
"""


def apply_plan(plan: HostPlan) -> None:
    """Write the plan's files atomically, then enable and start the unit."""
    target = plan.target
    layout = remote.Layout(target.service, target.folder)
    pairs = [word for w in plan.writes for word in (w.path, w.mode)]
    stdin = b"".join(base64.b64encode(w.content) + b"\n" for w in plan.writes)
    plan.session.run(
        ["sh", "-c", APPLY_SCRIPT, "provision", target.folder,
         layout.releases, target.unit, "yes" if plan.reload else "no",
         *pairs],
        sudo=True,
        stdin=stdin,
        phase="provision",
    )  # fmt: skip


@dataclass
class HostResult:
    host: str
    result: str
    changed: list[str]
    unit: list[str]
    detail: str = ""

    def as_output(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "result": self.result,
            "changed": self.changed,
            "unit": self.unit,
        }


def provision(run: Run) -> None:
    """Provision every target of the service; ``dry-run`` only shows it."""
    from .deploy import connect_all, resolve_targets

    targets = resolve_targets(run)
    problems = [
        f"{t.host_dns}: unit {t.unit!r} is not a .service; provisioning "
        "writes a service unit: fix the target in the deployDescriptor"
        for t in targets
        if not t.unit.endswith(".service")
    ]
    if problems:
        raise ProvisionError(_preflight_failure(problems))

    with run.reporter.group(f"Connect to {len(targets)} host(s)"):
        sessions = connect_all(run, targets, ProvisionError)
    try:
        with run.reporter.group(f"Inspect {len(targets)} host(s)"):
            plans = _plan_all(run, sessions)
        if run.inputs.dry_run:
            _report_plan(run, plans)
            return
        run.check_cancelled("provisioning")
        results = _apply_all(run, plans)
    finally:
        for _, session in sessions:
            session.close()
    _report_results(run, results)


def _plan_all(run: Run, sessions: list[tuple[Any, Any]]) -> list[HostPlan]:
    """Inspect every host and decide its changes; any problem stops all."""
    from .ssh import parse_known_hosts

    inputs = run.inputs
    known_hosts = parse_known_hosts(inputs.known_hosts)

    def inspect_one(pair: tuple[Any, Any]) -> HostState | ActionError:
        target, session = pair
        try:
            return inspect_host(session, target)
        except ActionError as error:
            return error

    with ThreadPoolExecutor(min(INSPECT_PARALLEL, len(sessions))) as pool:
        states = list(pool.map(inspect_one, sessions))

    plans: list[HostPlan] = []
    problems: list[str] = []
    for (target, session), state in zip(sessions, states, strict=True):
        if isinstance(state, ActionError):
            problems.append(str(state))
            continue
        if state.enabled.startswith("masked"):
            problems.append(
                f"{target.host_dns}: {target.unit} is masked; provisioning "
                "leaves a masked unit alone. Run `systemctl unmask "
                f"{target.unit}` on the host if inforge should manage it"
            )
            continue
        recipient = ""
        try:
            if inputs.credential:
                recipient = credential_recipient(
                    target, session, known_hosts, inputs.ssh_port, state
                )
            plans.append(plan_host(run, target, session, state, recipient))
        except ActionError as error:
            problems.append(str(error))
    if problems:
        raise ProvisionError(_preflight_failure(problems))

    for plan in plans:
        todo = len(plan.changed) + len(plan.unit_actions)
        line = f"{plan.host}: {todo or 'no'} change(s) to make"
        if plan.credential:
            state = "up to date" if plan.credential == "current" else "due"
            line += f"; credential.age {state} ({plan.credential_shown})"
        run.reporter.info(line)
    return plans


def _preflight_failure(problems: list[str]) -> str:
    lines = "\n".join(f"- {problem}" for problem in problems)
    return f"provisioning preflight failed, no host was changed:\n{lines}"


def _apply_all(run: Run, plans: list[HostPlan]) -> list[HostResult]:
    """Apply each host's plan, ``max-parallel`` hosts at once."""
    reporter = run.reporter
    results: list[HostResult] = []
    lock = threading.Lock()

    def one(plan: HostPlan) -> None:
        changed, unit = plan.changed, plan.unit_actions
        if run.cancel.is_set():
            result = HostResult(plan.host, "skipped", [], [], "cancelled")
        elif plan.outcome == "unchanged":
            result = HostResult(plan.host, "unchanged", [], [])
        else:
            try:
                apply_plan(plan)
                result = HostResult(plan.host, plan.outcome, changed, unit)
            except ActionError as error:
                reporter.error(str(error), title=f"{plan.host} failed")
                result = HostResult(plan.host, "failed", [], [], str(error))
        _log_result(run, plan, result)
        with lock:
            results.append(result)

    with reporter.group(f"Provision {len(plans)} host(s)"):
        with ThreadPoolExecutor(run.inputs.max_parallel) as pool:
            list(pool.map(one, plans))
    return sorted(results, key=lambda r: r.host)


def _log_result(run: Run, plan: HostPlan, result: HostResult) -> None:
    done = result.changed + [f"{a} {plan.target.unit}" for a in result.unit]
    line = f"{result.host}: {result.result}"
    if done:
        line += ": " + ", ".join(done)
    if result.detail:
        line += f": {result.detail}"
    run.reporter.info(line)
    paths = Paths.of(plan.target)
    configured = {paths.unit, paths.descriptor} & set(result.changed)
    if configured and plan.state.active in RUNNING_STATES:
        run.reporter.warning(
            f"{result.host}: {plan.target.unit} keeps running with its old "
            "configuration until its next restart (the next deploy "
            "restarts it)",
            title="Restart pending",
        )


def _report_plan(run: Run, plans: list[HostPlan]) -> None:
    reporter = run.reporter
    for plan in plans:
        with reporter.group(f"Dry run: {plan.host} {_would(plan.outcome)}"):
            for directory in plan.created_dirs:
                reporter.info(f"would create {directory}/")
            for diff in plan.diffs:
                reporter.info(diff)
            if plan.credential == "due":
                reporter.info(
                    f"would write credential.age ({plan.credential_shown})"
                )
            for action in plan.unit_actions:
                verb = {"enabled": "enable", "started": "start"}[action]
                reporter.info(f"would {verb} {plan.target.unit}")
    outputs = [
        {
            "host": p.host,
            "result": _would(p.outcome),
            "changed": p.changed,
            "unit": p.unit_actions,
        }
        for p in plans
    ]
    rows = [
        [o["host"], o["result"], ", ".join(o["changed"] + o["unit"]) or "-"]
        for o in outputs
    ]
    reporter.info("dry run, nothing changed")
    reporter.set_output("result", "dry-run")
    reporter.set_output("hosts", json.dumps(outputs))
    reporter.add_summary(
        f"### Dry run: provision {run.service} in "
        f"{run.inputs.environment}\n\n"
        + markdown_table(["host", "result", "would change"], rows)
    )


def _would(outcome: str) -> str:
    return {"created": "would create", "changed": "would change"}.get(
        outcome, outcome
    )


def _report_results(run: Run, results: list[HostResult]) -> None:
    failed = [r for r in results if r.result in ("failed", "skipped")]
    run.reporter.set_output("result", "failure" if failed else "success")
    run.reporter.set_output(
        "hosts", json.dumps([r.as_output() for r in results])
    )
    rows = [
        [r.host, r.result, ", ".join(r.changed + r.unit) or "-"]
        for r in results
    ]
    icon = "❌" if failed else "✅"
    run.reporter.add_summary(
        f"### {icon} Provision {run.service} in {run.inputs.environment}"
        "\n\n" + markdown_table(["host", "result", "changed"], rows)
    )
    if failed:
        details = host_lines(failed)
        raise ProvisionError(
            f"{len(failed)} of {len(results)} host(s) were not provisioned "
            f"for {run.service}:\n{details}\nEvery step is safe to repeat: "
            "fix the cause and run provision again"
        )


COMMANDS = {"provision": provision}
