"""The `mtldata` command line: a thin click shell over the library.

Each command turns its options into a spec, calls one library function, and turns the library's
own errors into a one-line message and a non-zero exit code.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import click

from mtldata import __version__
from mtldata.errors import MtlDataError

EXIT_ERROR = 1
EXIT_SKIPPED = 3  # the dataset is complete, but some samples were skipped (see errors.tsv)
EXIT_INTERRUPTED = 130


class _Progress:
    """Adapts the library's progress callback to a tqdm bar (or to nothing with --quiet)."""

    def __init__(self, quiet: bool, unit: str, desc: str) -> None:
        self.quiet = quiet
        self.unit = unit
        self.desc = desc
        self.bar: Any = None

    def __call__(self, done: int, total: int) -> None:
        if self.quiet:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit=self.unit, desc=self.desc, dynamic_ncols=True, smoothing=0.1)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _fail(message: str, code: int = EXIT_ERROR) -> None:
    click.echo(f"mtldata: error: {message}", err=True)
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="mtldata")
def main() -> None:
    """Multi-task image data: Caffe-compatible LMDB/HDF5 conversion and PyTorch loading.

    Start with `mtldata demo`, then `mtldata convert LIST -o OUT` on your own list file.
    """


@main.command()
@click.argument("list_file", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    help="Dataset directory to create. [default: ./<list stem>_lmdb]",
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
    help="caffe: OpenCV bilinear as convert_imageset (within ±1 level); antialias: Pillow's smoother downscaling.",
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
    help="Decoding processes. [default: one per core]",
)
@click.option("--strict", is_flag=True, help="Stop at the first bad sample and leave no dataset behind.")
@click.option("--resume", is_flag=True, help="Continue an interrupted conversion from its last commit.")
@click.option(
    "--overwrite", is_flag=True, help="Replace an existing dataset (or interrupted conversion) at --output."
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def convert(
    list_file: Path,
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
    shuffle: bool,
    seed: int,
    workers: int,
    strict: bool,
    resume: bool,
    overwrite: bool,
    quiet: bool,
) -> None:
    """Convert an image list with label vectors into a dataset.

    Each line of LIST_FILE is `<path> <l1> ... <lK>`; the last K tokens are the labels, so paths
    may contain spaces. Blank lines and lines starting with # are ignored.

    \b
    The output directory holds:
      images.lmdb/   one Caffe Datum per image (raw BGR CHW uint8, or encoded bytes)
      labels.lmdb/   one Datum per image with the K labels in float_data, same keys
      manifest.json  counts, shapes, label names and statistics, options, checksums
      errors.tsv     the skipped lines (line, path, reason)

    Bad lines and images are skipped and reported (exit code 3) unless --strict.
    Work happens in OUTPUT.partial/ and is renamed into place when complete;
    an interrupted run continues with --resume.
    """
    from mtldata.convert import ConvertSpec
    from mtldata.convert import convert as run_convert
    from mtldata.image import ImageOptions

    output = output or Path(f"{list_file.stem}_lmdb")
    names = tuple(n.strip() for n in label_names.split(",")) if label_names else ()
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
        ),
        check_size=check_size,
        shuffle=shuffle,
        seed=seed,
        workers=workers,
        strict=strict,
        resume=resume,
        overwrite=overwrite,
    )
    progress = _Progress(quiet, "img", "convert")
    try:
        result = run_convert(spec, progress)
    except KeyboardInterrupt:
        progress.close()
        _fail(
            f"interrupted; continue with the same command plus --resume ({output}.partial keeps "
            f"what was committed)",
            EXIT_INTERRUPTED,
        )
    except MtlDataError as exc:
        progress.close()
        _fail(str(exc))
    progress.close()
    rate = result.count / result.seconds if result.seconds > 0 else float("inf")
    click.echo(
        f"wrote {result.count} samples to {result.output} in {result.seconds:.1f} s ({rate:.0f} img/s)"
    )
    if result.skipped:
        click.echo(
            f"skipped {result.skipped} sample(s); all listed in {result.output / 'errors.tsv'}:", err=True
        )
        for err in result.errors[:10]:
            where = f"{list_file}:{err.line}"
            click.echo(f"  {where}: {err.path + ': ' if err.path else ''}{err.reason}", err=True)
        if result.skipped > 10:
            click.echo(f"  ... and {result.skipped - 10} more", err=True)
        sys.exit(EXIT_SKIPPED)


def format_info(info: dict[str, Any]) -> str:
    """The text `mtldata info` prints for a dataset summary."""
    lines = [
        f"dataset:   {info['path']}",
        f"format:    {info['backend']} ({info['layout']})",
        f"samples:   {info['count']}",
    ]
    image = info.get("image") or {}
    if image.get("shape"):
        lines.append(f"image:     {'x'.join(map(str, image['shape']))} (CxHxW)")
    elif image.get("shapes"):
        shapes = ", ".join(f"{s} ({n})" for s, n in list(image["shapes"].items())[:5])
        more = " ..." if len(image["shapes"]) > 5 else ""
        lines.append(f"images:    {len(image['shapes'])} sizes: {shapes}{more}")
    if image.get("formats"):
        lines.append("encoding:  " + ", ".join(f"{f} ({n})" for f, n in image["formats"].items()))
    if image.get("color_order"):
        lines.append(f"colour:    {image['color_order']}, {image.get('layout', 'CHW')}")
    lines.append(f"labels:    K={info.get('num_labels')}")
    stats = info.get("label_stats") or []
    if stats:
        width = max(len(s["name"]) for s in stats)
        lines.append(f"  {'name':<{width}}  {'min':>10}  {'max':>10}  {'mean':>10}")
        for s in stats:
            lines.append(f"  {s['name']:<{width}}  {s['min']:>10.4g}  {s['max']:>10.4g}  {s['mean']:>10.4g}")
    errors = info.get("errors")
    if errors is not None:
        lines.append(
            f"errors:    {errors['count']} skipped sample(s)"
            + (f", listed in {errors['file']}" if errors["count"] else "")
        )
    if info.get("source"):
        lines.append(
            f"source:    {info['source']['list_file']} (sha256 {info['source']['list_sha256'][:12]}...)"
        )
    return "\n".join(lines)


@main.command()
@click.argument("dataset", type=click.Path(path_type=Path, exists=True))
@click.option(
    "--labels",
    type=click.Path(path_type=Path, exists=True),
    help="A float-label LMDB to pair with an image LMDB (Caffe's multi-label layout).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def info(dataset: Path, labels: Path | None, as_json: bool) -> None:
    """Summarise a dataset: count, shapes, K, label names and statistics, errors.

    DATASET is an mtldata dataset directory, a Caffe LMDB made by convert_imageset, or an image
    LMDB given together with --labels.
    """
    from mtldata.info import dataset_info

    try:
        summary = dataset_info(dataset, labels)
    except MtlDataError as exc:
        _fail(str(exc))
    if as_json:
        import json

        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(format_info(summary))


@main.command()
@click.option(
    "-d",
    "--directory",
    type=click.Path(path_type=Path, file_okay=False),
    help="Where to write the sample set and dataset. [default: a new temporary folder]",
)
@click.option(
    "-n",
    "--count",
    type=click.IntRange(min=1),
    default=200,
    show_default=True,
    help="Number of sample images.",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def demo(directory: Path | None, count: int, quiet: bool) -> None:
    """Make a small multi-task sample set (real JPEGs + a list file), convert it and summarise it."""
    from mtldata.convert import ConvertSpec
    from mtldata.convert import convert as run_convert
    from mtldata.info import dataset_info
    from mtldata.sample import LABEL_NAMES, make_sample_set

    directory = directory or Path(tempfile.mkdtemp(prefix="mtldata-demo-"))
    list_file = make_sample_set(directory, count=count)
    click.echo(f"sample set: {count} images and {list_file}")
    output = directory / "demo_lmdb"
    spec = ConvertSpec(
        list_file=list_file,
        output=output,
        label_names=LABEL_NAMES,
        overwrite=True,
        workers=min(2, os.cpu_count() or 1),
    )
    progress = _Progress(quiet, "img", "convert")
    try:
        result = run_convert(spec, progress)
    except MtlDataError as exc:
        progress.close()
        _fail(str(exc))
    progress.close()
    click.echo(f"converted {result.count} samples in {result.seconds:.1f} s -> {output}")
    click.echo(format_info(dataset_info(output)))


if __name__ == "__main__":
    main()
