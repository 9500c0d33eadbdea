"""The dataset manifest: ``manifest.json`` at the dataset root, written last (it marks a complete dataset).

Layout of a prepared dataset (local folder or object-store prefix)::

    manifest.json                   this file
    tokenizer/                      the Hugging Face tokenizer (``AutoTokenizer.from_pretrained``)
    documents/{domain}.parquet      doc_id, split, source, chars of every source document
    {split}/{domain}/index.json     one MDS stream per split (train, val) and domain, with its shards

Every MDS sample has ``input_ids`` (uint16/uint32 array, ``seq_len`` tokens or fewer for the last one of
a stream), ``sample_id`` (int64, see :mod:`reweigh.pipeline.ids`), ``domain`` (int32, the index below)
and ``doc_ids`` (int64 array, the source documents the sequence contains).

Example:
    >>> from reweigh.pipeline.shards import columns
    >>> m = Manifest(seq_len=8, domains=[DomainInfo('code', 0, 'src/')], tokenizer={'path': 'tokenizer'},
    ...              mds={'columns': columns(vocab_size=512)})
    >>> Manifest.from_json(m.to_json()).domain_names
    ['code']
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Any

from reweigh.io import objects, uri
from reweigh.pipeline.ids import DOMAIN_SHIFT, SPLIT_SHIFT, SPLITS
from reweigh.pipeline.shards import check_columns
from reweigh.safety.names import check_name, check_relative_path

__all__ = ['CURATION_FOLDER', 'MANIFEST_NAME', 'DomainInfo', 'Manifest', 'read_manifest']

MANIFEST_NAME = 'manifest.json'
CURATION_FOLDER = 'curation'
"""In a curated dataset: ``curation/{domain}.parquet`` lists the kept training sample ids in stored order."""
FORMAT = 'reweigh-mds'
FORMAT_VERSION = 1
SAMPLE_ID_SCHEME = {
    'formula': f'(domain_index << {DOMAIN_SHIFT}) | (split_bit << {SPLIT_SHIFT}) | sequence_index',
    'domain_shift': DOMAIN_SHIFT,
    'split_shift': SPLIT_SHIFT,
    'split_bits': {name: i for i, name in enumerate(SPLITS)},
    'sequence_index': 'position of the sequence in {split}/{domain}, in write order',
}


@dataclass
class DomainInfo:
    """One domain: its name, index (as in sample ids and the ``domain`` column) and per-split counts."""

    name: str
    index: int
    source: str
    documents: dict[str, int] = field(default_factory=dict)
    sequences: dict[str, int] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)

    def path(self, split: str) -> str:
        """Relative path of the domain's MDS stream for ``split``."""
        return f'{split}/{self.name}'


@dataclass
class Manifest:
    """Contents of ``manifest.json``."""

    seq_len: int
    domains: list[DomainInfo]
    tokenizer: dict[str, Any]
    fingerprint: str = ''
    source: str = ''
    mds: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    splits: list[str] = field(default_factory=lambda: list(SPLITS))
    sample_id_scheme: dict[str, Any] = field(default_factory=lambda: dict(SAMPLE_ID_SCHEME))
    curation: dict[str, Any] | None = None
    """For a dataset made by ``reweigh curate``: the source dataset and run, the rules and what they kept.
    Its training samples keep their source ids, so ``sequence_index`` is the position in the source; the
    kept ids are listed in :data:`CURATION_FOLDER`."""
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    @property
    def domain_names(self) -> list[str]:
        """Domain names in index order."""
        return [d.name for d in sorted(self.domains, key=lambda d: d.index)]

    def domain(self, name: str) -> DomainInfo:
        """The domain called ``name``.

        Raises:
            ValueError: If there is none.
        """
        for d in self.domains:
            if d.name == name:
                return d
        raise ValueError(f'unknown domain {name!r}; the dataset has {self.domain_names}')

    def to_json(self) -> str:
        """The manifest as indented JSON."""
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        """Parse a manifest.

        Raises:
            ValueError: If it is not a reweigh manifest of a supported version.
        """
        obj = json.loads(text)
        if not isinstance(obj, dict) or obj.get('format') != FORMAT or obj.get('format_version') != FORMAT_VERSION:
            found = obj if not isinstance(obj, dict) else {k: obj.get(k) for k in ('format', 'format_version')}
            raise ValueError(f'not a {FORMAT} v{FORMAT_VERSION} manifest ({found!r})')
        obj['domains'] = [DomainInfo(**d) for d in obj['domains']]
        manifest = cls(**obj)
        manifest.check()
        return manifest

    def check(self) -> None:
        """Check what readers turn into paths and decoders: names, the tokenizer's files, the columns.

        Raises:
            ValueError: For a domain name or file name that could leave the dataset's root, repeated
                domain names or indices, or columns other than the reweigh MDS contract's.
        """
        for d in self.domains:
            check_name(f'{MANIFEST_NAME}: domain name', d.name)
        if len({d.name for d in self.domains}) != len(self.domains):
            raise ValueError(f'{MANIFEST_NAME}: domain names repeat: {self.domain_names}')
        if sorted(d.index for d in self.domains) != list(range(len(self.domains))):
            raise ValueError(f'{MANIFEST_NAME}: domain indices must be 0..{len(self.domains) - 1}')
        check_relative_path(f'{MANIFEST_NAME}: tokenizer path', self.tokenizer.get('path'))
        for name in self.tokenizer.get('files', []):
            check_name(f'{MANIFEST_NAME}: tokenizer file', name)
        check_columns(self.mds.get('columns'), f'{MANIFEST_NAME}: mds.columns')


def read_manifest(root: str | os.PathLike, cache: str | os.PathLike | None = None) -> Manifest:
    """Read ``manifest.json`` of the dataset at ``root`` (a local folder or a remote URI).

    Args:
        root (str | PathLike): Dataset root.
        cache (str | PathLike, optional): Local folder to download a remote manifest into (default: a
            temporary file).

    Raises:
        FileNotFoundError: If ``root`` has no manifest (no dataset, or an incomplete one).
        ValueError: If the manifest is not valid or the remote cannot be read.
    """
    root = str(root)
    if uri.is_remote(root):
        if cache is None:
            with tempfile.TemporaryDirectory() as tmp:
                return read_manifest(root, tmp)
        local = os.path.join(str(cache), MANIFEST_NAME)
        try:
            objects.download(uri.join(root, MANIFEST_NAME), local)
        except FileNotFoundError as e:
            raise FileNotFoundError(f'{root} holds no prepared dataset ({MANIFEST_NAME} missing)') from e
    else:
        local = os.path.join(root, MANIFEST_NAME)
        if not os.path.isfile(local):
            raise FileNotFoundError(f'{root} holds no prepared dataset ({MANIFEST_NAME} missing); '
                                    'run `reweigh prepare` first')
    with open(local) as f:
        try:
            return Manifest.from_json(f.read())
        except (json.JSONDecodeError, TypeError, KeyError, AttributeError) as e:
            raise ValueError(f'{root}/{MANIFEST_NAME} is corrupted: {e}') from e
        except ValueError as e:
            raise ValueError(f'{root}: {e}') from e
