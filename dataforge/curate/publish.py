"""`dataforge push`: a dataset to the Hugging Face Hub as Parquet, with its card, through `huggingface_hub`.

The records become ``data/train-00000-of-00001.parquet`` (one column per Record field, nested fields as
JSON text: the schema `dataforge convert --to parquet` writes) and the card ``README.md`` (its
``configs`` point at ``data/train-*``, so ``load_dataset(REPO_ID)`` finds the split). The repo is created
if missing (``exist_ok``), then everything goes up in one commit. The token comes from the environment
(``HF_TOKEN``, or the variable ``--token-env`` names, else huggingface_hub's own login); it is never
printed or stored. ``HF_ENDPOINT`` points the library at another Hub (tests use `testing.hub_stub`).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import DataforgeError
from ..io import RecordWriter, read_records
from .card import CardOptions, RecordStats, card_from, set_aside

DATA_FILE = "data/train-00000-of-00001.parquet"


@dataclass
class Pushed:
    url: str
    commit_url: str
    records: int


def _transport_errors() -> tuple[type[BaseException], ...]:
    """What the HTTP client under huggingface_hub raises when the Hub cannot be reached: `httpx2` in
    huggingface_hub 2.x, `httpx` in 1.x, `requests` before that (whichever is installed; OSError always)."""
    errors: list[type[BaseException]] = [OSError]
    for module, name in (("httpx2", "TransportError"), ("httpx", "TransportError"), ("requests", "ConnectionError")):
        try:
            errors.append(getattr(__import__(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(errors)


def _scrubbed(text: str, token: str | None) -> str:
    return text.replace(token, "***") if token else text


def push_dataset(dataset: str | Path, repo_id: str, options: CardOptions | None = None, *,
                 manifest: str | Path | None = None, private: bool = False, token_env: str = "HF_TOKEN",
                 message: str | None = None) -> Pushed:
    """Create `repo_id` (a dataset repo) if needed and upload `dataset` as Parquet plus its card."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    path = Path(dataset)
    token = os.environ.get(token_env) or None
    options = replace(options or CardOptions(), repo_id=repo_id, data_files="data/train-*")
    with tempfile.TemporaryDirectory(prefix="dataforge-push-") as tmp:
        folder = Path(tmp)
        (folder / "data").mkdir()
        stats = RecordStats()
        with RecordWriter(folder / DATA_FILE, "parquet") as w:
            for r in read_records(path):
                w.write(r)
                stats.add(r)
        if not stats.n:
            raise DataforgeError(f"{path}: no records to push")
        card_from(stats, options, set_aside(path), manifest).save(folder / "README.md")
        api = HfApi(token=token)
        try:
            url = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
            commit = api.upload_folder(folder_path=folder, repo_id=repo_id, repo_type="dataset",
                                       commit_message=message or f"dataforge push: {stats.n:,} records and the card")
        except HfHubHTTPError as exc:
            raise DataforgeError(f"push to {repo_id}: {_scrubbed(str(exc).splitlines()[0], token)}") from None
        except ValueError as exc:  # the Hub refused the card's metadata
            raise DataforgeError(f"push to {repo_id}: {_scrubbed(str(exc), token)}") from None
        except _transport_errors() as exc:  # no network, refused connection
            raise DataforgeError(f"push to {repo_id}: cannot reach {api.endpoint} ({type(exc).__name__})") from None
    return Pushed(url=str(url), commit_url=str(commit.commit_url), records=stats.n)
