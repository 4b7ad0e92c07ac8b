"""DATA_DIR/quarantine: where start-up moves what it will not use, instead of deleting it.

A version directory the database does not know, or a spool body that fails its checksum or its
checks, is renamed into ``quarantine/<kind>/`` (a rename on the same file system: instant, and
nothing is lost). An operator inspects and deletes it; the server never reads it again.
"""

from __future__ import annotations

import os
from pathlib import Path

from formats import durable

FOLDER = "quarantine"


def move_aside(data_dir: Path, path: Path, kind: str) -> str:
    """Rename path into DATA_DIR/quarantine/<kind>/, keeping its name (``<name>.<n>`` if taken).

    :return: the new path relative to DATA_DIR.
    """
    folder = Path(data_dir) / FOLDER / kind
    folder.mkdir(parents=True, exist_ok=True)
    target, n = folder / path.name, 0
    while target.exists():
        n += 1
        target = folder / f"{path.name}.{n}"
    os.rename(path, target)
    durable.fsync_dir(folder)
    durable.fsync_dir(path.parent)
    return str(target.relative_to(data_dir))
