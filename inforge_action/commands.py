"""The one place that orchestrates: each command as a sequence of phases.

Modules below this one talk to one outside system each and never print;
this module decides the order and hands results to the reporter.
"""

from __future__ import annotations

import json
import tempfile
import threading
from collections.abc import Callable
from contextlib import ExitStack
from functools import cached_property
from pathlib import Path
from typing import Any

from . import config, store
from .errors import ActionError, Cancelled, ConfigError, InputError
from .inputs import Inputs
from .report import Reporter, format_table, markdown_table


class Run:
    """What one command shares across its phases, each resolved once."""

    def __init__(
        self,
        inputs: Inputs,
        reporter: Reporter,
        stack: ExitStack,
        cancel: threading.Event | None = None,
    ):
        self.inputs = inputs
        self.reporter = reporter
        self._stack = stack
        self.cancel = cancel or threading.Event()

    def check_cancelled(self, phase: str) -> None:
        """Stop between phases once the runner asked the job to end."""
        if self.cancel.is_set():
            raise Cancelled(f"cancelled before {phase}; no host was changed")

    def temp_dir(self, name: str) -> Path:
        """A private temporary directory, removed when the run ends."""
        holder = tempfile.TemporaryDirectory(prefix=f"inforge-{name}-")
        return Path(self._stack.enter_context(holder))

    @cached_property
    def deployments(self) -> Path:
        return self.inputs.workspace / self.inputs.deployments_dir

    @cached_property
    def service_repo(self) -> config.ServiceRepoConfig:
        return config.load_service_repo(self.deployments)

    @cached_property
    def has_deployments(self) -> bool:
        """Is this the service repo? The platform repo has no deployments/."""
        return (self.deployments / "inforge.yaml").is_file()

    @cached_property
    def service(self) -> str:
        if self.inputs.service and not self.has_deployments:
            return self.inputs.service
        return config.resolve_service(
            self.inputs.service,
            self.service_repo,
            self.deployments / "inforge.yaml",
        )

    @cached_property
    def service_config(self) -> config.ServiceConfig:
        return config.load_service(self.deployments, self.service)

    def environment_config(self) -> config.EnvironmentConfig:
        return self.service_config.environment(
            self.inputs.environment,
            self.deployments / f"{self.service}.yaml",
        )

    @cached_property
    def platform_source(self):
        from .platform import PlatformSource

        repo = self.inputs.platform_repo
        if not repo:
            repo = self.service_config.platform or self.service_repo.platform
        return PlatformSource(
            repo=repo,
            url_template=self.inputs.platform_url,
            ref=self.inputs.platform_ref,
            token=self.inputs.platform_token,
        )

    @cached_property
    def platform_checkout(self):
        from .platform import PlatformCheckout

        return PlatformCheckout(
            self.platform_source, self.temp_dir("platform")
        )

    @cached_property
    def platform_root(self) -> Path:
        """The platform repo's checkout holding its inforge files."""
        return self.platform_checkout.config_dir()

    @cached_property
    def platform(self) -> config.PlatformConfig:
        with self.reporter.group("Read the platform repo"):
            root = self.platform_root
            platform = config.load_platform(root, self.inputs.environment)
            self.reporter.info(
                f"platform {self.platform_source.repo}: project "
                f"{platform.name}, state backend {platform.backend.type}"
            )
        return platform

    @cached_property
    def bucket(self) -> str:
        if self.inputs.bucket:
            return self.inputs.bucket
        artifacts = self.platform.artifacts.backend
        if artifacts is None:
            raise ConfigError(
                "the platform's inforge.yaml has no artifacts.backend; add "
                "it (type: r2, url: r2://<bucket>) or set the `bucket` input"
            )
        return config.bucket_from_url(
            artifacts.url, "artifacts.backend.url in the platform inforge.yaml"
        )

    @cached_property
    def keep(self) -> int:
        if self.inputs.keep is not None:
            return self.inputs.keep
        keep = self.platform.artifacts.keep
        if keep is None:
            raise ConfigError(
                "the platform's inforge.yaml has no artifacts.keep; add it "
                "or set the `keep` input"
            )
        return keep

    @cached_property
    def endpoint(self) -> str:
        if self.inputs.endpoint_url:
            return self.inputs.endpoint_url
        return store.r2_endpoint(self.inputs.r2_account_id)

    @cached_property
    def client(self) -> Any:
        return store.make_client(
            endpoint_url=self.endpoint,
            access_key_id=self.inputs.r2_access_key_id,
            secret_access_key=self.inputs.r2_secret_access_key,
        )


def run(
    inputs: Inputs,
    reporter: Reporter,
    cancel: threading.Event | None = None,
) -> None:
    """Run ``inputs.command`` to the end, or raise an ActionError."""
    commands: dict[str, Callable[[Run], None]] = {
        "push": push,
        "list": list_releases,
        "prune": prune,
    }
    from . import deploy, provision

    commands.update(deploy.COMMANDS)
    commands.update(provision.COMMANDS)
    with ExitStack() as stack:
        commands[inputs.command](Run(inputs, reporter, stack, cancel))


def artifact_dir(run: Run) -> Path:
    """The directory to package, from the input or deployments/."""
    relative = run.inputs.artifact_path
    if not relative and run.inputs.environment:
        relative = run.environment_config().artifact_path
    if not relative:
        paths = {
            e.artifact_path for e in run.service_config.environments.values()
        }
        if len(paths) > 1:
            raise InputError(
                f"the environments of {run.service} package different "
                f"directories ({', '.join(sorted(paths))}); set "
                "`environment` or `artifact-path` to choose one"
            )
        relative = paths.pop() if paths else "dist"
    path = (run.inputs.workspace / relative).resolve()
    workspace = run.inputs.workspace.resolve()
    if not path.is_relative_to(workspace):
        raise InputError(
            f"artifact path {relative!r} resolves to {path}, outside the "
            f"workspace {workspace}; use a directory inside the repo"
        )
    return path


def push(run: Run) -> None:
    from . import packing

    inputs, reporter = run.inputs, run.reporter
    service = run.service
    source = artifact_dir(run)
    key = store.artifact_key(service, inputs.sha, inputs.arch)
    bucket = run.bucket

    with reporter.group(f"Package {source}"):
        mtime = packing.source_date_epoch(
            inputs.runner.source_date_epoch, inputs.workspace, inputs.sha
        )
        packed = packing.pack(source, run.temp_dir("pack"), mtime=mtime)
        reporter.info(
            f"{packed.files} files, {packed.size} bytes, sha256 "
            f"{packed.sha256}"
        )
        if not packed.has_run:
            reporter.warning(
                f"{source} has no executable `run` at its top; the unit "
                "starts `<folder>/run` and is skipped while it is absent",
                title="No run entry point",
            )

    if inputs.dry_run:
        reporter.info(f"dry run: would upload s3://{bucket}/{key}")
        _push_outputs(reporter, inputs.sha, key, packed, created=False)
        reporter.set_output("pruned", [])
        return

    with reporter.group(f"Upload s3://{bucket}/{key}"):
        uploaded = store.upload_artifact(
            run.client, bucket, key, packed.path, packed.sha256
        )
        if uploaded.created:
            reporter.info(f"created s3://{bucket}/{key}")
        else:
            reporter.info(
                f"s3://{bucket}/{key} already holds these exact bytes; "
                "nothing uploaded"
            )
    _push_outputs(reporter, inputs.sha, key, packed, uploaded.created)

    pruned = prune_releases(run, protect=inputs.sha)
    reporter.set_output("pruned", pruned)
    verb = "Pushed" if uploaded.created else "Already pushed"
    reporter.add_summary(
        f"### {verb} {service} `{inputs.sha}`\n\n"
        + markdown_table(
            ["key", "sha256", "size", "pruned"],
            [[key, packed.sha256, packed.size, ", ".join(pruned) or "-"]],
        )
    )


def _push_outputs(reporter, sha, key, packed, created: bool) -> None:
    reporter.set_output("sha", sha)
    reporter.set_output("key", key)
    reporter.set_output("sha256", packed.sha256)
    reporter.set_output("size", str(packed.size))
    reporter.set_output("created", "true" if created else "false")


def prune_releases(run: Run, protect: str = "") -> list[str]:
    """Delete old unpinned releases; a failure is only a warning."""
    from .manifest import pinned_shas

    reporter = run.reporter
    with reporter.group(f"Prune {run.service} (keep {run.keep})"):
        try:
            releases = store.list_releases(run.client, run.bucket, run.service)
            pinned = pinned_shas(run.client, run.bucket, run.service)
            if protect:
                pinned = pinned | {protect}
            doomed = store.choose_prunable(releases, run.keep, pinned)
            if run.inputs.dry_run:
                reporter.info(
                    "dry run: would delete "
                    + (", ".join(r.sha for r in doomed) or "nothing")
                )
                return []
            store.delete_releases(run.client, run.bucket, doomed)
        except ActionError as error:
            reporter.warning(
                f"pruning {run.service} failed, the push stands: {error}",
                title="Prune failed",
            )
            return []
        names = [release.sha for release in doomed]
        reporter.info(
            f"{len(releases)} releases, {len(pinned)} pinned, deleted "
            + (", ".join(names) or "none")
        )
    return names


def prune(run: Run) -> None:
    run.reporter.set_output("pruned", prune_releases(run))


def list_releases(run: Run) -> None:
    from .manifest import read_environments

    reporter, service = run.reporter, run.service
    with reporter.group(f"Releases of {service} in {run.bucket}"):
        releases = store.list_releases(run.client, run.bucket, service)
        environments = read_environments(run.client, run.bucket, service)
        rows = [
            [
                release.sha,
                ",".join(a or "neutral" for a in release.arches),
                str(sum(v.size for v in release.variants)),
                release.newest.strftime("%Y-%m-%d %H:%M:%S"),
            ]
            for release in releases
        ]
        reporter.info(format_table(["sha", "arch", "bytes", "date"], rows))
        hosts = [
            [env, host, entry.sha, entry.arch or "neutral", entry.deployed_at]
            for env, manifest in sorted(environments.items())
            for host, entry in sorted(manifest.deployments.items())
            if not run.inputs.environment or env == run.inputs.environment
        ]
        headers = ["environment", "host", "sha", "arch", "deployed"]
        if hosts:
            reporter.info("")
            reporter.info(format_table(headers, hosts))

    document = {
        "service": service,
        "releases": [
            {
                "sha": release.sha,
                "arches": release.arches,
                "size": sum(v.size for v in release.variants),
                "date": release.newest.isoformat(),
            }
            for release in releases
        ],
        "environments": {
            env: {
                host: {
                    "sha": e.sha,
                    "arch": e.arch,
                    "deployedAt": e.deployed_at,
                }
                for host, e in manifest.deployments.items()
            }
            for env, manifest in environments.items()
        },
    }
    reporter.set_output("releases", json.dumps(document))
    reporter.add_summary(
        f"### Releases of {service}\n\n"
        + markdown_table(["sha", "arch", "bytes", "date"], rows)
        + ("\n\n" + markdown_table(headers, hosts) if hosts else "")
    )
