"""A tokenizer given in the config (a path or an MLflow URI) is reused instead of trained, and the
tokenizer stage's fingerprint follows the given files' content, not the corpus."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_tokenizer import INLINE_PARAGRAPHS, folder_bytes, write_corpus
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from pipeline.config import TokenizerConfig, load_config
from pipeline.dag import plan, run_stage
from pipeline.tokenizer import train_tokenizer
from pipeline.tokenizer.pretrained import locate_pretrained


def tiny_config(folder: Path) -> Path:
    """A config with one small text source (planning hashes the sources)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "paragraphs.txt").write_text("\n\n".join(INLINE_PARAGRAPHS), encoding="utf-8")
    config = folder / "tiny.yaml"
    config.write_text("sources:\n  - {type: text, path: paragraphs.txt, split: paragraphs}\n")
    return config


@pytest.fixture(scope="module")
def given(tmp_path_factory) -> Path:
    """A trained tokenizer folder (tokenizer.json + the transformers files)."""
    root = tmp_path_factory.mktemp("given")
    write_corpus(root / "docs", INLINE_PARAGRAPHS)
    train_tokenizer(root / "docs", root / "tok", TokenizerConfig(vocab_size=400))
    return root / "tok"


def planned(overrides: list[str], workdir: Path, tracking_uri: str | None = None) -> dict:
    config = load_config(tiny_config(workdir / "config"), overrides)
    return {p.name: p for p in plan(config, workdir, tracking_uri)}


def fingerprints(overrides: list[str], workdir: Path) -> dict[str, str]:
    return {name: p.output.fingerprint for name, p in planned(overrides, workdir).items()}


def config(overrides: list[str], workdir: Path):
    return load_config(tiny_config(workdir / "config"), overrides)


def test_a_given_tokenizer_is_fingerprinted_by_content_not_by_corpus(given, tmp_path):
    use = [f"tokenizer.pretrained={given}"]
    base = fingerprints(use, tmp_path)
    # Another corpus, vocabulary size or split: the tokenizer stays; the shards follow the corpus.
    other = fingerprints(
        [*use, "clean.min_words=5", "tokenizer.vocab_size=999", "shards.val_fraction=0.2"],
        tmp_path,
    )
    assert other["tokenizer"] == base["tokenizer"]
    assert other["shards"] != base["shards"]
    # The same files elsewhere (or the tokenizer.json file itself): the same fingerprint.
    copy = tmp_path / "copy"
    shutil.copytree(given, copy)
    assert (
        fingerprints([f"tokenizer.pretrained={copy}"], tmp_path)["tokenizer"] == base["tokenizer"]
    )
    # Other content: another fingerprint.
    spec = json.loads((copy / "tokenizer.json").read_text())
    spec["model"]["merges"].pop()
    (copy / "tokenizer.json").write_text(json.dumps(spec))
    assert (
        fingerprints([f"tokenizer.pretrained={copy}"], tmp_path)["tokenizer"] != base["tokenizer"]
    )
    # A trained tokenizer follows the corpus and the held-out split.
    trained = fingerprints([], tmp_path)
    assert trained["tokenizer"] != base["tokenizer"]
    assert fingerprints(["clean.min_words=5"], tmp_path)["tokenizer"] != trained["tokenizer"]
    assert fingerprints(["shards.val_fraction=0.2"], tmp_path)["tokenizer"] != trained["tokenizer"]


def test_the_tokenizer_stage_copies_a_given_folder_without_reading_documents(given, tmp_path):
    stages = planned([f"tokenizer.pretrained={given}"], tmp_path / "work")
    tokenizer_stage = stages["tokenizer"]
    assert tokenizer_stage.upstream == {}  # no dedup output needed: none exists here

    result = run_stage(
        tokenizer_stage, config([f"tokenizer.pretrained={given}"], tmp_path / "work")
    )

    out = tokenizer_stage.output.path
    assert {k: v for k, v in folder_bytes(out).items() if k != "_manifest.json"} == folder_bytes(
        given
    )
    stats = result.stats
    assert stats["pretrained"] == str(given)
    assert stats["pretrained_sha256"] == locate_pretrained(str(given), ".", None).sha256
    vocab_size = Tokenizer.from_file(str(given / "tokenizer.json")).get_vocab_size()
    assert (stats["vocab_size"], stats["eot_id"], stats["pad_id"]) == (vocab_size, 0, 1)
    assert result.counts == {"documents": 0}
    assert tokenizer_stage.config == {
        "tokenizer": {"pretrained_sha256": stats["pretrained_sha256"]}
    }


def test_a_bare_tokenizer_json_gets_the_transformers_files(given, tmp_path):
    (tmp_path / "elsewhere").mkdir()
    bare = tmp_path / "elsewhere" / "my-tokenizer.json"
    shutil.copyfile(given / "tokenizer.json", bare)
    stages = planned([f"tokenizer.pretrained={bare}"], tmp_path / "work")
    run_stage(stages["tokenizer"], config([f"tokenizer.pretrained={bare}"], tmp_path / "work"))
    out = stages["tokenizer"].output.path
    assert (out / "tokenizer.json").read_bytes() == bare.read_bytes()
    assert (out / "special_tokens_map.json").read_bytes() == (
        given / "special_tokens_map.json"
    ).read_bytes()
    transformers = pytest.importorskip("transformers")
    fast = transformers.PreTrainedTokenizerFast.from_pretrained(str(out))
    assert (fast.eos_token_id, fast.pad_token_id) == (0, 1)
    assert fast.convert_tokens_to_ids("<|assistant|>") == 3


def test_a_given_tokenizer_must_exist_and_hold_the_end_of_text_token(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        fingerprints([f"tokenizer.pretrained={tmp_path / 'missing'}"], tmp_path)

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["</s>"], show_progress=False)
    tokenizer.train_from_iterator([INLINE_PARAGRAPHS], trainer=trainer)
    (tmp_path / "no_eot").mkdir()
    tokenizer.save(str(tmp_path / "no_eot" / "tokenizer.json"))
    use = [f"tokenizer.pretrained={tmp_path / 'no_eot'}"]
    with pytest.raises(ValueError, match="no <\\|endoftext\\|> token"):
        run_stage(planned(use, tmp_path / "work")["tokenizer"], config(use, tmp_path / "work"))


def test_mlflow_run_and_registry_uris_resolve_to_the_same_tokenizer(given, tmp_path, mlflow_uri):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_uri, registry_uri=mlflow_uri)
    experiment = client.create_experiment("tok", artifact_location=(tmp_path / "art").as_uri())
    run_id = client.create_run(experiment).info.run_id
    # As the flow logs a tokenizer stage's files ...
    client.log_artifacts(run_id, str(given), "output")
    # ... and as a registered model holds it, a few folders down beside the weights.
    client.log_artifacts(run_id, str(given), "model/artifacts/model_dir/final")
    client.log_text(run_id, "{}", "model/MLmodel")
    client.create_registered_model("llmpipe-test")
    version = client.create_model_version("llmpipe-test", f"runs:/{run_id}/model", run_id=run_id)
    client.set_registered_model_alias("llmpipe-test", "champion", version.version)

    local = locate_pretrained(str(given), ".", None).sha256
    for uri in (
        f"runs:/{run_id}/output",
        f"runs:/{run_id}/output/tokenizer.json",
        "models:/llmpipe-test@champion",
        f"models:/llmpipe-test/{version.version}",
    ):
        found = locate_pretrained(uri, ".", mlflow_uri)
        assert found.sha256 == local, uri
        assert sorted(found.files) == sorted(p.name for p in given.iterdir())

    # The DAG resolves the URI in the pipeline's own tracking store.
    use = ["tokenizer.pretrained=models:/llmpipe-test@champion"]
    by_uri = planned(use, tmp_path / "work", mlflow_uri)["tokenizer"]
    by_path = planned([f"tokenizer.pretrained={given}"], tmp_path / "work", mlflow_uri)["tokenizer"]
    assert by_uri.output.fingerprint == by_path.output.fingerprint
