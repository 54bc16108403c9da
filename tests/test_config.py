"""The configs: a training run (`Config`) and a study preset (`StudyConfig`), presets and their `base:`, task
defaults resolved once, per-run overrides, and every bad value refused with a message that names it."""

from pathlib import Path

import pytest

from distillspec import DistillSpecError
from distillspec.config import Config
from distillspec.study.preset import StudyConfig
from distillspec.study.rundir import draft_groups, draft_names, expand_drafts

TINY = "configs/tiny.yaml"
PRESETS = ("tiny", "offline_gsm8k", "offline_gsm8k_full", "offline_cnndm", "offline_gsm8k_fast", "offline_cnndm_fast",
           "offline_gsm8k_seeds", "offline_cnndm_seeds", "qwen3_gsm8k", "smollm_cnndm")


def test_presets_load_and_make_one_config_per_training_run():
    for name in PRESETS:
        study = StudyConfig.from_yaml(f"configs/{name}.yaml")
        assert study.name == name
        for run, overrides in study.run_overrides().items():
            cfg = study.run_config(run)
            assert isinstance(cfg, Config) and all(getattr(cfg, k) == v for k, v in overrides.items()), run
    assert StudyConfig.from_yaml("configs/qwen3_gsm8k.yaml").learning_rate == 5e-5


def test_task_defaults_are_resolved_once():
    smollm = StudyConfig.from_yaml("configs/smollm_cnndm.yaml")
    assert (smollm.temperature, smollm.max_new_tokens) == (0.7, 128)  # CNN/DM's
    assert smollm.loss_temperature == 0.7 and smollm.train_max_new_tokens == 128  # TRL's convention: the sampling T
    for name in ("offline_gsm8k", "offline_gsm8k_full", "offline_cnndm"):
        assert StudyConfig.from_yaml(f"configs/{name}.yaml").loss_temperature == 1.0
    cfg = Config(task="gsm8k")
    assert (cfg.temperature, cfg.loss_temperature, cfg.max_new_tokens) == (0.6, 0.6, 312)
    moved = cfg.replace(task="cnndm")  # derived keys follow the new task; given ones stay
    assert (moved.temperature, moved.loss_temperature, moved.max_new_tokens) == (0.7, 0.7, 128)
    assert Config(temperature=0.9).replace(task="cnndm").loss_temperature == 0.9
    assert Config(loss_temperature=1.0).replace(temperature=0.2).loss_temperature == 1.0


def test_a_run_config_holds_what_one_training_run_needs():
    study = StudyConfig.from_yaml("configs/offline_gsm8k_seeds.yaml")
    run = study.run_config("skd_s1")
    assert (run.rollout, run.divergence, run.seed) == ("skd", "jsd", 1)
    assert not hasattr(run, "gamma") and not hasattr(run, "seeds") and not hasattr(run, "speed")
    assert set(run.to_dict()) < set(study.to_dict())


def test_relative_paths_in_a_preset_are_relative_to_that_file(tmp_path, monkeypatch):
    cfg = StudyConfig.from_yaml(TINY)
    assert Path(cfg.data_source) == (Path(TINY).resolve().parent / "../../shared/data").resolve()
    assert StudyConfig.from_yaml(TINY, data_source="rel/dir").data_source == "rel/dir"
    (tmp_path / "cfg").mkdir()
    (tmp_path / "models" / "draft").mkdir(parents=True)
    (tmp_path / "cfg" / "mine.yaml").write_text("teacher: smollm2-135m-instruct\nstudent: ../models/draft\n")
    monkeypatch.chdir(tmp_path / "models")  # anywhere else
    cfg = StudyConfig.from_yaml(tmp_path / "cfg" / "mine.yaml")
    assert cfg.student == str((tmp_path / "models" / "draft").resolve())
    assert cfg.teacher == "smollm2-135m-instruct"  # an alias (or a hub id) stays as written


def test_presets_inherit_from_their_base(tmp_path):
    """A preset states what it changes over its `base:`; the result is the base's keys with the changes."""
    full = StudyConfig.from_yaml("configs/offline_gsm8k_full.yaml")
    small = StudyConfig.from_yaml("configs/offline_gsm8k.yaml")
    assert (small.name, small.n_eval, small.max_steps, small.extra_runs) == ("offline_gsm8k", 24, 25, [])
    changed = {"name", "n_eval", "max_steps", "extra_runs"}
    assert {k: v for k, v in small.to_dict().items() if k not in changed} == \
        {k: v for k, v in full.to_dict().items() if k not in changed}
    (tmp_path / "a.yaml").write_text("base: b.yaml\nname: a\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\nname: b\n")
    with pytest.raises(DistillSpecError, match="may not form a cycle"):
        StudyConfig.from_yaml(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(DistillSpecError, match="Config file not found"):
        StudyConfig.from_yaml(tmp_path / "c.yaml")


def test_yaml_exponent_numbers_are_numbers_and_bad_numbers_are_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("learning_rate: 5e-5\nmax_steps: '12'\n")  # YAML 1.1 reads 5e-5 as a string
    cfg = StudyConfig.from_yaml(path)
    assert cfg.learning_rate == 5e-5 and isinstance(cfg.learning_rate, float) and cfg.max_steps == 12
    with pytest.raises(DistillSpecError, match="learning_rate='fast' must be a number"):
        Config(learning_rate="fast")
    with pytest.raises(DistillSpecError, match="max_steps='1.5' must be an integer"):
        Config(max_steps="1.5")


@pytest.mark.parametrize("bad, message", [
    ({"divergence": "kl"}, "kl"),
    ({"beta": 1.2}, "beta"),
    ({"rollout": "offline"}, "rollout='offline' must be one of"),
    ({"precision": "fp8"}, "precision='fp8' must be one of"),
    ({"lmbda": 2.0}, r"lmbda=2.0 must be in \[0, 1\]"),
    ({"top_p": 1.5}, r"top_p=1.5 must be in \(0, 1\]"),
    ({"temperature": 0}, "temperature=0 must be > 0"),
])
def test_bad_run_values_are_refused(bad, message):
    with pytest.raises(DistillSpecError, match=message):
        Config(**bad)


def test_unknown_and_derived_keys_are_named():
    with pytest.raises(DistillSpecError, match=r"Unknown config keys \['divergense'\]"):
        Config.from_dict({"divergense": "rkl"})
    with pytest.raises(DistillSpecError, match=r"Unknown config keys \['sampling'\].*'rollout'"):
        StudyConfig.from_dict({"sampling": "skd"})
    with pytest.raises(DistillSpecError, match="gradient_accumulation_steps is derived"):
        StudyConfig.from_dict({"gradient_accumulation_steps": 4})
    with pytest.raises(DistillSpecError, match=r"Unknown config keys \['gamma'\]"):
        Config.from_dict({"gamma": 4})  # an evaluation key: the study's, not a training run's
    qwen = StudyConfig.from_yaml("configs/qwen3_gsm8k.yaml")
    assert (qwen.batch_size, qwen.micro_batch_size) == (32, 8)  # 4 accumulation steps on one GPU


def test_extra_runs_override_recipe_keys_only():
    runs = [{"name": "mix", "divergence": "fkl", "lmbda": 0.5, "loss_temperature": 1.0, "adaptive_beta": {"h_low": 1.0},
             "max_steps": 2}]
    study = StudyConfig.from_yaml(TINY, extra_runs=runs, divergences=["rkl"])
    assert study.run_overrides()["mix"] == {**{k: v for k, v in runs[0].items() if k != "name"}, "rollout": "on_policy"}
    run = study.run_config("mix")
    assert (run.divergence, run.lmbda, run.loss_temperature, run.max_steps) == ("fkl", 0.5, 1.0, 2)
    bad = {"lmdba": 0.5}, {"gamma": 3}, {"teacher": "x"}, {"lmbda": 2.0}, {"sampling": "skd"}
    messages = (r"extra_runs 'x': Unknown config keys \['lmdba'\]", r"extra_runs 'x': \['gamma'\] are study-wide",
                r"extra_runs 'x': \['teacher'\] are study-wide", r"extra_runs 'x': lmbda=2.0 must be in \[0, 1\]",
                r"extra_runs 'x': Unknown config keys \['sampling'\]")
    for keys, message in zip(bad, messages):
        with pytest.raises(DistillSpecError, match=message):
            study.replace(extra_runs=[{"name": "x", **keys}])
    with pytest.raises(DistillSpecError, match="the name 'rkl' is taken"):
        study.replace(extra_runs=[{"name": "rkl", "divergence": "tvd"}])
    with pytest.raises(DistillSpecError, match=r"extra_runs\[0\] needs a name"):
        study.replace(extra_runs=[{"divergence": "tvd"}])


def test_seeds_name_one_draft_per_recipe_and_seed():
    cfg = StudyConfig(divergences=["fkl", "rkl"], extra_runs=[{"name": "ad", "adaptive_beta": {"h_low": 0.5}}],
                      seeds=[0, 3])
    assert draft_names(cfg) == ["baseline", "fkl_s0", "fkl_s3", "rkl_s0", "rkl_s3", "ad_s0", "ad_s3"]
    assert cfg.run_overrides()["rkl_s3"] == {"divergence": "rkl", "rollout": "on_policy", "seed": 3}
    assert draft_groups(cfg)["ad"] == ["ad_s0", "ad_s3"]
    assert expand_drafts(cfg, ["rkl", "baseline", "fkl_s3"]) == ["baseline", "fkl_s3", "rkl_s0", "rkl_s3"]
    with pytest.raises(DistillSpecError, match="or a recipe for all its seeds"):
        expand_drafts(cfg, ["tvd"])
    assert draft_names(StudyConfig(divergences=["fkl"])) == ["baseline", "fkl"]  # no seeds: names as before


@pytest.mark.parametrize("seeds", [[], [0, 0], [-1], [1.5], "012"])
def test_bad_seeds_are_refused(seeds):
    with pytest.raises(DistillSpecError, match="seeds="):
        StudyConfig(seeds=seeds)


def test_a_run_may_not_set_its_own_seed_in_a_seeded_study():
    with pytest.raises(DistillSpecError, match="sets seed"):
        StudyConfig(seeds=[0, 1], extra_runs=[{"name": "x", "divergence": "fkl", "seed": 5}])


@pytest.mark.parametrize("bad, message", [
    ({"speed_gamma": 0}, "speed_gamma=0 must be 'auto'"),
    ({"speed_gamma": 9}, r"\[1, speed_max_gamma=8\]"),
    ({"speed_max_gamma": 17}, "speed_max_gamma=17 must be in"),
    ({"speed_copy_pilot_prompts": 0}, "speed_copy_pilot_prompts=0 must be an integer >= 1"),
    ({"speed": [{"greedy": True, "batch": 1}]}, "each setting is a mapping of"),
    ({"speed": [{"batch_size": 0}]}, "batch_size=0 must be an integer >= 1"),
    ({"speed": {"greedy": True}}, "must be a list of settings"),
    ({"draft_vocab": 0}, "draft_vocab=0 must be >= 1"),
    ({"eval_precision": "fp16"}, "precision='fp16' must be one of"),
    ({"gamma": 0}, "gamma=0 must be >= 1"),
])
def test_bad_study_settings_are_refused(bad, message):
    with pytest.raises(DistillSpecError, match=message):
        StudyConfig(**bad)


def test_copy_drafts_read_their_own_pilot_size_and_others_keep_theirs():
    assert StudyConfig(speed_pilot_prompts=4).pilot_prompts(copies_context=True) == 4  # unset: the same pilot
    cfg = StudyConfig(speed_pilot_prompts=4, speed_copy_pilot_prompts=16)
    assert cfg.pilot_prompts(copies_context=True) == 16 and cfg.pilot_prompts(copies_context=False) == 4


def test_eval_precision_changes_only_how_03_loads_the_models():
    cfg = StudyConfig(precision="fp32", eval_precision="bf16")
    assert cfg.for_decoding().precision == "bf16" and cfg.precision == "fp32"
    assert StudyConfig(precision="fp32").for_decoding().precision == "fp32"
