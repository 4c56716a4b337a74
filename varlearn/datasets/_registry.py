"""The registry of downloadable data sets, read from ``registry.json`` beside this module.

Format (JSON, ``"format": "varlearn-data-registry"``, ``"version": 1``)::

    {"datasets": {NAME: {
        "title": str, "homepage": str, "license": str,
        "subdir": str,            # subfolder of a data/cache folder holding the files
        "checksum": "file" | "decompressed",
        "mirrors": [base URL, ...],   # tried, in order, after each file's own url
        "system_dirs": [folder, ...], # searched before $VARLEARN_DATA (e.g. Debian packages)
        "files": {FILE NAME: {"sha256": 64 hex digits, "url": "http(s)://..."}}}}}

With ``"checksum": "file"`` the SHA-256 is that of the file itself (it is
given to pooch, which checks every download).  With ``"decompressed"`` (MNIST
and Fashion-MNIST, whose ``.gz`` files differ between mirrors only in their
gzip header) it is the SHA-256 of the decompressed bytes, i.e. of the IDX
file named without ``.gz``; varlearn checks it on every file it reads, and on
every download before the file is moved into the cache.
"""
from __future__ import annotations

import functools
import json
import re
import urllib.parse
from pathlib import Path

from ._common import DataError

__all__ = ["REGISTRY_FILE", "registry"]

#: The registry file shipped inside the package (``data/registry.json`` in the source tree links to it).
REGISTRY_FILE = Path(__file__).with_name("registry.json")

_SHA256 = re.compile(r"[0-9a-f]{64}")
_KEYS = ("title", "homepage", "license", "subdir", "checksum", "mirrors", "system_dirs", "files")


def _check_url(url, where):
    if not isinstance(url, str) or urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise DataError(f"{where}: expected an http(s) URL, got {url!r}")


def validate(reg, source="registry"):
    """Check the structure of a parsed registry; ``DataError`` naming the bad entry."""
    if not isinstance(reg, dict) or reg.get("format") != "varlearn-data-registry" or reg.get("version") != 1:
        raise DataError(f"{source}: not a version-1 varlearn data registry")
    datasets = reg.get("datasets")
    if not isinstance(datasets, dict) or not datasets:
        raise DataError(f"{source}: 'datasets' must be a non-empty object")
    for name, info in datasets.items():
        where = f"{source}: data set {name!r}"
        missing = [k for k in _KEYS if k not in info]
        if missing:
            raise DataError(f"{where} lacks {', '.join(missing)}")
        if info["checksum"] not in ("file", "decompressed"):
            raise DataError(f"{where}: checksum must be 'file' or 'decompressed', got {info['checksum']!r}")
        for url in info["mirrors"]:
            _check_url(url, f"{where} mirrors")
        if not info["files"]:
            raise DataError(f"{where} has no files")
        for fname, entry in info["files"].items():
            if not _SHA256.fullmatch(str(entry.get("sha256", ""))):
                raise DataError(f"{where} file {fname!r}: sha256 must be 64 lower-case hex digits")
            _check_url(entry.get("url"), f"{where} file {fname!r}")
    return reg


@functools.lru_cache(maxsize=1)
def registry():
    """The parsed data registry (a dict; shared, do not modify).

    Raises
    ------
    DataError
        If ``registry.json`` is missing from the installed package or malformed.
    """
    try:
        text = REGISTRY_FILE.read_text(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"the data registry {REGISTRY_FILE} cannot be read ({exc}); reinstall varlearn") from exc
    try:
        reg = json.loads(text)
    except ValueError as exc:
        raise DataError(f"{REGISTRY_FILE}: invalid JSON ({exc})") from exc
    return validate(reg, str(REGISTRY_FILE))


def dataset(name):
    """The registry entry of data set ``name`` (``"kodak"``, ``"mnist"``, ``"fashion-mnist"``)."""
    datasets = registry()["datasets"]
    if name not in datasets:
        raise ValueError(f"unknown data set {name!r}; the registry lists {', '.join(sorted(datasets))}")
    return datasets[name]


def checksums(name):
    """``{file name: SHA-256}`` of a data set; for ``"decompressed"`` sets keyed by the name without ``.gz``."""
    info = dataset(name)
    strip = info["checksum"] == "decompressed"
    return {(f[:-3] if strip and f.endswith(".gz") else f): e["sha256"] for f, e in info["files"].items()}
