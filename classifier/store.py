"""The model store: one directory per trained version, and a pointer to the active one.

``<root>/<version>/`` holds

- ``model.skops``: the fitted scikit-learn objects (``TextFeatures`` and one ``BlendedLinearClassifier``
  per head), saved with skops, loaded only with an explicit allow-list of types; never pickle;
- ``serving.npz``: the same weights as plain arrays for the fast path (``allow_pickle=False``), so a
  service loads in milliseconds without importing scikit-learn or skops;
- ``metadata.json``: format, library versions, training-data sha256, label sets, held-out metrics,
  file checksums, created_at.

``<root>/ACTIVE`` names the active version (authoritative; a database row is only an audit copy) and
``<root>/history.jsonl`` records each promotion so ``rollback`` can go back one step.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np

from classifier.errors import ModelIncompatible, ModelNotFound

SCHEMA_VERSION = 2  # 2: serving arrays carry the Traditional-to-Simplified table
MODEL_FILE = "model.skops"
SERVING_FILE = "serving.npz"
METADATA_FILE = "metadata.json"
ACTIVE_FILE = "ACTIVE"
HISTORY_FILE = "history.jsonl"

# The only types model.skops may contain; anything else is refused before it is constructed.
TRUSTED_TYPES = (
    "builtins.dict",
    "builtins.list",
    "builtins.tuple",
    "builtins.str",
    "builtins.int",
    "builtins.float",
    "builtins.bool",
    "builtins.NoneType",
    "numpy.ndarray",
    "numpy.dtype",
    "numpy.float64",
    "numpy.int64",
    "classifier.pipeline.TextFeatures",
    "classifier.pipeline.BlendedLinearClassifier",
)
# Packages whose version changes what a saved model means; major.minor must match on load.
_PINNED = {"serving": ("jieba",), "model": ("jieba", "scikit-learn", "skops")}
_REPORTED = ("scikit-learn", "numpy", "scipy", "jieba", "skops", "zhconv")


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _REPORTED:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def _major_minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class VersionInfo:
    version: str
    path: Path
    created_at: str
    active: bool
    metrics: dict[str, Any]  # head -> {"accuracy", "macro_f1", ...} on the held-out split


class ModelStore:
    """Versions under one root directory; all writes are atomic renames."""

    def __init__(self, root: Path | str):
        self.root = Path(root)

    # -- writing -----------------------------------------------------------------------------

    def save(self, trained, serving_arrays: dict[str, np.ndarray], metadata: dict[str, Any], version: str | None = None) -> Path:
        """Write a new version directory and return it; it is not active until promoted."""
        import skops.io as sio

        self.root.mkdir(parents=True, exist_ok=True)
        created = datetime.now(UTC)
        if version is None:
            tag = str(metadata.get("training_data", {}).get("sha256", ""))[:8] or "model"
            version = f"{created:%Y%m%d-%H%M%S}-{tag}"
            suffix = 1
            while (self.root / version).exists():
                suffix += 1
                version = f"{created:%Y%m%d-%H%M%S}-{tag}-{suffix}"
        staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=self.root))
        try:
            staging.chmod(0o755)  # mkdtemp makes it private; a model directory is not a secret
            sio.dump(
                {"features": trained.features, "heads": dict(trained.heads)},
                staging / MODEL_FILE,
                compression=zipfile.ZIP_DEFLATED,
                # zlib level 3, not the default 6: on paidan's model 0.6 instead of 2.1 s to write, for
                # 9.4 instead of 8.9 MB (level 1: 0.45 s, 10.2 MB); loading is no slower.
                compresslevel=3,
            )
            np.savez_compressed(staging / SERVING_FILE, **serving_arrays)
            meta = {
                "schema_version": SCHEMA_VERSION,
                "version": version,
                "created_at": created.isoformat(),
                "libraries": library_versions(),
                **metadata,
                "files": {name: sha256_file(staging / name) for name in (MODEL_FILE, SERVING_FILE)},
            }
            (staging / METADATA_FILE).write_text(json.dumps(meta, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
            os.replace(staging, self.root / version)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return self.root / version

    def promote(self, version: str) -> None:
        path = self.path(version)
        self.read_metadata(path)  # refuse to point ACTIVE at something unreadable
        self._write_active(version)
        with (self.root / HISTORY_FILE).open("a", encoding="utf-8") as f:
            f.write(json.dumps({"version": version, "at": datetime.now(UTC).isoformat()}) + "\n")

    def rollback(self) -> str:
        """Activate the version that was active before the current one; returns it."""
        current = self.active()
        history = [h["version"] for h in self._history()]
        previous = None
        # Walk back past the current version's latest promotion to the one before it.
        for i in range(len(history) - 1, -1, -1):
            if history[i] == current:
                previous = next((v for v in reversed(history[:i]) if v != current and (self.root / v).is_dir()), None)
                break
        if previous is None:
            raise ModelNotFound(f"nothing to roll back to: no earlier promoted version than {current!r} in {self.root}")
        self.promote(previous)
        return previous

    def _write_active(self, version: str) -> None:
        tmp = self.root / f".{ACTIVE_FILE}.tmp"
        tmp.write_text(version + "\n", encoding="utf-8")
        os.replace(tmp, self.root / ACTIVE_FILE)

    def _history(self) -> list[dict[str, str]]:
        path = self.root / HISTORY_FILE
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    # -- reading -----------------------------------------------------------------------------

    def active(self) -> str | None:
        path = self.root / ACTIVE_FILE
        if not path.exists():
            return None
        version = path.read_text(encoding="utf-8").strip()
        return version or None

    def path(self, version: str) -> Path:
        path = self.root / version
        if not version or "/" in version or version.startswith(".") or not path.is_dir():
            known = ", ".join(v.version for v in self.versions()) or "none"
            raise ModelNotFound(f"no model version {version!r} in {self.root} (known: {known})")
        return path

    def active_path(self) -> Path:
        version = self.active()
        if version is None:
            raise ModelNotFound(
                f"no active model in {self.root}: run `paidan model ensure` (builds one from training_data/) "
                "or `paidan model promote VERSION`"
            )
        return self.path(version)

    def versions(self) -> list[VersionInfo]:
        if not self.root.is_dir():
            return []
        active = self.active()
        out = []
        for path in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            try:
                meta = json.loads((path / METADATA_FILE).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            metrics = {h: {k: v.get(k) for k in ("accuracy", "macro_f1")} for h, v in meta.get("heldout", {}).items()}
            out.append(VersionInfo(path.name, path, meta.get("created_at", ""), path.name == active, metrics))
        return out

    @staticmethod
    def read_metadata(path: Path | str) -> dict[str, Any]:
        path = Path(path)
        try:
            meta = json.loads((path / METADATA_FILE).read_text(encoding="utf-8"))
        except FileNotFoundError as e:
            raise ModelNotFound(f"{path} is not a model directory: no {METADATA_FILE}") from e
        except ValueError as e:
            raise ModelIncompatible(f"{path / METADATA_FILE} is not valid JSON: {e}") from e
        schema = meta.get("schema_version")
        if schema != SCHEMA_VERSION:
            raise ModelIncompatible(
                f"model {path.name} has format {schema!r}; this paidan reads format {SCHEMA_VERSION}: retrain with `paidan train`"
            )
        return meta


def check_versions(path: Path, meta: dict[str, Any], part: str) -> None:
    """Refuse a model saved by library versions whose behaviour may differ from the installed ones."""
    saved = meta.get("libraries", {})
    now = library_versions()
    for name in _PINNED[part]:
        if name not in saved:
            continue
        if _major_minor(saved[name]) != _major_minor(now.get(name, "absent")):
            raise ModelIncompatible(
                f"model {path.name} was trained with {name} {saved[name]}, but {name} {now.get(name)} is installed; "
                f"install {name}=={_major_minor(saved[name])}.* or retrain with `paidan train`"
            )


def _check_file(path: Path, meta: dict[str, Any], name: str) -> Path:
    file = path / name
    if not file.exists():
        raise ModelNotFound(f"model {path.name} has no {name}")
    expected = meta.get("files", {}).get(name)
    if expected and sha256_file(file) != expected:
        raise ModelIncompatible(f"{file} does not match the checksum in {METADATA_FILE}: the file was altered or truncated")
    return file


def load_serving_arrays(path: Path | str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The fast path's arrays and the metadata, after format, checksum and version checks."""
    path = Path(path)
    meta = ModelStore.read_metadata(path)
    check_versions(path, meta, "serving")
    file = _check_file(path, meta, SERVING_FILE)
    with np.load(file, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    return arrays, meta


def _types_in(file: Path) -> set[str]:
    """Every ``module.class`` named in a skops file's schema."""
    with zipfile.ZipFile(file) as archive:
        schema = json.loads(archive.read("schema.json"))
    found: set[str] = set()
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if isinstance(node.get("__class__"), str) and isinstance(node.get("__module__"), str):
                found.add(f"{node['__module__']}.{node['__class__']}")
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


def load_skops(path: Path | str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The fitted scikit-learn objects ({"features", "heads"}) and the metadata, after the same checks."""
    import skops.io as sio

    path = Path(path)
    meta = ModelStore.read_metadata(path)
    check_versions(path, meta, "model")
    file = _check_file(path, meta, MODEL_FILE)
    # skops itself trusts every scikit-learn class; we allow only the types our own models contain.
    untrusted = _types_in(file) - set(TRUSTED_TYPES)
    if untrusted:
        raise ModelIncompatible(f"{file} contains types outside the allow-list, refusing to load: {sorted(untrusted)}")
    return sio.load(file, trusted=sorted(set(sio.get_untrusted_types(file=file)))), meta
