"""Dataset verification: every record decodes, counts and keys agree, the manifest's checksums hold.

For LMDB datasets the image and label environments are walked side by side in key order (LMDB
keeps keys sorted, so "the same keys" and "the same keys in the same order" are one check), and
each environment's record digest is recomputed on the way for the manifest's `checksums`.
Other backends are checked through their reader: every sample loads and decodes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError

from mtldata.caffe.datum import parse_datum
from mtldata.errors import MtlDataError
from mtldata.inspect.lookahead import checked_ahead
from mtldata.storage import record_digests
from mtldata.storage.backends import open_reader, read_manifest
from mtldata.storage.backends.hdf5 import Hdf5Reader
from mtldata.storage.image import ImageDecodeError, decode_bytes, jpeg_decodes
from mtldata.storage.manifest import FILE_DIGEST, checksum
from mtldata.storage.manifest_check import inside_path
from mtldata.storage.processes import available_cores

DATASET = "(dataset)"  # how format_report names a problem that belongs to no single record


@dataclass(frozen=True)
class Problem:
    """One thing wrong: the record's key (None for a whole DB or file) and why."""

    key: str | None
    reason: str


@dataclass
class VerifyReport:
    """What `verify` found. Only the first `limit` problems are kept; `problem_count` counts them all."""

    path: Path
    counts: dict[str, int | None] = field(default_factory=dict)
    checked: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    problem_count: int = 0
    limit: int = 100

    @property
    def ok(self) -> bool:
        return self.problem_count == 0

    @property
    def bad_keys(self) -> list[str]:
        """The keys of the kept problems, each once, in the order found."""
        return list(dict.fromkeys(p.key for p in self.problems if p.key is not None))

    def add(self, key: str | bytes | None, reason: str) -> None:
        self.problem_count += 1
        if len(self.problems) < self.limit:
            if isinstance(key, bytes):
                key = key.decode("utf-8", errors="replace")
            self.problems.append(Problem(key, reason))


def verify_dataset(
    path: str | Path,
    labels: str | Path | None = None,
    *,
    limit: int = 100,
    progress: Callable[[int, int], None] | None = None,
) -> VerifyReport:
    """Check a dataset (as `open_reader` takes it) record by record; damage goes into the report.

    Raises DatasetFormatError only when `path` is not a dataset at all.
    """
    from mtldata.storage.backends.lmdb import LmdbReader

    path = Path(path)
    report = VerifyReport(path=path, limit=limit)
    # An HDF5 dataset's shards are checked against their checksums before h5py opens any of them.
    early = _hdf5_manifest(path) if labels is None else None
    walked: dict[Path, dict[str, Any] | None] = {}
    cut: set[Path] = set()  # LMDB environments whose walk an LMDB error stopped
    unread: list[Path] = []  # HDF5 shards missing or too damaged to read (reported already)
    reader = None
    if early is not None:
        reader, walked, unread = _without_damaged_shards(report, path, early)
    if reader is None:
        reader = open_reader(path, labels)
    try:
        manifest = early or (read_manifest(path) if path.is_dir() and labels is None else None)
        if manifest is None:
            report.notes.append("no manifest: counts and checksums not checked")
        if isinstance(reader, LmdbReader):
            walked, cut = _walk_lmdb(report, reader.images_path, reader.labels_path, manifest, progress)
        else:
            _walk_reader(report, reader, progress, *_file_digests(report, path, manifest))
    finally:
        reader.close()
    if manifest is not None:
        _check_counts(report, path, manifest, unread)
        _check_checksums(report, path, manifest, walked, cut, unread)
    return report


def _hdf5_manifest(path: Path) -> dict[str, Any] | None:
    """The manifest of `path` when it is an mtldata HDF5 dataset with checksums; else None (a
    manifest that cannot be read is left to the usual path, which says why)."""
    try:
        manifest = read_manifest(path) if path.is_dir() else None
    except MtlDataError:
        return None
    if not manifest or manifest.get("backend") != "hdf5" or not manifest.get("checksums"):
        return None
    return manifest


def _without_damaged_shards(
    report: VerifyReport, root: Path, manifest: dict[str, Any]
) -> tuple[Hdf5Reader | None, dict[Path, dict[str, Any] | None], list[Path]]:
    """Check each HDF5 shard against its checksum before the HDF5 library reads it: returns a
    reader over the shards fit to read (None when all are: the usual reader then), the checksums
    found (for _check_checksums, so that no shard is read twice), and the shards not read (missing
    or damaged, each reported here once).

    The HDF5 library may crash (SIGSEGV) reading a file whose structure (headers, B-trees, heaps) is
    damaged, so such a shard's records are not read. A checksum split at the shard's pixels tells
    damage in the pixels alone, which leaves the structure readable and the records to be named; a
    whole-file checksum (compressed shards, datasets written before the split) cannot tell.
    """
    found: dict[Path, dict[str, Any] | None] = {}
    shards = [root / name for name in (manifest.get("files") or {}).get("shards") or []]
    recorded = manifest.get("checksums") or {}
    damaged: list[Path] = []
    for shard in shards:
        want = recorded.get(shard.name)
        if not shard.is_file():
            damaged.append(shard)
            report.add(None, f"{shard.name}: missing (the manifest lists it); its records were not read")
            continue
        if not isinstance(want, dict):
            continue
        got = _checksum_as_recorded(root, shard.name, want, manifest)
        found[shard] = got
        if got is None:
            continue
        if "rest_xxh3_128" in want and _region(want) is not None:
            parts, where = ("bytes", "rest_xxh3_128"), "its HDF5 structure (the bytes outside its pixel data)"
        else:
            parts, where = (
                ("bytes", _file_digest_name(want)),
                "the shard (its checksum covers the whole file)",
            )
        if any(got.get(part) != want.get(part) for part in parts):
            damaged.append(shard)
            if isinstance(want.get("bytes"), int) and got.get("bytes") != want["bytes"]:
                where = f"is {got.get('bytes'):,} bytes, {want['bytes']:,} when converted:"
                changed = "cut short" if got["bytes"] < want["bytes"] else "grown"
            else:
                changed = "changed since conversion"
            report.add(
                None,
                f"{shard.name}: {where} {changed}; its records were not read "
                "(a damaged HDF5 file can crash the HDF5 library)",
            )
    if not damaged:
        return None, found, []
    healthy = [shard for shard in shards if shard not in damaged]
    return Hdf5Reader(healthy, manifest=manifest), found, damaged


def _records(
    txn: Any, digest: Any, expected: dict[bytes, bytes] | None, name: str
) -> Iterator[tuple[bytes, bytes, str | None]]:
    """(key, value, why its digest is wrong or None) for the records of one DB in key order, each
    added to `digest` and, when the conversion kept per-record digests (`expected`), checked
    against its own."""
    for key, value in txn.cursor():
        got = digest.update(key, value)
        problem = None
        if expected is not None:
            want = expected.pop(bytes(key), None)
            if want is None:
                problem = f"{name}: a record the conversion did not write (not in its digests)"
            elif want != got:
                problem = f"{name}: record digest mismatch: its bytes changed since conversion"
        yield key, value, problem


def _record_digest(manifest: dict[str, Any] | None, rel: str) -> str:
    """The per-record digest algorithm the manifest's checksum of `rel` was made with (sha256 before
    mtldata named one)."""
    entry = ((manifest or {}).get("checksums") or {}).get(rel) or {}
    algorithm = entry.get("record_digest") if isinstance(entry, dict) else None
    return algorithm if algorithm in record_digests.SIZES else "sha256"


def _expected_digests(
    report: VerifyReport, root: Path | None, manifest: dict[str, Any] | None, db: Path
) -> dict | None:
    """key -> digest of the records of `db` as written, when the manifest names a digests file.

    The file holds the entries the manifest's sha256 of `db` was made of, in key order: a file that
    does not hash to it is damaged itself (one problem), not proof that every record changed."""
    entry = ((manifest or {}).get("checksums") or {}).get(db.name) or {}
    name = entry.get("record_digests")
    if root is None or not isinstance(name, str) or entry.get("record_digest") not in record_digests.SIZES:
        return None
    path = root / name
    if path.parent != root:
        return None
    only = f"the records of {db.name} were checked against the manifest's checksum only"
    if not path.is_file():
        report.notes.append(f"{name}: missing; {only}")
        return None
    data = path.read_bytes()
    if isinstance(entry.get("sha256"), str) and hashlib.sha256(data).hexdigest() != entry["sha256"]:
        report.add(
            None, f"{name}: damaged (it does not hash to the manifest's checksum of {db.name}); {only}"
        )
        return None
    return record_digests.parse(data, entry["record_digest"])


def _walk_lmdb(
    report: VerifyReport,
    images: Path,
    labels: Path | None,
    manifest: dict[str, Any] | None,
    progress: Callable[[int, int], None] | None,
) -> tuple[dict[Path, dict[str, Any]], set[Path]]:
    """Walk the image DB (and the label DB beside it); return each DB's record digest by its path,
    and the DBs whose walk an LMDB error cut short (no digest or count: they are not known).

    A DB that fails does not stop the other's walk: its records are still checked, without the
    pairing of keys (the failed DB may hold the keys it was not read to)."""
    import lmdb

    from mtldata.storage.backends.lmdb import RecordDigest, open_readonly

    gray = bool(manifest and manifest.get("options", {}).get("gray"))
    shapes = set((manifest or {}).get("image", {}).get("shapes") or ())
    num_labels = manifest.get("num_labels") if manifest else None
    dbs = {"images": images} if labels is None else {"images": images, "labels": labels}
    digests = {name: RecordDigest(_record_digest(manifest, db.name)) for name, db in dbs.items()}
    root = images.parent if manifest is not None else None
    expected = {name: _expected_digests(report, root, manifest, db) for name, db in dbs.items()}
    done = 0
    cut: list[str] = []  # the DBs whose walk an LMDB error stopped, in the order they failed

    def lmdb_error(name: str | None, exc: Exception) -> None:
        if name is None:
            report.add(None, f"LMDB error before the first record: {exc}")
        else:  # records read: the image walk reads ahead of the reports
            report.add(
                None, f"{dbs[name].name}: LMDB error after {digests[name].records} of its records: {exc}"
            )

    try:
        with ExitStack() as stack:
            txns = {}
            for name, db in dbs.items():
                env = stack.enter_context(open_readonly(db))  # a damaged data.mdb: DatasetFormatError
                txns[name] = stack.enter_context(env.begin())
            total = txns["images"].stat()["entries"]
            # Each image record's check (a decode, when encoded) runs in threads ahead of the walk;
            # the walk reports in key order as before.
            image_records = checked_ahead(
                _records(txns["images"], digests["images"], expected["images"], images.name),
                lambda record: _image_problem(record[1], gray, shapes),
                lambda record: len(record[1]),
                available_cores(),
            )
            label_records = (
                _records(txns["labels"], digests["labels"], expected["labels"], labels.name)
                if labels is not None
                else iter(())
            )

            def read(records: Iterator[Any], name: str) -> Any:
                """The next record, or None at the end or at an LMDB error (reported, the DB cut)."""
                if name in cut:
                    return None
                try:
                    return next(records, None)
                except lmdb.Error as exc:
                    cut.append(name)
                    lmdb_error(name, exc)
                    return None

            def next_label() -> tuple[bytes, bytes, str | None] | None:
                label = read(label_records, "labels")
                if label is not None and label[2] is not None:
                    report.add(label[0], label[2])
                return label

            def next_image() -> tuple[bytes, str | None] | None:
                found = read(image_records, "images")
                if found is None:
                    return None
                (key, _, digest_problem), image_problem = found
                if digest_problem is not None:
                    report.add(key, digest_problem)
                return key, image_problem

            def check_label(label: tuple[bytes, bytes, str | None]) -> None:
                if (reason := _label_problem(label[1], num_labels)) is not None:
                    report.add(label[0], f"label record: {reason}")

            image = next_image()
            label = next_label()
            while image is not None or label is not None:
                if label is not None and (image is None or label[0] < image[0]):
                    if "images" in cut:  # the image DB was not read to this key: it may be there
                        check_label(label)
                    else:
                        report.add(label[0], f"label record without an image record in {images.name}")
                    label = next_label()
                    continue
                if image[1] is not None:
                    report.add(image[0], image[1])
                if label is not None and label[0] == image[0]:
                    check_label(label)
                    label = next_label()
                elif labels is not None and "labels" not in cut:
                    report.add(image[0], f"no label record in {labels.name}")
                image = next_image()
                done += 1
                if progress is not None:
                    progress(done, total)
    except lmdb.Error as exc:  # a damaged environment before its first record: neither DB was walked
        lmdb_error(None, exc)
        cut = list(dbs)
    report.counts.update({name: None if name in cut else digest.records for name, digest in digests.items()})
    # (a record missing from a DB is named by the walk already: no label record, or a label without image)
    # What a cut walk did not check is not claimed.
    if any(e is not None for name, e in expected.items() if name not in cut):
        report.checked.append("every record against its own digest")
    if "images" not in cut:
        report.checked.append("every image record decodes")
    if labels is not None:
        report.checked += ["every label record parses"] if "labels" not in cut else []
        report.checked += ["image and label DBs hold the same keys"] if not cut else []
    walked = {dbs[name]: digest.result() for name, digest in digests.items() if name not in cut}
    return walked, {dbs[name] for name in cut}


def _image_problem(value: bytes, gray: bool, shapes: set[str]) -> str | None:
    """Why an image record is unusable (None if it is fine)."""
    try:
        datum = parse_datum(value)
    except DecodeError as exc:
        return f"not a Caffe Datum ({exc})"
    if datum.encoded:
        # A plain JPEG at 1/8 scale: it passes exactly when a full decode does (the converter's
        # check, see jpeg_decodes), in under half the time; anything else, or a failure, decodes whole.
        shape = jpeg_decodes(datum.data, gray)
        if shape is None:
            try:
                pixels = decode_bytes(datum.data, gray)
            except ImageDecodeError as exc:
                return f"encoded image does not decode ({exc})"
            shape = (1 if pixels.ndim == 2 else pixels.shape[2], pixels.shape[0], pixels.shape[1])
    else:
        shape = (datum.channels, datum.height, datum.width)
        size = shape[0] * shape[1] * shape[2]
        if min(shape) <= 0 or len(datum.data) != size:
            return (
                f"raw image holds {len(datum.data)} bytes, its shape {'x'.join(map(str, shape))} needs {size}"
            )
    if shapes and "x".join(map(str, shape)) not in shapes:
        return f"image is {'x'.join(map(str, shape))} (CxHxW), a size the manifest does not list"
    return None


def _label_problem(value: bytes, num_labels: int | None) -> str | None:
    try:
        datum = parse_datum(value)
    except DecodeError as exc:
        return f"not a Caffe Datum ({exc})"
    n = len(datum.float_data)
    if n == 0:
        return "holds no float_data labels"
    if (datum.channels, datum.height, datum.width) != (n, 1, 1):
        return f"shape {datum.channels}x{datum.height}x{datum.width} does not match its {n} labels"
    if num_labels is not None and n != num_labels:
        return f"holds {n} labels, the manifest says {num_labels}"
    return None


def _file_digests(
    report: VerifyReport, root: Path, manifest: dict[str, Any] | None
) -> tuple[dict[bytes, tuple[str, bytes]] | None, bool]:
    """key -> (algorithm, digest) of every sample of the files whose checksums name a per-record
    digests file (HDF5 shards), or None when none does; and whether a digests file was missing or
    damaged (reported here once: its samples are then checked against their shard's checksum only,
    not named as samples the conversion did not write)."""
    found: dict[bytes, tuple[str, bytes]] | None = None
    incomplete = False
    counts = _shard_counts(manifest)
    for rel, entry in ((manifest or {}).get("checksums") or {}).items():
        name = entry.get("record_digests") if isinstance(entry, dict) else None
        algorithm = entry.get("record_digest") if isinstance(entry, dict) else None
        if not isinstance(name, str) or algorithm not in record_digests.SIZES:
            continue
        path = (root / rel).parent / name
        if path.resolve().parent != root.resolve():
            continue
        only = f"the samples of {rel} were checked against its checksum only"
        if not path.is_file():
            report.notes.append(f"{name}: missing; {only}")
            incomplete = True
            continue
        data = path.read_bytes()
        whole, end = record_digests.whole_entries(data, record_digests.SIZES[algorithm])
        want = counts.get(rel)
        if end != len(data) or (isinstance(want, int) and whole != want):
            held = f"{whole} whole entries" + (
                f" and {len(data) - end} bytes more" if end != len(data) else ""
            )
            of = f", its shard {want} samples" if isinstance(want, int) else ""
            report.add(None, f"{name}: damaged (it holds {held}{of}); {only}")
            incomplete = True
        if found is None:
            found = {}
        found.update(
            (key, (algorithm, value)) for key, value in record_digests.parse(data, algorithm).items()
        )
    return found, incomplete


def _walk_reader(
    report: VerifyReport,
    reader: Any,
    progress: Callable[[int, int], None] | None,
    digests: dict[bytes, tuple[str, bytes]] | None = None,
    incomplete: bool = False,
) -> None:
    """Any backend: every sample loads through its reader and, when encoded, decodes; with per-record
    `digests` (raw pixels + float32 labels, as HDF5 shards keep them), each matches its own. With
    `incomplete` digests (a digests file missing or damaged), a sample without one is not a problem."""
    n = len(reader)
    for i in range(n):
        try:
            sample = reader.sample(i)
            if sample.image.encoded:
                decode_bytes(sample.image.data)
            elif digests is not None:
                found = digests.get(sample.key.encode("utf-8"))
                labels = np.asarray(sample.labels, dtype=np.float32).tobytes()
                if found is None:
                    if not incomplete:
                        report.add(sample.key, "a sample the conversion did not write (not in its digests)")
                elif record_digests.pixels_and_labels(sample.image.data, labels, found[0]) != found[1]:
                    report.add(
                        sample.key, "record digest mismatch: its pixels or labels changed since conversion"
                    )
        except (MtlDataError, OSError) as exc:  # OSError: h5py's word for a damaged file
            report.add(_key_or_position(reader, i), str(exc))
        if progress is not None:
            progress(i + 1, n)
    report.counts["samples"] = n
    report.checked.append("every sample loads and decodes")
    if digests is not None:
        report.checked.append("every record against its own digest")


def _key_or_position(reader: Any, i: int) -> str:
    try:
        return reader.key(i)
    except (MtlDataError, OSError):  # the key itself is unreadable
        return f"sample {i}"


def _shard_counts(manifest: dict[str, Any] | None) -> dict[str, Any]:
    """Shard name -> the samples the manifest says it holds (an HDF5 dataset's; else empty)."""
    files = (manifest or {}).get("files") or {}
    return dict(zip(files.get("shards") or [], files.get("shard_counts") or [], strict=False))


def _check_counts(report: VerifyReport, root: Path, manifest: dict[str, Any], unread: list[Path]) -> None:
    want = manifest.get("count")
    report.counts["manifest"] = want
    # The samples of shards not read (missing or damaged, reported already) are not expected.
    in_shards = _shard_counts(manifest)
    skipped = sum(n for p in unread if isinstance(n := in_shards.get(p.name), int))
    for name in ("images", "labels", "samples"):
        got = report.counts.get(name)
        if got is not None and want is not None and got != want - skipped:
            of_them = f" ({skipped} of them in shards not read)" if skipped else ""
            report.add(
                None, f"the manifest counts {want} samples{of_them} but {got} {name[:-1]} records were found"
            )
    errors = manifest.get("errors") or {}
    if errors.get("file") and inside_path(errors["file"]) and (root / errors["file"]).is_file():
        with open(root / errors["file"], encoding="utf-8") as fh:
            rows = sum(1 for _ in fh)
        if rows != errors.get("count"):
            want_rows = errors.get("count")
            report.add(
                None, f"the manifest counts {want_rows} skipped samples but {errors['file']} lists {rows}"
            )
    report.checked.append("counts match the manifest")


def _check_checksums(
    report: VerifyReport,
    root: Path,
    manifest: dict[str, Any],
    walked: dict[Path, dict[str, Any] | None],
    cut: set[Path],
    unread: list[Path],
) -> None:
    recorded = manifest.get("checksums") or {}
    if not recorded:
        report.notes.append("the manifest records no checksums (written before mtldata recorded them)")
        return
    checked = []
    for rel, want in recorded.items():
        if root / rel in cut:  # its digest covers what was read before the error: not comparable
            report.notes.append(f"{rel}: count and checksum not checked (an LMDB error stopped its walk)")
            continue
        if root / rel in unread and not (root / rel).exists():  # reported missing already
            continue
        checked.append(rel)
        got = walked.get(root / rel) or _checksum_as_recorded(root, rel, want, manifest)
        if got is not None:  # what a recomputed checksum holds; the rest names the per-record digests
            want = {k: v for k, v in want.items() if k in got}
        if got != want:
            found = "nothing" if got is None else ", ".join(f"{k} {v}" for k, v in got.items())
            expected = ", ".join(f"{k} {v}" for k, v in want.items())
            report.add(None, f"{rel}: checksum mismatch: expected {expected}; found {found}")
    if checked:
        report.checked.append(f"checksums ({', '.join(checked)})")


def _file_digest_name(entry: Any) -> str:
    """A file's digest is XXH3-128, or sha256 in a dataset written before mtldata used XXH3 there."""
    return "sha256" if isinstance(entry, dict) and "sha256" in entry else FILE_DIGEST


def _checksum_as_recorded(root: Path, rel: str, want: Any, manifest: dict[str, Any]) -> dict[str, Any] | None:
    """`rel`'s checksum now, made the way its manifest entry `want` was (digests, split region)."""
    return checksum(root / rel, _record_digest(manifest, rel), _file_digest_name(want), _region(want))


def _region(entry: Any) -> tuple[int, int] | None:
    """The byte range a file checksum is split at (`data_region`: an HDF5 shard's pixels), if any."""
    region = entry.get("data_region") if isinstance(entry, dict) else None
    if isinstance(region, list) and len(region) == 2 and all(type(v) is int and v >= 0 for v in region):
        return region[0], region[1]
    return None


def format_report(report: VerifyReport, show: int = 20) -> str:
    """The text `mtldata verify` prints: what was checked, the counts, the first `show` problems."""
    counts = ", ".join(f"{name} {n}" for name, n in report.counts.items() if n is not None)
    lines = [f"dataset:  {report.path}", f"records:  {counts}", f"checked:  {'; '.join(report.checked)}"]
    lines += [f"note:     {note}" for note in report.notes]
    if report.ok:
        lines.append("OK")
        return "\n".join(lines)
    lines.append(f"FAILED: {report.problem_count} problem(s)")
    for problem in report.problems[:show]:
        lines.append(f"  {problem.key or DATASET}: {problem.reason}")
    if report.problem_count > min(show, len(report.problems)):
        lines.append(f"  ... and {report.problem_count - min(show, len(report.problems))} more")
    if report.bad_keys:
        lines.append("first bad keys: " + " ".join(report.bad_keys[:show]))
    return "\n".join(lines)
