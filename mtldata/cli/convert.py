"""`mtldata convert` and `mtldata merge`: list files into datasets, converted parts into one."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from mtldata.cli.dataset_path import DatasetPath
from mtldata.cli.report import EXIT_SKIPPED, Progress, fail, one_line_failures
from mtldata.errors import MtlDataError, OutputError, shorten
from mtldata.storage.read_limits import DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_PIXELS


@click.command()
@click.argument("list_file", required=False, type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--labels-from",
    "labels_from",
    multiple=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="Another list or CSV whose label columns are joined on the image path (repeatable). Samples "
    "come in the first source's order, then paths only later sources name, as they first appear; "
    "a label no source gives is missing (needs --allow-missing).",
)
@click.option(
    "--allow-missing",
    is_flag=True,
    help="Store a missing label (nan, NA, an empty CSV cell) as NaN instead of rejecting the line; "
    "losses and metrics skip it.",
)
@click.option(
    "--path-column", help="CSV/TSV: the header name of the image path column. [default: the first column]"
)
@click.option(
    "--columns",
    "columns_opt",
    help="Comma-separated label column names to keep, in this order (from a CSV header or a list's "
    "`# path name...` line). [default: all]",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    help="Dataset directory to create (a new folder; never the list's or --root's folder). "
    "[default: ./<list stem>_lmdb, ./<list stem>_hdf5 with --backend hdf5; a part of --num-shards S "
    "adds .part-IIIII-of-SSSSS]",
)
@click.option(
    "--root",
    type=click.Path(path_type=Path, file_okay=False),
    help="Folder the list's paths are relative to (convert_imageset's ROOTFOLDER). [default: the list file's folder]",
)
@click.option(
    "--num-labels",
    "-k",
    type=click.IntRange(min=1),
    help="Labels per line (K). [default: inferred from the first data line]",
)
@click.option("--label-names", help="Comma-separated names of the K labels, stored in the manifest.")
@click.option("--gray", is_flag=True, help="Store single-channel images (convert_imageset --gray).")
@click.option(
    "--resize-width",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Resize width; applied only when both sizes are > 0.",
)
@click.option(
    "--resize-height",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Resize height; applied only when both sizes are > 0.",
)
@click.option(
    "--resize-mode",
    type=click.Choice(["caffe", "antialias"]),
    default="caffe",
    show_default=True,
    help="caffe: bit-identical to convert_imageset's OpenCV INTER_LINEAR resize; antialias: Pillow's "
    "smoother downscaling (not Caffe-identical).",
)
@click.option("--check-size", is_flag=True, help="Skip images whose size differs from the first image's.")
@click.option(
    "--encoded", is_flag=True, help="Store encoded image bytes (the original file when no resize is asked)."
)
@click.option(
    "--encode-type",
    type=click.Choice(["jpg", "png"]),
    help="Re-encode to this format where the file is not already in it (implies --encoded).",
)
@click.option(
    "--validate",
    type=click.Choice(["decode", "header"]),
    default="decode",
    show_default=True,
    help="How --encoded checks a JPEG or PNG it stores as it is: decode (all of the compressed data; a JPEG "
    "at 1/8 scale, which finds the same damage) or header "
    "(trusted files only: reads the header and checks the end marker; catches a file that is not an "
    "image, a broken header and a truncated file, and in a PNG any damage (every chunk's CRC is "
    "checked), but MISSES damage in the middle of a JPEG's data).",
)
@click.option("--shuffle", is_flag=True, help="Shuffle the samples; keys are numbered after shuffling.")
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed of --shuffle (the same seed gives the same order).",
)
@click.option(
    "--workers",
    "-j",
    type=click.IntRange(min=0),
    default=0,
    help="Decoding processes. [default: one per core this process may run on (its CPU affinity)]",
)
@click.option("--strict", is_flag=True, help="Stop at the first bad sample and leave no dataset behind.")
@click.option("--resume", is_flag=True, help="Continue an interrupted conversion from its last commit.")
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace an existing dataset mtldata made (or its interrupted conversion) at --output; "
    "anything else there is refused and left untouched.",
)
@click.option(
    "--backend",
    type=click.Choice(["lmdb", "hdf5"]),
    default="lmdb",
    show_default=True,
    help="lmdb: an image LMDB + a label LMDB (two Caffe Data layers). hdf5: part-NNNNN.h5 files + "
    "hdf5_list.txt (one Caffe HDF5Data layer; needs one image size, see --resize-*).",
)
@click.option(
    "--shard-size",
    type=click.IntRange(min=1),
    help="hdf5: samples per .h5 file. [default: as many as fit in 512 MiB of `data`]",
)
@click.option(
    "--hdf5-dtype",
    type=click.Choice(["float32", "uint8"]),
    help="hdf5: dtype of `data`, which holds the plain pixel values 0..255 (BGR, no mean, no scale). "
    "float32 is what every Caffe's HDF5Data reads; uint8 is 4x smaller and faster to write, and BVLC "
    "Caffe since 2015 (rc3, 1.0) reads it as the same floats; older Caffe forks reject integer data. "
    "[default: float32]",
)
@click.option(
    "--compression",
    type=click.Choice(["gzip", "lzf"]),
    help="hdf5: compress in chunks of whole samples, bytes shuffled first (HDF5's shuffle filter). "
    "gzip is readable by Caffe and compresses in one thread per core; lzf runs in one thread and only "
    "h5py-based readers (mtldata) have its filter. Photos compress little and slowly (about 100 "
    "images/s for 256 px on 2 cores). [default: none]",
)
@click.option(
    "--tasks",
    "tasks_file",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="tasks.toml naming each task's label columns; used by --task-datasets and --emit-prototxt.",
)
@click.option(
    "--task-datasets",
    is_flag=True,
    help="hdf5: also write one (N, k) dataset per task of --tasks, named after the task, so an "
    "HDF5Data layer can feed each task by its top name.",
)
@click.option(
    "--num-shards",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Split the conversion into this many parts (for a Slurm array or an indexed job); "
    "join them with `mtldata merge`.",
)
@click.option(
    "--shard-index",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Which part to write, 0..num-shards-1: a contiguous range of the (shuffled) samples, "
    "keyed exactly as in a single run.",
)
@click.option(
    "--emit-prototxt",
    is_flag=True,
    help="Also write OUTPUT/train_val.prototxt for stock Caffe from --tasks: the data layers, a Slice, "
    "a small trunk, a head and a loss layer (with loss_weight) per task.",
)
@click.option(
    "--max-file-mb",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_FILE_BYTES >> 20,
    show_default=True,
    help="An image file larger than this (MiB) is a bad sample, never read.",
)
@click.option(
    "--max-pixels",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_PIXELS,
    show_default=True,
    help="An image of more pixels (width x height, from its header) is a bad sample, never decoded "
    "(decompression bombs).",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def convert(
    list_file: Path | None,
    output: Path | None,
    root: Path | None,
    num_labels: int | None,
    label_names: str | None,
    gray: bool,
    resize_width: int,
    resize_height: int,
    resize_mode: str,
    check_size: bool,
    encoded: bool,
    encode_type: str | None,
    validate: str,
    shuffle: bool,
    seed: int,
    workers: int,
    strict: bool,
    resume: bool,
    overwrite: bool,
    quiet: bool,
    backend: str = "lmdb",
    shard_size: int | None = None,
    hdf5_dtype: str | None = None,
    compression: str | None = None,
    tasks_file: Path | None = None,
    task_datasets: bool = False,
    num_shards: int = 1,
    shard_index: int = 0,
    emit_prototxt: bool = False,
    max_file_mb: int = DEFAULT_MAX_FILE_BYTES >> 20,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    labels_from: tuple[Path, ...] = (),
    allow_missing: bool = False,
    path_column: str | None = None,
    columns_opt: str | None = None,
) -> None:
    """Convert an image list with label vectors into a dataset.

    Each line of LIST_FILE is `<path> <l1> ... <lK>`; the last K tokens are the labels, so paths
    may contain spaces. Blank lines and lines starting with # are ignored; a first line
    `# path name1 ... nameK` names the labels. A LIST_FILE ending in .csv or .tsv is read as CSV/TSV
    with a header (see --path-column, --columns); more sources join with --labels-from.

    \b
    The output directory holds:
      images.lmdb/   one Caffe Datum per image (raw BGR CHW uint8, or encoded bytes)
      labels.lmdb/   one Datum per image with the K labels in float_data, same keys
      manifest.json  counts, shapes, label names and statistics, options, checksums
      errors.tsv     the skipped lines (line, path, reason)
    With --backend hdf5, instead of the two LMDBs:
      part-NNNNN.h5  `data` (N,C,H,W), `label` (N,K) float32, `key`; one dataset per task
                     with --task-datasets
      hdf5_list.txt  the HDF5Data layer's `source` (absolute paths of the .h5 files)

    With --num-shards S --shard-index I only part I of S is written (run all S parts
    anywhere, in any order), then `mtldata merge PART... -o OUT` joins them.

    Bad lines and images are skipped and reported (exit code 3) unless --strict.
    Work happens in OUTPUT.partial/ and is renamed into place when complete;
    an interrupted run continues with --resume.
    """
    from mtldata.convert.pipeline import ConvertSpec
    from mtldata.convert.pipeline import convert as run_convert
    from mtldata.storage.image import ImageOptions

    if list_file is None:
        if not labels_from:
            fail("give a LIST_FILE or at least one --labels-from source")
        list_file, labels_from = labels_from[0], labels_from[1:]
    if emit_prototxt and (tasks_file is None or num_shards > 1):
        fail(
            "--emit-prototxt needs --tasks (the tasks to write loss layers for) and a single-part conversion"
        )
    backend_options = _backend_options(
        backend,
        shard_size,
        hdf5_dtype,
        compression,
        tasks_file if task_datasets or not emit_prototxt else None,  # --emit-prototxt reads it on its own
        task_datasets,
        num_labels,
    )
    if output is None:
        output = Path(f"{list_file.stem}_{backend}")
        if num_shards > 1:
            output = Path(f"{output}.part-{shard_index:05d}-of-{num_shards:05d}")
    names = tuple(n.strip() for n in label_names.split(",")) if label_names else ()
    caffe_tasks = None
    stored_as: dict[int, float] = {}
    forbidden: dict[int, str] = {}
    if emit_prototxt and allow_missing:
        from mtldata.convert.caffe_missing import caffe_missing
        from mtldata.tasks import load_tasks

        try:
            plan = caffe_missing(load_tasks(tasks_file, num_labels=num_labels))
        except (MtlDataError, ValueError) as exc:
            fail(str(exc))
        caffe_tasks, stored_as, forbidden = plan.tasks, plan.stored_as, plan.forbidden
    spec = ConvertSpec(
        list_file=list_file,
        output=output,
        root=root,
        num_labels=num_labels,
        label_names=names,
        image=ImageOptions(
            gray=gray,
            resize_width=resize_width,
            resize_height=resize_height,
            resize_mode=resize_mode,
            encoded=encoded or bool(encode_type),
            encode_type=encode_type or "",
            max_file_bytes=max_file_mb << 20,
            max_pixels=max_pixels,
            validate=validate,
        ),
        check_size=check_size,
        shuffle=shuffle,
        seed=seed,
        workers=workers,
        strict=strict,
        resume=resume,
        overwrite=overwrite,
        backend=backend,
        backend_options=backend_options,
        num_shards=num_shards,
        shard_index=shard_index,
        labels_from=tuple(labels_from),
        allow_missing=allow_missing,
        path_column=path_column,
        columns=tuple(c.strip() for c in columns_opt.split(",")) if columns_opt else (),
        missing_stored_as=stored_as,
        missing_forbidden=forbidden,
    )
    if tasks_file is not None:
        _check_list_labels(list_file, tasks_file, num_labels)
    progress = Progress(quiet, "img", "convert")
    with one_line_failures(
        interrupted=f"interrupted; continue with the same command plus --resume ({output}.partial keeps "
        f"what was committed)",
        closing=progress,
        # a write the library did not name (it names its own)
        os_error=lambda exc: str(OutputError.from_os_error(exc, output)),
    ):
        result = run_convert(spec, progress)
    progress.close()
    before = f" ({result.resumed} of them before the resume)" if result.resumed else ""
    click.echo(
        f"wrote {result.count} sample{'s' * (result.count != 1)} to {result.output}{before} "
        f"in {result.seconds:.1f} s ({result.rate:.0f} img/s)"
    )
    if emit_prototxt:
        from mtldata.caffenet.multitask import write_train_val
        from mtldata.tasks import load_tasks

        try:
            taskset = load_tasks(tasks_file, num_labels=result.manifest["num_labels"])
            note = ""
            if caffe_tasks is not None:
                taskset = caffe_tasks
                ignores = ", ".join(f"{t.name}: {t.ignore_label}" for t in taskset if t.kind != "euclidean")
                note = f"Missing labels are stored as the ignore_label of their task ({ignores})."
            click.echo(f"wrote {write_train_val(result.output, taskset, note=note)}")
        except (MtlDataError, ValueError) as exc:
            fail(str(exc))
        except OSError as exc:
            fail(str(OutputError.from_os_error(exc, result.output)))
    if result.skipped:
        click.echo(
            f"skipped {result.skipped} sample(s); all listed in {result.output / 'errors.tsv'}:", err=True
        )
        for err in result.errors[:10]:
            where = f"{list_file}:{err.line}"
            click.echo(f"  {where}: {shorten(err.path) + ': ' if err.path else ''}{err.reason}", err=True)
        if result.skipped > 10:
            click.echo(f"  ... and {result.skipped - 10} more", err=True)
        sys.exit(EXIT_SKIPPED)


def _backend_options(
    backend: str,
    shard_size: int | None,
    hdf5_dtype: str | None,
    compression: str | None,
    tasks_file: Path | None,
    task_datasets: bool,
    num_labels: int | None,
) -> dict[str, Any]:
    """`convert`'s backend-specific options as the writer's `extra`; usage errors exit here."""
    hdf5_only = [
        flag
        for flag, value in (
            ("--shard-size", shard_size),
            ("--hdf5-dtype", hdf5_dtype),
            ("--compression", compression),
            ("--task-datasets", task_datasets),
        )
        if value
    ]
    if backend != "hdf5" and hdf5_only:
        fail(f"{', '.join(hdf5_only)}: only for --backend hdf5")
    if task_datasets != (tasks_file is not None):
        fail(
            "--task-datasets needs --tasks tasks.toml (which label columns each task owns)"
            if task_datasets
            else "--tasks is used by --task-datasets (--backend hdf5) or --emit-prototxt; add one or drop --tasks"
        )
    if backend != "hdf5":
        return {}
    options: dict[str, Any] = {"hdf5_dtype": hdf5_dtype or "float32"}
    if shard_size:
        options["shard_size"] = shard_size
    if compression:
        options["compression"] = compression
    if tasks_file is not None:
        from mtldata.storage.backends.hdf5 import task_datasets_option
        from mtldata.tasks import load_tasks

        try:
            options["task_datasets"] = task_datasets_option(load_tasks(tasks_file, num_labels=num_labels))
        except MtlDataError as exc:
            fail(str(exc))
    return options


def _check_list_labels(list_file: Path, tasks_file: Path, num_labels: int | None) -> None:
    """--tasks: every label of the list against the tasks, before any work (NaN, missing, passes)."""
    from mtldata.storage.label_check import check_list_labels
    from mtldata.storage.listfile import summarize_list
    from mtldata.tasks import load_tasks

    try:
        k = num_labels or summarize_list(list_file).num_labels
        check_list_labels(list_file, load_tasks(tasks_file, num_labels=k), tasks_file=tasks_file)
    except (MtlDataError, OSError, ValueError) as exc:  # ValueError: summarize_list's "no labels"
        fail(str(exc))


@click.command()
@click.argument("parts", nargs=-1, required=True, type=DatasetPath(file_okay=False))
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(path_type=Path),
    help="Dataset directory to create (a new folder, not one holding the parts).",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace an existing dataset mtldata made (or an interrupted merge) at --output; "
    "anything else there is refused and left untouched.",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def merge(parts: tuple[Path, ...], output: Path, overwrite: bool, quiet: bool) -> None:
    """Join the parts of a sharded conversion into one dataset.

    PARTS are the outputs of `mtldata convert ... --num-shards S --shard-index I` for every I in
    0..S-1 (in any order; a shell glob is fine). They must come from the same list and options.
    The result equals a single conversion record for record: the same keys, order and values
    (for LMDB one image LMDB and one label LMDB that Caffe reads; for HDF5 the shards re-cut to
    --shard-size). It is built in OUTPUT.partial/ and renamed into place when complete.
    """
    from mtldata.cli.heap import keep_freed_heap
    from mtldata.convert.merge import merge as run_merge

    keep_freed_heap()  # a third of merge's CPU otherwise goes to faulting in freed pages again
    progress = Progress(quiet, "img", "merge")
    try:
        result = run_merge(parts, output, overwrite=overwrite, progress=progress)
    except MtlDataError as exc:
        progress.close()
        fail(str(exc))
    except OSError as exc:
        progress.close()
        fail(str(OutputError.from_os_error(exc, output)))
    progress.close()
    click.echo(
        f"merged {result.parts} parts, {result.count} samples, into {result.output} in {result.seconds:.1f} s"
    )
    if result.skipped:
        click.echo(
            f"{result.skipped} sample(s) were skipped when the parts were converted; "
            f"listed in {result.output / 'errors.tsv'}",
            err=True,
        )


COMMANDS = (convert, merge)
