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
    >>> m = Manifest(seq_len=8, domains=[DomainInfo('code', 0, 'src/')], tokenizer={'path': 'tokenizer'})
    >>> Manifest.from_json(m.to_json()).domain_names
    ['code']
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Any

from reweigh.pipeline import storage
from reweigh.pipeline.ids import DOMAIN_SHIFT, SPLIT_SHIFT, SPLITS

__all__ = ['MANIFEST_NAME', 'DomainInfo', 'Manifest', 'read_manifest']

MANIFEST_NAME = 'manifest.json'
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
    def from_json(cls, text: str) -> 'Manifest':
        """Parse a manifest.

        Raises:
            ValueError: If it is not a reweigh manifest of a supported version.
        """
        obj = json.loads(text)
        if obj.get('format') != FORMAT or obj.get('format_version') != FORMAT_VERSION:
            raise ValueError(f'not a {FORMAT} v{FORMAT_VERSION} manifest '
                             f'(format={obj.get("format")!r}, version={obj.get("format_version")!r})')
        obj['domains'] = [DomainInfo(**d) for d in obj['domains']]
        return cls(**obj)


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
    if storage.is_remote(root):
        if cache is None:
            with tempfile.TemporaryDirectory() as tmp:
                return read_manifest(root, tmp)
        local = os.path.join(str(cache), MANIFEST_NAME)
        try:
            storage.download(storage.join(root, MANIFEST_NAME), local)
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
        except (json.JSONDecodeError, TypeError, KeyError) as e:
            raise ValueError(f'{root}/{MANIFEST_NAME} is corrupted: {e}') from e
