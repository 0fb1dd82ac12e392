"""Where lte keeps its files and which model/store it uses, resolved once from flags and environment."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_EMBEDDER = "all-minilm-l6-v2"
# Where the public editing datasets are looked for when LTE_DATASETS / --datasets-dir is not given: a `shared/datasets`
# folder in or beside the working directory (the layout of a checkout next to its data).
DATASET_DIR_CANDIDATES = ("shared/datasets", "../shared/datasets")


@dataclass(frozen=True)
class Settings:
    """Global options shared by every subcommand.

    home: cache root for converted models, covariance statistics, checkpoints (LTE_HOME, default ~/.cache/lte).
    model: model spec passed to `load_model` (LTE_MODEL, default the bundled SmolLM2-135M-Instruct).
    store: directory of the embedded Chroma edit store (LTE_STORE, default HOME/store).
    chroma_url: a running Chroma server to use instead of the embedded store (LTE_CHROMA_URL).
    records: the database of edit records, as a SQLAlchemy URL (LTE_RECORDS_URL): `postgresql://...` for processes on
    several machines sharing one store; default an embedded store's own `records.sqlite3`, or with `chroma_url` a
    SQLite file under HOME/records (processes on this machine only).
    collection: the named edit set inside the store (LTE_COLLECTION, default "edits").
    datasets: the folder holding the public datasets `lte eval`/`lte bench` know by name (LTE_DATASETS; default
    the first of DATASET_DIR_CANDIDATES that exists, relative to the working directory).
    device, dtype: where and in which precision models run (LTE_DEVICE, LTE_DTYPE; 'auto': CUDA in bfloat16 where
    available, else the CPU in float32 — see `lte.core.models.resolve_device`/`resolve_dtype`).
    chat_template: a Jinja chat template file for models that ship none (LTE_CHAT_TEMPLATE); `lte align` saves it
    with the aligned model.
    """

    home: Path
    model: str = DEFAULT_MODEL
    store: Path | None = None
    chroma_url: str | None = None
    records: str | None = None
    collection: str = "edits"
    datasets: Path | None = None
    device: str = "auto"
    dtype: str = "auto"
    chat_template: Path | None = None

    @property
    def load_options(self) -> dict:
        """`load_model` keyword arguments: every model a command loads runs where the user said, with the chat
        template the user gave."""
        options = {"device": self.device, "dtype": self.dtype}
        return options | ({"chat_template": self.chat_template} if self.chat_template else {})

    @property
    def datasets_dir(self) -> Path | None:
        if self.datasets is not None:
            return self.datasets
        return next((Path(c) for c in DATASET_DIR_CANDIDATES if Path(c).is_dir()), None)

    def portable(self, text: str) -> str:
        """`text` with this machine's locations written as the variables that locate them ($LTE_HOME,
        $LTE_DATASETS, <site-packages>, ~): results files read the same on every machine."""
        import site

        places = [(str(self.home), "$LTE_HOME"), (str(Path.home()), "~")]
        if self.datasets_dir is not None:
            places.append((str(Path(self.datasets_dir).resolve()), "$LTE_DATASETS"))
        places += [(path, "<site-packages>") for path in site.getsitepackages()]
        for place, name in sorted(places, key=lambda pair: -len(pair[0])):
            if place not in ("", "/", "."):
                text = text.replace(place, name)
        return text

    @property
    def records_url(self) -> str | None:
        if self.records or not self.chroma_url:
            return self.records
        from urllib.parse import urlparse

        server = urlparse(self.chroma_url)
        name = f"{server.hostname or 'localhost'}-{server.port or 8000}".replace(":", "-")
        (self.home / "records").mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{self.home / 'records' / name}.sqlite3"

    @property
    def store_dir(self) -> Path:
        return self.store if self.store is not None else self.home / "store"

    @classmethod
    def from_env(cls, home: str | None = None, model: str | None = None, store: str | None = None,
                 chroma_url: str | None = None, records: str | None = None, collection: str | None = None,
                 datasets: str | None = None, device: str | None = None, dtype: str | None = None,
                 chat_template: str | None = None) -> Settings:
        """Flags win over environment variables, which win over defaults."""
        env = os.environ
        home_path = Path(home or env.get("LTE_HOME") or Path.home() / ".cache" / "lte").expanduser()
        store_value = store or env.get("LTE_STORE")
        return cls(
            home=home_path,
            model=model or env.get("LTE_MODEL") or DEFAULT_MODEL,
            store=Path(store_value).expanduser() if store_value else None,
            chroma_url=chroma_url or env.get("LTE_CHROMA_URL") or None,
            records=records or env.get("LTE_RECORDS_URL") or None,
            collection=collection or env.get("LTE_COLLECTION") or "edits",
            datasets=Path(datasets_value).expanduser() if (datasets_value := datasets or env.get("LTE_DATASETS"))
            else None,
            device=device or env.get("LTE_DEVICE") or "auto",
            dtype=dtype or env.get("LTE_DTYPE") or "auto",
            chat_template=Path(template).expanduser() if (template := chat_template or env.get("LTE_CHAT_TEMPLATE"))
            else None,
        )


def lte_home() -> Path:
    return Settings.from_env().home
