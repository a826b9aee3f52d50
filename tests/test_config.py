"""persona_factory/config.py: presets, YAML files, overrides and strict validation with named fields."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from persona_factory.config import PRESETS, RUN_ONLY_SETTINGS, ConfigError, PipelineConfig, load_config


def write_yaml(tmp_path: Path, data: object, name: str = "pipeline.yaml") -> Path:
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return p


# -- presets ---------------------------------------------------------------------------------------------------

def test_tiny_preset_loads():
    cfg = load_config("tiny")
    assert isinstance(cfg, PipelineConfig)
    assert cfg.preset == "tiny"
    assert (cfg.personas.train, cfg.personas.bench_32k, cfg.personas.bench_128k) == (2, 1, 1)
    assert cfg.teacher.max_tokens == 96
    assert load_config() == cfg  # tiny is the default


def test_paper_preset_has_paper_scale():
    cfg = load_config("paper")
    assert cfg.preset == "paper"
    assert (cfg.personas.train, cfg.personas.bench_32k, cfg.personas.bench_128k) == (500, 100, 100)
    assert (cfg.dialogue.turns_128k.min, cfg.dialogue.turns_128k.max) == (100, 500)
    assert cfg.teacher.max_concurrency == 256


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_validates_and_hashes_stably(preset):
    a, b = load_config(preset), load_config(preset)
    assert a.config_hash() == b.config_hash()
    assert len(a.config_hash()) == 16


def test_presets_differ_in_hash():
    assert load_config("tiny").config_hash() != load_config("paper").config_hash()


def test_unknown_preset_names_preset():
    with pytest.raises(ConfigError) as err:
        load_config("huge")
    msg = str(err.value)
    assert "preset" in msg and "huge" in msg and "tiny" in msg and "paper" in msg


def test_loading_does_not_mutate_presets():
    before = copy.deepcopy(PRESETS)
    load_config("tiny", overrides={"teacher": {"max_tokens": 300}, "dialogue": {"turns_train": {"min": 3}}})
    assert PRESETS == before
    assert load_config("tiny").teacher.max_tokens == 96


# -- unknown keys ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides,path", [
    ({"modle": "x"}, "modle"),
    ({"teacher": {"modle": "x"}}, "teacher.modle"),
    ({"dialogue": {"turns_train": {"minimum": 3}}}, "dialogue.turns_train.minimum"),
    ({"supervision": {"probes": 3}}, "supervision.probes"),
    ({"personas": {"validation": 4}}, "personas.validation"),
])
def test_unknown_key_names_dotted_path(overrides, path):
    with pytest.raises(ConfigError) as err:
        load_config("tiny", overrides=overrides)
    msg = str(err.value)
    assert path in msg
    assert "unknown setting" in msg


def test_unknown_key_in_yaml_file(tmp_path):
    p = write_yaml(tmp_path, {"teacher": {"modle": "Qwen/Qwen2.5-VL-7B-Instruct"}})
    with pytest.raises(ConfigError, match=r"teacher\.modle"):
        load_config("tiny", p)


def test_all_errors_are_reported_together():
    with pytest.raises(ConfigError) as err:
        load_config("tiny", overrides={"teacher": {"modle": "x", "top_p": 0}, "seeed": 1})
    msg = str(err.value)
    assert "teacher.modle" in msg and "teacher.top_p" in msg and "seeed" in msg


# -- bad values ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides,names", [
    ({"dialogue": {"image_turn_share": 1.5}}, ["dialogue.image_turn_share"]),
    ({"dialogue": {"image_turn_share": -0.1}}, ["dialogue.image_turn_share"]),
    ({"dialogue": {"turns_train": {"min": 30, "max": 20}}}, ["dialogue.turns_train", "min", "max"]),
    ({"dialogue": {"turns_128k": {"min": 1, "max": 20}}}, ["dialogue.turns_128k.min"]),
    ({"supervision": {"sft_shares": {"reasoning": 0.5, "memory": 0.5, "personality": 0.5}}},
     ["supervision", "sft_shares", "sum to 1"]),
    ({"supervision": {"sft_shares": {"reasoning": 0.5, "memory": 0.5}}}, ["supervision", "sft_shares"]),
    ({"persona_source": {"kind": "file"}}, ["persona_source", "path"]),
    ({"persona_source": {"kind": "hub", "path": ""}}, ["persona_source", "path"]),
    ({"persona_source": {"kind": "s3", "path": "x"}}, ["persona_source.kind"]),
    ({"image_source": {"kind": "folder"}}, ["image_source", "path"]),
    ({"personas": {"train": -1}}, ["personas.train"]),
    ({"teacher": {"backend": "remote"}}, ["teacher.backend"]),
    ({"teacher": {"max_concurrency": 0}}, ["teacher.max_concurrency"]),
    ({"teacher": {"request_timeout_s": 0}}, ["teacher.request_timeout_s"]),
    ({"teacher": {"max_retries": 11}}, ["teacher.max_retries"]),
    ({"teacher": {"temperature": "hot"}}, ["teacher.temperature"]),
    ({"teacher": {"base_urls": "http://localhost:8000/v1"}}, ["teacher.base_urls"]),
    ({"teacher": {"block_size": 40}}, ["teacher.block_size", "multiple of 16"]),
    ({"plan": {"span_days_train": 0}}, ["plan.span_days_train"]),
    ({"supervision": {"retriever": "bm25"}}, ["supervision.retriever"]),
    ({"quality": {"question_embedding_similarity": 1.5}}, ["quality.question_embedding_similarity"]),
    ({"seed": "zero"}, ["seed"]),
])
def test_bad_value_names_field(overrides, names):
    with pytest.raises(ConfigError) as err:
        load_config("tiny", overrides=overrides)
    msg = str(err.value)
    for name in names:
        assert name in msg, msg


def test_valid_values_at_the_bounds_pass():
    cfg = load_config("tiny", overrides={
        "dialogue": {"image_turn_share": 1.0, "turns_train": {"min": 5, "max": 5}},
        "supervision": {"sft_shares": {"reasoning": 0.2, "memory": 0.3, "personality": 0.5}},
        "persona_source": {"kind": "file", "path": "personas.jsonl"},
    })
    assert cfg.dialogue.image_turn_share == 1.0
    assert (cfg.dialogue.turns_train.min, cfg.dialogue.turns_train.max) == (5, 5)
    assert cfg.persona_source.path == "personas.jsonl"


# -- YAML files and precedence ---------------------------------------------------------------------------------

def test_yaml_file_overrides_preset(tmp_path):
    p = write_yaml(tmp_path, {"seed": 7, "teacher": {"max_tokens": 200, "base_urls": ["http://10.0.0.1:8000/v1"]}})
    cfg = load_config("tiny", p)
    assert cfg.seed == 7
    assert cfg.teacher.max_tokens == 200
    assert cfg.teacher.base_urls == ["http://10.0.0.1:8000/v1"]
    # untouched preset values survive the deep merge
    assert cfg.personas.train == 2 and cfg.dialogue.turns_train.min == 14
    assert cfg.teacher.max_concurrency == 64


def test_overrides_win_over_yaml_file(tmp_path):
    p = write_yaml(tmp_path, {"seed": 7, "teacher": {"max_tokens": 200, "temperature": 0.2}})
    cfg = load_config("tiny", str(p), overrides={"teacher": {"max_tokens": 300}})
    assert cfg.teacher.max_tokens == 300  # override
    assert cfg.teacher.temperature == 0.2  # file
    assert cfg.seed == 7  # file
    assert cfg.plan.preferences == 2  # preset


def test_nested_merge_keeps_sibling_keys(tmp_path):
    p = write_yaml(tmp_path, {"dialogue": {"turns_train": {"max": 40}}})
    cfg = load_config("tiny", p)
    assert (cfg.dialogue.turns_train.min, cfg.dialogue.turns_train.max) == (14, 40)
    assert cfg.dialogue.turns_32k.max == 28


def test_yaml_file_can_choose_the_preset(tmp_path):
    p = write_yaml(tmp_path, {"preset": "paper", "seed": 3})
    cfg = load_config("tiny", p)
    assert cfg.preset == "paper" and cfg.personas.train == 500 and cfg.seed == 3


def test_yaml_file_with_unknown_preset(tmp_path):
    p = write_yaml(tmp_path, {"preset": "huge"})
    with pytest.raises(ConfigError, match="preset"):
        load_config("tiny", p)


def test_overrides_preset_switches_the_base():
    cfg = load_config("tiny", overrides={"preset": "paper"})
    assert cfg.preset == "paper"
    assert cfg.personas.train == 500  # not tiny's numbers under paper's name


def test_overrides_preset_wins_over_file_preset(tmp_path):
    p = write_yaml(tmp_path, {"preset": "tiny", "seed": 4})
    cfg = load_config("tiny", p, overrides={"preset": "paper"})
    assert cfg.preset == "paper" and cfg.personas.train == 500 and cfg.seed == 4


def test_empty_yaml_file_is_the_preset(tmp_path):
    p = write_yaml(tmp_path, "")
    assert load_config("tiny", p) == load_config("tiny")


def test_missing_config_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as err:
        load_config("tiny", missing)
    assert "nope.yaml" in str(err.value) and "does not exist" in str(err.value)


def test_config_path_that_is_a_directory(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("tiny", tmp_path)


def test_yaml_file_that_is_not_a_mapping(tmp_path):
    p = write_yaml(tmp_path, "- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config("tiny", p)


def test_yaml_file_that_is_not_yaml(tmp_path):
    p = write_yaml(tmp_path, "teacher: {model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config("tiny", p)


def test_output_path_resolution(tmp_path):
    rel = load_config("tiny", overrides={"output_dir": "out/x"})
    assert rel.output_path.is_absolute() and rel.output_path.parts[-2:] == ("out", "x")
    absolute = load_config("tiny", overrides={"output_dir": str(tmp_path)})
    assert absolute.output_path == tmp_path
    assert absolute.duckdb_path == tmp_path / "pipeline.duckdb"


@pytest.mark.parametrize("overrides", [
    {"seed": 1}, {"personas": {"train": 3}}, {"plan": {"events": 2}}, {"teacher": {"model": "Qwen/Qwen2.5-VL-7B"}},
    {"teacher": {"temperature": 0.2}}, {"quality": {"image_max_hamming": 4}},
])
def test_hash_follows_the_settings_that_shape_the_data(overrides):
    assert load_config("tiny").config_hash() != load_config("tiny", overrides=overrides).config_hash()


@pytest.mark.parametrize("overrides", [
    {"output_dir": "elsewhere"}, {"teacher": {"base_urls": ["http://10.0.0.1:8000/v1"]}},
    {"teacher": {"max_concurrency": 7, "request_timeout_s": 9.0, "embedded_port": 9999, "api_key_env": "K"}},
    {"publish": {"hub_repo": "org/data"}}, {"regeneration": {"enabled": True}},
    {"teacher": {"retry_cached_failures": True, "max_requests": 5}},  # recovering the same data keeps its hash
])
def test_hash_ignores_where_and_how_fast_a_run_goes(overrides):
    assert load_config("tiny").config_hash() == load_config("tiny", overrides=overrides).config_hash()


def test_every_run_only_setting_exists():
    for name, inner in RUN_ONLY_SETTINGS.items():
        assert name in PipelineConfig.model_fields
        if inner is not True:
            assert inner <= set(PipelineConfig.model_fields[name].annotation.model_fields), name


def test_whole_session_drafts_must_fit_the_teachers_context():
    with pytest.raises(ConfigError, match="teacher.max_model_len"):
        load_config("tiny", overrides={"dialogue": {"draft_unit": "session"}})
    assert load_config("tiny", overrides={"dialogue": {"draft_unit": "session"}, "teacher": {"max_model_len": 4096}})
