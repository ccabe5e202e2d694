"""A workspace owned by another uid, as a GitHub runner mounts it."""

import os
from pathlib import Path


RUNNER_UID = 1001


def _every_path(root: Path):
    for parent, dirs, files in os.walk(root):
        yield Path(parent)
        for name in dirs + files:
            yield Path(parent, name)


def hand_to_runner(root: Path) -> None:
    """Give the tree to the runner's uid, links included."""
    for path in _every_path(root):
        os.lchown(path, RUNNER_UID, RUNNER_UID)


def not_the_runners(root: Path) -> list[str]:
    """Paths in the tree that the runner's uid does not own."""
    return [
        str(path)
        for path in _every_path(root)
        if os.lstat(path).st_uid != RUNNER_UID
    ]
