"""The deploy targets, read straight from the platform's Pulumi checkpoint.

No Pulumi CLI and no Pulumi SDK: a self-managed backend keeps each stack
as one JSON document (sometimes gzip'd) in a directory, a bucket or a git
branch, and the targets are an output of its ``pulumi:pulumi:Stack``
resource. Secret outputs are decrypted the way Pulumi's passphrase
secrets provider does:

- the provider state ``salt`` is ``v1:<salt>:v1:<nonce>:<ciphertext>``;
  the key is PBKDF2-HMAC-SHA256 of the passphrase over ``<salt>``,
  1,000,000 rounds, 32 bytes, and the second half must decrypt to
  ``pulumi`` or the passphrase is wrong;
- a value is ``v1:<nonce>:<ciphertext>``, AES-256-GCM, base64 parts;
- a secret in the checkpoint is an object carrying the signature
  ``SIG_KEY: SECRET_SIG`` and a ``ciphertext`` (or, in an export made
  with ``--show-secrets``, a ``plaintext``) whose clear text is JSON.
  Secrets nested inside a secret are not encrypted a second time: their
  ``ciphertext`` already is the JSON text.

boto3 and cryptography are imported only where they are needed, so that
the action's ``--help`` stays fast.
"""

from __future__ import annotations

import base64
import binascii
import functools
import gzip
import json
import os
import re
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qs, urlsplit

from inforge_action.errors import StateError


if TYPE_CHECKING:
    from inforge_action.descriptor import Descriptor


SIG_KEY = "4dabf18193072939515e22adb298388d"
SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"
COMPUTED_PLACEHOLDER = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"
BLINDED_SECRET = "[secret]"
STACK_TYPE = "pulumi:pulumi:Stack"
DESCRIPTOR_OUTPUT = "deployDescriptor"
PASSPHRASE_PROVIDER = "passphrase"
PASSPHRASE_CHECK = "pulumi"
PBKDF2_ROUNDS = 1_000_000
KEY_BYTES = 32
NONCE_BYTES = 12
STACKS_DIR = ".pulumi/stacks"
DEFAULT_STATE_BRANCH = "pulumi-state"
BACKEND_TYPES = ("file", "s3", "r2", "git-branch")
STATE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,100}")
BRANCH_NAME = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_./-]*")
MISSING_OBJECT_CODES = ("NoSuchKey", "404", "NotFound")


class StateReader(Protocol):
    """Where a backend's files are: read one by its path under the root."""

    @property
    def location(self) -> str:
        """The backend as a user knows it, for messages."""
        ...

    def read(self, relative_path: str) -> bytes | None:
        """The file's bytes, or None when it does not exist."""
        ...


@dataclass(frozen=True)
class DirectoryReader:
    """A backend kept in a local directory (``file://`` or a git branch)."""

    root: Path
    label: str = ""

    @property
    def location(self) -> str:
        return self.label or f"file://{self.root}"

    def read(self, relative_path: str) -> bytes | None:
        path = self.root / relative_path
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as error:
            raise StateError(
                f"cannot read {path} of the Pulumi backend {self.location}: "
                f"{error.strerror}; check the backend url in the platform "
                "repo's inforge.yaml"
            ) from error


@dataclass(frozen=True)
class BucketReader:
    """A backend kept in an S3 bucket (AWS S3, R2 or any S3 API)."""

    client: Any
    bucket: str
    prefix: str = ""
    endpoint: str = ""

    @property
    def location(self) -> str:
        where = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        return f"{where} at {self.endpoint}" if self.endpoint else where

    def read(self, relative_path: str) -> bytes | None:
        from botocore.exceptions import BotoCoreError, ClientError

        key = self.prefix + relative_path
        try:
            reply = self.client.get_object(Bucket=self.bucket, Key=key)
            return reply["Body"].read()
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            if code in MISSING_OBJECT_CODES:
                return None
            raise StateError(
                f"cannot read s3://{self.bucket}/{key} ({self.endpoint}): "
                f"{_describe_client_error(error)}. {_remedy(code)}"
            ) from error
        except BotoCoreError as error:
            raise StateError(
                f"cannot read s3://{self.bucket}/{key} ({self.endpoint}): "
                f"{error}. Check the endpoint in the backend url of the "
                "platform repo's inforge.yaml and that it is reachable"
            ) from error


@dataclass(frozen=True)
class Checkpoint:
    """One stack's checkpoint: its latest deployment and where it was."""

    project: str
    stack: str
    location: str
    deployment: dict[str, Any]

    @property
    def name(self) -> str:
        return f"{self.project}/{self.stack}"


def open_backend(
    backend_type: str,
    url: str,
    *,
    platform_dir: Path,
    r2_account_id: str = "",
    access_key_id: str = "",
    secret_access_key: str = "",
    checkout_branch: Callable[[str], Path] | None = None,
    endpoint_url: str | None = None,
) -> StateReader:
    """A reader for the Pulumi backend that ``inforge.yaml`` names.

    ``platform_dir`` is the platform repo checkout that relative
    ``file://`` paths resolve against; ``checkout_branch(branch)`` checks
    a branch of the platform repo out and returns its directory (for
    ``git-branch``). ``endpoint_url``, when set, replaces the account
    endpoint of an ``r2`` backend.
    """
    kind = backend_type.strip().lower()
    if kind == "file":
        return _open_directory(url, platform_dir)
    if kind == "s3":
        return _open_s3(url, access_key_id, secret_access_key)
    if kind == "r2":
        return _open_r2(
            url, r2_account_id, access_key_id, secret_access_key,
            endpoint_url,
        )  # fmt: skip
    if kind == "git-branch":
        return _open_branch(url, checkout_branch)
    raise StateError(
        f"unknown Pulumi backend type {backend_type!r} in the platform "
        f"repo's inforge.yaml; supported: {', '.join(BACKEND_TYPES)}"
    )


def load_checkpoint(
    reader: StateReader, project: str, stack: str
) -> Checkpoint:
    """The checkpoint of ``project``/``stack``, in either layout."""
    for what, name in (("project name", project), ("stack name", stack)):
        if not STATE_NAME.fullmatch(name) or name in (".", ".."):
            raise StateError(
                f"the Pulumi {what} {name!r} is not valid: use letters, "
                "digits, '_', '.' or '-'; check `name` in the platform "
                "repo's inforge.yaml and the environment name"
            )

    tried = []
    for base in (f"{project}/{stack}", stack):
        for suffix in (".json", ".json.gz"):
            path = f"{STACKS_DIR}/{base}{suffix}"
            tried.append(path)
            data = reader.read(path)
            if data is not None:
                where = f"{reader.location}: {path}"
                document = _decode_checkpoint(data, suffix, where=where)
                deployment = _latest_deployment(document, where=where)
                return Checkpoint(project, stack, where, deployment)

    for base in (f"{project}/{stack}", stack):
        path = f"{STACKS_DIR}/{base}.json.zst"
        if reader.read(path) is not None:
            raise StateError(
                f"the checkpoint {reader.location}: {path} is compressed "
                "with zstd, which inforge-action does not read; have the "
                "platform write it plain or with PULUMI_DIY_BACKEND_GZIP="
                "true (and without PULUMI_DIY_BACKEND_ZSTD), then run "
                "`pulumi up`"
            )
    raise StateError(
        f"no checkpoint for stack {stack!r} of Pulumi project {project!r} "
        f"in the backend {reader.location}; tried {', '.join(tried)}. "
        "Check that the environment name is the stack name and that "
        "`name` in the platform repo's inforge.yaml is the Pulumi project"
    )


def stack_outputs(
    checkpoint: Checkpoint,
    *,
    passphrase: str | None = None,
    names: Iterable[str] | None = None,
) -> dict[str, Any]:
    """The stack's outputs, secrets decrypted; only ``names`` if given.

    The passphrase is used, and its slow key derived, only when one of
    the outputs asked for holds a secret.
    """
    outputs = _stack_resource(checkpoint).get("outputs") or {}
    wanted = list(outputs) if names is None else list(names)
    missing = [name for name in wanted if name not in outputs]
    if missing:
        present = ", ".join(sorted(outputs)) or "none"
        raise StateError(
            f"stack {checkpoint.name} has no output "
            f"{', '.join(missing)} ({checkpoint.location}); outputs "
            f"present: {present}. Export it from the platform program "
            "and run `pulumi up`"
        )

    secrets = _Secrets(checkpoint, passphrase)
    return {
        name: _reveal(outputs[name], secrets, output=name, encrypted=True)
        for name in wanted
    }


def read_deploy_descriptor(
    reader: StateReader,
    project: str,
    stack: str,
    *,
    passphrase: str | None,
) -> Descriptor:
    """The validated ``deployDescriptor`` output of the stack."""
    from inforge_action.descriptor import parse_descriptor

    checkpoint = load_checkpoint(reader, project, stack)
    value = stack_outputs(
        checkpoint, passphrase=passphrase, names=[DESCRIPTOR_OUTPUT]
    )[DESCRIPTOR_OUTPUT]
    source = f"output {DESCRIPTOR_OUTPUT} of stack {checkpoint.name}"
    return parse_descriptor(value, source=f"{source} ({checkpoint.location})")


def decrypt_value(key: bytes, value: str) -> str:
    """The clear text of one ``v1:<nonce>:<ciphertext>`` value.

    Raises ``ValueError`` when the value is malformed or the key is wrong.
    """
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    parts = value.split(":")
    if len(parts) != 3 or parts[0] != "v1":
        raise ValueError("not a v1:<nonce>:<ciphertext> value")
    try:
        nonce = base64.b64decode(parts[1], validate=True)
        sealed = base64.b64decode(parts[2], validate=True)
    except binascii.Error as error:
        raise ValueError(f"bad base64 ({error})") from error
    if len(nonce) != NONCE_BYTES:
        raise ValueError(f"the nonce has {len(nonce)} bytes, not 12")

    try:
        clear = AESGCM(key).decrypt(nonce, sealed, None)
    except InvalidTag as error:
        raise ValueError("authentication failed") from error
    try:
        return clear.decode()
    except UnicodeDecodeError as error:
        raise ValueError("the clear text is not UTF-8") from error


@functools.lru_cache(maxsize=4)
def derive_key(passphrase: str, salt: bytes) -> bytes:
    """The AES key of a passphrase; cached, as a million rounds is slow."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

    kdf = PBKDF2HMAC(
        algorithm=hashes.SHA256(),
        length=KEY_BYTES,
        salt=salt,
        iterations=PBKDF2_ROUNDS,
    )
    return kdf.derive(passphrase.encode())


class _Secrets:
    """Decrypts a checkpoint's secrets, unlocking the key on first use."""

    def __init__(self, checkpoint: Checkpoint, passphrase: str | None):
        self._checkpoint = checkpoint
        self._passphrase = passphrase
        self._key: bytes | None = None

    @property
    def location(self) -> str:
        return self._checkpoint.location

    def decrypt(self, ciphertext: str, *, output: str) -> str:
        key = self._unlock(output)
        try:
            return decrypt_value(key, ciphertext)
        except ValueError as error:
            raise StateError(
                f"a secret in output {output} of stack "
                f"{self._checkpoint.name} cannot be decrypted ({error}) "
                f"although the passphrase is right; the checkpoint at "
                f"{self._checkpoint.location} may be damaged: run "
                "`pulumi up` in the platform repo to rewrite it"
            ) from error

    def _unlock(self, output: str) -> bytes:
        if self._key is not None:
            return self._key
        checkpoint = self._checkpoint

        provider = checkpoint.deployment.get("secrets_providers") or {}
        kind = provider.get("type") or ""
        if kind != PASSPHRASE_PROVIDER:
            raise StateError(
                f"output {output} of stack {checkpoint.name} is a secret "
                f"and the stack's secrets provider is {kind or 'missing'!r}"
                "; inforge-action decrypts only the passphrase provider. "
                "Make the output plain, or move the stack to it with "
                "`pulumi stack change-secrets-provider passphrase`"
            )
        if not self._passphrase:
            raise StateError(
                f"output {output} of stack {checkpoint.name} is a secret; "
                "set the input `pulumi-passphrase` to the stack's "
                "PULUMI_CONFIG_PASSPHRASE"
            )

        state = (provider.get("state") or {}).get("salt") or ""
        salt, check = _split_salt_state(state, where=checkpoint.location)
        key = derive_key(self._passphrase, salt)
        try:
            verified = decrypt_value(key, check) == PASSPHRASE_CHECK
        except ValueError:
            verified = False
        if not verified:
            raise StateError(
                "the input `pulumi-passphrase` does not match the secrets "
                f"provider (passphrase) of stack {checkpoint.name} "
                f"({checkpoint.location}); set it to the stack's "
                "PULUMI_CONFIG_PASSPHRASE"
            )
        self._key = key
        return key


def _split_salt_state(state: str, *, where: str) -> tuple[bytes, str]:
    version, _, rest = state.partition(":")
    encoded_salt, _, check = rest.partition(":")
    try:
        salt = base64.b64decode(encoded_salt, validate=True)
    except binascii.Error:
        salt = b""
    if version != "v1" or not salt or not check:
        raise StateError(
            f"the passphrase secrets provider state of {where} is not "
            f"`v1:<salt>:v1:<nonce>:<ciphertext>` (got {state[:40]!r}); "
            "the checkpoint may be damaged or from an unknown Pulumi "
            "version"
        )
    return salt, check


def _reveal(
    value: Any, secrets: _Secrets, *, output: str, encrypted: bool
) -> Any:
    if isinstance(value, list):
        return [
            _reveal(item, secrets, output=output, encrypted=encrypted)
            for item in value
        ]
    if isinstance(value, str):
        _refuse_placeholder(value, output=output)
        return value
    if not isinstance(value, dict):
        return value
    if value.get(SIG_KEY) != SECRET_SIG:
        return {
            name: _reveal(item, secrets, output=output, encrypted=encrypted)
            for name, item in value.items()
        }

    plaintext = value.get("plaintext")
    ciphertext = value.get("ciphertext")
    if isinstance(plaintext, str):
        text = plaintext
    elif isinstance(ciphertext, str):
        # Inside a secret, nested secrets carry their JSON text as is.
        if encrypted:
            text = secrets.decrypt(ciphertext, output=output)
        else:
            text = ciphertext
    else:
        raise StateError(
            f"a secret in output {output} has neither `ciphertext` nor "
            f"`plaintext` ({secrets.location}); the checkpoint "
            "may be damaged: run `pulumi up` in the platform repo"
        )

    try:
        inner = json.loads(text)
    except json.JSONDecodeError as error:
        raise StateError(
            f"a secret in output {output} does not hold JSON once "
            f"decrypted ({secrets.location}); the checkpoint may "
            "be damaged: run `pulumi up` in the platform repo"
        ) from error
    return _reveal(inner, secrets, output=output, encrypted=False)


def _refuse_placeholder(value: str, *, output: str) -> None:
    if value == BLINDED_SECRET:
        raise StateError(
            f"output {output} holds the literal {BLINDED_SECRET!r}, the "
            "mask Pulumi shows in place of a secret, not a value: "
            "whatever built the output copied a masked value. Make the "
            "platform program export the real value and run `pulumi up`"
        )
    if value == COMPUTED_PLACEHOLDER:
        raise StateError(
            f"output {output} is not known yet (Pulumi recorded it as "
            "computed); run `pulumi up` in the platform repo to completion"
        )


def _decode_checkpoint(
    data: bytes, suffix: str, *, where: str
) -> dict[str, Any]:
    if suffix.endswith(".gz") or data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as error:
            raise StateError(
                f"the checkpoint {where} is not valid gzip ({error}); "
                "check the backend or re-run `pulumi up`"
            ) from error
    try:
        document = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise StateError(
            f"the checkpoint {where} is not valid JSON ({error}); check "
            "the backend or re-run `pulumi up`"
        ) from error
    if not isinstance(document, dict):
        raise StateError(
            f"the checkpoint {where} is not a JSON object; check the "
            "backend url in the platform repo's inforge.yaml"
        )
    return document


def _latest_deployment(
    document: dict[str, Any], *, where: str
) -> dict[str, Any]:
    version = document.get("version")
    if version != 3 or not isinstance(document.get("checkpoint"), dict):
        raise StateError(
            f"the checkpoint {where} has version {version!r}; only "
            "version 3 checkpoints (Pulumi 1.0 and later) are read. "
            "Run `pulumi up` with a current Pulumi CLI to rewrite it"
        )
    latest = document["checkpoint"].get("latest")
    if not isinstance(latest, dict):
        raise StateError(
            f"the stack at {where} has never been deployed (its checkpoint "
            "has no deployment); run `pulumi up` in the platform repo"
        )
    return latest


def _stack_resource(checkpoint: Checkpoint) -> dict[str, Any]:
    resources = checkpoint.deployment.get("resources") or []
    roots = [
        resource
        for resource in resources
        if isinstance(resource, dict)
        and resource.get("type") == STACK_TYPE
        and not resource.get("delete")
    ]
    if len(roots) == 1:
        return roots[0]
    if not roots:
        raise StateError(
            f"stack {checkpoint.name} has no {STACK_TYPE} resource "
            f"({checkpoint.location}); run `pulumi up` in the platform "
            "repo"
        )
    raise StateError(
        f"stack {checkpoint.name} has {len(roots)} {STACK_TYPE} "
        f"resources ({checkpoint.location}); the checkpoint is damaged: "
        "repair it with `pulumi stack export`/`import`"
    )


def _open_directory(url: str, platform_dir: Path) -> DirectoryReader:
    if not url.startswith("file://"):
        raise StateError(
            f"the file backend url {url!r} must start with file:// "
            "(check `backend.url` in the platform repo's inforge.yaml)"
        )
    raw = url.removeprefix("file://").partition("?")[0]
    path = Path(os.path.expanduser(raw))
    if not path.is_absolute():
        path = platform_dir / path
    if not path.is_dir():
        raise StateError(
            f"the Pulumi state directory {path} of backend {url} does not "
            "exist; check `backend.url` in the platform repo's inforge.yaml"
        )
    label = url if Path(raw) == path else f"{url} ({path})"
    return DirectoryReader(path, label=label)


def _open_s3(
    url: str, access_key_id: str, secret_access_key: str
) -> BucketReader:
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise StateError(
            f"the s3 backend url {url!r} must look like "
            "s3://<bucket>[/<prefix>]?endpoint=<host>&region=<region>"
        )
    query = {
        name: values[-1] for name, values in parse_qs(parts.query).items()
    }
    region = query.get("region") or "auto"
    endpoint = query.get("endpoint") or ""
    if endpoint and "://" not in endpoint:
        plain = _is_true(query.get("disableSSL") or query.get("disable_https"))
        endpoint = f"{'http' if plain else 'https'}://{endpoint}"
    if not endpoint:
        aws_region = region if region != "auto" else "us-east-1"
        endpoint = f"https://s3.{aws_region}.amazonaws.com"
        region = aws_region
    inputs = _credential_inputs(access_key_id, secret_access_key)
    _require_inputs(parts.netloc, inputs)

    return _bucket_reader(
        parts.netloc, parts.path, endpoint, region,
        access_key_id, secret_access_key,
    )  # fmt: skip


def _open_r2(
    url: str,
    account_id: str,
    access_key_id: str,
    secret_access_key: str,
    endpoint_url: str | None,
) -> BucketReader:
    from inforge_action.store import r2_endpoint

    parts = urlsplit(url)
    if parts.scheme != "r2" or not parts.netloc:
        raise StateError(
            f"the r2 backend url {url!r} must look like r2://<bucket>"
            "[/<prefix>] (check `backend.url` in the platform repo's "
            "inforge.yaml)"
        )
    inputs = _credential_inputs(access_key_id, secret_access_key)
    if not endpoint_url:
        inputs["r2-account-id"] = account_id
    _require_inputs(parts.netloc, inputs)

    endpoint = endpoint_url or r2_endpoint(account_id)
    return _bucket_reader(
        parts.netloc, parts.path, endpoint, "auto",
        access_key_id, secret_access_key,
    )  # fmt: skip


def _bucket_reader(
    bucket: str,
    path: str,
    endpoint: str,
    region: str,
    access_key_id: str,
    secret_access_key: str,
) -> BucketReader:
    from inforge_action.store import make_client

    prefix = path.strip("/")
    client = make_client(
        endpoint_url=endpoint,
        access_key_id=access_key_id,
        secret_access_key=secret_access_key,
        region=region,
    )
    return BucketReader(
        client, bucket, prefix=f"{prefix}/" if prefix else "",
        endpoint=endpoint,
    )  # fmt: skip


def _credential_inputs(
    access_key_id: str, secret_access_key: str
) -> dict[str, str]:
    return {
        "state-access-key-id": access_key_id,
        "state-secret-access-key": secret_access_key,
    }


def _require_inputs(bucket: str, inputs: dict[str, str]) -> None:
    missing = [f"`{name}`" for name, value in inputs.items() if not value]
    if missing:
        raise StateError(
            f"reading the Pulumi state in bucket {bucket} needs the "
            f"input(s) {', '.join(missing)}; the state credentials "
            "default to the R2 ones and must be able to read that bucket"
        )


def _open_branch(
    url: str, checkout_branch: Callable[[str], Path] | None
) -> DirectoryReader:
    if checkout_branch is None:
        raise ValueError("a git-branch backend needs checkout_branch")
    branch = url.strip().removeprefix("git-branch://").strip("/")
    branch = branch or DEFAULT_STATE_BRANCH
    if not BRANCH_NAME.fullmatch(branch) or ".." in branch:
        raise StateError(
            f"the git-branch backend url {url!r} does not name a usable "
            "branch; use git-branch://<branch>, e.g. "
            f"git-branch://{DEFAULT_STATE_BRANCH}"
        )
    root = checkout_branch(branch)
    return DirectoryReader(
        Path(root), label=f"branch {branch} of the platform repo"
    )


def _is_true(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes")


def _describe_client_error(error: Any) -> str:
    details = error.response.get("Error", {})
    meta = error.response.get("ResponseMetadata", {})
    text = f"{details.get('Code', '?')}: {details.get('Message', error)}"
    request_id = meta.get("RequestId") or meta.get("HTTPHeaders", {}).get(
        "x-amz-request-id"
    )
    if request_id:
        text += f" (request id {request_id})"
    return text


def _remedy(code: str) -> str:
    if code == "NoSuchBucket":
        return (
            "Check the bucket in the backend url of the platform repo's "
            "inforge.yaml"
        )
    if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
        return (
            "Check the inputs `state-access-key-id` and "
            "`state-secret-access-key`: the key must be able to read the "
            "state bucket"
        )
    if code in ("PermanentRedirect", "AuthorizationHeaderMalformed"):
        return "Add the bucket's region=<region> to the s3 backend url"
    return "Check the backend url in the platform repo's inforge.yaml"
