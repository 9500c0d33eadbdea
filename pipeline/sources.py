"""Input readers: each domain's documents from text/JSONL/Parquet files and folders (local or in object storage)
or a ``datasets`` name.

A domain is given as ``NAME=SPEC`` where ``SPEC`` is a local file or folder, an object or prefix in object
storage (``s3://bucket/corpus/web/``, ``gs://...``; each object is downloaded, read and deleted in turn),
or ``hf:PATH[:CONFIG][@SPLIT]`` for a Hugging Face ``datasets`` dataset (``hf:allenai/c4:en@train``). A
YAML file can list domains with options: ``{domains: {code: src/, web: {hf: json, data_files: web.jsonl, text_field: body}}}``.

In a folder every file (sorted, hidden ones skipped) is read by its suffix: ``.jsonl``/``.ndjson`` as one
JSON object per line, ``.parquet`` by rows, anything else as UTF-8 text, one document per file (folder
files that are not UTF-8 are skipped; a named file that is not is an error).

Example:
    >>> import pathlib, tempfile
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / 'a.txt').write_text('hello')
    >>> spec = parse_domain_arg(f'notes={folder}')
    >>> [(d.source.split('/')[-1], d.text) for d in iter_documents(spec)]
    [('a.txt', 'hello')]
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from reweigh.io import objects, uri
from reweigh.safety.names import check_name

__all__ = ['Document', 'DomainSpec', 'iter_documents', 'iter_file', 'list_files', 'load_domains_file', 'parse_domain_arg']

_JSONL_SUFFIXES = ('.jsonl', '.ndjson')
_PARQUET_SUFFIXES = ('.parquet',)


@dataclass(frozen=True)
class Document:
    """One source document: where it came from and its text."""

    source: str
    text: str


@dataclass
class DomainSpec:
    """Where one domain's documents come from.

    Attributes:
        name (str): Domain name, a safe path component (:func:`reweigh.safety.check_name`: ASCII letters,
            digits, ``_``, ``-``, ``.``, starting with a letter or digit).
        kind (str): ``'path'`` (local file or folder), ``'hf'`` (``datasets.load_dataset``) or
            ``'documents'`` (an in-memory document factory, used by the embedded default corpus).
        location (str): The path, the ``datasets`` path, or a description.
        text_field (str): Field holding the text in JSONL, Parquet and ``datasets`` rows.
        options (dict): Extra keyword arguments of ``datasets.load_dataset`` (``name``, ``split``,
            ``data_files``, ...).
        factory (Callable, optional): For ``kind='documents'``: returns an iterator of documents.
        fingerprint_data (Any): Extra data identifying the content (``kind='documents'``).
    """

    name: str
    kind: str
    location: str
    text_field: str = 'text'
    options: dict[str, Any] = field(default_factory=dict)
    factory: Callable[[], Iterator[Document]] | None = None
    fingerprint_data: Any = None

    def __post_init__(self) -> None:
        check_name('domain name', self.name)  # it names folders and object keys of the dataset
        if self.kind not in ('path', 'hf', 'documents'):
            raise ValueError(f'domain {self.name!r}: unknown kind {self.kind!r}')
        if self.kind == 'path' and not uri.is_remote(self.location) and not Path(self.location).exists():
            raise FileNotFoundError(f'domain {self.name!r}: input {self.location!r} does not exist')
        if self.kind == 'documents' and self.factory is None:
            raise ValueError(f'domain {self.name!r}: kind "documents" needs a factory')

    def fingerprint(self) -> dict[str, Any]:
        """JSON data that changes when the domain's input changes (paths, sizes, mtimes, options; for an
        object-store input, the object names only)."""
        data: dict[str, Any] = {'name': self.name, 'kind': self.kind, 'location': self.location,
                                'text_field': self.text_field, 'options': self.options}
        if self.kind == 'path':
            digest = hashlib.sha256()
            for path in list_files(self.location):
                if uri.is_remote(path):
                    digest.update(f'{path}\n'.encode())
                else:
                    st = os.stat(path)
                    digest.update(f'{path}\0{st.st_size}\0{st.st_mtime_ns}\n'.encode())
            data['files'] = digest.hexdigest()
        elif self.kind == 'documents':
            data['content'] = self.fingerprint_data
        return data

    def describe(self) -> str:
        """A one-line description of the input, for the manifest."""
        if self.kind == 'hf':
            return f'datasets.load_dataset({self.location!r}, **{self.options!r}) field {self.text_field!r}'
        return self.location


def parse_domain_arg(arg: str, text_field: str = 'text') -> DomainSpec:
    """Parse a ``NAME=SPEC`` command-line domain (see the module docstring for ``SPEC``).

    Raises:
        ValueError: If ``arg`` has no ``=``.
        FileNotFoundError: If a local ``SPEC`` does not exist.

    Example:
        >>> spec = parse_domain_arg('web=hf:allenai/c4:en@train')
        >>> spec.kind, spec.location, spec.options
        ('hf', 'allenai/c4', {'name': 'en', 'split': 'train'})
    """
    name, sep, spec = arg.partition('=')
    if not sep or not name or not spec:
        raise ValueError(f'domain {arg!r} must be NAME=PATH or NAME=hf:DATASET[:CONFIG][@SPLIT]')
    if spec.startswith('hf:'):
        rest, _, split = spec[3:].partition('@')
        path, _, config = rest.partition(':')
        options: dict[str, Any] = {'split': split or 'train'}
        if config:
            options = {'name': config, **options}
        return DomainSpec(name=name, kind='hf', location=path, text_field=text_field, options=options)
    return DomainSpec(name=name, kind='path', location=spec, text_field=text_field)


def load_domains_file(path: str | os.PathLike) -> list[DomainSpec]:
    """Read domains from a YAML file: ``domains:`` maps names to a path/``hf:`` string or a mapping.

    A mapping has ``path: ...`` or ``hf: DATASET`` plus optional ``text_field`` and, for ``hf``, any
    ``datasets.load_dataset`` keyword (``name``, ``split`` (default ``train``), ``data_files``, ...).
    Relative paths are resolved against the YAML file's folder.

    Raises:
        FileNotFoundError: If the file or a listed path does not exist.
        ValueError: If the file is not such a mapping.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'domains file {str(path)!r} does not exist')
    with open(path) as f:
        cfg = yaml.safe_load(f)
    if not isinstance(cfg, Mapping) or not isinstance(cfg.get('domains'), Mapping) or not cfg['domains']:
        raise ValueError(f'{path}: expected a mapping with a non-empty "domains:" mapping of NAME: SPEC')

    def resolve(p: str) -> str:
        return p if os.path.isabs(p) or uri.is_remote(p) else str(path.parent / p)

    specs = []
    for name, value in cfg['domains'].items():
        if isinstance(value, str):
            spec = value if value.startswith('hf:') else resolve(value)
            specs.append(parse_domain_arg(f'{name}={spec}'))
            continue
        if not isinstance(value, Mapping) or ('path' in value) == ('hf' in value):
            raise ValueError(f'{path}: domain {name!r} needs exactly one of "path:" or "hf:"')
        value = dict(value)
        text_field = value.pop('text_field', 'text')
        if 'path' in value:
            specs.append(DomainSpec(name=str(name), kind='path', location=resolve(value.pop('path')),
                                    text_field=text_field))
        else:
            hf = value.pop('hf')
            if isinstance(value.get('data_files'), str) and not value['data_files'].startswith(('hf://', 's3://')):
                value['data_files'] = resolve(value['data_files'])
            value.setdefault('split', 'train')
            specs.append(DomainSpec(name=str(name), kind='hf', location=hf, text_field=text_field, options=value))
    return specs


def iter_documents(spec: DomainSpec) -> Iterator[Document]:
    """Yield the documents of a domain in a deterministic order (sorted files, file order within).

    Raises:
        ValueError: If a file cannot be parsed or lacks the text field, or a dataset cannot be loaded.
        FileNotFoundError: If the input disappeared.
    """
    if spec.kind == 'documents':
        yield from spec.factory()  # type: ignore[misc]
    elif spec.kind == 'hf':
        yield from _iter_hf(spec)
    else:
        files = list_files(spec.location)
        if not files:
            raise FileNotFoundError(f'domain {spec.name!r}: input {spec.location!r} does not exist')
        for path in files:
            yield from iter_file(path, spec, strict=files == [spec.location])


def list_files(location: str | os.PathLike) -> list[str]:
    """The files a ``path`` domain reads, in reading order: ``location`` itself if it is a file (or object),
    else the files under it sorted by path, hidden ones skipped; local or ``s3://``, ``gs://``, ...

    Raises:
        ValueError: If an object store cannot be listed.
    """
    location = str(location)
    if uri.is_remote(location):
        return objects.list_objects(location)
    root = Path(location)
    if root.is_file():
        return [location]
    if not root.exists():
        return []
    return [str(p) for p in sorted(p for p in root.rglob('*')
                                   if p.is_file() and not any(part.startswith('.') for part in p.relative_to(root).parts))]


def iter_file(path: str, spec: DomainSpec, strict: bool) -> Iterator[Document]:
    """The documents of one file (or object, downloaded first) of ``spec``'s input, read by its suffix.

    Args:
        path: The file's path or URI; documents' sources are named after it.
        spec: Its domain (for the text field and messages).
        strict: Whether a file that is not UTF-8 text is an error (a named file) or skipped (in a folder).
    """
    if uri.is_remote(path):
        with tempfile.TemporaryDirectory(prefix='reweigh-input-') as tmp:
            local = os.path.join(tmp, 'input' + PurePosixPath(path).suffix)
            objects.download(path, local)
            yield from _read_file(Path(local), path, spec, strict)
    else:
        yield from _read_file(Path(path), path, spec, strict)


def _read_file(path: Path, name: str, spec: DomainSpec, strict: bool) -> Iterator[Document]:
    suffix = path.suffix.lower()
    try:
        if suffix in _JSONL_SUFFIXES:
            yield from _iter_jsonl(path, name, spec)
        elif suffix in _PARQUET_SUFFIXES:
            yield from _iter_parquet(path, name, spec)
        else:
            try:
                text = path.read_text(encoding='utf-8')
            except UnicodeDecodeError as e:
                if strict:
                    raise ValueError(f'domain {spec.name!r}: {name} is not UTF-8 text ({e})') from e
                return
            yield Document(name, text)
    except PermissionError as e:
        raise ValueError(f'domain {spec.name!r}: cannot read {name}: {e}') from e


def _iter_jsonl(path: Path, name: str, spec: DomainSpec) -> Iterator[Document]:
    with open(path, encoding='utf-8') as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f'domain {spec.name!r}: {name}:{lineno} is not valid JSON ({e})') from e
            yield Document(f'{name}:{lineno}', _text_of(row, spec, f'{name}:{lineno}'))


def _iter_parquet(path: Path, name: str, spec: DomainSpec) -> Iterator[Document]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid/OSError subclasses for bad files
        raise ValueError(f'domain {spec.name!r}: {name} is not a readable Parquet file ({e})') from e
    if spec.text_field not in pf.schema_arrow.names:
        raise ValueError(f'domain {spec.name!r}: {name} has no column {spec.text_field!r} '
                         f'(columns: {pf.schema_arrow.names}); set the text field')
    row = 0
    for batch in pf.iter_batches(columns=[spec.text_field], batch_size=1024):
        for text in batch.column(0).to_pylist():
            yield Document(f'{name}#{row}', text or '')
            row += 1


def _iter_hf(spec: DomainSpec) -> Iterator[Document]:
    import datasets

    try:
        ds = datasets.load_dataset(spec.location, streaming=True, **spec.options)
    except Exception as e:  # datasets raises many types (FileNotFoundError, DatasetNotFoundError, ...)
        raise ValueError(f'domain {spec.name!r}: cannot load dataset {spec.location!r} '
                         f'with {spec.options}: {type(e).__name__}: {e}') from e
    for row_index, row in enumerate(ds):
        source = f'hf:{spec.location}[{spec.options.get("split")}]#{row_index}'
        yield Document(source, _text_of(row, spec, source))


def _text_of(row: Any, spec: DomainSpec, where: str) -> str:
    if not isinstance(row, Mapping) or spec.text_field not in row:
        keys = list(row) if isinstance(row, Mapping) else type(row).__name__
        raise ValueError(f'domain {spec.name!r}: {where} has no field {spec.text_field!r} (has {keys}); '
                         'set the text field')
    text = row[spec.text_field]
    if text is not None and not isinstance(text, str):
        raise ValueError(f'domain {spec.name!r}: {where} field {spec.text_field!r} is not a string')
    return text or ''
