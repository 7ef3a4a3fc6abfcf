"""Where a model's files are: a local directory, or a Hugging Face hub repository in the hub cache.

    resolve("runs/final")             -> that directory (it exists)
    resolve("sanps/fVLM-135M")        -> the hub cache's snapshot of the repository (branch main)
    resolve("sanps/fVLM-135M@v1.0")   -> ... at a branch, tag or commit

The rule: a name that is an existing directory is used as it is; any other string of the form
owner/name[@revision] is a hub id, fetched with huggingface_hub.snapshot_download. Only the files a
loader reads are fetched (`files`: config, safetensors weights, tokenizer, model card), never pickle
weights (.bin, .pt). huggingface_hub's own settings apply: HF_HOME / HF_HUB_CACHE (where the cache
is), HF_HUB_OFFLINE=1 (the cache only, no network), HF_TOKEN (private or gated repositories).
Every entry point that takes a model (fvlm.load, from_pretrained, the CLI, the demo, lmms-eval, the
trainer's init_from) goes through `resolve`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import CheckpointError

CONFIG_FILES = ("config.json",)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.json", "merges.txt", "chat_template.jinja")
MODEL_FILES = (*CONFIG_FILES, "model.safetensors", "README.md", *TOKENIZER_FILES)
MODEL_HELP = ("a saved model directory, or a Hugging Face hub id owner/name[@revision] such as "
              "sanps/fVLM-135M (default: the ShapesQA model shipped with fvlm)")
HUB_ID = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<revision>[\w./-]+))?")


@dataclass(frozen=True)
class Source:
    """A model's files: `path` on this machine, and the hub repository they came from (if any)."""

    path: Path
    repo_id: str | None = None  # None: a local directory
    revision: str | None = None  # as asked for ("main" when none was given)

    @property
    def name(self) -> str:
        """How a user names this model: the directory, or the hub id owner/name@revision."""
        return str(self.path) if self.repo_id is None else f"{self.repo_id}@{self.revision}"

    def describe(self) -> str:
        if self.repo_id is None:
            return f"local directory {self.path}"
        return f"hub repository {self.name}, cached in {self.path}"


def parse_hub_id(name: str) -> tuple[str, str | None] | None:
    """(repo_id, revision or None) if `name` has the form owner/name[@revision], else None."""
    m = HUB_ID.fullmatch(name)
    return None if m is None else (m["repo"], m["revision"])


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) as set now, or as huggingface_hub read it at import."""
    from huggingface_hub import constants

    now = (os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or "").strip().lower()
    return now in ("1", "true", "yes", "on") or bool(constants.HF_HUB_OFFLINE)


def resolve(name: str | os.PathLike | Source, files: Sequence[str] = MODEL_FILES,
            required: Sequence[str] = ()) -> Source:
    """The files of the model `name` names: an existing directory, or a hub id fetched into the cache.

    files: which files of a hub repository to fetch (exact names); required: those that must be
    there afterwards (else a CheckpointError that says so). Local directories are returned unchecked.
    """
    if isinstance(name, Source):
        return name
    if not str(name).strip():
        raise CheckpointError("the model name is empty; give a model directory or a hub id owner/name[@revision]")
    path = Path(name)
    try:
        path = path.expanduser()
    except RuntimeError:  # ~user that does not exist: a missing directory, reported below
        pass
    if path.is_dir():
        return Source(path)
    if path.exists():
        raise CheckpointError(f"{name} is a file, not a model directory; give the directory that holds it")
    hub = parse_hub_id(name) if isinstance(name, str) else None
    if hub is None:
        raise CheckpointError(f"model directory {name} not found (nor is it a hub id owner/name[@revision])")
    repo_id, revision = hub
    source = Source(_download(str(name), repo_id, revision, files), repo_id, revision or "main")
    missing = [f for f in required if not (source.path / f).is_file()]
    if missing:
        why = ("fvlm loads safetensors weights only and never unpickles .bin/.pt files"
               if "model.safetensors" in missing else "fvlm needs it to build the model")
        raise CheckpointError(
            f"hub repository {source.name} has no {', '.join(missing)} ({why}). If the repository does have "
            f"it, the cached copy is incomplete: run `hf download {_download_args(repo_id, revision)}` on a "
            f"machine with network"
        )
    return source


def _download_args(repo_id: str, revision: str | None) -> str:
    return repo_id if revision is None else f"{repo_id} --revision {revision}"


def _download(name: str, repo_id: str, revision: str | None, files: Sequence[str]) -> Path:
    """snapshot_download of `files`, with every failure turned into a CheckpointError that says what to do."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        IncompleteSnapshotError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = hub_offline()
    at = "" if revision is None else f" at revision {revision!r}"
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=list(files),
                                      local_files_only=offline))
    except GatedRepoError as e:
        raise CheckpointError(f"hub repository {repo_id} is gated: accept its terms on huggingface.co and "
                              f"log in (`hf auth login`) or set HF_TOKEN") from e
    except RepositoryNotFoundError as e:
        raise CheckpointError(f"{name}: no such directory here, and no hub repository {repo_id} (if it is "
                              f"private, log in with `hf auth login` or set HF_TOKEN)") from e
    except RevisionNotFoundError as e:
        raise CheckpointError(f"hub repository {repo_id} has no revision {revision!r} "
                              f"(give a branch, a tag or a commit hash after @)") from e
    except IncompleteSnapshotError as e:  # offline, some of `files` missing: resolve checks the required ones
        return Path(e.snapshot_path)
    except LocalEntryNotFoundError as e:
        why = "HF_HUB_OFFLINE=1 is set" if offline else "the hub could not be reached"
        raise CheckpointError(
            f"{name}: not a directory here, and hub repository {repo_id}{at} is not in the hub cache "
            f"({constants.HF_HUB_CACHE}) while {why}. On a machine with network run "
            f"`hf download {_download_args(repo_id, revision)}`, copy its cache (HF_HOME) here if it is "
            f"another machine, and set HF_HUB_OFFLINE=1 to use the cache only"
        ) from e
    except HFValidationError as e:
        raise CheckpointError(f"{name}: no such directory, and not a valid hub id ({e})") from e
    except (HfHubHTTPError, OSError) as e:
        raise CheckpointError(f"could not fetch hub repository {repo_id}{at}: {e}") from e
