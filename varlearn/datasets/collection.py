"""Image collections: data sets referenced, not loaded, and read a batch at a time.

An :class:`ImageCollection` holds *references* to N gray images of one shape
(a folder of files, a zarr array, a Dask array, or a NumPy array that is
already in memory) and reads any subset of them on request with
:meth:`ImageCollection.read`.  It is picklable and small, so a task on a Dask
worker can receive it and read its own images: no pixel data has to pass
through the driver (stochastic-spec §4.5).

Synthetic noise is counter-based: image ``i`` gets the noise drawn from
``numpy.random.Generator(PCG64(SeedSequence([seed, i])))`` (or
``SeedSequence([seed, i, epoch])`` for noise redrawn every epoch), so any
process that reads image ``i`` regenerates exactly the same noisy image,
whatever batch it belongs to and in whatever order the images are read
(:func:`image_noise`).
"""
from __future__ import annotations

import hashlib
import logging
import math
import numbers

import numpy as np

from ._common import DataError, as_dir, hw_text, is_int, parse_size
from .folders import _by_stem, _list_image_files, _prepare, _refuse_noisy_resize
from .images import check_bit_depth, load_image, to_float_image

logger = logging.getLogger("varlearn")

__all__ = ["ImageCollection", "image_noise", "ZARR_EXTRA"]

#: The extra that installs the optional zarr dependency.
ZARR_EXTRA = 'pip install "varlearn[zarr]"'
_KINDS = ("folder", "zarr", "dask", "array")


def _float_dtype(dtype):
    dt = np.dtype(dtype)
    if dt not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
    return dt


def image_noise(indices, shape, sigma, seed, epoch=None, dtype=np.float64):
    """White Gaussian noise of standard deviation ``sigma`` for the images ``indices``.

    Image ``i`` gets ``sigma * standard_normal(shape)`` (drawn in float64, then
    cast to ``dtype``) from ``Generator(PCG64(SeedSequence([seed, i])))``, or
    ``SeedSequence([seed, i, epoch])`` when ``epoch`` is given: the noise of an
    image depends on ``(seed, i[, epoch])`` only, never on the batch it is
    read in.

    Parameters
    ----------
    indices : sequence of int
        Global image indices (>= 0).
    shape : (int, int)
        Image shape (H, W).
    sigma : float
        Noise standard deviation, finite and >= 0.
    seed : int
        Non-negative noise seed.
    epoch : int, optional
        Non-negative epoch counter for noise redrawn every epoch.
    dtype : float32 or float64

    Returns
    -------
    numpy.ndarray, shape (len(indices), H, W)
    """
    if isinstance(sigma, bool) or not isinstance(sigma, numbers.Real) or not math.isfinite(sigma) or sigma < 0:
        raise ValueError(f"sigma must be a finite number >= 0, got {sigma!r}")
    if not is_int(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if epoch is not None and (not is_int(epoch) or epoch < 0):
        raise ValueError(f"epoch must be None or a non-negative int, got {epoch!r}")
    out = np.empty((len(indices),) + tuple(shape), dtype=_float_dtype(dtype))
    for k, i in enumerate(indices):
        words = [int(seed), int(i)] if epoch is None else [int(seed), int(i), int(epoch)]
        gen = np.random.Generator(np.random.PCG64(np.random.SeedSequence(words)))
        out[k] = float(sigma) * gen.standard_normal(tuple(shape))
    return out


def _import_zarr():
    try:
        import zarr  # noqa: PLC0415
    except ImportError as exc:
        raise ImportError(f"ImageCollection.from_zarr needs the optional package zarr: {ZARR_EXTRA}") from exc
    return zarr


def _check_stack(shape, name):
    if len(shape) != 3:
        raise ValueError(f"{name} must have shape (N, H, W), got shape {tuple(shape)}")
    if shape[0] < 1 or shape[1] < 2 or shape[2] < 2:
        raise ValueError(f"{name} must hold at least one image of at least 2x2, got shape {tuple(shape)}")


def _check_array_dtype(dtype, name):
    dt = np.dtype(dtype)
    if dt.kind not in "fu":
        raise TypeError(f"{name} must hold floating or unsigned-integer pixels, got dtype {dt}")


class ImageCollection:
    """N gray images of one shape, referenced and read a batch at a time.

    Build one with :meth:`from_folder`, :meth:`from_zarr`, :meth:`from_dask`
    or :meth:`from_array`; the constructor itself is private.  Images are
    returned on the [0, 1] scale (unsigned-integer data divided by their
    dtype's maximum, as :func:`~varlearn.datasets.load_image` does for
    files) in :attr:`dtype`.

    A collection either holds noisy images next to the clean ones
    (:attr:`has_noisy`; a folder of pairs, or ``noisy=`` given) or only clean
    images, to which synthetic noise is added with :func:`image_noise`.

    Attributes
    ----------
    kind : {"folder", "zarr", "dask", "array"}
    image_shape : (int, int)
    dtype : numpy.dtype
        float32 or float64.
    has_noisy : bool
    reads_in_task : bool
        True when a worker can read the images itself from the reference
        (folders and zarr); Dask and in-memory collections are read by the
        driver side (a Dask future, or a slice sent with the task).
    """

    def __init__(self, kind, n, image_shape, dtype, source, noisy_source=None, meta=None):
        self.kind = kind
        self._n = int(n)
        self.image_shape = tuple(int(s) for s in image_shape)
        self.dtype = _float_dtype(dtype)
        self._source = source
        self._noisy = noisy_source
        self._meta = dict(meta or {})

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_folder(cls, clean_dir, noisy_dir=None, size=None, crop=None, bit_depth=None, dtype=np.float64):
        """Images of a folder (or clean/noisy pairs of two folders, matched by file stem).

        The folders are listed once, sorted by name (see
        :func:`~varlearn.datasets.load_images`); the first image is read to fix
        :attr:`image_shape`.  Every other file is read only when its index is
        requested.  Each image is center-cropped to ``crop`` and then resized
        to ``size`` (clean images only: noisy images are never resized, as in
        :func:`~varlearn.datasets.load_pairs`).

        Parameters
        ----------
        clean_dir : str or os.PathLike
        noisy_dir : str or os.PathLike, optional
            Noisy images paired with the clean ones by stem.
        size, crop : int or (int, int), optional
        bit_depth : int, optional
            As in :func:`~varlearn.datasets.load_image`.
        dtype : float32 or float64

        Raises
        ------
        DataError
            As :func:`~varlearn.datasets.load_pairs` (unpaired stems, no images,
            a resize of noisy images); a file read later whose shape differs
            raises :class:`DataError` naming it.
        """
        cdir = as_dir(clean_dir, "clean_dir")
        size_hw = parse_size(size, "size")
        crop_hw = parse_size(crop, "crop")
        bit_depth = check_bit_depth(bit_depth)
        cmap = _by_stem(_list_image_files(cdir, "clean_dir"), "clean_dir", cdir)
        names = sorted(cmap)
        clean_files = [cmap[s] for s in names]
        noisy_files = None
        if noisy_dir is not None:
            ndir = as_dir(noisy_dir, "noisy_dir")
            nmap = _by_stem(_list_image_files(ndir, "noisy_dir"), "noisy_dir", ndir)
            if set(nmap) != set(cmap):
                odd = sorted(set(nmap) ^ set(cmap))
                raise DataError(
                    f"clean_dir {cdir} and noisy_dir {ndir} do not pair up by file stem: "
                    f"{', '.join(odd[:10])}{' ...' if len(odd) > 10 else ''} on one side only"
                )
            noisy_files = [nmap[s] for s in names]
            if size_hw is not None:
                first = _prepare(load_image(noisy_files[0], bit_depth=bit_depth), crop_hw, None, str(noisy_files[0]))
                _refuse_noisy_resize(first, size_hw, noisy_files[0])
        first = _prepare(load_image(clean_files[0], bit_depth=bit_depth), crop_hw, size_hw, str(clean_files[0]))
        meta = {"names": names, "sizes": [f.stat().st_size for f in clean_files], "crop": crop_hw, "size": size_hw,
                "bit_depth": bit_depth}
        if noisy_files is not None:
            meta["noisy_sizes"] = [f.stat().st_size for f in noisy_files]
        logger.debug("collection of %d images in %s", len(names), cdir)
        return cls("folder", len(names), first.shape, dtype, [str(f) for f in clean_files],
                   None if noisy_files is None else [str(f) for f in noisy_files], meta)

    @classmethod
    def from_zarr(cls, url, component=None, noisy_component=None, dtype=np.float64):
        """A zarr array of shape (N, H, W), opened read-only in every reader.

        Needs the optional package zarr (``pip install "varlearn[zarr]"``).
        Chunks of (1 to 16, H, W) suit reads of a few images at a time.

        Parameters
        ----------
        url : str or os.PathLike
            Store location (a folder path or anything :func:`zarr.open` accepts).
        component : str, optional
            Path of the array inside a group.
        noisy_component : str, optional
            Path of an array of noisy images of the same shape.
        dtype : float32 or float64
        """
        zarr = _import_zarr()
        url = str(url)
        arr = zarr.open(url, mode="r", path=component) if component else zarr.open(url, mode="r")
        _check_stack(arr.shape, "the zarr array")
        _check_array_dtype(arr.dtype, "the zarr array")
        if noisy_component is not None:
            narr = zarr.open(url, mode="r", path=noisy_component)
            if tuple(narr.shape) != tuple(arr.shape):
                raise ValueError(f"noisy_component {noisy_component!r} has shape {tuple(narr.shape)}, "
                                 f"the clean array {tuple(arr.shape)}")
        meta = {"url": url, "array_dtype": str(arr.dtype)}
        return cls("zarr", arr.shape[0], arr.shape[1:], dtype, (url, component), (url, noisy_component)
                   if noisy_component is not None else None, meta)

    @classmethod
    def from_dask(cls, array, noisy=None, dtype=np.float64):
        """A Dask array of shape (N, H, W) (nothing is computed here).

        With :class:`~varlearn.executors.DaskExecutor` the driver turns each
        task's rows into a future with ``client.compute``, so the data move
        worker to worker and a lost piece is recomputed from its lineage.
        """
        _check_stack(array.shape, "array")
        _check_array_dtype(array.dtype, "array")
        if noisy is not None and tuple(noisy.shape) != tuple(array.shape):
            raise ValueError(f"noisy has shape {tuple(noisy.shape)}, array {tuple(array.shape)}")
        return cls("dask", array.shape[0], array.shape[1:], dtype, array, noisy, {"name": array.name})

    @classmethod
    def from_array(cls, array, noisy=None, dtype=None):
        """Images already in memory: a NumPy array (N, H, W) (a single (H, W) image is a batch of one).

        The pixels travel inside the task arguments, a few images per task
        (never ``scatter``: data scattered to a worker that dies are lost).
        ``dtype`` defaults to the array's floating dtype (float64 otherwise).
        """
        array = np.asarray(array)
        if array.ndim == 2:
            array = array[None]
        _check_stack(array.shape, "array")
        _check_array_dtype(array.dtype, "array")
        if noisy is not None:
            noisy = np.asarray(noisy)
            noisy = noisy[None] if noisy.ndim == 2 else noisy
            if noisy.shape != array.shape:
                raise ValueError(f"noisy has shape {noisy.shape}, array {array.shape}")
            _check_array_dtype(noisy.dtype, "noisy")
        if dtype is None:
            dtype = array.dtype if array.dtype in (np.float32, np.float64) else np.float64
        return cls("array", array.shape[0], array.shape[1:], dtype, array, noisy, {})

    # ------------------------------------------------------------------ protocol
    def __len__(self):
        return self._n

    def __repr__(self):
        return (f"ImageCollection(kind={self.kind!r}, n={self._n}, image_shape={hw_text(self.image_shape)}, "
                f"dtype={self.dtype}, has_noisy={self.has_noisy})")

    @property
    def has_noisy(self):
        return self._noisy is not None

    @property
    def reads_in_task(self):
        return self.kind in ("folder", "zarr")

    def check_indices(self, indices):
        """``indices`` as a tuple of ints in ``range(len(self))`` (order and repeats kept)."""
        try:
            items = [int(i) if is_int(i) else None for i in indices]
        except TypeError:
            raise TypeError(f"indices must be a sequence of ints, got {indices!r}") from None
        if not items or any(i is None for i in items):
            raise ValueError(f"indices must be a non-empty sequence of ints, got {indices!r}")
        bad = [i for i in items if not 0 <= i < self._n]
        if bad:
            raise ValueError(f"indices must lie in [0, {self._n}), got {bad[0]}")
        return tuple(items)

    def read(self, indices):
        """The clean images ``indices`` as an array (k, H, W) of :attr:`dtype`."""
        return self._read(self._source, self.check_indices(indices), "image")

    def read_noisy(self, indices):
        """The given noisy images ``indices`` (k, H, W); ``ValueError`` when the collection has none."""
        if self._noisy is None:
            raise ValueError("this collection holds no noisy images: give sigma to add synthetic noise")
        return self._read(self._noisy, self.check_indices(indices), "noisy image")

    def read_pairs(self, indices, sigma=None, seed=0, epoch=None):
        """(clean, noisy) for ``indices``: the given noisy images, or clean + :func:`image_noise`.

        Parameters
        ----------
        indices : sequence of int
        sigma : float, optional
            Required when the collection has no noisy images; must be None
            when it has them.
        seed, epoch : int
            Passed to :func:`image_noise`.
        """
        idx = self.check_indices(indices)
        clean = self._read(self._source, idx, "image")
        if self._noisy is not None:
            if sigma is not None:
                raise ValueError(f"sigma must be None for a collection with noisy images, got {sigma!r}")
            return clean, self._read(self._noisy, idx, "noisy image")
        if sigma is None:
            raise ValueError("sigma is required: this collection holds clean images only")
        return clean, clean + image_noise(idx, self.image_shape, sigma, seed, epoch, self.dtype)

    def fingerprint(self, verify="names"):
        """SHA-256 hex digest identifying the data (for checkpoints).

        It covers N, the image shape, the dtype and, per kind: the sorted file
        names and byte sizes of a folder (``verify="content"`` hashes the
        files' bytes instead), the store location of a zarr array, the graph
        name of a Dask array, the pixel bytes of an in-memory array.
        """
        if verify not in ("names", "content"):
            raise ValueError(f"verify must be 'names' or 'content', got {verify!r}")
        h = hashlib.sha256()
        h.update(f"{self.kind}|{self._n}|{self.image_shape}|{self.dtype}|{self.has_noisy}".encode())
        if self.kind == "folder":
            m = self._meta
            h.update(f"|{m['crop']}|{m['size']}|{m['bit_depth']}".encode())
            files = list(self._source) + list(self._noisy or [])
            sizes = list(m["sizes"]) + list(m.get("noisy_sizes", []))
            for f, s in zip(files, sizes):
                h.update(f"|{f.rsplit('/', 1)[-1]}:{s}".encode())
                if verify == "content":
                    with open(f, "rb") as fh:
                        h.update(hashlib.sha256(fh.read()).digest())
        elif self.kind == "zarr":
            h.update(f"|{self._source}|{self._noisy}".encode())
        elif self.kind == "dask":
            h.update(f"|{self._source.name}|{None if self._noisy is None else self._noisy.name}".encode())
        else:
            for a in (self._source, self._noisy):
                if a is not None:
                    h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()

    def for_task(self, indices):
        """A collection that can read exactly ``indices`` (for sending to a worker).

        Folder and zarr collections are their own references.  An in-memory
        collection returns one holding only those rows (the pixels a task
        needs, keeping the global indices for the noise).  A Dask collection
        computes those rows here; :class:`~varlearn.executors.DaskExecutor`
        turns them into futures instead.
        """
        idx = self.check_indices(indices)
        if self.kind == "zarr":
            return self
        rows = self.task_rows(idx)
        if self.kind == "folder":
            src = [self._source[self._local((r,))[0]] for r in rows]
            nsrc = None if self._noisy is None else [self._noisy[self._local((r,))[0]] for r in rows]
            meta = {k: self._meta[k] for k in ("crop", "size", "bit_depth")}  # not the N names and sizes
            sub = ImageCollection("folder", self._n, self.image_shape, self.dtype, src, nsrc, meta)
            sub._rows = rows
            return sub
        clean = self._take(self._source, rows)
        noisy = None if self._noisy is None else self._take(self._noisy, rows)
        return self.with_rows(rows, clean, noisy)

    @staticmethod
    def task_rows(indices):
        """The rows a task reads for ``indices``: sorted, without repeats."""
        return sorted({int(i) for i in indices})

    def with_rows(self, rows, clean, noisy=None):
        """An in-memory collection holding the rows ``rows`` (global indices) of this one.

        ``clean`` (and ``noisy`` when this collection has noisy images) are
        the raw blocks ``source[rows]``; ``len`` stays the global N and reads
        take global indices, so the synthetic noise is that of the full
        collection.
        """
        rows = [int(r) for r in rows]
        if len(clean) != len(rows) or (noisy is None) != (self._noisy is None):
            raise ValueError(f"with_rows: {len(rows)} rows need a clean block of as many images"
                             f"{' and a noisy block' if self._noisy is not None else ''}")
        sub = ImageCollection("array", self._n, self.image_shape, self.dtype, np.asarray(clean),
                              None if noisy is None else np.asarray(noisy), {})
        sub._rows = rows  # global indices of the rows held
        return sub

    def without_data(self):
        """A copy that keeps only the description (N, shape, dtype, whether noisy images exist).

        What is sent to a worker together with the computed rows of a Dask
        collection (see :meth:`with_rows`); it cannot read anything itself.
        """
        out = ImageCollection(self.kind, self._n, self.image_shape, self.dtype, None,
                              True if self._noisy is not None else None, self._meta)
        out._detached = True
        return out

    # ------------------------------------------------------------------ reading
    def _local(self, idx):
        rows = getattr(self, "_rows", None)
        if rows is None:
            return idx
        pos = {r: k for k, r in enumerate(rows)}
        missing = [i for i in idx if i not in pos]
        if missing:
            raise ValueError(f"indices {missing[:5]} are not in this task's rows")
        return tuple(pos[i] for i in idx)

    @staticmethod
    def _take(arr, rows):
        block = arr[np.asarray(rows)] if not hasattr(arr, "compute") else arr[np.asarray(rows)].compute()
        return np.asarray(block)

    def _to_float(self, block, labels):
        block = np.asarray(block)
        if block.dtype.kind == "f":
            out = block.astype(self.dtype, copy=False)
            if not np.isfinite(out).all():
                raise DataError(f"{labels}: the images contain NaN or infinite values")
            return out
        return np.stack([to_float_image(b, f"{labels}[{k}]") for k, b in enumerate(block)]).astype(self.dtype)

    def _read(self, source, idx, what):
        if getattr(self, "_detached", False):
            raise ValueError("this collection was detached from its data (without_data) and cannot read images")
        if self.kind == "folder":
            return self._read_files(source, self._local(idx), what)
        if self.kind == "zarr":
            zarr = _import_zarr()
            url, comp = source
            arr = zarr.open(url, mode="r", path=comp) if comp else zarr.open(url, mode="r")
            order = np.argsort(idx, kind="stable")
            uniq, inv = np.unique(np.asarray(idx)[order], return_inverse=True)
            block = arr.get_orthogonal_selection((uniq, slice(None), slice(None)))
            out = np.empty((len(idx),) + self.image_shape, self.dtype)
            out[order] = self._to_float(block, f"{what}s of {url}")[inv]
            return out
        local = self._local(idx)
        return self._to_float(self._take(source, list(local)), f"{what}s of the {self.kind} collection")

    def _read_files(self, files, idx, what):
        m = self._meta
        noisy = files is self._noisy
        out = np.empty((len(idx),) + self.image_shape, self.dtype)
        for k, i in enumerate(idx):  # positions in this collection's file list
            img = load_image(files[i], bit_depth=m["bit_depth"])
            img = _prepare(img, m["crop"], None if noisy else m["size"], files[i])
            if img.shape != self.image_shape:
                raise DataError(f"{what} {files[i]} is {hw_text(img.shape)} (after crop/size), the collection "
                                f"{hw_text(self.image_shape)}; pass size= or crop= to bring the images to one shape")
            out[k] = img
        return out
