"""The deployment manifest: what runs where, and its compare-and-swap.

One manifest per service and environment lives at
``<service>/manifest.<env>.yaml`` in the artifact bucket, in the format the
inforge CLI reads and writes::

    deployments:
        api.vm.prd.use1.example.net:
            sha: 4f2a9c1e0b7d
            arch: amd64
            deployedAt: 2026-06-09T12:00:00.123456789Z

Values are read as the text they were written as, so a SHA such as
``0123456`` or ``1e100`` never turns into a number, and ``deployedAt``
stays the exact string. Keys this module does not know are kept, as
YAML nodes, and written back unchanged.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode

from inforge_action.errors import ManifestConflict, StoreError
from inforge_action.store import store_error


log = logging.getLogger(__name__)

STR_TAG = "tag:yaml.org,2002:str"
MAP_TAG = "tag:yaml.org,2002:map"
NULL_TAG = "tag:yaml.org,2002:null"
TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"

INDENT = 4
NO_WRAP = 1 << 30
CONTENT_TYPE = "application/yaml"

BACKOFF_FIRST_SECONDS = 0.02
BACKOFF_MAX_SECONDS = 1.0

# Writes that lost a race: 412 is a failed If-Match / If-None-Match, 409
# a concurrent conditional write, and 404 an object deleted between our
# read and our write.
CONFLICT_STATUSES = frozenset({404, 409, 412})

# What a plain scalar may mean to some reader of the manifest: PyYAML and
# Go's yaml.v2 read YAML 1.1 (octal 0123, yes/no/on/off, 1:20 base 60),
# yaml.v3 reads YAML 1.2 (1e100 and 695e0514 are floats). A string that
# matches any of them is written quoted.
_NON_STRING = re.compile(
    r"""
    ~ | null | Null | NULL
    | [yYnN] | yes | Yes | YES | no | No | NO
    | true | True | TRUE | false | False | FALSE
    | on | On | ON | off | Off | OFF
    | [-+]? 0[bB] [01_]+
    | [-+]? 0[oO]? [0-7_]+
    | [-+]? 0[xX] [0-9a-fA-F_]+
    | [-+]? [0-9][0-9_]* (?: :[0-5]?[0-9] )* (?: \.[0-9_]* )?
      (?: [eE] [-+]? [0-9]+ )?
    | [-+]? \.[0-9_]+ (?: [eE] [-+]? [0-9]+ )?
    | [-+]? \. (?: inf | Inf | INF ) | \. (?: nan | NaN | NAN )
    | [0-9]{4} - [0-9]{1,2} - [0-9]{1,2}
      (?: (?: [Tt] | [ \t]+ ) [0-9]{1,2} : [0-9]{2} : [0-9]{2}
          (?: \.[0-9]* )?
          (?: [ \t]* (?: Z | [-+][0-9]{1,2} (?: :[0-9]{2} )? ) )?
      )?
    | << | =
    """,
    re.VERBOSE,
)

_RESOLVER = yaml.resolver.Resolver()


@dataclass(frozen=True)
class Entry:
    """One host's deployment: the SHA it runs, since when, on which arch."""

    sha: str
    arch: str = ""
    _: KW_ONLY
    deployed_at: str
    extra: dict[str, Node] = field(default_factory=dict)


@dataclass
class Manifest:
    """The deployments of one service in one environment, by host name."""

    deployments: dict[str, Entry] = field(default_factory=dict)
    extra: dict[str, Node] = field(default_factory=dict)


def manifest_key(service: str, env: str) -> str:
    """The object key of a service's manifest for an environment."""
    return f"{service}/manifest.{env}.yaml"


def now_rfc3339() -> str:
    """The current UTC time as RFC 3339 with nanoseconds and ``Z``."""
    seconds, nanoseconds = divmod(time.time_ns(), 1_000_000_000)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return f"{stamp}.{nanoseconds:09d}Z"


def load_manifest(text: str, key: str = "the manifest") -> Manifest:
    """Parse a manifest; ``key`` names it in error messages."""
    try:
        document = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as error:
        raise StoreError(
            f"{key} is not valid YAML ({_one_line(error)}); fix the object "
            "by hand or restore an earlier version of it, since it records "
            "what runs where"
        ) from error

    if document is None or _is_null(document):
        return Manifest()
    if not isinstance(document, MappingNode):
        raise _shape_error(key, "the document is not a mapping")

    manifest = Manifest()
    for name, value in _pairs(document, key, "the top level"):
        if name == "deployments":
            manifest.deployments = _load_deployments(value, key)
        else:
            manifest.extra[name] = value
    return manifest


def _load_deployments(node: Node, key: str) -> dict[str, Entry]:
    if _is_null(node):
        return {}
    if not isinstance(node, MappingNode):
        raise _shape_error(key, "`deployments` is not a mapping of hosts")
    return {
        host: _load_entry(host, value, key)
        for host, value in _pairs(node, key, "`deployments`")
    }


def _load_entry(host: str, node: Node, key: str) -> Entry:
    where = f"`deployments.{host}`"
    if not isinstance(node, MappingNode):
        raise _shape_error(key, f"{where} is not a mapping")

    known: dict[str, str] = {}
    extra: dict[str, Node] = {}
    for name, value in _pairs(node, key, where):
        if name in ("sha", "arch", "deployedAt"):
            known[name] = _scalar_text(value, key, f"{where}.{name}")
        else:
            extra[name] = value

    if not known.get("sha"):
        raise _shape_error(key, f"{where} has no `sha`")
    return Entry(
        known["sha"],
        known.get("arch", ""),
        deployed_at=known.get("deployedAt", ""),
        extra=extra,
    )


def _pairs(
    node: MappingNode, key: str, where: str
) -> Iterator[tuple[str, Node]]:
    seen: set[str] = set()
    for name_node, value in node.value:
        if not isinstance(name_node, ScalarNode):
            raise _shape_error(key, f"a key in {where} is not a plain name")
        name = name_node.value
        if name in seen:
            raise _shape_error(key, f"{where} names `{name}` twice")
        seen.add(name)
        yield name, value


def _scalar_text(node: Node, key: str, where: str) -> str:
    # The text as written, whatever type a resolver would give it: this
    # is what keeps an unquoted 0123456 a SHA instead of an octal number,
    # and an unquoted `null` the SHA named null. Only an empty value is
    # treated as absent.
    if not isinstance(node, ScalarNode):
        raise _shape_error(key, f"{where} is not a single value")
    return node.value


def _is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == NULL_TAG


def _shape_error(key: str, problem: str) -> StoreError:
    return StoreError(
        f"{key} has the wrong shape: {problem}. A manifest is `deployments:` "
        "mapping host names to `sha`, `arch` and `deployedAt`; fix the "
        "object by hand or restore an earlier version of it"
    )


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


def dump_manifest(manifest: Manifest) -> str:
    """The manifest as the inforge CLI writes it, unknown keys included."""
    hosts = [
        (_text_node(host), _entry_node(entry))
        for host, entry in sorted(manifest.deployments.items())
    ]
    # An empty map is written `{}` in flow style, like the CLI does.
    top = {
        **manifest.extra,
        "deployments": MappingNode(MAP_TAG, hosts, flow_style=not hosts),
    }
    root = MappingNode(
        MAP_TAG,
        [(_text_node(name), value) for name, value in sorted(top.items())],
        flow_style=False,
    )
    return yaml.serialize(
        root,
        Dumper=yaml.SafeDumper,
        indent=INDENT,
        width=NO_WRAP,
        allow_unicode=True,
    )


def _entry_node(entry: Entry) -> MappingNode:
    pairs = [(_text_node("sha"), _text_node(entry.sha))]
    if entry.arch:
        pairs.append((_text_node("arch"), _text_node(entry.arch)))
    if entry.deployed_at:
        pairs.append((_text_node("deployedAt"), _time_node(entry.deployed_at)))
    for name, value in sorted(entry.extra.items()):
        pairs.append((_text_node(name), value))
    return MappingNode(MAP_TAG, pairs, flow_style=False)


def _text_node(text: str) -> ScalarNode:
    style = '"' if could_load_as_non_string(text) else None
    return ScalarNode(STR_TAG, text, style=style)


def _time_node(text: str) -> ScalarNode:
    # deployedAt is a timestamp in the schema and the CLI writes it bare;
    # only text that is not a timestamp at all is written as a string.
    if _RESOLVER.resolve(ScalarNode, text, (True, False)) == TIMESTAMP_TAG:
        return ScalarNode(TIMESTAMP_TAG, text)
    return _text_node(text)


def could_load_as_non_string(text: str) -> bool:
    """Whether a YAML 1.1 or 1.2 reader could load the bare text as a
    number, bool, null or timestamp."""
    if not text or _NON_STRING.fullmatch(text):
        return True
    return _RESOLVER.resolve(ScalarNode, text, (True, False)) != STR_TAG


def read_manifest(
    client: Any, bucket: str, key: str
) -> tuple[Manifest, str | None]:
    """The manifest at ``key`` and its ETag; ``(empty, None)`` if absent."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        reply = client.get_object(Bucket=bucket, Key=key)
        with reply["Body"] as body:
            data = body.read()
    except (ClientError, BotoCoreError) as error:
        if isinstance(error, ClientError) and _is_missing(error):
            return Manifest(), None
        raise store_error(
            error, action="reading", bucket=bucket, key=key
        ) from error

    location = f"s3://{bucket}/{key}"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise StoreError(
            f"{location} is not UTF-8 text ({error.reason} at byte "
            f"{error.start}); restore an earlier version of the manifest"
        ) from error
    return load_manifest(text, location), reply["ETag"]


def update_manifest(
    client: Any,
    bucket: str,
    key: str,
    change: Callable[[Manifest], None],
    *,
    attempts: int = 20,
) -> Manifest:
    """Apply ``change`` to the stored manifest with compare-and-swap.

    Every write is conditional on the ETag that was read (or on the
    object's absence). When another writer got there first the manifest
    is read again and ``change`` applied again, at most ``attempts``
    times. A change that alters nothing writes nothing.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, got {attempts}")

    for attempt in range(1, attempts + 1):
        manifest, etag = read_manifest(client, bucket, key)
        before = dump_manifest(manifest)
        change(manifest)
        after = dump_manifest(manifest)
        if after == before:
            return manifest

        if _write_if_unchanged(client, bucket, key, after, etag):
            return manifest
        log.debug(
            "s3://%s/%s changed while it was updated (attempt %d of %d)",
            bucket,
            key,
            attempt,
            attempts,
        )
        if attempt < attempts:
            time.sleep(_backoff_seconds(attempt))

    raise ManifestConflict(
        f"s3://{bucket}/{key} changed under each of {attempts} attempts to "
        "update it: other deploys are writing it at the same time. Run "
        "this deploy again, and give the workflow a GitHub `concurrency` "
        "group per environment so deploys take turns"
    )


def _write_if_unchanged(
    client: Any, bucket: str, key: str, text: str, etag: str | None
) -> bool:
    """Write ``text`` if the object is still as read; False if it is not."""
    from botocore.exceptions import BotoCoreError, ClientError

    condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
    try:
        client.put_object(
            Bucket=bucket,
            Key=key,
            Body=text.encode("utf-8"),
            ContentType=CONTENT_TYPE,
            **condition,
        )
    except (ClientError, BotoCoreError) as error:
        if isinstance(error, ClientError) and _is_conflict(error):
            return False
        raise store_error(
            error, action="writing", bucket=bucket, key=key
        ) from error
    return True


def _backoff_seconds(attempt: int) -> float:
    # Jitter spreads writers that lost the same race, so they do not
    # collide again on the next attempt.
    ceiling = min(
        BACKOFF_FIRST_SECONDS * 2 ** (attempt - 1), BACKOFF_MAX_SECONDS
    )
    return random.uniform(ceiling / 2, ceiling)


def pinned_shas(client: Any, bucket: str, service: str) -> set[str]:
    """Every SHA a manifest of ``service`` names, in any environment."""
    return {
        entry.sha
        for manifest in read_environments(client, bucket, service).values()
        for entry in manifest.deployments.values()
    }


def read_environments(
    client: Any, bucket: str, service: str
) -> dict[str, Manifest]:
    """The manifest of every environment of ``service``, by its name."""
    from botocore.exceptions import BotoCoreError, ClientError

    prefix = f"{service}/manifest."
    keys: dict[str, str] = {}
    try:
        pages = client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix
        )
        for page in pages:
            for item in page.get("Contents", []):
                rest = item["Key"][len(prefix) :]
                if _is_manifest_name(rest):
                    keys[rest.removesuffix(".yaml")] = item["Key"]
    except (ClientError, BotoCoreError) as error:
        raise store_error(
            error, action="listing", bucket=bucket, key=f"{prefix}*"
        ) from error

    # A manifest deleted between the listing and the read is empty, which
    # is what it now is.
    return {
        env: read_manifest(client, bucket, key)[0]
        for env, key in sorted(keys.items())
    }


def _is_manifest_name(rest: str) -> bool:
    env = rest.removesuffix(".yaml")
    return rest.endswith(".yaml") and bool(env) and "/" not in env


def _status(error: Any) -> int | None:
    return error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")


def _code(error: Any) -> str:
    return error.response.get("Error", {}).get("Code", "")


def _is_missing(error: Any) -> bool:
    if _code(error) == "NoSuchKey":
        return True
    return _status(error) == 404 and _code(error) != "NoSuchBucket"


def _is_conflict(error: Any) -> bool:
    if _code(error) == "NoSuchBucket":
        return False
    return _status(error) in CONFLICT_STATUSES or _code(error) in (
        "PreconditionFailed",
        "ConditionalRequestConflict",
    )
