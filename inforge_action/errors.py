"""The one error hierarchy of inforge-action.

    ActionError                 a known failure: annotated, exit code 1
    ├── InputError              an input is missing, malformed or conflicts
    ├── ConfigError             deployments/ or the platform repo is wrong
    ├── PlatformError           cloning the platform repo failed
    ├── StateError              the Pulumi checkpoint cannot be read
    ├── StoreError              the release store (S3/R2) failed
    │   ├── ArtifactConflict    an immutable artifact exists with other bytes
    │   ├── ArtifactMissing     the store lacks a needed artifact
    │   └── ManifestConflict    compare-and-swap retries ran out
    ├── PackError               the artifact directory cannot be packed
    ├── HostError               a host failed (names host and phase)
    │   └── HostKeyError        the host key is unknown or changed
    ├── DeployError             the rollout as a whole failed
    ├── ProvisionError          provisioning failed on some host
    ├── Cancelled               the runner cancelled the job
    └── GitError                the manifest commit failed

Every message names what failed, the values that matter and what to do
next. Third-party errors are translated where they enter, with ``from``.
"""


class ActionError(Exception):
    """A failure the user can act on; never shown with a traceback."""

    title = "inforge-action failed"


class InputError(ActionError):
    title = "Invalid input"


class ConfigError(ActionError):
    title = "Invalid configuration"


class PlatformError(ActionError):
    title = "Platform repository unavailable"


class StateError(ActionError):
    title = "Pulumi state unreadable"


class StoreError(ActionError):
    title = "Release store error"


class ArtifactConflict(StoreError):
    title = "Artifact already exists with other content"


class ArtifactMissing(StoreError):
    title = "Artifact missing from the store"


class ManifestConflict(StoreError):
    title = "Manifest update kept conflicting"


class PackError(ActionError):
    title = "Cannot package the artifact"


class HostError(ActionError):
    """A failure on one host; ``host`` and ``phase`` say where."""

    title = "Host failed"

    def __init__(self, host: str, phase: str, message: str) -> None:
        super().__init__(f"{host}: {phase}: {message}")
        self.host = host
        self.phase = phase


class HostKeyError(HostError):
    title = "Host key verification failed"


class DeployError(ActionError):
    title = "Deploy failed"


class ProvisionError(ActionError):
    title = "Provisioning failed"


class Cancelled(ActionError):
    title = "Cancelled"


class GitError(ActionError):
    title = "Manifest commit failed"
