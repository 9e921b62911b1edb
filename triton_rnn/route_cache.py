"""The routing decisions measured on this machine, remembered across processes.

One JSON file per GPU setup (the `key`: GPU name, compute capability, SM count, driver and CUDA
versions, torch, Triton and triton_rnn versions), named by a hash of that key, under
`TRITON_RNN_CACHE_DIR`, else `$XDG_CACHE_HOME/triton_rnn`, else `~/.cache/triton_rnn`:

    {"format": 1, "key": {...}, "classes": {"<shape class>": {"backend": "torch", "ms": {...}}}}

Writes are read-merge-write under an exclusive lock file (where the OS has `fcntl`), through a
temporary file renamed over the old one, so several processes measuring at once (DDP ranks)
all keep their entries and no reader ever sees half a file. A file that does not parse, has
another format, or belongs to another key is ignored with a warning and rewritten on the next
write. Plain Python: no torch import, so tests can run many writers cheaply.
"""
import contextlib
import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no lock; the rename still keeps the file whole
    fcntl = None

FORMAT = 1


def cache_dir() -> Path:
    if os.environ.get("TRITON_RNN_CACHE_DIR"):
        return Path(os.environ["TRITON_RNN_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "triton_rnn"


def file_for(key: dict, directory: Path = None) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return (directory or cache_dir()) / f"routing-{digest}.json"


class RouteCache:
    """The measured shape classes of one GPU setup: {class name: entry}."""

    def __init__(self, key: dict, directory: Path = None):
        self.key = key
        self.path = file_for(key, directory)
        self._classes = None  # loaded on first use
        self._this_process = {}  # remember(): never written

    def get(self, shape_class: str):
        """The entry for a class ({"backend": ..., "ms": {...}}), or None if never measured."""
        if shape_class in self._this_process:
            return self._this_process[shape_class]
        if self._classes is None:
            self._classes = self._read()
        return self._classes.get(shape_class)

    def classes(self) -> dict:
        if self._classes is None:
            self._classes = self._read()
        return {**self._classes, **self._this_process}

    def put(self, shape_class: str, entry: dict) -> None:
        """Record one class, merged with what other processes wrote since we read the file."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._locked():
                classes = self._read()
                classes[shape_class] = entry
                self._write(classes)
        except OSError as exc:  # a read-only home, a full disk: keep it for this process
            warnings.warn(f"triton_rnn: could not write the routing cache {self.path}: {exc}")
            classes = {**(self._classes or {}), shape_class: entry}
        self._classes = classes
        self._this_process.pop(shape_class, None)

    def remember(self, shape_class: str, entry: dict) -> None:
        """Record one class for this process only."""
        self._this_process[shape_class] = entry

    def clear(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._classes, self._this_process = {}, {}

    @contextlib.contextmanager
    def _locked(self):
        if fcntl is None:
            yield
            return
        with open(self.path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read(self) -> dict:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            warnings.warn(f"triton_rnn: could not read the routing cache {self.path}: {exc}")
            return {}
        try:
            data = json.loads(raw.decode("utf-8"))
            if not isinstance(data, dict) or data.get("format") != FORMAT:
                raise ValueError(f"format {data.get('format') if isinstance(data, dict) else '?'}"
                                 f", expected {FORMAT}")
            if data.get("key") != self.key:
                raise ValueError("it was written for another GPU or version")
            classes = data["classes"]
            if not isinstance(classes, dict) or not all(
                    isinstance(e, dict) and e.get("backend") in ("kernels", "torch")
                    for e in classes.values()):
                raise ValueError("malformed entries")
            return classes
        except (ValueError, KeyError, TypeError, RecursionError) as exc:  # bad JSON or UTF-8 too
            warnings.warn(f"triton_rnn: ignoring the routing cache {self.path} ({exc}); "
                          "it will be rewritten")
            return {}

    def _write(self, classes: dict) -> None:
        text = json.dumps({"format": FORMAT, "key": self.key, "classes": classes}, indent=1,
                          sort_keys=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name, suffix=".tmp")
        try:
            os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide it from others sharing the dir
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
