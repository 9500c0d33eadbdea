"""The packages import one another only as docs/architecture.md's table allows (top-level and function-level imports).

The table is the rule: a new dependency between packages is a change to the architecture, made in the document
first. A package may always import itself; an entry ``pkg.module`` allows that one module of ``pkg`` only.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / 'docs' / 'architecture.md'


def _allowed() -> dict[str, set[str]]:
    """``package -> allowed imports`` from the table whose header is ``| package | owns | may import |``."""
    text = DOC.read_text()
    table = text.split('| package | owns | may import |', 1)[1].split('\n\n', 1)[0]
    allowed = {}
    for line in table.strip().splitlines()[1:]:
        cells = [c.strip() for c in line.strip().strip('|').split('|')]
        package = cells[0].strip('`/')
        allowed[package] = set(re.findall(r'`([a-z_.]+)`', cells[2]))
    return allowed


ALLOWED = _allowed()


def _imports(path: Path) -> set[str]:
    """The ``reweigh.*`` modules a file imports anywhere (``reweigh.`` stripped)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith('reweigh.'):
            base = node.module.removeprefix('reweigh.')
            found |= {base} if '.' in base else {f'{base}.{a.name}' for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix('reweigh.') for a in node.names if a.name.startswith('reweigh.')}
    return found


def test_the_table_names_every_package_and_only_packages():
    packages = {p.parent.name for p in ROOT.glob('*/__init__.py') if p.parent.name not in ('tests', 'scripts')}
    assert set(ALLOWED) == packages
    for package, allowed in ALLOWED.items():
        assert {a.split('.')[0] for a in allowed} <= packages - {package}, package


@pytest.mark.parametrize('package', sorted(ALLOWED))
def test_a_package_imports_only_what_the_architecture_allows(package):
    allowed = ALLOWED[package]
    wrong = []
    for path in sorted((ROOT / package).glob('*.py')):
        for name in sorted(_imports(path)):
            top = name.split('.')[0]
            if top != package and top not in allowed and not any(name == a or name.startswith(a + '.') for a in allowed):
                wrong.append(f'{package}/{path.name} imports reweigh.{name}')
    assert not wrong, '\n'.join(wrong)
