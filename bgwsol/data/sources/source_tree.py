"""A dataset root in a local folder or under ``s3://bucket/prefix``: the reads and listings readers need.

The ILSVRC, CUB and background readers see a dataset only through :class:`SourceTree`:
small text files (index tables, CSVs) read whole, and one recursive listing per folder
(``Data/CLS-LOC/train``, ``Masks/CLS-LOC``, ``images``...) instead of a stat per image. On S3
that is one paginated LIST per 1,000 keys rather than one HEAD request per image (ILSVRC:
about 1,300 requests instead of 1.3 million). Image bytes are read later, in the ETL's Ray
tasks, by :func:`read_source`. Endpoint and credentials come from the
standard AWS variables (:mod:`bgwsol.data.storage`).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pyarrow.fs as pafs

from bgwsol.data.sources.records import DatasetFormatError
from bgwsol.data.storage import Location, is_s3, storage_errors


class SourceTree:
    """A dataset root. Relative paths use ``/`` whatever the platform.

    Attributes:
        location: the root as a :class:`~bgwsol.data.storage.Location` (``url`` names it in errors).
    """

    def __init__(self, root: str | os.PathLike | "SourceTree"):
        self.location = root.location if isinstance(root, SourceTree) else Location.parse(root)

    @property
    def url(self) -> str:
        return self.location.url

    @property
    def is_s3(self) -> bool:
        return self.location.is_s3

    def where(self, rel: str = "") -> str:
        """``rel`` under the root as a path or URL, for messages."""
        return self.location.join(rel).url if rel else self.url

    def path(self, rel: str) -> Path | str:
        """What a sample records as its file: a local :class:`Path`, or an ``s3://`` URL."""
        return self.where(rel) if self.is_s3 else Path(self.location.fs_path) / rel

    def exists(self) -> bool:
        """The root is a folder (locally) or a prefix holding at least one object (S3)."""
        if not self.is_s3:
            return Path(self.location.fs_path).is_dir()
        with storage_errors(self.url, "stat"):
            return self.location.filesystem().get_file_info(self.location.fs_path).type == pafs.FileType.Directory

    def is_file(self, rel: str) -> bool:
        if not self.is_s3:
            return (Path(self.location.fs_path) / rel).is_file()
        loc = self.location.join(rel)
        with storage_errors(loc.url, "stat"):
            return loc.filesystem().get_file_info(loc.fs_path).type == pafs.FileType.File

    def read_text(self, rel: str) -> str:
        """A whole text file; :class:`DatasetFormatError` ``"<where>: missing"`` when there is none."""
        if not self.is_file(rel):
            raise DatasetFormatError(f"{self.where(rel)}: missing")
        if not self.is_s3:
            return (Path(self.location.fs_path) / rel).read_text()
        return self.location.join(rel).read_bytes().decode()

    def files(self, rel_dir: str) -> list[str]:
        """Every file below ``rel_dir`` (recursive), as paths relative to ``rel_dir``, sorted; ``[]`` if absent."""
        if not self.is_s3:
            top = Path(self.location.fs_path) / rel_dir
            out = [os.path.relpath(os.path.join(d, name), top).replace(os.sep, "/")
                   for d, _dirs, names in os.walk(top) for name in names]
            return sorted(out)
        loc = self.location.join(rel_dir) if rel_dir else self.location
        with storage_errors(loc.url, "list"):
            infos = loc.filesystem().get_file_info(pafs.FileSelector(loc.fs_path, allow_not_found=True, recursive=True))
        prefix = loc.fs_path.rstrip("/") + "/"
        return sorted(i.path[len(prefix):] for i in infos
                      if i.type == pafs.FileType.File and i.path.startswith(prefix))

    def __repr__(self) -> str:
        return f"SourceTree({self.url!r})"


def read_source(path: str | os.PathLike) -> bytes:
    """Bytes of one source file: a local path or an ``s3://`` URL (what :meth:`SourceTree.path` gives)."""
    if is_s3(path):
        return Location.parse(str(path)).read_bytes()
    with open(path, "rb") as f:
        return f.read()


def image_file(path: str | os.PathLike) -> str | os.PathLike | io.BytesIO:
    """What ``PIL.Image.open`` should get for a source image: a local path as it is (PIL reads
    only what it needs, the header alone for a size), an ``s3://`` object's bytes in memory."""
    return io.BytesIO(read_source(path)) if is_s3(path) else path
