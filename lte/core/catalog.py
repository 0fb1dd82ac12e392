"""The public editing datasets lte knows by name, found under the datasets folder (`Settings.datasets_dir`:
LTE_DATASETS or --datasets-dir). Anything else given as a dataset is a file path (or a hub name)."""

from __future__ import annotations

from pathlib import Path

from lte.core.errors import InputError
from lte.core.settings import Settings

KNOWN = {
    "counterfact": "counterfact_easyedit/counterfact-edit.json",
    "zsre": "knowedit/ZsRE-test-all.json",
    "mquake": "mquake/AKEW-MQuAKE-CF-354.json",
    "wiki_counterfact": "knowedit/wiki_counterfact_train_cf.json",
    "wiki_recent": "knowedit/wiki_recent_train.json",
}
# facts a model knows, not edits: `lte trace --dataset` averages causal traces over them
FACTS = {"known_1000": "rome_knowns/known_1000.json"}
QUICK = ["counterfact", "zsre", "mquake"]  # the default bench grid; the others by name
# training splits, for `--data` of `lte align`, `lte scope train`, `lte train` and `lte edit calibrate`
TRAINING = {
    "counterfact-train": "counterfact_easyedit/counterfact-train.json",
    "zsre-train": "zsre_mend/zsre_mend_train-1k.json",
}
DATA_HELP = ("training files in any format lte reads (training splits only): a path; a known name (counterfact-train, "
             "zsre-train) or file name (counterfact-train.json) under the datasets folder; or a hub id owner/name")
# where each known file is published (repository, commit, path), for the error that says how to get one
ORIGIN = "https://raw.githubusercontent.com/Jometeorie/KnowledgeSpread/51d7402617c2e52bde0dc11b76e400c3725a181a/data/"
DOWNLOADS = {
    "counterfact_easyedit/counterfact-train.json": ORIGIN + "counterfact/counterfact-train.json",
    "counterfact_easyedit/counterfact-edit.json": ORIGIN + "counterfact/counterfact-edit.json",
    "zsre_mend/zsre_mend_train-1k.json": ORIGIN + "zsre/zsre_mend_train-1k.json",
}


def dataset_path(name: str, settings: Settings) -> tuple[str, Path]:
    """(label, path) for a known name, `label=path`, or a path (its own label)."""
    if "=" in name:
        label, path = name.split("=", 1)
        return label, Path(path)
    if name not in KNOWN and name not in FACTS:
        return name, Path(name)
    return name, known_path(name, settings)


def known_path(name: str, settings: Settings) -> Path:
    relative = KNOWN.get(name) or FACTS[name]
    folder = settings.datasets_dir
    if folder is None:
        raise InputError(f"dataset '{name}': no datasets folder found; point LTE_DATASETS or --datasets-dir at the "
                         f"folder holding {relative}")
    return folder / relative


def shared_file(relative: str, settings: Settings) -> Path:
    """A file under the datasets folder by its relative path (e.g. a training split no name points at)."""
    folder = settings.datasets_dir
    if folder is None:
        raise InputError(f"{relative}: no datasets folder found; point LTE_DATASETS or --datasets-dir at it")
    return folder / relative


def data_files(names: list[str], settings: Settings, flag: str = "--data") -> list[str]:
    """Training files from what a user typed: an existing path; a known name (`counterfact-train`, `zsre-train`,
    or an evaluation name) or a known file's own name (`counterfact-train.json`) under the datasets folder; or a
    hub id (`owner/name`, read with `datasets.load_dataset`). Anything else is refused, saying where to get it."""
    return [str(_data_file(name, settings, flag)) for name in names]


def _data_file(name: str, settings: Settings, flag: str) -> Path | str:
    if Path(name).is_file():
        return Path(name)
    relative = TRAINING.get(name) or KNOWN.get(name) or _by_file_name(name)
    if relative and settings.datasets_dir is not None and (settings.datasets_dir / relative).is_file():
        return settings.datasets_dir / relative
    if relative is None and "/" in name and not name.startswith((".", "/")) and not Path(name).suffix:
        return name  # a hub id
    known = ", ".join([*TRAINING, *KNOWN])
    where = (f"; {relative} was not found under the datasets folder ({settings.datasets_dir or 'none found'}: set "
             f"LTE_DATASETS or --datasets-dir)" + (f"; download it with: curl -L --create-dirs -o "
                                                    f"DATASETS/{relative} {DOWNLOADS[relative]}"
                                                    if relative in DOWNLOADS else "")) if relative else ""
    raise InputError(f"{flag} {name}: no such file{where} (known names: {known}; or a hub id owner/name)")


def _by_file_name(name: str) -> str | None:
    """The known relative path whose file name is `name` ('counterfact-train.json'), if any."""
    return next((rel for rel in [*TRAINING.values(), *KNOWN.values()] if Path(rel).name == name), None)
