"""The public editing datasets lte knows by name, found under the datasets folder (`Settings.datasets_dir`:
LTE_DATASETS or --datasets-dir). Anything else given as a dataset is a file path (or a hub name)."""

from __future__ import annotations

from pathlib import Path

from lte.errors import InputError
from lte.settings import Settings

KNOWN = {
    "counterfact": "counterfact_easyedit/counterfact-edit.json",
    "zsre": "knowedit/ZsRE-test-all.json",
    "mquake": "mquake/AKEW-MQuAKE-CF-354.json",
    "wiki_counterfact": "knowedit/wiki_counterfact_train_cf.json",
    "wiki_recent": "knowedit/wiki_recent_train.json",
}
QUICK = ["counterfact", "zsre", "mquake"]  # the default bench grid; the others by name


def dataset_path(name: str, settings: Settings) -> tuple[str, Path]:
    """(label, path) for a known name, `label=path`, or a path (its own label)."""
    if "=" in name:
        label, path = name.split("=", 1)
        return label, Path(path)
    if name not in KNOWN:
        return name, Path(name)
    return name, known_path(name, settings)


def known_path(name: str, settings: Settings) -> Path:
    folder = settings.datasets_dir
    if folder is None:
        raise InputError(f"dataset '{name}': no datasets folder found; point LTE_DATASETS or --datasets-dir at the "
                         f"folder holding {KNOWN[name]}")
    return folder / KNOWN[name]


def shared_file(relative: str, settings: Settings) -> Path:
    """A file under the datasets folder by its relative path (e.g. a training split no name points at)."""
    folder = settings.datasets_dir
    if folder is None:
        raise InputError(f"{relative}: no datasets folder found; point LTE_DATASETS or --datasets-dir at it")
    return folder / relative
