"""Join the parts of a sharded conversion into the dataset a single run would have written.

`mtldata convert --num-shards S --shard-index I` writes part I: a contiguous range of the (shuffled)
list positions, keyed `%08d_<path>` with the global position. Merging copies the parts' records in
part order through the backend's own writer, so the result has the single run's keys, order and
values (for LMDB: one image environment and one label environment that Caffe reads). Like convert,
the work happens in `<out>.partial/` and is renamed into place only when complete.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mtldata.convert.pipeline import (
    COMMIT_BYTES,
    ERRORS_NAME,
    MANIFEST_ERRORS,
    _publish,
    missing_labels_entry,
)
from mtldata.durable import fsync_path
from mtldata.errors import DatasetFormatError, DatasetStateError, MtlDataError, OutputError
from mtldata.storage.backends import WriterOptions, make_writer, open_reader, read_manifest
from mtldata.storage.manifest import LabelStats, Manifest, dataset_checksums, write_manifest
from mtldata.storage.output_guard import (
    check_output_path,
    lock_staging,
)
from mtldata.version import __version__

# Manifest options that may differ between parts without changing what they hold.
_FREE_OPTIONS = ("strict",)


@dataclasses.dataclass
class MergeResult:
    output: Path
    count: int
    parts: int
    skipped: int
    seconds: float
    manifest: dict[str, Any]


def _part_manifest(path: Path) -> dict[str, Any]:
    manifest = read_manifest(path) if path.is_dir() else None
    if manifest is None:
        raise DatasetFormatError(
            f"{path}: not an mtldata dataset (no manifest.json); merge joins the parts "
            f"written by `mtldata convert --num-shards S --shard-index I`"
        )
    if not manifest.get("complete", False):
        raise DatasetStateError(f"{path}: an incomplete part; finish it with `mtldata convert ... --resume`")
    if not manifest.get("shard"):
        raise DatasetFormatError(
            f"{path}: not a part of a sharded conversion (its manifest has no `shard`; "
            f"parts are made with `mtldata convert --num-shards S --shard-index I`)"
        )
    return manifest


def _same(manifest: dict[str, Any]) -> dict[str, Any]:
    """What every part of one conversion must agree on."""
    return {
        "backend": manifest["backend"],
        "list file (sha256)": manifest["source"]["list_sha256"],
        "num_labels": manifest["num_labels"],
        "label_names": manifest["label_names"],
        "num_shards": manifest["shard"]["count"],
        **{f"option {k}": v for k, v in manifest["options"].items() if k not in _FREE_OPTIONS},
    }


def check_parts(parts: Sequence[Path], manifests: Sequence[dict[str, Any]]) -> list[int]:
    """Check that the parts belong together, are disjoint and complete; their order by shard index."""
    first = _same(manifests[0])
    for path, manifest in zip(parts[1:], manifests[1:], strict=True):
        other = _same(manifest)
        for name, value in first.items():
            if other.get(name) != value:
                raise MtlDataError(
                    f"{path} does not belong with {parts[0]}: {name} is {other.get(name)!r} there, "
                    f"{value!r} here"
                )
        extra = sorted(set(other) - set(first))
        if extra:
            raise MtlDataError(
                f"{path} does not belong with {parts[0]}: it has {extra[0]}, the other does not"
            )
    count = first["num_shards"]
    by_index: dict[int, Path] = {}
    for path, manifest in zip(parts, manifests, strict=True):
        index = manifest["shard"]["index"]
        if index in by_index:
            raise MtlDataError(f"{by_index[index]} and {path} are both part {index} of {count}")
        by_index[index] = path
    missing = [i for i in range(count) if i not in by_index]
    if missing:
        raise MtlDataError(f"part(s) {', '.join(map(str, missing))} of {count} missing: every part is needed")
    order = sorted(range(len(parts)), key=lambda j: manifests[j]["shard"]["index"])
    position = 0
    for j in order:
        start, stop = manifests[j]["shard"]["positions"]
        if start != position:
            raise MtlDataError(
                f"{parts[j]}: covers list positions {start}..{stop}, expected to start at {position}"
            )
        position = stop
    if position != manifests[0]["source"]["data_lines"]:
        raise MtlDataError(
            f"the parts cover {position} list positions, the list has {manifests[0]['source']['data_lines']}"
        )
    return order


def _combined_image(images: Sequence[dict[str, Any]]) -> dict[str, Any]:
    shapes: dict[str, int] = {}
    formats: dict[str, int] = {}
    for image in images:
        for name, n in (image.get("shapes") or {}).items():
            shapes[name] = shapes.get(name, 0) + n
        for name, n in (image.get("formats") or {}).items():
            formats[name] = formats.get(name, 0) + n
    dims = sorted(tuple(int(v) for v in s.split("x")) for s in shapes)
    out = dict(images[0])
    out.update(
        shape=list(dims[0]) if len(dims) == 1 else None,
        shapes={"x".join(map(str, s)): shapes["x".join(map(str, s))] for s in dims},
        channels=sorted({s[0] for s in dims}),
        formats=dict(sorted(formats.items())),
    )
    out.pop("min_hw", None)
    out.pop("max_hw", None)
    if dims:
        out["min_hw"] = [min(s[1] for s in dims), min(s[2] for s in dims)]
        out["max_hw"] = [max(s[1] for s in dims), max(s[2] for s in dims)]
    return out


def _position(key: str, part: Path) -> int:
    head = key.split("_", 1)[0]
    if not head.isdigit():
        raise DatasetFormatError(f"{part}: key {key!r} does not start with its %08d list position")
    return int(head)


def merge(
    parts: Sequence[str | Path],
    output: str | Path,
    *,
    overwrite: bool = False,
    commit_every: int = 1000,
    progress: Callable[[int, int], None] | None = None,
) -> MergeResult:
    """Merge all parts of one sharded conversion into `output` (atomically)."""
    started = time.monotonic()
    parts = [Path(p) for p in parts]
    output = Path(output)
    if not parts:
        raise MtlDataError("no parts to merge")
    check_output_path(output, parts)
    manifests = [_part_manifest(p) for p in parts]
    order = check_parts(parts, manifests)
    parts = [parts[j] for j in order]
    manifests = [manifests[j] for j in order]

    staging, existed, lock = lock_staging(output, overwrite, "merge", "a conversion or merge")
    try:
        if existed:
            if not overwrite:
                raise DatasetStateError(
                    f"{staging}: exists (an interrupted conversion or merge); pass --overwrite"
                )
            lock.clear()
        return _merge_locked(parts, manifests, output, staging, commit_every, progress, started)
    except OSError as exc:
        raise OutputError.from_os_error(exc, staging) from None
    finally:
        lock.release()


def _merge_locked(
    parts: list[Path],
    manifests: list[dict[str, Any]],
    output: Path,
    staging: Path,
    commit_every: int,
    progress: Callable[[int, int], None] | None,
    started: float,
) -> MergeResult:
    """The merge proper, in a locked staging folder (removed again if the merge fails)."""
    first = manifests[0]
    try:
        options = WriterOptions(
            num_labels=first["num_labels"],
            label_names=tuple(first["label_names"]),
            extra={k: v for k, v in (first["files"].get("writer_options") or {}).items() if v is not None},
            encoded_images=bool(first["image"].get("encoded")),
            destination=output,
        )
        writer = make_writer(first["backend"], staging, options)
        total = sum(m["count"] for m in manifests)
        stats = LabelStats()
        done = pending = 0
        for part in parts:
            reader = open_reader(part)
            try:
                for sample in reader:
                    writer.put(dataclasses.replace(sample, index=_position(sample.key, part)))
                    stats.add(sample.labels)
                    done += 1
                    pending += len(sample.image.data)
                    # as the converter: what a transaction holds stays in memory until it commits
                    if done % commit_every == 0 or pending >= COMMIT_BYTES:
                        writer.commit()
                        pending = 0
                    if progress is not None:
                        progress(done, total)
            finally:
                reader.close()
        writer.commit()
        files = writer.close()
        with open(staging / ERRORS_NAME, "wb") as out:
            for part in parts:
                # Only the part's own errors.tsv: a manifest naming another path is not followed.
                errors = part / ERRORS_NAME
                if errors.is_file():
                    out.write(errors.read_bytes())
        manifest = _merged_manifest(parts, manifests, files, stats, done)
        manifest.checksums = dataset_checksums(staging, files, getattr(writer, "checksums", None))
        write_manifest(staging, manifest)
        fsync_path(staging)
        _publish(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # still locked: no other writer is in it
        raise
    skipped = manifest.errors["count"]
    return MergeResult(output, done, len(parts), skipped, time.monotonic() - started, manifest.to_dict())


def _merged_manifest(
    parts: Sequence[Path],
    manifests: Sequence[dict[str, Any]],
    files: dict[str, Any],
    stats: LabelStats,
    count: int,
) -> Manifest:
    first = manifests[0]
    fields = {f.name for f in dataclasses.fields(Manifest)}
    values = {k: v for k, v in first.items() if k in fields}
    values.update(
        count=count,
        image=_combined_image([m["image"] for m in manifests]),
        files={**files, "errors": ERRORS_NAME},
        source={**first["source"], "merged_from": [str(p) for p in parts]},
        errors={
            "count": sum(m["errors"]["count"] for m in manifests),
            "file": ERRORS_NAME,
            "first": [e for m in manifests for e in m["errors"].get("first", [])][:MANIFEST_ERRORS],
        },
        label_stats=stats.summary(list(first["label_names"])),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        mtldata_version=__version__,
        shard=None,
        checksums={},
        complete=True,
    )
    if first.get("missing_labels") is not None:  # the counts of the whole, not of the first part
        values["missing_labels"] = missing_labels_entry(stats, {})
    return Manifest(**values)
