"""Tables kept only inside `.zip` archives, as several MLE-bench `prepare.py` leave them
(`en_train.csv.zip`, `train.tsv.zip`, `train_labels.csv.zip`): their header, first bytes and
row count, read without extracting anything.

An archive is opened below the public folder, never through a link leading out of it
(`untrusted`), and only a bounded number of decompressed bytes is ever held, so a zip bomb or a
link to a host file costs nothing. The scripts get the archives themselves, under input/.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from mlmaster_daemon import untrusted
from mlmaster_daemon.errors import InvalidTaskDir

ARCHIVE_SUFFIX = ".zip"
TABLE_SUFFIXES = (".csv", ".tsv")
# Rows are counted on at most this many decompressed bytes; beyond, the count is a floor.
MAX_COUNTED_BYTES = 4 * 1024**3
_CHUNK = 1 << 20


def is_archive(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIX)


def table_name(name: str) -> str:
    """The table a file holds: `en_train.csv.zip` -> `en_train.csv`; other names as they are."""
    return name[: -len(ARCHIVE_SUFFIX)] if is_archive(name) else name


def is_table(name: str) -> bool:
    """Whether the file is a CSV/TSV table, plain or in a zip archive."""
    return table_name(name).lower().endswith(TABLE_SUFFIXES)


def separator(name: str) -> str:
    return "\t" if table_name(name).lower().endswith(".tsv") else ","


@contextmanager
def open_table(folder: Path, name: str) -> Iterator[IO[bytes]]:
    """The table `folder/name` as a binary stream: the file itself, or the table inside the
    zip archive (the member named like the archive without `.zip`, else its only table).

    A plain table is opened as the task folder's checks allowed it (a link the submitter may
    read included). An archive is opened only where it lies inside `folder`, through no link
    that leads out of it. Raises `InvalidTaskDir` when it cannot be read so, is not a regular
    file, or is an archive without its table; FileNotFoundError when it is absent."""
    try:
        if not is_archive(name):
            with (folder / name).open("rb") as plain:
                yield plain
            return
        with _open_in_place(folder, name) as handle, zipfile.ZipFile(handle) as archive, \
                archive.open(_member(archive, name)) as inner:
            yield inner
    except untrusted.UnsafeFile as exc:
        raise InvalidTaskDir(f"{folder / name} cannot be read safely ({exc.strerror}); "
                             "replace it with a regular file") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError) as exc:
        raise InvalidTaskDir(f"{folder / name} is not a readable zip archive ({exc}); "
                             "prepare the competition again") from None


@contextmanager
def _open_in_place(folder: Path, name: str) -> Iterator[IO[bytes]]:
    """`folder/name` opened below `folder` itself: a link inside the folder is followed, one
    that leads out of it is refused, and nothing on the way may change into a link."""
    base = folder.resolve()
    target = (folder / name).resolve()
    if not target.is_relative_to(base) or target == base:
        raise InvalidTaskDir(f"{folder / name} is a symbolic link leading out of {folder} "
                             f"(to {target}); copy the archive into the folder instead")
    with untrusted.open_file(base, target.relative_to(base)) as handle:
        yield handle


def _member(archive: zipfile.ZipFile, name: str) -> str:
    tables = [info.filename for info in archive.infolist()
              if not info.is_dir() and info.filename.lower().endswith(TABLE_SUFFIXES)]
    wanted = table_name(Path(name).name)
    for member in tables:
        if Path(member).name == wanted:
            return member
    if len(tables) == 1:
        return tables[0]
    raise InvalidTaskDir(f"the archive {name} holds {len(tables)} tables, not one named {wanted}; "
                         "prepare the competition again")


def read_head(folder: Path, name: str, max_bytes: int) -> bytes:
    """At most `max_bytes + 1` first bytes of the table (one more than allowed tells the
    caller it was cut)."""
    with open_table(folder, name) as stream:
        chunks: list[bytes] = []
        left = max_bytes + 1
        while left > 0 and (chunk := stream.read(min(left, _CHUNK))):
            chunks.append(chunk)
            left -= len(chunk)
    return b"".join(chunks)


def count_rows(folder: Path, name: str) -> int:
    """Data rows of the table by counting line breaks (quoted ones count too), streamed in
    chunks; on an archive at most MAX_COUNTED_BYTES decompressed bytes are counted."""
    lines = 0
    last = b"\n"
    seen = 0
    with open_table(folder, name) as stream:
        while seen < MAX_COUNTED_BYTES and (chunk := stream.read(_CHUNK)):
            lines += chunk.count(b"\n")
            last = chunk[-1:]
            seen += len(chunk)
    return max(lines + (0 if last == b"\n" else 1) - 1, 0)
