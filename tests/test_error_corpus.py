"""The README's error table lists every error code lipsync can answer with: each ``code`` of the exception
tree (lipsync.errors and every subclass defined elsewhere, e.g. the API's), the codes the API and the job
layer write as literals, and the CLI's own. A code added anywhere without a README row fails here."""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import lipsync
from lipsync.errors import LipSyncError

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "lipsync"

# Literal codes outside the exception classes: error_response(413, "request_too_large", ...),
# JobFailure(code="interrupted", ...), {404: "not_found", ...} status maps, and the CLI's "error (usage): ...".
_LITERALS = (
    re.compile(r"error_response\(\s*\d{3},\s*\"([a-z][a-z0-9_]*)\""),
    re.compile(r"\bcode=\"([a-z][a-z0-9_]*)\""),  # keyword arguments; class attributes come from the tree
    re.compile(r"\b[1-5]\d\d:\s*\"([a-z][a-z0-9_]*)\""),
    re.compile(r"\"error \(([a-z][a-z0-9_]*)\)"),
)


def _import_everything() -> None:
    """Import every lipsync module that can be imported here, so subclasses defined anywhere register."""
    for info in pkgutil.walk_packages(lipsync.__path__, "lipsync."):
        try:
            importlib.import_module(info.name)
        except ImportError:  # an optional extra that is not installed: its module defines no error codes
            continue


def _tree_codes() -> set[str]:
    codes: set[str] = set()
    stack = [LipSyncError]
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        if not cls.__name__.startswith("_"):  # private: handled inside lipsync, never answered
            codes.add(cls.code)
    return codes


def _literal_codes() -> set[str]:
    codes: set[str] = set()
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        for pattern in _LITERALS:
            codes.update(pattern.findall(text))
    return codes


def _readme_codes() -> set[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Errors", 1)[1].split("\n## ", 1)[0]
    codes: set[str] = set()
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) >= 3:
            codes.update(re.findall(r"`([a-z][a-z0-9_]*)`", cells[1]))
    return codes


def test_readme_error_table_lists_every_code() -> None:
    _import_everything()
    tree, literal = _tree_codes(), _literal_codes()
    assert {"model_not_available", "checksum_mismatch", "unauthorized", "interrupted", "usage"} <= tree | literal
    documented = _readme_codes()
    missing = sorted((tree | literal) - documented)
    assert not missing, f"README.md's error table (## Errors) lacks these codes: {missing}"


def test_the_collector_sees_a_new_code() -> None:
    # The test above can fail: a subclass defined now is seen by the walk, and the README lacks its code.
    class BrandNew(LipSyncError):
        code = "brand_new_code_for_this_test"

    assert BrandNew.code in _tree_codes() and BrandNew.code not in _readme_codes()
