"""Lint: MAC tags and digests in imsg are never compared with == or != (SECURITY-TESTS
row 15); use hmac.compare_digest or kdf.constant_time_equal.

A comparison is flagged when an operand's name (a variable, attribute, function called,
or subscripted value), split into words at '_' and camelCase, has a word that is or ends
with 'tag', 'mac' or 'digest' (or their plurals). Exempt: comparisons against an int (a
literal, `len(...)`, or `x[0]` with a constant index when x is not itself tag-named) or
against a named UPPER_CASE constant, since those compare a length or a type byte with a
public value, not two secret byte strings; and the constant-time helpers themselves.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCANNED = [ROOT / "imsg"]
_WORDS = ("tag", "mac", "digest")
_ALLOWED_CALLS = {"compare_digest", "constant_time_equal"}


def _words(name: str) -> list[str]:
    return [w.lower() for part in name.split("_") for w in re.findall(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])", part)]


def _name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Call):
        return _name(node.func)
    if isinstance(node, ast.Subscript):
        return _name(node.value)
    return None


def _is_int_like(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant):
        return isinstance(node.value, int) or node.value is None
    if isinstance(node, ast.Subscript):
        # data[0] is one byte of a bytes value; tags[0] may be a whole tag.
        return isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, int) and not _secretish(node.value)
    if isinstance(node, ast.Call):
        return _name(node) == "len"
    if isinstance(node, (ast.Name, ast.Attribute)):
        return re.fullmatch(r"[A-Z][A-Z0-9_]*", _name(node)) is not None  # a named constant
    return False


def _secretish(node: ast.AST) -> bool:
    name = _name(node)
    if name is None or name in _ALLOWED_CALLS:
        return False
    return any(w.removesuffix("s").endswith(_WORDS) for w in _words(name))


def find_tag_comparisons(source: str, filename: str = "<src>") -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Compare):
            continue
        operands = [node.left, *node.comparators]
        for op, left, right in zip(node.ops, operands, operands[1:], strict=False):
            if not isinstance(op, (ast.Eq, ast.NotEq)):
                continue
            if _is_int_like(left) or _is_int_like(right):
                continue
            if _secretish(left) or _secretish(right):
                found.append(f"{filename}:{node.lineno}: {ast.unparse(node)}")
    return found


@pytest.mark.parametrize(
    "snippet",
    [
        "ok = tag == expected",
        "if expected_tag != computed: pass",
        "if self.mac == other: pass",
        "if hmac.digest(k, m, 'sha256') == t: pass",
        "if hashlib.sha256(x).digest() == want: pass",
        "if authTag == x: pass",
        "if a == b == tags[i]: pass",
        "if digests[0] == other: pass",
    ],
)
def test_lint_flags_tag_comparisons(snippet):
    assert find_tag_comparisons(snippet)


@pytest.mark.parametrize(
    "snippet",
    [
        "ok = hmac.compare_digest(tag, expected)",
        "ok = constant_time_equal(mac, other)",
        "if len(tag) != 16: pass",
        "if data[0] != tag: pass",  # a one-byte type tag
        "if tag != KEY_X25519: pass",  # a type tag against a named constant
        "if tag is None: pass",
        "if stage == 'x' and machine == y: pass",
        "if shared == zero: pass",
    ],
)
def test_lint_allows(snippet):
    assert find_tag_comparisons(snippet) == []


def test_no_eq_comparison_of_tags_in_imsg():
    files = [p for root in SCANNED for p in sorted(root.rglob("*.py"))]
    assert files, "nothing scanned"
    found = [f for p in files for f in find_tag_comparisons(p.read_text(), str(p.relative_to(ROOT)))]
    assert found == [], "use hmac.compare_digest / constant_time_equal:\n" + "\n".join(found)
