"""The action's inputs and outputs by name: cheap to import.

``action.yml`` declares exactly these (a test checks both directions);
the command line offers each input as a flag of the same name.
"""

from typing import NamedTuple


class InputSpec(NamedTuple):
    default: str
    secret: bool
    help: str
    # What action.yml defaults to on a runner, where it differs.
    runner_default: str = ""


COMMANDS = ("push", "deploy", "rollback", "list", "prune", "provision")

INPUTS: dict[str, InputSpec] = {
    "command": InputSpec(
        "", False, "push, deploy, rollback, list, prune or provision"
    ),
    "service": InputSpec(
        "",
        False,
        "service name; default: the only one in deployments/inforge.yaml",
    ),
    "environment": InputSpec(
        "", False, "environment, which is also the Pulumi stack (prd, qa)"
    ),
    "sha": InputSpec(
        "",
        False,
        "release to push or deploy (default: GITHUB_SHA); for rollback, "
        "empty means each host's previous release",
    ),
    "arch": InputSpec(
        "", False, "empty for a neutral artifact, or amd64 / arm64"
    ),
    "artifact-path": InputSpec(
        "",
        False,
        "directory to package; overrides artifact_path in "
        "deployments/<service>.yaml",
    ),
    "deployments-dir": InputSpec(
        "deployments", False, "the service repo's deployments directory"
    ),
    "platform-repo": InputSpec(
        "", False, "platform repo owner/name; overrides inforge.yaml"
    ),
    "platform-ref": InputSpec(
        "",
        False,
        "branch, tag or commit SHA of the platform repo; default: its HEAD",
    ),
    "platform-token": InputSpec(
        "", True, "token that can read the platform repo"
    ),
    "platform-url": InputSpec(
        "https://github.com/{repo}.git",
        False,
        "clone URL template ({repo}); a local path or file:// URL works",
    ),
    "bucket": InputSpec(
        "", False, "artifact bucket; overrides the platform's inforge.yaml"
    ),
    "keep": InputSpec(
        "",
        False,
        "unpinned releases to keep when pruning; overrides artifacts.keep "
        "in the platform's inforge.yaml",
    ),
    "r2-account-id": InputSpec("", True, "Cloudflare account id for R2"),
    "r2-access-key-id": InputSpec("", True, "R2 access key id"),
    "r2-secret-access-key": InputSpec("", True, "R2 secret access key"),
    "endpoint-url": InputSpec(
        "", False, "any S3-compatible endpoint instead of R2's"
    ),
    "state-access-key-id": InputSpec(
        "", True, "access key for the Pulumi state bucket; default: R2's"
    ),
    "state-secret-access-key": InputSpec(
        "", True, "secret for the Pulumi state bucket; default: R2's"
    ),
    "pulumi-passphrase": InputSpec(
        "", True, "passphrase of the stack's secrets provider"
    ),
    "ssh-private-key": InputSpec(
        "", True, "private key of the hosts' SSH login (ed25519/ecdsa/rsa)"
    ),
    "ssh-key-passphrase": InputSpec(
        "", True, "passphrase of ssh-private-key when it is encrypted"
    ),
    "ssh-port": InputSpec("22", False, "SSH port of the hosts"),
    "known-hosts": InputSpec(
        "", False, "the hosts' public keys, OpenSSH known_hosts format"
    ),
    "host-key-policy": InputSpec(
        "strict", False, "strict, or accept-new to trust unknown hosts"
    ),
    "verify-seconds": InputSpec(
        "10", False, "how long a restarted unit must stay healthy"
    ),
    "keep-releases": InputSpec(
        "5", False, "release directories to keep on each host"
    ),
    "max-parallel": InputSpec(
        "4", False, "hosts deployed at once after the first one"
    ),
    "force": InputSpec(
        "false", False, "redeploy a SHA that a host already runs"
    ),
    "dry-run": InputSpec(
        "false", False, "resolve and print the plan, change nothing"
    ),
    "commit-manifest": InputSpec(
        "",
        False,
        "commit deployments/manifest.<env>.yaml; default true for deploy "
        "and rollback",
    ),
    "github-token": InputSpec(
        "",
        True,
        "token that pushes the manifest commit; on a runner, the job's own "
        "token unless another is given",
        runner_default="${{ github.token }}",
    ),
    "credential": InputSpec(
        "", True, "provision: the service's credential, encrypted per host"
    ),
}

OUTPUTS: dict[str, str] = {
    "sha": "the SHA pushed or deployed; empty when nothing ran",
    "key": "push: the artifact's object key; empty otherwise",
    "sha256": "push: the tarball's sha256; empty otherwise",
    "size": "push: the tarball's size in bytes; empty otherwise",
    "created": (
        "push: 'true' when this run uploaded the release, 'false' when it "
        "already existed; empty for other commands"
    ),
    "pruned": (
        "push, prune: JSON list of pruned SHAs ('[]' for none); empty for "
        "other commands"
    ),
    "releases": (
        "list: JSON of the releases and of each host's SHA; empty for other "
        "commands"
    ),
    "result": (
        "deploy, rollback, provision: success, failure or dry-run; "
        "empty otherwise"
    ),
    "hosts": (
        "deploy, rollback: JSON list of {host, previous, sha, result, "
        "seconds}, result one of deployed, unchanged, failed, unrecorded "
        "(runs, but the manifest write failed), skipped; "
        "provision: JSON list of {host, result, changed, unit}, result one "
        "of created, changed, unchanged, failed, skipped; empty otherwise"
    ),
    "manifest-commit": (
        "deploy, rollback: the manifest commit's SHA; empty when nothing "
        "was committed or the commit failed"
    ),
}
