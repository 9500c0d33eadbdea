"""The lock files (requirements/NAME.txt, made by `bash scripts/lock.sh`) against what they were made from, and the
environment that `scripts/setup*.sh` installed from one of them.

A lock is what CI, the Quickstart and reproducible runs install; pyproject.toml keeps the ranges users install
reweigh with. These tests fail as soon as the two part: a dependency added to pyproject.toml or an .in file without
refreshing the locks, a range narrowed past a pin, or an environment set up from an older lock.
"""

from __future__ import annotations

import json
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = ROOT / 'requirements'
LOCKS = sorted(REQUIREMENTS.glob('*.txt'))

PLATFORMS = {
    'linux-x86_64': dict(sys_platform='linux', platform_system='Linux', platform_machine='x86_64', os_name='posix'),
    'linux-aarch64': dict(sys_platform='linux', platform_system='Linux', platform_machine='aarch64', os_name='posix'),
    'macos-arm64': dict(sys_platform='darwin', platform_system='Darwin', platform_machine='arm64', os_name='posix'),
    'windows-amd64': dict(sys_platform='win32', platform_system='Windows', platform_machine='AMD64', os_name='nt'),
}
"""The platforms a universal lock (`uv pip compile --universal`) must serve; its markers are evaluated for each."""
PYTHONS = ('3.11', '3.12', '3.13', '3.14')


def marker_environments() -> dict[str, dict[str, str]]:
    """Marker environments for every platform and supported Python, CPython's implementation fields."""
    out = {}
    for platform, fields in PLATFORMS.items():
        for python in PYTHONS:
            env = dict(default_environment(), **fields, python_version=python, python_full_version=f'{python}.0')
            env['implementation_version'] = env['python_full_version']
            out[f'{platform}-py{python}'] = env
    return out


def lock_pins(lock: Path) -> list[tuple[Requirement, int]]:
    """Each pin of a lock as a requirement (``name==version ; marker``), with its number of ``--hash`` values."""
    pins: list[tuple[Requirement, int]] = []
    for line in lock.read_text().splitlines():
        if re.match(r'[A-Za-z0-9]', line):
            pins.append((Requirement(line.rstrip(' \\')), 0))
        elif line.strip().startswith('--hash=sha256:'):
            requirement, hashes = pins[-1]
            pins[-1] = (requirement, hashes + 1)
    return pins


def pins_for(lock: Path, env: dict[str, str]) -> dict[str, Version]:
    """The version a lock installs of each package in one marker environment; a package pinned twice fails."""
    out: dict[str, Version] = {}
    for requirement, _ in lock_pins(lock):
        if requirement.marker is None or requirement.marker.evaluate(env):
            name = canonicalize_name(requirement.name)
            assert name not in out, f'{lock.name} pins {name} twice where {env["sys_platform"]} applies'
            (specifier,) = requirement.specifier
            out[name] = Version(specifier.version)
    return out


def pyproject() -> dict:
    return tomllib.loads((ROOT / 'pyproject.toml').read_text())


def inputs(source: Path) -> list[Requirement]:
    """What a lock was compiled from: the requirements of an .in file, with ``-r`` includes followed and the
    project itself (``.[extra,...]``) expanded into pyproject.toml's dependencies and those extras."""
    project = pyproject()['project']
    out = []
    for raw in source.read_text().splitlines():
        line = raw.split('#', 1)[0].strip()
        if not line:
            continue
        if line.startswith('-r '):
            out += inputs(source.parent / line[3:].strip())
        elif line.startswith('.'):
            extras = re.fullmatch(r'\.(?:\[([^\]]*)\])?', line).group(1) or ''
            out += [Requirement(r) for r in project['dependencies']]
            for extra in filter(None, (e.strip() for e in extras.split(','))):
                out += [Requirement(r) for r in project['optional-dependencies'][extra]]
        else:
            out.append(Requirement(line))
    return out


def test_every_lock_has_its_source_and_every_environment_its_lock():
    """The locks named by the setup scripts exist and each was made from an .in file that is still there."""
    assert {p.name for p in LOCKS} >= {'main.txt', 'foundry.txt', 'today.txt'}
    for lock in LOCKS:
        assert lock.with_suffix('.in').is_file(), f'{lock.name} has no {lock.stem}.in to be compiled from'
        assert 'bash scripts/lock.sh' in lock.read_text().splitlines()[1], f'{lock.name} was not written by scripts/lock.sh'
    for script in ('setup.sh', 'setup_foundry.sh', 'setup_today.sh'):
        named = re.findall(r'requirements/(\w+)\.txt', (ROOT / 'scripts' / script).read_text())
        assert named and all((REQUIREMENTS / f'{n}.txt').is_file() for n in named), script


@pytest.mark.parametrize('lock', LOCKS, ids=lambda p: p.name)
def test_lock_satisfies_what_it_was_made_from(lock):
    """Every requirement of the lock's .in file (pyproject.toml's dependencies and extras among them) and of
    pyproject.toml's [build-system] is pinned, inside its range, on every platform and Python the lock serves.

    Fails when pyproject.toml or an .in file changed without `bash scripts/lock.sh`."""
    wanted = inputs(lock.with_suffix('.in')) + [Requirement(r) for r in pyproject()['build-system']['requires']]
    envs = marker_environments()
    problems: dict[str, list[str]] = {}
    for where, env in envs.items():
        pins = pins_for(lock, env)
        for requirement in wanted:
            if requirement.marker is not None and not requirement.marker.evaluate(dict(env, extra='')):
                continue
            name = canonicalize_name(requirement.name)
            if name not in pins:
                problems.setdefault(f'{requirement} is not in the lock', []).append(where)
            elif not requirement.specifier.contains(pins[name], prereleases=True):
                problems.setdefault(f'{requirement} does not admit the locked {name}=={pins[name]}', []).append(where)
    lines = [f'  {problem} ({len(where)} of {len(envs)} platform/Python pairs, e.g. {where[0]})'
             for problem, where in problems.items()]
    assert not problems, f'{lock.name} is out of date; run `bash scripts/lock.sh`:\n' + '\n'.join(lines)


@pytest.mark.parametrize('lock', LOCKS, ids=lambda p: p.name)
def test_every_pin_is_exact_and_hashed(lock):
    """pip's --require-hashes needs ``==`` and at least one sha256 on every line."""
    pins = lock_pins(lock)
    assert len(pins) > 50
    for requirement, hashes in pins:
        assert [s.operator for s in requirement.specifier] == ['=='], str(requirement)
        assert hashes >= 1, f'{requirement} has no --hash'


def test_the_universal_locks_serve_every_platform():
    """torch and its CUDA libraries resolve per platform: the CUDA wheels only on Linux x86_64."""
    envs = marker_environments()
    for lock in LOCKS:
        linux = pins_for(lock, envs['linux-x86_64-py3.11'])
        mac = pins_for(lock, envs['macos-arm64-py3.13'])
        assert linux['torch'] == mac['torch']
        assert any(n.startswith('nvidia-') for n in linux) and not any(n.startswith('nvidia-') for n in mac)


def _installed_lock() -> dict:
    record = Path(sys.prefix) / 'reweigh-lock.json'
    if not record.is_file():
        pytest.skip(f'{sys.prefix} was not made by scripts/setup*.sh (no reweigh-lock.json)')
    return json.loads(record.read_text())


def test_this_environment_is_its_current_lock():
    """The environment running the suite holds exactly the versions of the lock it was set up from, and that lock
    is the one in the tree now (a pulled or refreshed lock asks for the setup script to run again)."""
    import hashlib

    record = _installed_lock()
    lock = ROOT / record['lock']
    assert hashlib.sha256(lock.read_bytes()).hexdigest() == record['sha256'], (
        f'{record["lock"]} changed since {sys.prefix} was set up from it: re-run its scripts/setup*.sh')
    wrong = []
    for name, version in pins_for(lock, default_environment()).items():
        try:
            installed = Version(metadata.version(name))
        except metadata.PackageNotFoundError:
            installed = None
        if installed != version:
            wrong.append(f'{name}: locked {version}, installed {installed}')
    assert not wrong, '\n'.join(wrong)
