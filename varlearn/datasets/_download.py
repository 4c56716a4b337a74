"""Finding data files on disk, and downloading missing ones through pooch.

Search order (see :mod:`varlearn.datasets`): the ``root`` argument alone when
given; otherwise the registry's ``system_dirs``, each folder of
``$VARLEARN_DATA`` (its data-set subfolder first), the cache folder, and
finally a download into the cache folder.

Downloads use :mod:`pooch`: each file is streamed to a temporary file in the
cache folder, checked (pooch's SHA-256 check for ``"checksum": "file"`` data
sets; varlearn's check of the decompressed bytes, run on the temporary file
inside pooch's download step, for ``"decompressed"`` ones), and only then
moved into place; a failed or rejected download leaves no file behind.  A
failed attempt (connection error, HTTP error, checksum mismatch) is retried
:data:`varlearn.datasets.DOWNLOAD_RETRIES` times by pooch (waiting 1 s, 2 s, ...), then the next
location is tried.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import urllib.parse
from pathlib import Path

from ._common import DataError, DownloadError, as_items, as_path, is_str, list_text

logger = logging.getLogger("varlearn")

#: Environment variable naming local data folder(s) (``os.pathsep``-separated).
DATA_ENV = "VARLEARN_DATA"
#: Environment variable overriding the cache folder.
CACHE_ENV = "VARLEARN_CACHE"
#: Environment variable naming a local copy of all data sets (tests, scripts); see :func:`shared_data_dir`.
SHARED_DATA_ENV = "VARLEARN_SHARED_DATA"
# The two download settings are read at call time from the package, so that
# ``varlearn.datasets.DOWNLOAD_RETRIES = 0`` takes effect.
#: Seconds a download may stall before it is abandoned.
DOWNLOAD_TIMEOUT = 30.0
#: Extra attempts pooch makes per location after a failed or rejected download.
DOWNLOAD_RETRIES = 2


def _setting(name):
    package = sys.modules.get(__package__)
    return getattr(package, name) if package is not None and hasattr(package, name) else globals()[name]

OFFLINE_HINT = (
    "Without network access, fetch the files by hand and point varlearn at them: pass "
    f"root=FOLDER (command line: --data-dir FOLDER) or set the {DATA_ENV} environment variable"
)


def get_cache_dir(cache_dir=None) -> Path:
    """The folder where downloads are cached.

    ``cache_dir`` if given, else the environment variable ``VARLEARN_CACHE``,
    else ``~/.cache/varlearn``.  Each data set uses a subfolder (``kodak``,
    ``mnist``, ``fashion-mnist``).
    """
    if cache_dir is not None:
        return as_path(cache_dir, "cache_dir")
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "varlearn"


def _env_dirs(var):
    return [Path(e.strip()).expanduser() for e in os.environ.get(var, "").split(os.pathsep) if e.strip()]


def shared_data_dir(subdir=None):
    """A local copy of the data sets (``kodak/``, ``mnist/``, ...), or ``None``.

    The one look-up used by varlearn's tests and scripts.  Candidates, in
    order: the folder(s) in ``$VARLEARN_SHARED_DATA``, those in
    ``$VARLEARN_DATA``, then ``shared/data`` inside and beside the source tree
    that holds this package, and inside and beside the current folder.

    Parameters
    ----------
    subdir : str, optional
        A data-set subfolder (``"kodak"``, ``"mnist"``): return the first
        candidate that has it, joined with it.

    Returns
    -------
    pathlib.Path or None
        The first candidate that exists (and has ``subdir``); ``None`` if none does.
    """
    source_root = Path(__file__).resolve().parents[2]
    cwd = Path.cwd()
    candidates = _env_dirs(SHARED_DATA_ENV) + _env_dirs(DATA_ENV)
    for base in (source_root, source_root.parent, cwd, cwd.parent):
        candidates.append(base / "shared" / "data")
    for folder in candidates:
        target = folder / subdir if subdir else folder
        if target.is_dir():
            return target
    return None


def search_dirs(info, root, cache_dir):
    """Folders to search, in order, and the cache subfolder downloads go to."""
    subdir = info["subdir"]
    cache = get_cache_dir(cache_dir) / subdir
    if root is not None:
        root = as_path(root, "root")
        if not root.is_dir():
            raise FileNotFoundError(f"root: no such folder: {root}")
        return [root / subdir, root], cache
    dirs = [Path(d) for d in info["system_dirs"]]
    for base in _env_dirs(DATA_ENV):
        dirs += [base / subdir, base]
    dirs.append(cache)
    return dirs, cache


def find(dirs, names):
    """The first ``dir / name`` that is a file (folders in order, names in order), or ``None``."""
    for d in dirs:
        for name in names:
            candidate = d / name
            if candidate.is_file():
                return candidate
    return None


def missing_error(what, names, dirs, root_given):
    where = ", ".join(str(d) for d in dirs)
    how = (
        "put the files there or leave root=None to search the other locations"
        if root_given
        else f"pass download=True, or root=FOLDER (command line: --data-dir FOLDER), or set {DATA_ENV}"
    )
    return FileNotFoundError(f"{what} file(s) {list_text(names)} not found in {where}; {how}")


def _join_url(base, filename):
    return base if base.endswith(filename) else base.rstrip("/") + "/" + filename


def download_urls(info, fname, base_url):
    """Locations to try for ``fname``: ``base_url`` (str or sequence) if given, else the registry's."""
    if base_url is None:
        urls = [info["files"][fname]["url"]] + [_join_url(m, fname) for m in info["mirrors"]]
    else:
        bases = as_items(base_url, "base_url", is_str, is_str, "str")
        urls = []
        for base in bases:
            if urllib.parse.urlsplit(base).scheme.lower() not in ("http", "https"):
                raise ValueError(f"base_url must be an http:// or https:// URL, got {base!r}")
            urls.append(_join_url(base, fname))
    return urls


class _CheckedHTTP:
    """A pooch downloader: HTTP(S) download, then ``verify(path, url)`` on the temporary file."""

    def __init__(self, verify):
        import pooch  # noqa: PLC0415

        # no progress bar: the library never prints
        self._http = pooch.HTTPDownloader(progressbar=False, timeout=_setting("DOWNLOAD_TIMEOUT"))
        self._verify = verify

    def __call__(self, url, output_file, pooch_obj, check_only=False):
        result = self._http(url, output_file, pooch_obj, check_only=check_only)
        if not check_only and self._verify is not None:
            self._verify(Path(output_file), url)
        return result


@contextlib.contextmanager
def _quiet_pooch(pooch):
    """Keep pooch's own logger (which writes to stderr) to warnings; varlearn logs the download itself."""
    pooch_logger = pooch.get_logger()
    level = pooch_logger.level
    pooch_logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        pooch_logger.setLevel(level)


def _why(exc) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def fetch(fname, cache: Path, urls, known_hash, verify, what):
    """Download ``fname`` into ``cache`` from the first location that serves an accepted copy.

    ``known_hash`` (``"sha256:..."`` or ``None``) is checked by pooch;
    ``verify(tmp_path, url)`` raises :class:`DataError` for bad content and
    runs on the temporary file before pooch moves it into place.

    Raises
    ------
    DataError
        If every location failed and at least one served a rejected file.
    DownloadError
        If no location could be reached (the message says how to work offline),
        or the cache folder cannot be created.
    """
    import pooch  # noqa: PLC0415
    import requests  # noqa: PLC0415  (pooch's HTTP client)

    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(
            f"cannot create the cache folder {cache} for {what} ({exc}); set {CACHE_ENV} or pass cache_dir="
        ) from exc
    failures, rejected = [], []
    for url in urls:
        store = pooch.create(
            path=cache, base_url="", registry={fname: known_hash}, urls={fname: url},
            retry_if_failed=int(_setting("DOWNLOAD_RETRIES")),
        )
        logger.info("downloading %s from %s", fname, url)
        try:
            with _quiet_pooch(pooch):
                path = Path(store.fetch(fname, downloader=_CheckedHTTP(verify)))
        except DataError as exc:
            logger.warning("rejected %s: %s", url, exc)
            rejected.append(str(exc))
        except ValueError as exc:  # pooch's checksum mismatch
            logger.warning("rejected %s: %s", url, exc)
            rejected.append(f"{fname} downloaded from {url}: {exc}")
        except (OSError, requests.RequestException) as exc:
            logger.warning("could not download %s: %s", url, _why(exc))
            failures.append(f"{url}: {_why(exc)}")
        else:
            logger.info("saved %s", path)
            return path
    if rejected:
        msg = "; ".join(rejected)
        if failures:
            msg += "; other locations failed: " + "; ".join(failures)
        raise DataError(f"downloaded {what} file {fname} was rejected and discarded: {msg}")
    raise DownloadError(f"could not download {what} file {fname}: {'; '.join(failures)}. {OFFLINE_HINT}")
