"""Atomic file writes: a crash or a concurrent reader never sees a half-written file."""
from __future__ import annotations

import glob
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

#: A temporary file of a write whose process cannot be identified is stale after this many seconds.
_STALE_TMP_SECONDS = 600.0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (another user's) or cannot tell: keep its file
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the hidden temporary files that killed writes of ``path`` left beside it (``.NAME.PID.*.tmp`` of a
    process no longer running, or older than 10 minutes when the name carries no process id); returns them."""
    path = Path(path)
    removed = []
    if not path.parent.is_dir():
        return removed
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        parts = tmp.name[len(path.name) + 2:].split(".")
        pid = int(parts[0]) if len(parts) >= 3 and parts[0].isdigit() else None
        try:
            stale = (not _pid_alive(pid)) if pid is not None else time.time() - tmp.stat().st_mtime > _STALE_TMP_SECONDS
            if stale and pid != os.getpid():
                tmp.unlink()
                removed.append(tmp)
        except OSError:  # vanished meanwhile, or not ours to delete
            continue
    return removed


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and ``os.replace``.

    The temporary file is ``.NAME.PID.XXXX.tmp``; one left by a killed process (SIGKILL cannot be caught) is
    removed by the next write of the same path (:func:`remove_stale_temporaries`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the permissions open() would
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def new_figure(size: tuple[float, float] = (6.5, 4.2), dpi: int = 110) -> Any:
    """A matplotlib Figure on an Agg canvas: no pyplot global state, works headless and in threads."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def atomic_write_png(fig: Any, path: str | os.PathLike) -> None:
    """Lay out ``fig`` and write it as a PNG atomically."""
    import io

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())


def read_json(path: str | os.PathLike, *, what: str) -> Any:
    """Read a JSON file, turning a missing or corrupted file into a ValueError that says which file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{what} file {path} is not valid JSON ({exc}); was it truncated or written by another tool?") from exc


def library_version() -> str:
    """The installed mdm_sched version, recorded in every saved file."""
    from . import __version__

    return __version__


def check_format(data: Any, *, fmt: str, version: int, what: str) -> dict[str, Any]:
    """``data`` as a dict if it is an mdm_sched file of format ``fmt`` this library can read.

    Refuses foreign objects and files from a newer format version with a message that says what to do.
    """
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise ValueError(f"not an mdm_sched {what}: expected a JSON object with format={fmt!r}")
    found = data.get("version", 0)
    if isinstance(found, bool) or not isinstance(found, int):
        raise ValueError(f"corrupted {what}: 'version' must be an integer, got {found!r}")
    if found > version:
        raise ValueError(f"{what} format version {found} is newer than this library understands ({version}); "
                         "upgrade mdm_sched")
    return data
