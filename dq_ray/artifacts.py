"""Signed artifact folders: dq-ray loads fitted state only from folders it wrote itself (or a trusted peer did).

A fitted stage writes its state into ``RUN/artifacts/<stage>/``; some of it is a pickle (a UMAP model), and
everything in it is loaded back in every Ray worker, from this run, from an earlier attempt (``--resume``) or
from another run (``map.model_from``). Loading a planted pickle runs its code, so every artifact folder is
signed, like a notebook is signed by Jupyter:

* :func:`sign_artifacts` hashes (SHA-256) every file of the folder and writes ``_signature.json``: the digests
  and an HMAC-SHA256 over them, with a secret key of this machine (or team);
* :func:`verify_artifacts` checks the HMAC and every listed file and returns the digests (files present but not
  listed are left alone and are not trusted: they are not in the digests);
* :func:`read_trusted` reads one file and checks that the bytes it returns are the signed ones (it needs only the
  digests, not the key: the driver verifies a folder and hands the digests to workers on other nodes), and
  :func:`load_pickle_trusted` is the only place dq-ray unpickles anything.

The key: ``DQ_RAY_ARTIFACT_KEY`` (hex, at least 16 bytes; share it across a team or cluster that shares runs),
else the file ``$DQ_RAY_HOME/artifact.key`` (``DQ_RAY_HOME`` defaults to ``~/.dq-ray``), created on first use
with 32 random bytes (hex), mode 0600. The key is never logged.

This module is a leaf: it imports nothing from dq_ray, so any module can use it.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import logging
import os
import pickle
import secrets
import stat
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import fsspec
import numpy as np

log = logging.getLogger(__name__)

#: environment variable holding the signing key as hex (takes precedence over the key file)
KEY_ENV = "DQ_RAY_ARTIFACT_KEY"
#: environment variable naming dq-ray's home folder (default ``~/.dq-ray``), where the key file lives
HOME_ENV = "DQ_RAY_HOME"
DEFAULT_HOME = "~/.dq-ray"
KEY_FILE = "artifact.key"
#: the signature file written into every signed artifact folder
SIGNATURE = "_signature.json"
#: the format tag, also part of the MAC's input (domain separation)
FORMAT = "dq-ray-artifacts/1"
MIN_KEY_BYTES = 16
_CHUNK = 1 << 20
_REFIT = "set DQ_RAY_ARTIFACT_KEY to the key that signed it, or re-fit"


class UntrustedArtifactError(RuntimeError):
    """An artifact folder or file that dq-ray refuses to load: unsigned, forged, changed, missing or unlisted."""


# -- the key ------------------------------------------------------------------------------------------------


def dq_ray_home() -> Path:
    """dq-ray's home folder: ``$DQ_RAY_HOME``, else ``~/.dq-ray`` (not created here)."""
    return Path(os.environ.get(HOME_ENV) or DEFAULT_HOME).expanduser()


def key_source() -> str:
    """Where the signing key comes from, in words (for messages; never the key itself)."""
    if os.environ.get(KEY_ENV, "").strip():
        return f"the key in ${KEY_ENV}"
    return f"the key file {dq_ray_home() / KEY_FILE}"


def _signing_key(create: bool = True) -> bytes | None:
    """The HMAC key: ``$DQ_RAY_ARTIFACT_KEY`` (hex) or the key file, created on first use when ``create``.

    Returns None when there is no key and ``create`` is False (verifying never makes a key: it could not match).
    """
    text = os.environ.get(KEY_ENV, "").strip()
    if text:
        try:
            key = bytes.fromhex(text)
        except ValueError:
            raise ValueError(f"${KEY_ENV} is not hex; it must hold the key as hex digits") from None
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(f"${KEY_ENV} is too short: a key has at least {MIN_KEY_BYTES} bytes")
        return key
    path = dq_ray_home() / KEY_FILE
    if not path.exists():
        if not create:
            return None
        _create_key_file(path)
    return _read_key_file(path)


def _create_key_file(path: Path) -> None:
    """Write 32 random bytes (hex) to ``path`` atomically, mode 0600; a key another process made first wins."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            os.fchmod(fh.fileno(), 0o600)  # exactly 0600, whatever the umask
            fh.write(secrets.token_hex(32) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)  # atomic and never replaces an existing key
            log.info("created the artifact signing key %s", path)
        except FileExistsError:
            pass
        except OSError:  # a filesystem without hard links: exclusive create, then write
            _create_key_file_in_place(path)
    finally:
        tmp.unlink(missing_ok=True)


def _create_key_file_in_place(path: Path) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(secrets.token_hex(32) + "\n")
    log.info("created the artifact signing key %s", path)


def _read_key_file(path: Path) -> bytes:
    text = ""
    for _ in range(50):  # another process may be writing it in place (filesystems without hard links)
        text = path.read_text(encoding="ascii", errors="replace").strip()
        if text:
            break
        time.sleep(0.02)
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(
            f"{path} is not a dq-ray artifact key (hex, at least {MIN_KEY_BYTES} bytes); delete it to create a new "
            "one (artifacts signed with the old key then need re-fitting)"
        )
    if os.name == "posix" and path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("the artifact signing key %s is readable by other users; chmod 600 it", path)
    return key


# -- signing and verifying -------------------------------------------------------------------------------------


def _mac(key: bytes, files: Mapping[str, str]) -> str:
    payload = json.dumps({"format": FORMAT, "files": dict(files)}, sort_keys=True, separators=(",", ":"))
    return hmac.new(key, payload.encode("ascii"), hashlib.sha256).hexdigest()


def _folder(path: str) -> tuple[Any, str]:
    fs, root = fsspec.core.url_to_fs(path)
    return fs, root.rstrip("/")


def _join(path: str, name: str) -> str:
    return f"{path.rstrip('/')}/{name}"


def _is_safe_name(name: Any) -> bool:
    """A relative path inside the folder: no empty, ``.`` or ``..`` parts, not absolute, not the signature."""
    if not isinstance(name, str) or not name or name.startswith("/") or "\\" in name or name == SIGNATURE:
        return False
    return all(part not in ("", ".", "..") for part in name.split("/"))


def _is_digest(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _listed_files(fs: Any, root: str) -> list[str]:
    """Relative paths of the regular files under ``root``, without the signature and hidden (``.``) files."""
    names = []
    for p in fs.find(root, withdirs=False, detail=False):
        p = p.rstrip("/")
        if not p.startswith(root + "/"):
            continue
        rel = p[len(root) + 1 :]
        if rel == SIGNATURE or any(part.startswith(".") for part in rel.split("/")):
            continue
        names.append(rel)
    return sorted(names)


def _sha256_of(fs: Any, path: str) -> str:
    h = hashlib.sha256()
    with fs.open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sign_artifacts(path: str) -> dict[str, str]:
    """Sign the artifact folder ``path`` (a local path or any fsspec URL): write ``path/_signature.json``.

    Every regular file under ``path`` (recursively) is hashed with SHA-256, except the signature itself and
    hidden files (names starting with ``.``, e.g. temporary files). The signature holds the digests and an
    HMAC-SHA256 over them with this machine's (or ``$DQ_RAY_ARTIFACT_KEY``'s) key. Returns the digests,
    ``{relative path: sha256 hex}``: what :func:`read_trusted` needs to load the files.
    """
    fs, root = _folder(path)
    if not fs.isdir(root):
        raise FileNotFoundError(f"no artifact folder {path!r} to sign")
    files = {name: _sha256_of(fs, f"{root}/{name}") for name in _listed_files(fs, root)}
    key = _signing_key()
    assert key is not None  # created when missing
    signature = {"format": FORMAT, "algorithm": "HMAC-SHA256", "files": files, "mac": _mac(key, files)}
    data = json.dumps(signature, indent=1, sort_keys=True).encode("ascii")
    tmp = f"{root}/.{SIGNATURE}.{secrets.token_hex(4)}.tmp"
    fs.pipe_file(tmp, data)
    try:
        fs.mv(tmp, f"{root}/{SIGNATURE}")
    finally:
        if fs.exists(tmp):
            fs.rm_file(tmp)
    log.info("signed %d artifact file(s) in %s", len(files), path)
    return files


def verify_artifacts(path: str) -> dict[str, str]:
    """Check the signature of the artifact folder ``path``; return its digests ``{relative path: sha256 hex}``.

    Raises :class:`UntrustedArtifactError`, naming the folder and the problem, when the folder has no signature
    (not written by dq-ray with this key), the MAC does not match the key (forged, edited, or another key), or a
    listed file is missing or changed. Files present but not listed are allowed, and not trusted: they are not in
    the digests, so :func:`read_trusted` refuses them.
    """
    fs, root = _folder(path)
    try:
        raw = fs.cat_file(f"{root}/{SIGNATURE}")
    except FileNotFoundError:
        if not fs.isdir(root):
            raise UntrustedArtifactError(f"artifact folder {path!r} does not exist") from None
        raise UntrustedArtifactError(
            f"artifact folder {path!r} has no {SIGNATURE}: it was not written by dq-ray on this machine, or it was "
            f"signed with another key; {_REFIT}"
        ) from None
    try:
        signature = json.loads(raw)
        files, mac = signature["files"], signature["mac"]
        if signature.get("format") != FORMAT or not isinstance(files, dict) or not isinstance(mac, str):
            raise ValueError("unexpected layout")
    except (ValueError, TypeError, KeyError) as exc:
        raise UntrustedArtifactError(
            f"artifact folder {path!r}: {SIGNATURE} is not a dq-ray signature ({type(exc).__name__}); {_REFIT}"
        ) from None
    key = _signing_key(create=False)
    if key is None:
        raise UntrustedArtifactError(
            f"artifact folder {path!r} cannot be verified: this machine has no signing key ({key_source()} does not "
            f"exist); {_REFIT}"
        )
    if not hmac.compare_digest(mac.encode("ascii", "replace"), _mac(key, files).encode("ascii")):
        raise UntrustedArtifactError(
            f"artifact folder {path!r}: {SIGNATURE} does not match {key_source()} (the signature was forged or "
            f"edited, or the folder was signed with another key); {_REFIT}"
        )
    bad = [name for name, digest in files.items() if not _is_safe_name(name) or not _is_digest(digest)]
    if bad:  # only a holder of the key could have written these
        raise UntrustedArtifactError(f"artifact folder {path!r}: {SIGNATURE} lists invalid entries {bad[:5]}")
    missing, changed = [], []
    for name, digest in sorted(files.items()):
        try:
            actual = _sha256_of(fs, f"{root}/{name}")
        except FileNotFoundError:
            missing.append(name)
            continue
        if not hmac.compare_digest(actual, digest):
            changed.append(name)
    if changed or missing:
        problems = [f"{', '.join(changed)} changed since it was signed"] if changed else []
        problems += [f"{', '.join(missing)} listed in {SIGNATURE} but missing"] if missing else []
        raise UntrustedArtifactError(f"artifact folder {path!r}: {'; '.join(problems)}; re-fit")
    unlisted = sorted(set(_listed_files(fs, root)) - set(files))
    if unlisted:
        log.info("%s: ignoring %d file(s) not in its signature (not trusted): %s", path, len(unlisted), unlisted[:5])
    return dict(files)


def trusted_digests(path: str, digests: Mapping[str, str] | None = None) -> dict[str, str]:
    """``digests`` when given (the pipeline verified ``path`` on the driver), else :func:`verify_artifacts`."""
    return dict(digests) if digests is not None else verify_artifacts(path)


# -- loading -------------------------------------------------------------------------------------------------


def read_trusted(path: str, name: str, digests: Mapping[str, str]) -> bytes:
    """The bytes of ``path/name``, checked against ``digests[name]`` (from :func:`verify_artifacts`).

    Needs no key, so it runs in workers on any node. The bytes returned are exactly the bytes hashed (no gap
    between check and use). Raises :class:`UntrustedArtifactError` when ``name`` is not in ``digests``, the file
    is missing, or its SHA-256 differs.
    """
    full = _join(path, name)
    expected = digests.get(name) if _is_safe_name(name) else None
    if expected is None:
        raise UntrustedArtifactError(f"{full}: not listed in the signature of {path!r}; refusing to load it")
    try:
        with fsspec.open(full, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise UntrustedArtifactError(f"{full}: listed in the signature of {path!r} but missing; re-fit") from None
    if not hmac.compare_digest(hashlib.sha256(data).hexdigest(), expected):
        raise UntrustedArtifactError(f"{full}: changed since {path!r} was signed; refusing to load it; re-fit")
    return data


def load_pickle_trusted(path: str, name: str, digests: Mapping[str, str]) -> Any:
    """Unpickle ``path/name`` after checking its bytes (:func:`read_trusted`): the only unpickling in dq-ray."""
    return pickle.loads(read_trusted(path, name, digests))


def load_json_trusted(path: str, name: str, digests: Mapping[str, str]) -> Any:
    """Parse the JSON file ``path/name`` after checking its bytes (:func:`read_trusted`)."""
    return json.loads(read_trusted(path, name, digests))


def load_npy_trusted(path: str, name: str, digests: Mapping[str, str]) -> np.ndarray:
    """The array in the ``.npy`` file ``path/name`` (checked by :func:`read_trusted`; object arrays refused)."""
    return np.load(io.BytesIO(read_trusted(path, name, digests)), allow_pickle=False)


def load_npz_trusted(path: str, name: str, digests: Mapping[str, str]) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` file ``path/name`` (checked by :func:`read_trusted`; object arrays refused)."""
    with np.load(io.BytesIO(read_trusted(path, name, digests)), allow_pickle=False) as z:
        return {key: z[key] for key in z.files}
