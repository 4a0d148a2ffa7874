"""Signed artifact folders (dq_ray.artifacts): the key, signing, verifying, and loading only signed bytes."""

from __future__ import annotations

import ast
import hashlib
import io
import json
import pickle
import stat
import threading
from pathlib import Path

import fsspec
import numpy as np
import pytest

import dq_ray.artifacts as artifacts
from dq_ray.artifacts import (
    SIGNATURE,
    UntrustedArtifactError,
    load_json_trusted,
    load_npy_trusted,
    load_npz_trusted,
    load_pickle_trusted,
    read_trusted,
    sign_artifacts,
    trusted_digests,
    verify_artifacts,
)


class _Planted:
    """A pickle payload that creates ``marker`` when unpickled (standing in for ``os.system``)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A fresh DQ_RAY_HOME (no key yet) and no key in the environment."""
    monkeypatch.setenv("DQ_RAY_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DQ_RAY_ARTIFACT_KEY", raising=False)
    return tmp_path / "home"


@pytest.fixture
def folder(tmp_path) -> Path:
    """An artifact folder as a fit leaves it: files, a nested one, and a hidden temporary file."""
    d = tmp_path / "artifacts" / "stage"
    (d / "sub").mkdir(parents=True)
    (d / "info.json").write_text(json.dumps({"method": "pca", "dim": 3}))
    np.save(d / "centroids.npy", np.arange(6, dtype=np.float32).reshape(2, 3))
    np.savez(d / "model.npz", mean=np.ones(3), components=np.eye(3))
    (d / "sub" / "model.pkl").write_bytes(pickle.dumps({"weights": [1.0, 2.0]}))
    (d / ".info.json.tmp").write_text("half written")
    return d


def _flip_byte(path: Path, at: int = 0) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def test_sign_then_verify_and_load(home, folder):
    digests = sign_artifacts(str(folder))
    assert sorted(digests) == ["centroids.npy", "info.json", "model.npz", "sub/model.pkl"]  # no signature, no hidden
    assert digests["info.json"] == hashlib.sha256((folder / "info.json").read_bytes()).hexdigest()
    signature = json.loads((folder / SIGNATURE).read_text())
    assert signature["files"] == digests and len(signature["mac"]) == 64
    assert verify_artifacts(str(folder)) == digests
    assert trusted_digests(str(folder)) == digests and trusted_digests("/nowhere", digests) == digests
    assert load_json_trusted(str(folder), "info.json", digests) == {"method": "pca", "dim": 3}
    assert load_npy_trusted(str(folder), "centroids.npy", digests).tolist() == [[0, 1, 2], [3, 4, 5]]
    npz = load_npz_trusted(str(folder), "model.npz", digests)
    assert np.array_equal(npz["components"], np.eye(3)) and np.array_equal(npz["mean"], np.ones(3))
    assert load_pickle_trusted(str(folder), "sub/model.pkl", digests) == {"weights": [1.0, 2.0]}
    assert not [p for p in folder.iterdir() if p.name.startswith(f".{SIGNATURE}")]  # no temporary left
    # a re-fit changes a file and signs again: the new digests verify
    (folder / "info.json").write_text("{}")
    with pytest.raises(UntrustedArtifactError, match="changed"):
        verify_artifacts(str(folder))
    assert load_json_trusted(str(folder), "info.json", sign_artifacts(str(folder))) == {}
    assert verify_artifacts(str(folder))["info.json"] != digests["info.json"]


def test_the_key_file_is_created_once_private_and_reused(home, folder, tmp_path):
    assert not home.exists()
    sign_artifacts(str(folder))
    key_file = home / "artifact.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(bytes.fromhex(key_file.read_text().strip())) == 32
    assert [p.name for p in home.iterdir()] == ["artifact.key"]  # no temporary left
    first = key_file.read_bytes()
    verify_artifacts(str(folder))
    assert key_file.read_bytes() == first
    # processes racing to create it all end up with the one key that was written first
    key_file.unlink()
    errors: list[BaseException] = []

    def sign(i: int) -> None:
        try:
            d = tmp_path / f"race{i}"
            d.mkdir()
            (d / "x").write_text(str(i))
            sign_artifacts(str(d))
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=sign, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i in range(8):
        verify_artifacts(str(tmp_path / f"race{i}"))


def test_the_environment_key_wins_and_bad_keys_are_rejected(home, folder, monkeypatch):
    monkeypatch.setenv("DQ_RAY_ARTIFACT_KEY", "11" * 32)
    sign_artifacts(str(folder))
    assert not home.exists()  # no key file needed
    verify_artifacts(str(folder))
    monkeypatch.setenv("DQ_RAY_ARTIFACT_KEY", "not hex")
    with pytest.raises(ValueError, match="not hex"):
        verify_artifacts(str(folder))
    monkeypatch.setenv("DQ_RAY_ARTIFACT_KEY", "ab" * 8 + "a")
    with pytest.raises(ValueError, match="not hex"):
        verify_artifacts(str(folder))
    monkeypatch.setenv("DQ_RAY_ARTIFACT_KEY", "ab" * 8)  # 8 bytes
    with pytest.raises(ValueError, match="too short"):
        verify_artifacts(str(folder))
    monkeypatch.delenv("DQ_RAY_ARTIFACT_KEY")
    home.mkdir()
    (home / "artifact.key").write_text("garbage")
    with pytest.raises(ValueError, match="not a dq-ray artifact key"):
        verify_artifacts(str(folder))


def test_verifying_needs_a_key_and_never_makes_one(home, folder, monkeypatch):
    monkeypatch.setenv("DQ_RAY_ARTIFACT_KEY", "33" * 32)
    sign_artifacts(str(folder))
    monkeypatch.delenv("DQ_RAY_ARTIFACT_KEY")  # a worker node without the shared key, and no key file
    with pytest.raises(UntrustedArtifactError, match="no signing key"):
        verify_artifacts(str(folder))
    assert not home.exists()


def test_a_wrong_key_refuses(home, folder, monkeypatch):
    sign_artifacts(str(folder))  # with the key file
    monkeypatch.setenv("DQ_RAY_ARTIFACT_KEY", "22" * 32)
    with pytest.raises(UntrustedArtifactError, match="does not match the key in .DQ_RAY_ARTIFACT_KEY") as err:
        verify_artifacts(str(folder))
    assert str(folder) in str(err.value) and "22" * 32 not in str(err.value)
    monkeypatch.delenv("DQ_RAY_ARTIFACT_KEY")
    verify_artifacts(str(folder))


def test_unsigned_and_missing_folders(home, folder, tmp_path):
    with pytest.raises(UntrustedArtifactError) as err:
        verify_artifacts(str(folder))
    message = str(err.value)
    assert str(folder) in message and "not written by dq-ray on this machine, or" in message
    assert "set DQ_RAY_ARTIFACT_KEY to the key that signed it, or re-fit" in message
    with pytest.raises(UntrustedArtifactError, match="does not exist"):
        verify_artifacts(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError):
        sign_artifacts(str(tmp_path / "nowhere"))


def test_forged_and_malformed_signatures(home, folder):
    digests = sign_artifacts(str(folder))
    signature = json.loads((folder / SIGNATURE).read_text())
    for forged in (
        {**signature, "mac": "0" * 64},
        {**signature, "files": {**digests, "info.json": "0" * 64}},  # the digests edited to match an edit
        {**signature, "files": {k: v for k, v in digests.items() if k != "sub/model.pkl"}},  # a file dropped
    ):
        (folder / SIGNATURE).write_text(json.dumps(forged))
        with pytest.raises(UntrustedArtifactError, match="does not match"):
            verify_artifacts(str(folder))
    for broken in ("{", "[]", json.dumps({"files": digests}), json.dumps({**signature, "format": "other/1"})):
        (folder / SIGNATURE).write_text(broken)
        with pytest.raises(UntrustedArtifactError, match="is not a dq-ray signature"):
            verify_artifacts(str(folder))


def test_one_changed_byte_or_a_missing_file_is_detected(home, folder):
    digests = sign_artifacts(str(folder))
    _flip_byte(folder / "centroids.npy", at=-1)
    with pytest.raises(UntrustedArtifactError, match="centroids.npy changed since it was signed") as err:
        verify_artifacts(str(folder))
    assert str(folder) in str(err.value)
    # a worker that got the digests before the change checks the very bytes it loads
    with pytest.raises(UntrustedArtifactError, match="centroids.npy: changed"):
        read_trusted(str(folder), "centroids.npy", digests)
    with pytest.raises(UntrustedArtifactError, match="centroids.npy: changed"):
        load_npy_trusted(str(folder), "centroids.npy", digests)
    (folder / "sub" / "model.pkl").unlink()
    with pytest.raises(UntrustedArtifactError, match="sub/model.pkl listed in _signature.json but missing"):
        verify_artifacts(str(folder))
    with pytest.raises(UntrustedArtifactError, match="but missing"):
        read_trusted(str(folder), "sub/model.pkl", digests)


def test_unlisted_files_are_not_trusted(home, folder, tmp_path):
    marker = tmp_path / "pwned"
    digests = sign_artifacts(str(folder))
    (folder / "planted.pkl").write_bytes(pickle.dumps(_Planted(marker)))
    assert verify_artifacts(str(folder)) == digests  # present but unlisted: allowed, not in the digests
    for name in ("planted.pkl", "../stage/planted.pkl", f"{folder}/planted.pkl", ".info.json.tmp", SIGNATURE):
        with pytest.raises(UntrustedArtifactError, match="not listed"):
            load_pickle_trusted(str(folder), name, digests)
    # a name that leaves the folder is never trusted, whatever the digests say
    with pytest.raises(UntrustedArtifactError, match="not listed"):
        read_trusted(str(folder / "sub"), "../info.json", {"../info.json": digests["info.json"]})
    assert not marker.exists()


def test_an_unsigned_pickle_never_runs(home, tmp_path):
    marker = tmp_path / "pwned"
    d = tmp_path / "evil"
    d.mkdir()
    (d / "model.pkl").write_bytes(pickle.dumps(_Planted(marker)))
    with pytest.raises(UntrustedArtifactError, match="not written by dq-ray"):
        load_pickle_trusted(str(d), "model.pkl", trusted_digests(str(d)))
    with pytest.raises(UntrustedArtifactError, match="not listed"):
        load_pickle_trusted(str(d), "model.pkl", {})
    # digests that name the payload but not its bytes (what an attacker could plant in place of a signed file)
    with pytest.raises(UntrustedArtifactError, match="changed"):
        load_pickle_trusted(str(d), "model.pkl", {"model.pkl": hashlib.sha256(b"other").hexdigest()})
    assert not marker.exists()


def test_object_arrays_are_refused(home, tmp_path):
    d = tmp_path / "obj"
    d.mkdir()
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (d / "obj.npy").write_bytes(buf.getvalue())
    digests = sign_artifacts(str(d))  # even a signed object array is not unpickled by the numpy loaders
    with pytest.raises(ValueError, match="allow_pickle"):
        load_npy_trusted(str(d), "obj.npy", digests)


def test_an_fsspec_url(home):
    url = "memory://dq-ray-artifacts-test/run/artifacts/stage"
    fs, root = fsspec.core.url_to_fs(url)
    try:
        fs.pipe_file(f"{root}/a.json", b'{"x": 1}')
        fs.pipe_file(f"{root}/deep/b.bin", b"\x00\x01")
        digests = sign_artifacts(url)
        assert sorted(digests) == ["a.json", "deep/b.bin"]
        assert verify_artifacts(url) == digests
        assert load_json_trusted(url, "a.json", digests) == {"x": 1}
        assert read_trusted(url, "deep/b.bin", digests) == b"\x00\x01"
        fs.pipe_file(f"{root}/deep/b.bin", b"\x00\x02")
        with pytest.raises(UntrustedArtifactError, match="changed"):
            verify_artifacts(url)
    finally:
        fs.rm("/dq-ray-artifacts-test", recursive=True)


def test_the_module_is_a_leaf():
    """dq_ray.artifacts imports nothing from dq_ray (so any module can import it without cycles)."""
    tree = ast.parse(Path(artifacts.__file__).read_text())
    imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    imported += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [m for m in imported if m == "dq_ray" or m.startswith("dq_ray.")], imported
