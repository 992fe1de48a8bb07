"""Downloads: atomic (a broken transfer leaves nothing), checked, and a clear error offline.
No network: file:// URLs, a refused local port, and a stream that breaks off."""
import hashlib
import io
import urllib.request

import pytest

from dmat_core.common import download as dl


def test_file_url_is_copied_atomically_and_kept(tmp_path):
    src = tmp_path / "src.bin"
    payload = bytes(range(256)) * 5000                     # 1.28 MB: several chunks
    src.write_bytes(payload)
    digest = hashlib.sha256(payload).hexdigest()
    dest = dl.download(src.as_uri(), tmp_path / "sub" / "copy.bin", size=len(payload), sha256=digest,
                       progress=False, chunk=1 << 16)
    assert dest.read_bytes() == payload and dl.file_sha256(dest) == digest
    assert sorted(p.name for p in dest.parent.iterdir()) == ["copy.bin"]     # no temporary left
    src.unlink()                                            # already there: kept, not fetched again
    assert dl.download(src.as_uri(), dest, size=len(payload), progress=False) == dest
    with pytest.raises(ValueError, match="already there"):
        dl.download(src.as_uri(), dest, size=len(payload) + 1, progress=False)


def test_wrong_checksum_writes_nothing(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"not the published file")
    with pytest.raises(ValueError, match="SHA-256"):
        dl.download(src.as_uri(), tmp_path / "out" / "x.pt", sha256="0" * 64, progress=False)
    with pytest.raises(ValueError, match="bytes, expected 5"):
        dl.download(src.as_uri(), tmp_path / "out" / "x.pt", size=5, progress=False)
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/cifar10_linf_wrn28-10.pt", "file:///no/such/file.npz"])
def test_offline_is_a_clear_error_naming_the_url_and_the_manual_step(tmp_path, url):
    dest = tmp_path / "x.pt"
    with pytest.raises(dl.DownloadError) as e:
        dl.download(url, dest, progress=False, timeout=5)
    msg = str(e.value)
    assert url in msg and f"curl -L -o x.pt {url}" in msg and str(dest.resolve()) in msg
    assert list(tmp_path.iterdir()) == []


def test_transfer_cut_short_leaves_the_old_state(tmp_path, monkeypatch):
    """The server announces 1000 bytes and the connection dies after 300: no file, no temporary."""
    class Broken(io.BytesIO):
        headers = {"Content-Length": "1000"}

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: Broken(b"x" * 300))
    with pytest.raises(dl.DownloadError, match="stopped after 300 of 1000 bytes"):
        dl.download("https://example.org/1m.npz", tmp_path / "1m.npz", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_published_addresses():
    assert dl.PUBLISHED["cifar10_linf_wrn28-10"].endswith("/checkpoint/cifar10_linf_wrn28-10.pt")
    assert dl.PUBLISHED["cifar10_1m"].endswith("/cifar10/1m.npz")
