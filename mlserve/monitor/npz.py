"""Reading an .npz that came from outside (a drift reference, a `[warmup] file`, optimize's
validation data) without letting it decompress into more memory than a cap.

An .npz is a zip of .npy files, and a few hundred kilobytes of zip can inflate to gigabytes: np.load
allocates what each .npy header declares and inflates what the zip holds. Here the zip directory's
declared sizes are summed against the cap first, and each member's .npy header (shape x dtype)
must fit inside what that member declares, before any array data is read. Reading stops at the
declared size (zipfile never returns more), so no member can grow past what was checked. It
lives in monitor (importable from every layer) because the drift reference is its first reader.
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Collection
from pathlib import Path

import numpy as np

MAX_NPZ_BYTES = 256 * 2**20
"""Most uncompressed bytes an .npz read this way may hold in the arrays that are read."""
_MAX_MEMBERS = 4096


def read_npz(path: Path, max_bytes: int = MAX_NPZ_BYTES, names: Collection[str] | None = None) -> dict[str, np.ndarray]:
    """The arrays of `path` (only `names`, when given), refusing with ValueError before reading an
    archive whose arrays would take more than `max_bytes`, or a member whose header claims more
    data than the member holds. Object (pickled) arrays are refused."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = [info for info in archive.infolist() if info.filename.endswith(".npy")
                       and (names is None or info.filename[:-4] in names)]
            if len(members) > _MAX_MEMBERS:
                raise ValueError(f"{path.name}: {len(members)} arrays, more than {_MAX_MEMBERS}")
            total = sum(info.file_size for info in members)
            if total > max_bytes:
                raise ValueError(f"{path.name}: its arrays take {total} bytes uncompressed, over the limit of "
                                 f"{max_bytes}")
            return {info.filename[:-4]: _read_member(archive, info, path.name) for info in members}
    except zipfile.BadZipFile as exc:
        raise ValueError(f"{path.name}: not an .npz archive ({exc})") from None


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, where: str) -> np.ndarray:
    name = f"{where}: array {info.filename[:-4]!r}"
    with archive.open(info) as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            raise ValueError(f"{name}: .npy format {version} is not read here (1.0 and 2.0 are)")
        if dtype.hasobject:
            raise ValueError(f"{name}: holds Python objects (pickles), which are never loaded")
        num_bytes = math.prod(shape) * dtype.itemsize  # Python ints: a huge shape cannot wrap around
        if num_bytes > info.file_size - fh.tell():
            raise ValueError(f"{name}: its header declares {num_bytes} bytes, more than the member holds")
        array = np.empty(math.prod(shape), dtype=dtype)
        view, filled = memoryview(array).cast("B"), 0
        while filled < num_bytes:
            got = fh.readinto(view[filled:])
            if not got:
                raise ValueError(f"{name}: the data ends early (a truncated file)")
            filled += got
    return array.reshape(shape, order="F" if fortran_order else "C")
