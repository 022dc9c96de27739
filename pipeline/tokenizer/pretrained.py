"""A tokenizer given in the config instead of trained: found, fingerprinted by content, copied.

In: `tokenizer.pretrained`, one of
- a `tokenizer.json` file, or a folder holding one (relative paths from the config's folder);
- an MLflow URI: `runs:/RUN_ID/PATH` (a logged `tokenizer.json`, or a folder with one at any
  depth, such as `runs:/<tokenizer stage run>/output`), `models:/NAME@ALIAS`,
  `models:/NAME/VERSION` (a registered model, whose files hold `tokenizer.json`) or
  `mlflow-artifacts:/...`, resolved in the pipeline's tracking server and registry.
Out: `PretrainedTokenizer` (where the files are locally, and the SHA-256 of their content: the
tokenizer stage's fingerprint uses it instead of the corpus), and `reuse_tokenizer`, which copies
`tokenizer.json` (and `tokenizer_config.json` / `special_tokens_map.json` when they come with it,
else writes them) into the stage output, so continued pretraining keeps the same vocabulary.

The tokenizer must hold `<|endoftext|>`, which separates documents in the token shards.
"""

from __future__ import annotations

import hashlib
import posixpath
import shutil
import tempfile
from collections import deque
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from pipeline.model_uris import is_mlflow_uri
from pipeline.special_tokens import EOT_TOKEN, PAD_TOKEN
from pipeline.tokenizer.text_encoder import TOKENIZER_FILE

TRANSFORMERS_FILES = ("tokenizer_config.json", "special_tokens_map.json")
MAX_LISTED = 5000  # artifact entries searched for tokenizer.json before giving up


@dataclass(frozen=True)
class PretrainedTokenizer:
    source: str  # as given in the config
    files: dict[str, Path]  # name in the stage output -> local file
    sha256: str  # of the names and bytes of `files`


def _content_hash(files: dict[str, Path]) -> str:
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0")
        digest.update(files[name].read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def _files_in(folder: Path, tokenizer: Path) -> dict[str, Path]:
    files = {TOKENIZER_FILE: tokenizer}
    if tokenizer.name == TOKENIZER_FILE:  # transformers files belong to a tokenizer.json
        for name in TRANSFORMERS_FILES:
            if (folder / name).is_file():
                files[name] = folder / name
    return files


def locate_pretrained(spec: str, base_dir: str, tracking_uri: str | None) -> PretrainedTokenizer:
    """Find the given tokenizer's files (downloading them from MLflow) and hash them."""
    if is_mlflow_uri(spec):
        tokenizer = _fetch_from_mlflow(spec, tracking_uri)
    else:
        path = Path(spec).expanduser()
        path = path if path.is_absolute() else Path(base_dir) / path
        tokenizer = path / TOKENIZER_FILE if path.is_dir() else path
        if not tokenizer.is_file():
            raise FileNotFoundError(
                f"tokenizer.pretrained: no tokenizer.json at {path} (give a tokenizer.json, a "
                "folder holding one, or an MLflow runs:/ or models:/ URI)"
            )
    files = _files_in(tokenizer.parent, tokenizer)
    return PretrainedTokenizer(spec, files, _content_hash(files))


@lru_cache(maxsize=16)
def _fetch_from_mlflow(spec: str, tracking_uri: str | None) -> Path:
    """Download the tokenizer files named by an MLflow URI; the local tokenizer.json.

    Cached per process: planning runs more than once per pipeline run, and a moving alias must
    not change the fingerprint between planning and running.
    """
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    from pipeline.model_uris import artifact_uri

    root = artifact_uri(spec, tracking_uri)
    found = None
    if root.rstrip("/").endswith(".json"):  # the URI names the file itself
        root, found = root.rstrip("/").rsplit("/", 1)
    repo = get_artifact_repository(root, tracking_uri=tracking_uri, registry_uri=tracking_uri)
    found = found or _find_tokenizer(repo, spec)
    local = Path(tempfile.mkdtemp(prefix="llmpipe-tokenizer-"))
    folder = posixpath.dirname(found)
    tokenizer = Path(repo.download_artifacts(found, str(local)))
    if tokenizer.name == TOKENIZER_FILE:
        listed = {info.path for info in repo.list_artifacts(folder or None)}
        for name in TRANSFORMERS_FILES:
            path = posixpath.join(folder, name) if folder else name
            if path in listed:
                repo.download_artifacts(path, str(local))
    return tokenizer


def _find_tokenizer(repo: Any, spec: str) -> str:
    """The shallowest `tokenizer.json` under the repository root (breadth first)."""
    queue: deque[str | None] = deque([None])
    listed = 0
    while queue and listed < MAX_LISTED:
        for info in repo.list_artifacts(queue.popleft()):
            listed += 1
            if info.is_dir:
                queue.append(info.path)
            elif posixpath.basename(info.path) == TOKENIZER_FILE:
                return info.path
    raise FileNotFoundError(f"tokenizer.pretrained: no tokenizer.json found under {spec}")


def reuse_tokenizer(given: PretrainedTokenizer, out_dir: Path) -> dict[str, Any]:
    """Copy the given tokenizer into `out_dir`; the manifest body of the tokenizer stage."""
    from pipeline.tokenizer.train_bpe import special_tokens_of, write_transformers_files

    if _content_hash(given.files) != given.sha256:
        raise RuntimeError(f"tokenizer.pretrained {given.source} changed since the run was planned")
    tokenizer = Tokenizer.from_file(str(given.files[TOKENIZER_FILE]))
    eot_id = tokenizer.token_to_id(EOT_TOKEN)
    if eot_id is None:
        raise ValueError(
            f"tokenizer.pretrained {given.source} has no {EOT_TOKEN} token, which the token "
            "shards need to separate documents"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, path in given.files.items():
        shutil.copyfile(path, out_dir / name)
    specials = special_tokens_of(out_dir / TOKENIZER_FILE)
    if not all(name in given.files for name in TRANSFORMERS_FILES):
        write_transformers_files(out_dir, tokenizer, specials)
    return {
        "counts": {"documents": 0},
        "stats": {
            # one more than the largest id: what the model's embedding must hold
            "vocab_size": max(tokenizer.get_vocab(with_added_tokens=True).values()) + 1,
            "eot_id": eot_id,
            "pad_id": tokenizer.token_to_id(PAD_TOKEN),
            "special_tokens": {token: tokenizer.token_to_id(token) for token in specials},
            "pretrained": given.source,
            "pretrained_sha256": given.sha256,
        },
    }
