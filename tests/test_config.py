"""Config validation: bad configs name the key and what was expected."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import ConfigError, fingerprint_fields, load_config

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_shipped_configs_are_valid():
    for name in ("quickstart.yaml", "gpt2-small.yaml"):
        config = load_config(REPO / "configs" / name)
        assert config.sources


def test_gpt2_small_is_124m_shaped():
    config = load_config(REPO / "configs" / "gpt2-small.yaml")
    assert (config.model.n_layer, config.model.n_head, config.model.n_embd) == (12, 12, 768)
    assert config.model.block_size == 1024


def test_typo_names_the_key_and_the_choices(tmp_path):
    path = write(tmp_path, "sources: [{type: jsonl, path: x.jsonl}]\nclean:\n  min_wrods: 5\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert "clean.min_wrods: unknown key" in message
    assert "min_words" in message  # the valid keys are suggested


def test_bad_value_names_key_and_expectation(tmp_path):
    path = write(tmp_path, "sources: [{type: jsonl, path: x.jsonl}]\ntrain:\n  max_steps: many\n")
    with pytest.raises(ConfigError, match=r"train\.max_steps: .*integer"):
        load_config(path)


def test_unknown_source_type(tmp_path):
    path = write(tmp_path, "sources: [{type: pdf, path: x.pdf}]\n")
    with pytest.raises(ConfigError, match=r"sources\.0\.type: unknown source type 'pdf'"):
        load_config(path)


def test_missing_sources(tmp_path):
    with pytest.raises(ConfigError, match="sources: at least one source is needed to pretrain"):
        load_config(write(tmp_path, "name: x\n"))


def test_heads_must_divide_width(tmp_path):
    path = write(
        tmp_path, "sources: [{type: text, path: a.txt}]\nmodel: {n_embd: 100, n_head: 3}\n"
    )
    with pytest.raises(ConfigError, match="divisible"):
        load_config(path)


def test_overrides_are_validated_and_applied(tmp_path):
    path = write(tmp_path, "sources: [{type: text, path: a.txt}]\n")
    config = load_config(
        path, ["train.max_steps=7", "model.n_layer=2", "sources.0.split=paragraphs"]
    )
    assert config.train.max_steps == 7 and config.model.n_layer == 2
    assert config.sources[0].split == "paragraphs"
    with pytest.raises(ConfigError, match="train.max_stepz: unknown key"):
        load_config(path, ["train.max_stepz=7"])
    with pytest.raises(ConfigError, match="expected section.key=value"):
        load_config(path, ["train.max_steps"])


def test_operational_fields_stay_out_of_fingerprints(tmp_path):
    path = write(tmp_path, "sources: [{type: text, path: a.txt}]\n")
    a = load_config(path)
    b = load_config(path, ["train.log_every_steps=1", "train.progress_bar=false"])
    assert fingerprint_fields(a.train) == fingerprint_fields(b.train)
    c = load_config(path, ["train.learning_rate=0.5"])
    assert fingerprint_fields(a.train) != fingerprint_fields(c.train)


def test_not_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "a: [1, 2\n"))


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_every_shipped_config_loads_and_plans(name, tmp_path):
    """Each config in configs/ validates and plans (those reading ../shared need it there)."""
    from pipeline.dag import plan

    path = REPO / "configs" / name
    if "shared/data" in path.read_text() and not (REPO.parent / "shared" / "data").is_dir():
        pytest.skip("reads ../shared/data, absent here")
    config = load_config(path)
    assert [p.name for p in plan(config, tmp_path)][-2:] == ["evaluate", "register"]


def test_finetune_task_errors_name_the_key(tmp_path):
    base = "sources: [{type: text, path: x.txt}]\n"
    (tmp_path / "x.txt").write_text("hello")
    missing = base + "finetune: {tasks: [{type: qa, path: nowhere.json}]}\n"
    with pytest.raises(ConfigError, match=r"finetune\.tasks\.0\.path: no such file for task 'qa'"):
        load_config(write(tmp_path, missing))
    labels = base + "finetune: {tasks: [{type: classification, path: x.txt, labels: {a: b}}]}\n"
    with pytest.raises(ConfigError, match=r"finetune\.tasks\.0\.classification\.labels"):
        load_config(write(tmp_path, labels))
    lora = base + "finetune: {lora: {rank: 0}}\n"
    with pytest.raises(ConfigError, match=r"finetune\.lora\.rank"):
        load_config(write(tmp_path, lora))


def test_an_override_of_an_anchored_task_changes_only_that_use():
    path = REPO / "configs" / "quickstart-finetune.yaml"
    config = load_config(path, ["finetune.tasks.0.limit=7"])
    assert config.finetune.tasks[0].limit == 7
    assert config.evaluate.tasks[1].name == "sentiment" and config.evaluate.tasks[1].limit is None


def test_a_field_added_later_stays_out_of_fingerprints_at_its_default():
    """Outputs made before `train.final_weights` existed keep their fingerprints (and are reused);
    the non-default value changes the recipe."""
    from pipeline.config import TrainConfig, fingerprint_fields

    assert "final_weights" not in fingerprint_fields(TrainConfig())
    assert fingerprint_fields(TrainConfig(final_weights="best"))["final_weights"] == "best"
    assert "compile_mode" not in fingerprint_fields(TrainConfig(compile_mode="max-autotune"))
