import copy
import re

import pytest
import yaml

from ranke.config import DEFAULT_CONFIG, REPO, ConfigError, load_config, missing_assets, validate_config


def _default():
    return yaml.safe_load(DEFAULT_CONFIG.read_text())


def test_shipped_configs_validate():
    demo = load_config()
    assert demo["demo"]["enabled"] and missing_assets(demo) == []
    demo_studies = {"demo_ablations"}  # on the demo world: they share it (workflow/rules/common.smk)
    for study in sorted((REPO / "workflow" / "studies").glob("*.yaml")):
        cfg = load_config(study)
        assert cfg["demo"]["enabled"] == (study.stem in demo_studies), study.name
        assert cfg["study"] != demo["study"], "a study must not share the demo's results tree"


def test_method_overrides_are_validated_and_merged():
    cfg = _default()
    cfg["methods"].append({"name": "ranke_k1", "mode": "ranke", "train": {"decoder": {"rank_k": 1}}})
    from ranke.config import method_train

    out = validate_config(cfg)
    assert method_train(out, "ranke_k1")["decoder"]["rank_k"] == 1
    assert method_train(out, "ranke")["decoder"]["rank_k"] == out["train"]["decoder"]["rank_k"]
    assert method_train(out, "ranke_k1")["decoder"]["lr"] == out["train"]["decoder"]["lr"]  # the rest inherited
    for override, message in [({"decoder": {"rank_kk": 1}}, "methods[bad].train (merged over train): train.decoder"),
                              ({"decoder": {"rank_k": "one"}}, "train.decoder.rank_k"),
                              ({"decoder": {"rank_k": 99}}, "decoder.rank_k = 99 exceeds train.group_size")]:
        bad = _default()
        bad["methods"].append({"name": "bad", "mode": "ranke", "train": override})
        with pytest.raises(ConfigError, match=re.escape(message)):
            validate_config(bad)


@pytest.mark.parametrize("change, message", [
    ({"replicates": [0, "0"]}, "a seed is listed twice"),
    ({"methods": [{"name": "base", "mode": "none"}, {"name": "tokens", "mode": "ranke"}]}, "cannot be method names"),
    ({"report": {"rl_reference": "nope"}}, "report.rl_reference = 'nope' is not a method"),
    ({"image_size": 34}, "image_size = 34 is not a multiple of the VQ's downsampling factor 4"),
    ({"train": {"decoder": {"rank_k": 9}}}, "train.decoder.rank_k = 9 exceeds train.group_size = 8"),
    ({"train": {"prompts_per_step": 3, "world_size": 2}}, "prompts_per_step = 3 is not a multiple of train.world_size"),
    ({"methods": [{"name": "base", "mode": "none"}, {"name": "a", "mode": "ranke"}, {"name": "a", "mode": "policy"}]},
     "duplicate method names"),
])
def test_cross_key_problems_name_the_keys(change, message):
    from ranke.config import merge

    cfg = merge(_default(), change)
    with pytest.raises(ConfigError, match=message):
        validate_config(cfg)


def test_defaults_are_filled():
    cfg = _default()
    del cfg["score"]
    out = validate_config(cfg)
    assert out["score"]["decoder"] == "online"


@pytest.mark.parametrize(
    "path, value, key",
    [
        (("train", "policy", "lr"), -1.0, "train.policy.lr"),
        (("rounds", "n"), 0, "rounds.n"),
        (("sampling", "cfg_scale"), "six", "sampling.cfg_scale"),
        (("assets", "fid", "extractor"), "inception", "assets.fid.extractor"),
        (("train", "policy", "typo_key"), 1, "train.policy"),
    ],
)
def test_bad_values_name_the_key(path, value, key):
    cfg = _default()
    node = cfg
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate_config(cfg)


def test_duplicate_method_names_rejected():
    cfg = _default()
    cfg["methods"].append(copy.deepcopy(cfg["methods"][1]))
    with pytest.raises(ConfigError, match="duplicate"):
        validate_config(cfg)


def test_study_lists_every_missing_asset():
    cfg = load_config(REPO / "workflow" / "studies" / "llamagen_xl.yaml")
    missing = missing_assets(cfg)
    keys = {m.split(":")[0] for m in missing}
    for key in ["assets.vq.checkpoint", "assets.gpt.checkpoint", "assets.text_encoder.path",
                "assets.clip.weights", "assets.reward.weights", "assets.fid.weights",
                "assets.perceptual.weights", "assets.coco_root"]:
        assert key in keys


def test_study_merged_over_the_demo_builds_the_real_gpt(tmp_path):
    """A study file is merged over config.yaml (as Snakemake's --configfile does), so a preset next
    to the demo's inherited dim/n_layer/n_head built a 96-wide 3-layer "GPT-XL": the study nulls them,
    and a preset with explicit sizes is refused naming the keys."""
    from ranke.models.backbone import gpt_config

    cfg = load_config(REPO / "workflow" / "studies" / "llamagen_xl.yaml")
    g = gpt_config(cfg["assets"]["gpt"]["arch"], 16384, 256, 120)
    assert (g.dim, g.n_layer, g.n_head, g.caption_dim) == (1280, 36, 20, 2048)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"assets": {"gpt": {"arch": {"preset": "GPT-XL"}}}}))
    with pytest.raises(ConfigError, match=r"assets\.gpt\.arch: preset GPT-XL fixes dim"):
        load_config(bad)
    with pytest.raises(ValueError, match="must be null"):
        gpt_config({"preset": "GPT-XL", "dim": 96}, 16384, 256, 120)
