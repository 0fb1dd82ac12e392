import json

import pytest

from lte.core import files


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "cell.json"
    files.write_json(path, {"metrics": 1})
    with pytest.raises(TypeError), files.atomic_path(path) as tmp:
        tmp.write_text('{"metr')  # half a file, then the writer dies
        raise TypeError("interrupted")
    assert json.loads(path.read_text()) == {"metrics": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["cell.json"]


def test_a_folder_is_replaced_whole(tmp_path):
    out = tmp_path / "scope"
    with files.atomic_path(out, directory=True) as staging:
        (staging / "a").write_text("old")
    with pytest.raises(RuntimeError), files.atomic_path(out, directory=True) as staging:
        (staging / "b").write_text("new, unfinished")
        raise RuntimeError
    assert [p.name for p in out.iterdir()] == ["a"] and len(list(tmp_path.iterdir())) == 1
    with files.atomic_path(out, directory=True) as staging:
        (staging / "b").write_text("new")
    assert [p.name for p in out.iterdir()] == ["b"] and len(list(tmp_path.iterdir())) == 1


def test_every_cache_and_resume_writer_goes_through_the_helper():
    """No module writes a file in place: text through `files.write_*`, torch files inside `files.atomic_path`."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    offenders = []
    for p in (path for folder in ("lte", "retrieval", "baselines") for path in (root / folder).rglob("*.py")):
        lines = p.read_text().splitlines()
        for i, line in enumerate(lines):
            in_place = re.search(r"(?<!files)\.write_text\(", line) or re.search(r"open\([^)]*[\"']w", line)
            unguarded = "torch.save(" in line and "atomic_path" not in lines[i - 1]
            if (in_place and "atomic_path" not in line or unguarded) and p.name != "files.py":
                offenders.append(f"{p.relative_to(root)}:{i + 1}")
    assert offenders == []


def test_results_files_write_this_machines_paths_as_the_variables_that_locate_them(tmp_path, monkeypatch):
    from pathlib import Path

    from lte.core.settings import Settings

    monkeypatch.setenv("LTE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LTE_DATASETS", str(tmp_path / "data"))
    settings = Settings.from_env()
    text = f"--model {tmp_path}/home/aligned --dataset {tmp_path}/data/x.json --out {Path.home()}/cells"
    assert settings.portable(text) == "--model $LTE_HOME/aligned --dataset $LTE_DATASETS/x.json --out ~/cells"
