"""Deploy and rollback: the phases of shipping a SHA to every host.

Resolve the targets from the stack, preflight every host and the store
before anything changes, download each artifact once and deliver it
beside the running release on every host, then switch: the first host
alone, the rest in parallel. A host is switched, its unit
restarted and watched; an unhealthy host is switched back. Each verified
host's manifest entry is written at once with compare-and-swap.
"""

from __future__ import annotations

import json
import tarfile
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import remote, store
from .commands import Run
from .errors import ActionError, ArtifactMissing, ConfigError, DeployError
from .report import format_table, host_lines, markdown_table


CONNECT_PARALLEL = 8
DISK_MARGIN = 3  # tarball plus extracted tree, with room to spare


@dataclass
class HostPlan:
    """What a deploy will do on one host, decided during preflight."""

    target: Any
    session: Any
    probe: remote.Probe
    sha: str
    action: str = "transfer"  # "transfer", "switch" or "unchanged"
    key: str = ""
    arch: str = ""

    @property
    def host(self) -> str:
        return self.target.host_dns

    @property
    def layout(self) -> remote.Layout:
        return remote.Layout(self.target.service, self.target.folder)


@dataclass
class HostResult:
    host: str
    previous: str
    sha: str
    result: str
    seconds: float
    detail: str = ""

    def as_output(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "previous": self.previous,
            "sha": self.sha,
            "result": self.result,
            "seconds": round(self.seconds, 2),
        }


@dataclass
class Rollout:
    """Shared state of the host phase: cancellation and results."""

    cancel: threading.Event = field(default_factory=threading.Event)
    results: list[HostResult] = field(default_factory=list)
    cancel_reported: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, result: HostResult) -> None:
        with self.lock:
            self.results.append(result)


def deploy(run: Run) -> None:
    _ship(run, rollback=False)


def rollback(run: Run) -> None:
    _ship(run, rollback=True)


COMMANDS = {"deploy": deploy, "rollback": rollback}


def _ship(run: Run, *, rollback: bool) -> None:
    inputs = run.inputs
    environment = run.environment_config()
    if environment.delivery != "raw":
        raise ConfigError(
            f"delivery {environment.delivery!r} of {run.service} in "
            f"{inputs.environment} is not supported: `raw` (SSH push) is "
            "the only delivery type; `container` is reserved"
        )
    targets = resolve_targets(run)
    plans: list[HostPlan] = []
    try:
        plans = preflight(run, targets, rollback=rollback)
        if inputs.dry_run:
            _report_plan(run, plans)
            return
        run.check_cancelled("the download")
        tarballs = download_artifacts(run, plans)
        deliver_all(run, plans, tarballs)
        run.check_cancelled("the rollout")
        rollout = Rollout(cancel=run.cancel)
        roll_out(run, plans, tarballs, environment.health_check, rollout)
    finally:
        for plan in plans:
            plan.session.close()
    commit_manifest_copy(run, rollout)
    _report_results(run, rollout)


def commit_manifest_copy(run: Run, rollout: Rollout) -> None:
    """Commit the store's manifest into the service repo; a failure warns.

    The store stays the source of truth, so a refused commit never fails
    a deploy whose hosts are already switched.
    """
    from .gitcommit import commit_manifest, manifest_message
    from .manifest import dump_manifest, manifest_key, read_manifest

    inputs, reporter = run.inputs, run.reporter
    hosts = sorted(r.host for r in rollout.results if r.result == "deployed")
    commit: str | None = None
    if inputs.commit_manifest and hosts:
        env = inputs.environment
        path = manifest_copy_path(run)
        sha = inputs.sha or _only_sha(rollout.results)
        with reporter.group(f"Commit {path}"):
            try:
                manifest, _ = read_manifest(
                    run.client, run.bucket, manifest_key(run.service, env)
                )
                commit = commit_manifest(
                    inputs.workspace,
                    path=path,
                    text=dump_manifest(manifest),
                    message=manifest_message(run.service, env, sha, hosts),
                    token=inputs.github_token,
                    runner=inputs.runner,
                )
            except ActionError as error:
                reporter.warning(
                    f"the hosts are deployed, but {path} was not "
                    f"committed: {error}",
                    title=error.title,
                )
    reporter.set_output("manifest-commit", commit or "")


def manifest_copy_path(run: Run) -> str:
    """Where the service repo keeps its copy of the store's manifest.

    ``deployments/manifest.<env>.yaml``; a repo that ships several
    services names the service too, so their copies never overwrite
    each other.
    """
    env, directory = run.inputs.environment, run.inputs.deployments_dir
    if run.has_deployments and len(run.service_repo.services) > 1:
        return f"{directory}/manifest.{run.service}.{env}.yaml"
    return f"{directory}/manifest.{env}.yaml"


def resolve_targets(run: Run) -> list[Any]:
    """The service's targets, read live from the stack's checkpoint."""
    from .descriptor import select_targets
    from .pulumi_state import open_backend, read_deploy_descriptor

    inputs, reporter = run.inputs, run.reporter
    platform = run.platform
    with reporter.group(f"Resolve targets of {run.service}"):
        backend = platform.backend
        reader = open_backend(
            backend.type,
            backend.url,
            platform_dir=run.platform_root,
            r2_account_id=inputs.r2_account_id,
            access_key_id=inputs.state_access_key_id
            or inputs.r2_access_key_id,
            secret_access_key=inputs.state_secret_access_key
            or inputs.r2_secret_access_key,
            checkout_branch=run.platform_checkout.checkout_branch,
            endpoint_url=inputs.endpoint_url or None,
        )
        descriptor = read_deploy_descriptor(
            reader,
            platform.name,
            inputs.environment,
            passphrase=inputs.pulumi_passphrase or None,
        )
        targets = select_targets(descriptor, run.service)
        for target in targets:
            reporter.info(
                f"{target.host_dns}: {target.unit}, {target.folder}, "
                f"login {target.ssh_user}"
                + (f", scope {target.scope}" if target.scope else "")
            )
    return targets


def connect_all(
    run: Run, targets: list[Any], failure: type[ActionError] = DeployError
) -> list[tuple[Any, Any]]:
    """One verified session per target; any failure closes them all."""
    from . import ssh

    inputs = run.inputs
    pkey = ssh.load_private_key(
        inputs.ssh_private_key, inputs.ssh_key_passphrase or None
    )
    known_hosts = ssh.parse_known_hosts(inputs.known_hosts)

    def open_one(target: Any) -> Any:
        return ssh.connect(
            target.host_dns,
            user=target.ssh_user,
            port=inputs.ssh_port,
            pkey=pkey,
            known_hosts=known_hosts,
            accept_new=inputs.host_key_policy == "accept-new",
            command_timeout=max(600.0, inputs.verify_seconds + 120),
        )

    sessions: list[tuple[Any, Any]] = []
    errors: list[ActionError] = []
    with ThreadPoolExecutor(min(CONNECT_PARALLEL, len(targets))) as pool:
        futures = [(t, pool.submit(open_one, t)) for t in targets]
        for target, future in futures:
            try:
                sessions.append((target, future.result()))
            except ActionError as error:
                errors.append(error)
    if errors:
        for _, session in sessions:
            session.close()
        summary = failure(
            "preflight failed, no host was changed:\n"
            + "\n".join(f"- {e}" for e in errors)
        )
        # One kind of failure everywhere (say, host keys) keeps its own
        # title, which is what the README's troubleshooting names.
        titles = {error.title for error in errors}
        if len(titles) == 1:
            summary.title = titles.pop()
        raise summary
    return sessions


def preflight(
    run: Run, targets: list[Any], *, rollback: bool
) -> list[HostPlan]:
    """Reach and probe every host and check the store; change nothing."""
    inputs, reporter = run.inputs, run.reporter
    with reporter.group(f"Preflight {len(targets)} host(s)"):
        sessions = connect_all(run, targets)
        plans: list[HostPlan] = []
        problems: list[str] = []
        try:
            with ThreadPoolExecutor(len(sessions)) as pool:
                probes = list(
                    pool.map(
                        lambda pair: _probe(*pair),
                        sessions,
                    )
                )
            for (target, session), found in zip(sessions, probes, strict=True):
                if isinstance(found, ActionError):
                    problems.append(str(found))
                    continue
                sha = inputs.sha
                if rollback and not sha:
                    sha = found.previous
                    if not sha:
                        problems.append(
                            f"{target.host_dns}: no previous release is "
                            "recorded on the host; give the `sha` to roll "
                            "back to"
                        )
                plans.append(HostPlan(target, session, found, sha))
                problems.extend(_host_problems(target, found))
            if not problems:
                problems.extend(_choose_artifacts(run, plans))
        except BaseException:
            for _, session in sessions:
                session.close()
            raise
        if problems:
            for _, session in sessions:
                session.close()
            raise DeployError(
                "preflight failed, no host was changed:\n"
                + "\n".join(f"- {p}" for p in problems)
            )
        for plan in plans:
            reporter.info(
                f"{plan.host}: {plan.probe.machine}, active "
                f"{plan.probe.active or '-'}, {plan.action} {plan.sha}"
            )
    return plans


def _probe(target: Any, session: Any) -> remote.Probe | ActionError:
    layout = remote.Layout(target.service, target.folder)
    try:
        return remote.probe(session, layout, target.unit)
    except ActionError as error:
        return error


def _host_problems(target: Any, probe: remote.Probe) -> list[str]:
    host = target.host_dns
    problems = []
    if not probe.has_sudo:
        problems.append(
            f"{host}: `sudo -n true` failed for {target.ssh_user}; give it "
            "password-less sudo"
        )
    if not probe.arch:
        problems.append(
            f"{host}: unsupported architecture {probe.machine!r} "
            "(uname -m); supported: x86_64 (amd64), aarch64 (arm64)"
        )
    if not probe.has_parent or probe.unit_state != "loaded":
        problems.append(
            f"{host}: {target.unit} is {probe.unit_state or 'unknown'} and "
            f"{target.folder}'s parent "
            + ("exists" if probe.has_parent else "is missing")
            + "; run `command: provision` for this environment first"
        )
    return problems


def _choose_artifacts(run: Run, plans: list[HostPlan]) -> list[str]:
    """Decide each host's action and artifact by the arch rules."""
    inputs = run.inputs
    problems = []
    stored: dict[str, dict[str, store.Variant]] = {}
    for plan in plans:
        if plan.probe.active == plan.sha and not inputs.force:
            plan.action = "unchanged"
        elif plan.probe.holds(plan.sha):
            plan.action = "switch"
        else:
            plan.action = "transfer"
        if plan.sha not in stored:
            stored[plan.sha] = _variants(run, plan.sha)
        variants = stored[plan.sha]
        arches = sorted(a for a in variants if a)
        if arches and plan.probe.arch in variants:
            plan.arch = plan.probe.arch
        if plan.action != "transfer":
            continue
        if arches and plan.probe.arch not in variants:
            problems.append(
                f"{plan.host}: no {plan.probe.arch} variant of {plan.sha} "
                f"(stored: {', '.join(arches)}); push one with `arch: "
                f"{plan.probe.arch}`, other variants are never used instead"
            )
            continue
        variant = variants.get(plan.arch)
        if variant is None:
            problems.append(
                f"{plan.host}: s3://{run.bucket}/"
                f"{store.artifact_key(run.service, plan.sha)} does not "
                "exist; push that SHA first, or choose one that "
                "`command: list` shows"
            )
            continue
        plan.key = variant.key
        needed_kb = variant.size * DISK_MARGIN // 1024
        free = plan.probe.free_kb
        if free is not None and free < needed_kb:
            problems.append(
                f"{plan.host}: {free} KiB free beside {plan.target.folder}, "
                f"{needed_kb} KiB needed; free disk space or lower "
                "`keep-releases`"
            )
    return problems


def _variants(run: Run, sha: str) -> dict[str, store.Variant]:
    found = store.list_releases(run.client, run.bucket, run.service, sha)
    return {v.arch: v for release in found for v in release.variants}


def download_artifacts(run: Run, plans: list[HostPlan]) -> dict[str, Any]:
    """Each needed artifact once, its sha256 and its members checked."""
    from .packing import check_members

    keys = sorted({plan.key for plan in plans if plan.action == "transfer"})
    tarballs: dict[str, tuple[Path, str]] = {}
    if not keys:
        return tarballs
    folder = run.temp_dir("download")
    with run.reporter.group(f"Download {len(keys)} artifact(s)"):
        for index, key in enumerate(keys):
            path = folder / f"{index}.tar.gz"
            digest = store.download_artifact(run.client, run.bucket, key, path)
            try:
                with tarfile.open(path, "r:gz") as archive:
                    check_members(archive)
            except tarfile.TarError as error:
                raise ArtifactMissing(
                    f"s3://{run.bucket}/{key} is not a gzip'd tar: {error}; "
                    "push the SHA again from a clean build"
                ) from error
            tarballs[key] = (path, digest)
            run.reporter.info(f"{key}: sha256 {digest}")
    return tarballs


def deliver_all(
    run: Run, plans: list[HostPlan], tarballs: dict[str, tuple[Path, str]]
) -> None:
    """Put the release beside the running one on every host, in parallel.

    Nothing runs it yet, so a failure here leaves every service as it
    was; the switches that follow need no transfer and stay short.
    """
    needed = [plan for plan in plans if plan.action == "transfer"]
    if not needed:
        return

    def deliver(plan: HostPlan) -> str:
        path, digest = tarballs[plan.key]
        started = time.monotonic()
        try:
            remote.deliver(plan.session, plan.layout, plan.sha, path, digest)
        except ActionError as error:
            return str(error)
        run.reporter.info(
            f"{plan.host}: {plan.sha} delivered in "
            f"{time.monotonic() - started:.1f} s"
        )
        return ""

    with run.reporter.group(f"Deliver to {len(needed)} host(s)"):
        with ThreadPoolExecutor(run.inputs.max_parallel) as pool:
            problems = [p for p in pool.map(deliver, needed) if p]
    if problems:
        raise DeployError(
            "delivery failed, no host was switched:\n"
            + "\n".join(f"- {problem}" for problem in problems)
        )


def roll_out(
    run: Run,
    plans: list[HostPlan],
    tarballs: dict[str, tuple[Path, str]],
    health_url: str,
    rollout: Rollout,
) -> None:
    """The first host alone, then the rest, ``max-parallel`` at once."""
    reporter = run.reporter
    pending = list(plans)
    failed = threading.Event()

    def one(plan: HostPlan) -> None:
        result = ship_host(run, plan, tarballs, health_url)
        rollout.record(result)
        if result.result == "failed":
            failed.set()

    with reporter.group(f"Deploy to {len(plans)} host(s)"):
        if pending:
            one(pending.pop(0))
        with ThreadPoolExecutor(run.inputs.max_parallel) as pool:
            running = set()
            while pending or running:
                if rollout.cancel.is_set() and not rollout.cancel_reported:
                    rollout.cancel_reported = True
                    reporter.warning(
                        "the job is being cancelled: no new host starts; "
                        "hosts being switched finish or revert",
                        title="Cancelling",
                    )
                while (
                    pending
                    and len(running) < run.inputs.max_parallel
                    and not failed.is_set()
                    and not rollout.cancel.is_set()
                ):
                    running.add(pool.submit(one, pending.pop(0)))
                if not running:
                    break
                done, running = wait(running, timeout=0.5,
                                     return_when=FIRST_COMPLETED)  # fmt: skip
                for future in done:
                    future.result()
        reason = "cancelled" if rollout.cancel.is_set() else "not started"
        for plan in pending:
            rollout.record(
                HostResult(plan.host, plan.probe.active, plan.sha,
                           "skipped", 0.0, reason)
            )  # fmt: skip


def ship_host(
    run: Run,
    plan: HostPlan,
    tarballs: dict[str, tuple[Path, str]],
    health_url: str,
) -> HostResult:
    """Switch, restart and verify one host; revert if unhealthy."""
    reporter, host = run.reporter, plan.host
    started = time.monotonic()
    previous = plan.probe.active

    def finish(result: str, detail: str = "") -> HostResult:
        elapsed = time.monotonic() - started
        line = f"{host}: {result} {plan.sha} in {elapsed:.1f} s"
        reporter.info(line + (f": {detail}" if detail else ""))
        return HostResult(host, previous, plan.sha, result, elapsed, detail)

    try:
        if plan.action == "unchanged":
            _record(run, plan, only_if_missing=True)
            return finish("unchanged", "already active")
        target = plan.layout.release_dir(plan.sha)
        old_target = remote.switch(plan.session, plan.layout, target)
        verdict = remote.restart_and_verify(
            plan.session, plan.target.unit, run.inputs.verify_seconds,
            health_url,
        )  # fmt: skip
        if not verdict.healthy:
            return finish("failed", _revert(run, plan, old_target, verdict))
        if old_target and old_target != target:
            remote.remember_previous(plan.session, plan.layout, old_target)
        try:
            _record(run, plan)
        except ActionError as error:
            # The host runs the new release; only the record is missing.
            # A second run is a no-op on this host that writes it.
            return finish(
                "unrecorded",
                f"runs {plan.sha}, verified, but its manifest entry was not "
                f"written: {error}. Run the deploy again to record it",
            )
        _clean(run, plan, old_target)
        return finish("deployed", verdict.detail)
    except ActionError as error:
        reporter.error(str(error), title=f"{host} failed")
        return finish("failed", str(error))


def _revert(run: Run, plan: HostPlan, old_target: str, verdict) -> str:
    """Switch back to what ran before; say what happened."""
    session, unit = plan.session, plan.target.unit
    journal = remote.journal_tail(session, unit, verdict.invocation)
    why = f"{unit} was unhealthy after the restart ({verdict.detail})"
    if old_target:
        remote.switch(session, plan.layout, old_target)
        again = remote.restart_and_verify(
            session, unit, run.inputs.verify_seconds
        )
        back = (
            f"reverted to {old_target}, which runs again"
            if again.healthy
            else f"reverted to {old_target}, which is unhealthy too "
            f"({again.detail})"
        )
    else:
        remote.unlink(session, plan.layout, unit)
        back = "nothing ran before; the unit is stopped and unlinked"
    message = f"{why}; {back}. Last journal lines:\n{journal}"
    run.reporter.error(message, title=f"{plan.host}: reverted")
    return f"{why}; {back}"


def _record(run: Run, plan: HostPlan, *, only_if_missing: bool = False):
    from .manifest import Entry, manifest_key, now_rfc3339, update_manifest

    def change(manifest) -> None:
        current = manifest.deployments.get(plan.host)
        if only_if_missing and current and current.sha == plan.sha:
            return
        extra = current.extra if current else {}
        manifest.deployments[plan.host] = Entry(
            plan.sha, plan.arch, deployed_at=now_rfc3339(), extra=extra
        )

    update_manifest(
        run.client,
        run.bucket,
        manifest_key(run.service, run.inputs.environment),
        change,
    )


def _clean(run: Run, plan: HostPlan, old_target: str) -> None:
    protect = [plan.sha]
    if old_target.startswith(plan.layout.releases + "/"):
        protect.append(old_target.rsplit("/", 1)[1])
    try:
        removed = remote.clean_releases(
            plan.session, plan.layout, run.inputs.keep_releases, protect
        )
    except ActionError as error:
        run.reporter.warning(
            f"{plan.host}: cleaning old releases failed: {error}",
            title="Cleanup failed",
        )
        return
    if removed:
        run.reporter.info(f"{plan.host}: removed {', '.join(removed)}")


def _report_plan(run: Run, plans: list[HostPlan]) -> None:
    headers = ["host", "arch", "active", "new", "action", "key"]
    rows = [
        [p.host, p.probe.arch, p.probe.active or "-", p.sha, p.action,
         p.key or "-"]
        for p in plans
    ]  # fmt: skip
    run.reporter.info(
        "dry run, nothing changed:\n" + format_table(headers, rows)
    )
    run.reporter.set_output("sha", run.inputs.sha)
    run.reporter.set_output("result", "dry-run")
    run.reporter.set_output(
        "hosts",
        json.dumps(
            [
                {"host": p.host, "previous": p.probe.active, "sha": p.sha,
                 "result": f"would {p.action}", "seconds": 0}
                for p in plans
            ]
        ),
    )  # fmt: skip
    run.reporter.add_summary(
        f"### Dry run: {run.service} to {run.inputs.environment}\n\n"
        + markdown_table(headers, rows)
    )


def _report_results(run: Run, rollout: Rollout) -> None:
    results = sorted(rollout.results, key=lambda r: r.host)
    failed = [r for r in results if r.result not in ("deployed", "unchanged")]
    run.reporter.set_output("sha", run.inputs.sha or _only_sha(results))
    run.reporter.set_output("result", "failure" if failed else "success")
    run.reporter.set_output(
        "hosts", json.dumps([r.as_output() for r in results])
    )
    headers = ["host", "previous", "sha", "result", "seconds"]
    rows = [
        [r.host, r.previous or "-", r.sha, r.result, f"{r.seconds:.1f}"]
        for r in results
    ]
    verb = "Rollback" if run.inputs.command == "rollback" else "Deploy"
    icon = "❌" if failed else "✅"
    run.reporter.add_summary(
        f"### {icon} {verb} of {run.service} to {run.inputs.environment}\n\n"
        + markdown_table(headers, rows)
    )
    if failed:
        details = host_lines(failed)
        counts = ", ".join(
            f"{sum(r.result == kind for r in failed)} {label}"
            for kind, label in (
                ("failed", "failed"),
                ("unrecorded", "not recorded"),
                ("skipped", "not started"),
            )
            if any(r.result == kind for r in failed)
        )
        raise DeployError(
            f"{run.service} did not reach every host ({counts}, of "
            f"{len(results)}):\n{details}\nEach line says what that host runs "
            "now; hosts not started were not touched. Fix the cause and "
            "deploy again"
        )


def _only_sha(results: list[HostResult]) -> str:
    shas = sorted({r.sha for r in results})
    return shas[0] if len(shas) == 1 else ""
