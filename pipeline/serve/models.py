"""The models a server answers with, each following what its URI names in the registry.

In: model URIs (`models:/NAME@alias`, `models:/NAME/VERSION`, or a model folder) and a tracking
URI. Out: `ModelSet`, which holds one `ServedModel` per URI under a client-facing id
(`NAME@champion`), each with its current `LoadedModel` (weights, tokenizer, version).

`ModelSet.refresh()` asks the registry which version each alias names now, loads the versions
that changed (a version two aliases share is loaded once) and swaps them in. A request takes
the `LoadedModel` it starts with and keeps it to its end, so a swap never cuts one short; the old
weights are freed when the last request holding them is done.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

from pipeline.generate import load_generator
from pipeline.model.gpt import GPT
from pipeline.serve.protocol import ASSISTANT, USER


@dataclass(frozen=True)
class ModelRef:
    """What a URI names: a registered model's alias or version, or a folder."""

    uri: str
    name: str | None = None  # registered model name
    alias: str | None = None
    version: str | None = None  # fixed version (models:/NAME/3)

    @classmethod
    def parse(cls, uri: str) -> ModelRef:
        if uri.startswith("models:/"):
            ref = uri.removeprefix("models:/")
            if "@" in ref:
                name, alias = ref.split("@", 1)
                return cls(uri, name=name, alias=alias)
            if "/" in ref:
                name, version = ref.rsplit("/", 1)
                return cls(uri, name=name, version=version)
            raise ValueError(f"{uri}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
        if not Path(uri).exists():
            raise FileNotFoundError(f"no such model folder or registered model URI: {uri}")
        return cls(uri)

    @property
    def model_id(self) -> str:
        """The id clients name in requests: NAME@alias, NAME/3, or the folder's name."""
        if self.alias:
            return f"{self.name}@{self.alias}"
        if self.version:
            return f"{self.name}/{self.version}"
        return Path(self.uri).resolve().name

    def with_alias(self, alias: str) -> ModelRef:
        return ModelRef(f"models:/{self.name}@{alias}", name=self.name, alias=alias)


@dataclass(frozen=True)
class LoadedModel:
    """One model version in memory."""

    net: GPT
    tokenizer: Tokenizer
    version: str | None  # registry version, None for a folder
    source: str  # models:/NAME/VERSION or the folder
    created: int  # seconds since the epoch: the version's registration, or load time
    loaded_at: float = field(default_factory=time.time)

    @property
    def block_size(self) -> int:
        return self.net.config.block_size

    @property
    def role_tokens(self) -> bool:
        """Whether the tokenizer has the chat role markers as tokens."""
        return all(self.tokenizer.token_to_id(t) is not None for t in (USER, ASSISTANT))

    def describe(self) -> str:
        return f"v{self.version}" if self.version else self.source


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load(source: str, version: str | None, created: int, tracking_uri: str | None, device: str):
    net, tokenizer = load_generator(source, tracking_uri)
    net = net.to(_device(device)).eval()
    return LoadedModel(net, tokenizer, version, source, created)


@dataclass
class ServedModel:
    ref: ModelRef
    current: LoadedModel


class ModelSet:
    """The served models by id; `refresh()` follows their aliases."""

    def __init__(self, refs: list[ModelRef], tracking_uri: str | None, device: str = "auto"):
        self.tracking_uri = tracking_uri
        self.device = device
        self._lock = threading.Lock()  # one refresh at a time (poller and /admin/reload)
        self.last_refresh: float | None = None
        self.last_error: str | None = None
        self.models: dict[str, ServedModel] = {}
        loaded: dict[str, LoadedModel] = {}
        for ref in refs:
            source, version, created = self._resolve(ref)
            if source not in loaded:
                loaded[source] = load(source, version, created, tracking_uri, device)
            self.models[ref.model_id] = ServedModel(ref, loaded[source])

    def _client(self) -> Any:
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def _resolve(self, ref: ModelRef) -> tuple[str, str | None, int]:
        """(source to load, version, created) for what the ref names now."""
        if ref.name is None:
            return ref.uri, None, int(time.time())
        client = self._client()
        if ref.alias:
            version = client.get_model_version_by_alias(ref.name, ref.alias)
        else:
            version = client.get_model_version(ref.name, ref.version)
        created = int((version.creation_timestamp or time.time() * 1000) / 1000)
        return f"models:/{ref.name}/{version.version}", str(version.version), created

    def get(self, model_id: str) -> ServedModel | None:
        return self.models.get(model_id)

    def refresh(self) -> list[str]:
        """Load what each alias names now; returns the ids whose version changed."""
        with self._lock:
            changed = []
            try:
                by_source = {s.current.source: s.current for s in self.models.values()}
                for model_id, served in self.models.items():
                    if served.ref.alias is None:
                        continue
                    source, version, created = self._resolve(served.ref)
                    if source == served.current.source:
                        continue
                    if source not in by_source:
                        by_source[source] = load(
                            source, version, created, self.tracking_uri, self.device
                        )
                    served.current = by_source[source]  # one assignment: requests see old or new
                    changed.append(model_id)
                self.last_error = None
            except Exception as exc:  # the registry is down, a download failed: keep serving
                self.last_error = f"{type(exc).__name__}: {exc}"
                raise
            finally:
                self.last_refresh = time.time()
            return changed

    def describe(self) -> list[dict[str, Any]]:
        return [
            {
                "id": model_id,
                "uri": served.ref.uri,
                "version": served.current.version,
                "source": served.current.source,
                "context_length": served.current.block_size,
                "loaded_at": round(served.current.loaded_at, 3),
            }
            for model_id, served in self.models.items()
        ]
