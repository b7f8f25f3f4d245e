"""Dataset summaries for `mtldata info`: counts, shapes, labels and recorded errors."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mtldata.storage.backends import open_reader, read_manifest
from mtldata.storage.manifest import LabelStats


def dataset_info(
    path: str | Path, labels: str | Path | None = None, progress: Callable[[int, int], None] | None = None
) -> dict[str, Any]:
    """Summarise a dataset. mtldata datasets answer from their manifest; others are scanned."""
    path = Path(path)
    reader = open_reader(path, labels)
    try:
        info: dict[str, Any] = {"path": str(path), **reader.describe(), "count": len(reader)}
        manifest = read_manifest(path) if path.is_dir() and labels is None else None
        if manifest is not None:
            info.update(
                num_labels=manifest["num_labels"],
                label_names=manifest["label_names"],
                image=manifest["image"],
                label_stats=manifest["label_stats"],
                errors=manifest["errors"],
                source=manifest["source"],
                options=manifest["options"],
                complete=manifest.get("complete", False),
            )
            return info
        stats = LabelStats()
        shapes: Counter[str] = Counter()
        formats: Counter[str] = Counter()
        n = len(reader)
        for i in range(n):
            sample = reader.sample(i)
            stats.add(sample.labels)
            shapes["x".join(map(str, sample.image.shape)) if not sample.image.encoded else "encoded"] += 1
            formats[sample.image.format] += 1
            if progress is not None:
                progress(i + 1, n)
        k = len(stats.sums)
        names = [f"label_{j}" for j in range(k)]
        single = next(iter(shapes)) if len(shapes) == 1 and "encoded" not in shapes else None
        info.update(
            num_labels=k,
            label_names=names,
            image={
                "shape": [int(v) for v in single.split("x")] if single else None,
                "shapes": dict(shapes),
                "formats": dict(formats),
            },
            label_stats=stats.summary(names),
            errors=None,
        )
        return info
    finally:
        reader.close()
