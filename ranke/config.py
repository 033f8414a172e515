"""Loading and checking a study configuration outside Snakemake (tests, notebooks, `ranke check-assets`).

The schema is workflow/schemas/config.schema.yaml, the same file Snakemake validates against, so a
config that passes here passes there.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SCHEMA_PATH = REPO / "workflow" / "schemas" / "config.schema.yaml"
DEFAULT_CONFIG = REPO / "config.yaml"


class ConfigError(ValueError):
    """The configuration does not validate; the message names the key."""


def merge(base: dict, override: dict) -> dict:
    """Recursive dict merge with the same semantics as Snakemake's --configfile (lists replace)."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def _schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def _fill_defaults(validator_cls):
    """A validator class that fills `default`s into the instance (as snakemake.utils.validate does)."""
    from jsonschema import validators

    validate_properties = validator_cls.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = json.loads(json.dumps(sub["default"]))
        yield from validate_properties(validator, properties, instance, schema)

    return validators.extend(validator_cls, {"properties": set_defaults})


def validate_config(config: dict) -> dict:
    """Validate (and fill defaults into) `config`; raise ConfigError naming the offending key."""
    from jsonschema import Draft202012Validator

    validator = _fill_defaults(Draft202012Validator)(_schema())
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for e in errors[:10]:
            key = ".".join(str(p) for p in e.absolute_path) or "<top level>"
            lines.append(f"{key}: {e.message}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines))
    methods = [m["name"] for m in config["methods"]]
    if len(set(methods)) != len(methods):
        raise ConfigError(f"methods: duplicate method names in {methods}")
    return config


def load_config(*paths: str | Path) -> dict:
    """Load config.yaml, merge further config files over it (like --configfile), validate."""
    config: dict = {}
    for path in (DEFAULT_CONFIG, *paths):
        config = merge(config, yaml.safe_load(Path(path).read_text()) or {})
    return validate_config(config)


def asset_files(config: dict) -> dict[str, str]:
    """Every local file a study needs, keyed by its config key."""
    a = config["assets"]
    files = {
        "assets.coco_root": a["coco_root"],
        f"assets.coco_root (annotations/captions_{config['prompts']['split']}2014.json)": str(
            Path(a["coco_root"]) / "annotations" / f"captions_{config['prompts']['split']}2014.json"
        ),
        "assets.clip.weights": a["clip"]["weights"],
        "assets.reward.weights": a["reward"]["weights"],
        "assets.fid.weights": a["fid"]["weights"],
    }
    for key in ("clip", "reward"):
        if a[key].get("config"):
            files[f"assets.{key}.config"] = a[key]["config"]
    if a["perceptual"]["kind"] == "lpips-vgg":
        files["assets.perceptual.weights"] = a["perceptual"].get("weights")
    if config["backbone"] == "llamagen":
        files["assets.vq.checkpoint"] = (a.get("vq") or {}).get("checkpoint")
        files["assets.gpt.checkpoint"] = (a.get("gpt") or {}).get("checkpoint")
        files["assets.text_encoder.path"] = (a.get("text_encoder") or {}).get("path")
    else:
        files["assets.janus.path"] = (a.get("janus") or {}).get("path")
    return files


def missing_assets(config: dict) -> list[str]:
    """`key: path` for every asset that does not exist. In the demo, rules make them: none missing."""
    if config.get("demo", {}).get("enabled"):
        return []
    return [
        f"{key}: {path}"
        for key, path in asset_files(config).items()
        if path is None or not Path(path).exists()
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ranke check-assets", description=__doc__)
    p.add_argument("configfiles", nargs="*", help="config files merged over config.yaml")
    args = p.parse_args(argv)
    try:
        config = load_config(*args.configfiles)
    except ConfigError as e:
        print(e)
        return 1
    missing = missing_assets(config)
    if missing:
        print("missing asset files:\n  " + "\n  ".join(missing))
        return 1
    print("configuration valid; all asset files present")
    return 0


# ---------------------------------------------------------------------------------------------
# The FID reference file a config names. The workflow calls this while it parses the Snakefile,
# in every Snakemake process (each cluster job starts one), so it lives here, free of torch,
# rather than in ranke.fid_reference (which computes the statistics).


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "-", text).strip("-") or "x"


def reference_cache_key(coco_root: str | os.PathLike, split: str, n: int, seed: int, image_size: int,
                        extractor: str) -> str:
    """File stem encoding dataset, subset, resolution and extractor, e.g.
    `coco-3f2a9c1d_val_all_256px_inception-v3-compat` or `coco-3f2a9c1d_val_n30000-seed0_256px_...`.

    The dataset part is the root's folder name plus a short hash of the normalised root path, so two
    datasets that share a folder name do not share a cache entry.
    """
    root = os.path.normpath(str(coco_root))
    tag = f"{_slug(Path(root).name)}-{hashlib.sha1(root.encode()).hexdigest()[:8]}"
    subset = "all" if not n else f"n{int(n)}-seed{int(seed)}"
    return f"{tag}_{_slug(split)}_{subset}_{int(image_size)}px_{_slug(extractor)}"


def reference_settings(cfg: dict) -> dict:
    """What the reference depends on, from the (partial) config: assets.coco_root, assets.fid,
    image_size and the optional score.fid_reference {split, n, seed}."""
    ref = (cfg.get("score") or {}).get("fid_reference") or {}
    n = int(ref.get("n") or 0)
    return {
        "dataset_root": os.path.normpath(str(cfg["assets"]["coco_root"])),
        "split": ref.get("split", "val"),
        "subset_n": n,
        "subset_seed": int(ref.get("seed", 0)) if n else None,
        "resolution": int(cfg["image_size"]),
        "extractor": cfg["assets"]["fid"]["extractor"],
        "weights": cfg["assets"]["fid"].get("weights"),
    }


def reference_key_from_config(cfg: dict) -> str:
    s = reference_settings(cfg)
    return reference_cache_key(s["dataset_root"], s["split"], s["subset_n"], s["subset_seed"] or 0,
                               s["resolution"], s["extractor"])
