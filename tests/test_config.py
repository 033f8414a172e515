import copy

import pytest
import yaml

from ranke.config import DEFAULT_CONFIG, REPO, ConfigError, load_config, missing_assets, validate_config


def _default():
    return yaml.safe_load(DEFAULT_CONFIG.read_text())


def test_shipped_configs_validate():
    demo = load_config()
    assert demo["demo"]["enabled"] and missing_assets(demo) == []
    for study in sorted((REPO / "workflow" / "studies").glob("*.yaml")):
        cfg = load_config(study)
        assert not cfg["demo"]["enabled"]


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
