"""The embedded default corpus: real text from the running Python installation, in three domains.

No network is needed and the corpus is the same on every machine with the same Python version, since
it reads only the standard library under ``sys.base_prefix`` (never the virtualenv's site-packages):

* ``code``: standard-library modules (``Lib/**/*.py``, without tests, ``encodings/``, ``site-packages``
  and machine-generated ``_sysconfigdata*``), picked in the order of the SHA-1 of their relative path and
  each cut to ``max_doc_chars`` at a line break.
* ``docs``: the English reference documentation shipped as ``pydoc_data.topics`` (one document per topic,
  sorted by topic), then IDLE's prose ``idlelib/*.txt`` files.
* ``boilerplate``: highly redundant text: the sections of Python's ``LICENSE.txt``, the licence files of
  the wheels bundled with ``ensurepip``, near-duplicate copies of those licences with other copyright
  years and holders (deterministic), and the generated, near-identical charmap codec modules
  ``encodings/cp*.py``, ``iso8859_*.py`` and ``mac_*.py``.

Each domain stops at ``max_bytes_per_domain`` bytes of UTF-8 text.

Example:
    >>> domains = default_corpus(max_bytes_per_domain=20_000)
    >>> [d.name for d in domains]
    ['code', 'docs', 'boilerplate']
    >>> from reweigh.pipeline.sources import iter_documents
    >>> sum(len(doc.text.encode()) for doc in iter_documents(domains[0])) <= 20_000
    True
"""

from __future__ import annotations

import hashlib
import re
import sys
import sysconfig
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from reweigh.pipeline.sources import Document, DomainSpec

__all__ = ['DEFAULT_DOMAINS', 'default_corpus', 'stdlib_dir']

DEFAULT_DOMAINS = ('code', 'docs', 'boilerplate')
_EXCLUDED_DIRS = {'test', 'tests', 'idle_test', 'site-packages', 'dist-packages', 'encodings', '__pycache__',
                  'turtledemo'}
_HOLDERS = ('The Example Project Authors', 'Jane Doe', 'Acme Software Ltd.', 'The Contributors',
            'Open Source Collective', 'J. Random Hacker', 'Foo Bar Inc.', 'The Sample Foundation')


def stdlib_dir() -> Path:
    """The standard library folder of the base Python installation (not of a virtualenv)."""
    return Path(sysconfig.get_path('stdlib', vars={'installed_base': sys.base_prefix,
                                                   'base': sys.base_prefix}))


def default_corpus(max_bytes_per_domain: int = 600_000, max_doc_chars: int = 12_000,
                   duplicates_per_licence: int = 6) -> list[DomainSpec]:
    """The three default domains (``code``, ``docs``, ``boilerplate``) as :class:`DomainSpec` objects.

    Args:
        max_bytes_per_domain (int): Stop each domain after this many bytes of UTF-8 text.
        max_doc_chars (int): Cut longer source files (``code`` and codec modules) to this many characters.
        duplicates_per_licence (int): Near-duplicate copies made of each licence text.

    Returns:
        list[DomainSpec]: Domain specs of kind ``'documents'``, ready for
        :func:`~reweigh.pipeline.prepare.prepare_dataset`.
    """
    if max_bytes_per_domain <= 0 or max_doc_chars <= 0 or duplicates_per_licence < 0:
        raise ValueError('max_bytes_per_domain and max_doc_chars must be > 0, duplicates_per_licence >= 0')
    lib = stdlib_dir()
    params = {'python': sys.version_info[:3], 'max_bytes_per_domain': max_bytes_per_domain,
              'max_doc_chars': max_doc_chars, 'duplicates_per_licence': duplicates_per_licence}
    producers = {
        'code': (lambda: _code_documents(lib, max_doc_chars),
                 f'Python {sys.version.split()[0]} standard library modules under {lib}'),
        'docs': (lambda: _docs_documents(lib),
                 'pydoc_data.topics (English reference documentation) and idlelib/*.txt'),
        'boilerplate': (lambda: _boilerplate_documents(lib, max_doc_chars, duplicates_per_licence),
                        'LICENSE.txt sections, ensurepip wheel licences, near-duplicate licence copies, '
                        'generated charmap codec modules (encodings/)'),
    }
    return [DomainSpec(name=name, kind='documents', location=f'default corpus: {description}',
                       factory=lambda produce=produce: _capped(produce(), max_bytes_per_domain),
                       fingerprint_data={'domain': name, **params})
            for name, (produce, description) in producers.items()]


def _capped(docs: Iterable[Document], max_bytes: int) -> Iterator[Document]:
    used = 0
    for doc in docs:
        size = len(doc.text.encode('utf-8'))
        if not doc.text.strip():
            continue
        if used + size > max_bytes:
            remaining = max_bytes - used
            if remaining > 1000:
                head = doc.text.encode('utf-8')[:remaining].decode('utf-8', errors='ignore')
                yield Document(doc.source, _cut(head, len(head) - 1))
            return
        used += size
        yield doc


def _cut(text: str, max_chars: int) -> str:
    """``text`` cut to at most ``max_chars`` characters, at the last line break where there is one."""
    if len(text) <= max_chars:
        return text
    head = text[:max_chars]
    newline = head.rfind('\n')
    return head[:newline + 1] if newline > 0 else head


def _rel(path: Path, lib: Path) -> str:
    return path.relative_to(lib).as_posix()


def _code_documents(lib: Path, max_doc_chars: int) -> Iterator[Document]:
    files = [p for p in lib.rglob('*.py')
             if not _EXCLUDED_DIRS.intersection(p.relative_to(lib).parts[:-1])
             and not p.name.startswith('_sysconfigdata') and not p.name.startswith('test_')]
    files.sort(key=lambda p: hashlib.sha1(_rel(p, lib).encode()).hexdigest())
    for path in files:
        yield Document(f'stdlib:{_rel(path, lib)}', _cut(path.read_text(encoding='utf-8', errors='replace'),
                                                         max_doc_chars))


def _docs_documents(lib: Path) -> Iterator[Document]:
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield Document(f'pydoc_data.topics:{name}', topics[name])
    for path in sorted((lib / 'idlelib').glob('*.txt')):
        yield Document(f'stdlib:{_rel(path, lib)}', path.read_text(encoding='utf-8', errors='replace'))


def _licence_texts(lib: Path) -> list[tuple[str, str]]:
    texts = []
    licence = lib / 'LICENSE.txt'
    if licence.is_file():
        # Sections start with an all-caps title line such as "PYTHON SOFTWARE FOUNDATION LICENSE VERSION 2".
        parts = re.split(r'\n(?=[A-Z0-9][A-Z0-9 .,\-]{15,}\n)', licence.read_text(encoding='utf-8'))
        texts += [(f'stdlib:LICENSE.txt#{i}', part.strip() + '\n') for i, part in enumerate(parts) if part.strip()]
    for wheel in sorted((lib / 'ensurepip' / '_bundled').glob('*.whl')):
        with zipfile.ZipFile(wheel) as z:
            for name in sorted(z.namelist()):
                if re.search(r'\.dist-info/(LICEN[CS]E|COPYING|AUTHORS)', name, re.IGNORECASE):
                    texts.append((f'stdlib:ensurepip/_bundled/{wheel.name}/{name}',
                                  z.read(name).decode('utf-8', errors='replace')))
    return texts


def _near_duplicate(text: str, copy: int) -> str:
    """A deterministic variant of a licence: other copyright years and holder, as licences in the wild."""
    holder = _HOLDERS[copy % len(_HOLDERS)]
    year = 1995 + (copy * 7) % 30
    text = re.sub(r'\b(19|20)\d\d\b', lambda m: str(year + (int(m.group(0)) % 3)), text)
    return f'Copyright (c) {year}-{year + 1 + copy % 5} {holder}\n\n{text}'


def _boilerplate_documents(lib: Path, max_doc_chars: int, duplicates: int) -> Iterator[Document]:
    licences = _licence_texts(lib)
    codecs = sorted(p for p in (lib / 'encodings').glob('*.py')
                    if re.match(r'(cp\d+|iso8859_\d+|mac_\w+)\.py$', p.name))
    for source, text in licences:
        yield Document(source, text)
    # Interleave the codec modules with the licence copies, so any byte cap keeps both kinds.
    copies = [(f'{source}~copy{k}', _near_duplicate(text, k)) for k in range(duplicates) for source, text in licences]
    for i in range(max(len(copies), len(codecs))):
        if i < len(codecs):
            yield Document(f'stdlib:{_rel(codecs[i], lib)}',
                           _cut(codecs[i].read_text(encoding='utf-8', errors='replace'), max_doc_chars))
        if i < len(copies):
            yield Document(*copies[i])
