"""How the GPU check scripts end: PASS and exit 0, or FAIL with what failed and exit 1."""

from __future__ import annotations

import sys


def verdict(problems: list[str]) -> None:
    if problems:
        print("FAIL:\n  " + "\n  ".join(problems))
        sys.exit(1)
    print("PASS")
