"""The sandbox is a leaf: it imports no other room of strop and reaches into no store internals.

Checked on the source text, so a method named like one of the store's private ones (`._read(`), which the
project's own check reserves for the store, is caught here rather than in a repository-wide grep later.
"""

from __future__ import annotations

import re
from pathlib import Path

SANDBOX = Path(__file__).resolve().parents[2] / "sandbox"
FORBIDDEN = {
    "another room imported": re.compile(
        r"^\s*(from|import)\s+strop\.(agents|critics|memory|training)\b", re.M
    ),
    "a store-private method called": re.compile(r"\._(read|write|insert)\("),
    "the store's schema named": re.compile(r"memory\.schema"),
}


def test_sandbox_is_a_leaf() -> None:
    found = [
        f"{path.relative_to(SANDBOX.parent)}: {what}"
        for path in sorted(SANDBOX.rglob("*.py"))
        for what, pattern in FORBIDDEN.items()
        if pattern.search(path.read_text(encoding="utf-8"))
    ]
    assert not found, found
