"""The container's entrypoint: GitHub runs it with INPUT_* variables."""

import sys

from inforge_action.cli import main


if __name__ == "__main__":
    sys.exit(main())
