"""Data for varlearn: built-in images, image folders, Kodak, MNIST and Fashion-MNIST.

Every loader returns NumPy ``float64`` images on the [0, 1] scale.  Integer
images are divided by ``2**bits - 1`` of their container (uint8 by 255,
uint16 by 65535), or of an explicit ``bit_depth``; containers wider than 8
bits whose values leave the container's top four bits unused (12-bit data in
a 16-bit file, 8- or 16-bit data in an ``int32`` TIFF) are refused with a
message naming the file and the ``bit_depth`` to pass
(:mod:`varlearn.datasets.images`).
Floating images are kept as they are, after a finiteness check.  Colour
images become grayscale with :func:`skimage.color.rgb2gray` unless a loader is
asked to keep the colour channels; an alpha channel is dropped.

Modules: :mod:`~varlearn.datasets.images` (one file, bit depths),
:mod:`~varlearn.datasets.folders` (image folders, clean/noisy pairs),
:mod:`~varlearn.datasets.transforms` (crop, resize),
:mod:`~varlearn.datasets.builtin` (scikit-image's images),
:mod:`~varlearn.datasets.noise`, :mod:`~varlearn.datasets.idx` (the MNIST
file format), the Kodak and MNIST loaders, and the data registry.

Where the data come from
------------------------
File names, SHA-256 checksums, source URLs and licenses are read from the
data registry shipped with the package (:func:`registry`;
``varlearn/datasets/registry.json``, described in ``data/README.md``).  The
Kodak and MNIST loaders look for their files, in this order:

1. the ``root`` argument (the folder itself or its ``kodak/``, ``mnist/`` or
   ``fashion-mnist/`` subfolder).  When ``root`` is given nothing else is
   searched and nothing is downloaded;
2. the registry's system folders (for Fashion-MNIST, Debian's
   ``dataset-fashion-mnist`` package, ``/usr/share/datasets/fashion-mnist/``);
3. the folders in the environment variable ``VARLEARN_DATA`` (several may be
   separated by ``os.pathsep``), each with the subfolder first;
4. the cache folder (:func:`get_cache_dir`: the ``cache_dir`` argument, else the
   environment variable ``VARLEARN_CACHE``, else ``~/.cache/varlearn``);
5. a download with :mod:`pooch` from the registry's source (or the location
   given as ``base_url``) into the cache folder, when ``download=True``.
   pooch writes to a temporary file, checks it, retries failed attempts and
   only then moves the file into place; a failed or rejected download leaves
   no file behind.  Offline, the error says how to use a local copy.

Every file is checked against the registry's SHA-256, whether it was found on
disk or downloaded; for the IDX files that is the checksum of the
*decompressed* bytes, since gzip headers differ between mirrors.

Errors
------
:class:`DataError` (a :class:`ValueError`) is raised for bad data content: an
unreadable or non-image file, NaN in an image, an ambiguous bit depth, a
checksum mismatch, a malformed IDX file, an empty folder, image pairs that do
not match, a request to resize noisy images.  :class:`DownloadError` (an
:class:`OSError`) is raised when a file is neither on disk nor downloadable.
Bad arguments raise :class:`TypeError` or :class:`ValueError`, missing paths
:class:`FileNotFoundError`.  Every message names the argument or file at fault.
"""
from __future__ import annotations

from ._common import DataError, DownloadError
from ._download import (
    CACHE_ENV,
    DATA_ENV,
    DOWNLOAD_RETRIES,
    DOWNLOAD_TIMEOUT,
    SHARED_DATA_ENV,
    get_cache_dir,
    shared_data_dir,
)
from ._registry import REGISTRY_FILE, checksums, registry
from .builtin import BUILTIN_NAMES, builtin_images
from .collection import ImageCollection, image_noise
from .folders import load_images, load_pairs
from .idx import read_idx
from .images import IMAGE_EXTENSIONS, load_image
from .kodak import kodak
from .mnist import fashion_mnist, mnist
from .noise import add_noise
from .transforms import center_crop, resize

__all__ = [
    "DataError",
    "DownloadError",
    "BUILTIN_NAMES",
    "IMAGE_EXTENSIONS",
    "KODAK_BASE_URL",
    "KODAK_FILES",
    "KODAK_SHA256",
    "MNIST_MIRRORS",
    "MNIST_SHA256",
    "FASHION_MNIST_MIRRORS",
    "FASHION_MNIST_SHA256",
    "FASHION_MNIST_SYSTEM_DIRS",
    "DATA_ENV",
    "CACHE_ENV",
    "SHARED_DATA_ENV",
    "DOWNLOAD_TIMEOUT",
    "DOWNLOAD_RETRIES",
    "REGISTRY_FILE",
    "registry",
    "checksums",
    "shared_data_dir",
    "builtin_images",
    "load_image",
    "load_images",
    "load_pairs",
    "add_noise",
    "center_crop",
    "resize",
    "read_idx",
    "get_cache_dir",
    "kodak",
    "mnist",
    "fashion_mnist",
    "ImageCollection",
    "image_noise",
]


def _sources(name):
    info = registry()["datasets"][name]
    first = next(iter(info["files"].values()))["url"]
    return (first.rsplit("/", 1)[0] + "/",) + tuple(info["mirrors"])


# Read-only views of the registry, kept for code written against the former module
# (the loaders read the registry itself).
#: Where the Kodak images are downloaded from (``kodimNN.png`` is appended).
KODAK_BASE_URL = _sources("kodak")[0]
#: The 24 Kodak file names, sorted.
KODAK_FILES = tuple(sorted(checksums("kodak")))
#: SHA-256 of the Kodak PNG files.
KODAK_SHA256 = checksums("kodak")
#: Base URLs tried in order for the MNIST ``*.gz`` files.
MNIST_MIRRORS = _sources("mnist")
#: SHA-256 of the decompressed MNIST IDX files (the published checksums of the originals).
MNIST_SHA256 = checksums("mnist")
#: Base URLs tried in order for the Fashion-MNIST ``*.gz`` files.
FASHION_MNIST_MIRRORS = _sources("fashion-mnist")
#: SHA-256 of the decompressed Fashion-MNIST IDX files.
FASHION_MNIST_SHA256 = checksums("fashion-mnist")
#: Folders searched first for Fashion-MNIST (Debian package ``dataset-fashion-mnist``).
FASHION_MNIST_SYSTEM_DIRS = tuple(registry()["datasets"]["fashion-mnist"]["system_dirs"])
