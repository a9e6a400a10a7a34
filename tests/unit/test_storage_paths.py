"""Storage.download_dir keeps every key inside its destination; Storage.iter_chunks streams a local file."""

from __future__ import annotations

import pytest

from modelops.storage import Storage

PREFIX = "s3://b/assets"


@pytest.mark.parametrize("key", ["../evil", "../../evil", "sub/../../evil", "/etc/evil", "//abs/evil",
                                 "a\\..\\..\\evil", "a\\b", "link/evil", "."])  # fmt: skip
def test_a_key_leaving_the_destination_is_refused_before_anything_is_written(s3, tmp_path, key):
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "link").symlink_to(outside)  # a folder of dest that points elsewhere
    s3.write_bytes(f"{PREFIX}/a/ok.txt", b"ok")
    s3.write_bytes(f"{PREFIX}/{key}", b"evil")
    with pytest.raises(ValueError) as err:
        s3.download_dir(PREFIX, dest)
    line = str(err.value)
    assert repr(f"{PREFIX}/{key}") in line and "does not stay inside" in line and "\n" not in line
    assert sorted(p.name for p in dest.rglob("*")) == ["link"] and not list(outside.iterdir())
    assert not list(tmp_path.parent.glob("evil")) and not (tmp_path / "evil").exists()


def test_keys_inside_the_destination_are_downloaded(s3, tmp_path):
    for key, body in {"a/b.txt": b"b", "a/../c.txt": b"c", "tokenizer/vocab.json": b"{}"}.items():
        s3.write_bytes(f"{PREFIX}/{key}", body)
    dest = s3.download_dir(PREFIX, tmp_path / "dest")
    files = {p.relative_to(dest).as_posix(): p.read_bytes() for p in dest.rglob("*") if p.is_file()}
    assert files == {"a/b.txt": b"b", "c.txt": b"c", "tokenizer/vocab.json": b"{}"}
    with pytest.raises(FileNotFoundError, match="nothing under s3://b/none"):
        s3.download_dir("s3://b/none", tmp_path / "empty")


def test_a_local_folder_is_downloaded_as_before(tmp_path):
    src = tmp_path / "src"
    (src / "x").mkdir(parents=True)
    (src / "x" / "f.bin").write_bytes(b"f")
    dest = Storage().download_dir(str(src), tmp_path / "dest")
    assert (dest / "x" / "f.bin").read_bytes() == b"f"


def test_iter_chunks_streams_a_local_file(tmp_path):
    path = tmp_path / "big.bin"
    path.write_bytes(bytes(range(10)))
    assert [len(c) for c in Storage().iter_chunks(str(path), 4)] == [4, 4, 2]
    assert b"".join(Storage().iter_chunks(str(path))) == bytes(range(10))
    with pytest.raises(FileNotFoundError):
        list(Storage().iter_chunks(str(tmp_path / "missing")))
