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


def _schema_errors(config: dict, *, fill_defaults: bool = True, prefix: str = "") -> list[str]:
    """`key: message` for every way `config` breaks the schema (defaults filled in on the way)."""
    from jsonschema import Draft202012Validator

    cls = _fill_defaults(Draft202012Validator) if fill_defaults else Draft202012Validator
    errors = sorted(cls(_schema()).iter_errors(config), key=lambda e: list(e.absolute_path))
    return [f"{prefix}{'.'.join(str(p) for p in e.absolute_path) or '<top level>'}: {e.message}" for e in errors]


def validate_config(config: dict) -> dict:
    """Validate (and fill defaults into) `config`; raise ConfigError naming the offending key."""
    errors = _schema_errors(config)
    if errors:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(errors[:10]))
    problems = cross_key_problems(config)
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
    return config


# a GPT size preset fixes these; explicit values next to it would silently override it
GPT_PRESET_SIZE_KEYS = ("dim", "n_layer", "n_head")
# directories of results/<study>/ that are not methods
RESERVED_METHOD_NAMES = ("demo", "tokens", "report")


def method_train(config: dict, name: str) -> dict:
    """The `train:` block one method trains with: the study's, with the method's own overrides
    merged over it (an ablation)."""
    method = next((m for m in config["methods"] if m["name"] == name), None)
    if method is None:
        raise KeyError(f"no method named {name!r} in methods")
    return merge(config["train"], method.get("train") or {})


def has_train_overrides(method: dict) -> bool:
    return bool(method.get("train"))


def _train_problems(train: dict, where: str) -> list[str]:
    """Constraints inside one (merged) train block."""
    problems = []
    k, g = train["decoder"]["rank_k"], train["group_size"]
    if k > g:
        problems.append(f"{where}decoder.rank_k = {k} exceeds {where}group_size = {g} (top-K of G rollouts)")
    b, w = train["prompts_per_step"], train["world_size"]
    if b % w:
        problems.append(f"{where}prompts_per_step = {b} is not a multiple of {where}world_size = {w} "
                        "(every rank takes the same number of prompts)")
    return problems


def _geometry_problems(config: dict) -> list[str]:
    """image_size against the VQ's downsampling (LlamaGen: 2^(levels - 1) of assets.vq.arch.ch_mult;
    Janus-Pro: 16) and, in the demo, against the dataset generator's range."""
    size = config.get("image_size")
    if not isinstance(size, int):
        return []
    problems = []
    if config.get("backbone", "llamagen") == "llamagen":
        levels = len(((config.get("assets") or {}).get("vq") or {}).get("arch", {}).get("ch_mult") or [1, 1, 2, 2, 4])
        factor, where = 2 ** (levels - 1), f"assets.vq.arch.ch_mult has {levels} levels"
    else:
        factor, where = 16, "the Janus-Pro VQ"
    if size % factor:
        problems.append(f"image_size = {size} is not a multiple of the VQ's downsampling factor {factor} ({where})")
    if (config.get("demo") or {}).get("enabled") and not 16 <= size <= 512:
        problems.append(f"image_size = {size}: the demo world draws images of 16 to 512 px (demo.enabled)")
    return problems


def cross_key_problems(config: dict) -> list[str]:
    """Constraints between keys that the JSON schema cannot state, one message per problem naming
    the keys. The Snakefile checks these while it parses (before any job), as do the stage CLIs."""
    problems = []
    methods = [m["name"] for m in config["methods"]]
    if len(set(methods)) != len(methods):
        problems.append(f"methods: duplicate method names in {methods}")
    seeds = [int(s) for s in config.get("replicates", [0])]
    if len(set(seeds)) != len(seeds):
        problems.append(f"replicates: a seed is listed twice in {config.get('replicates')}")
    reserved = sorted(set(methods) & set(RESERVED_METHOD_NAMES))
    if reserved:
        problems.append(f"methods: {reserved} name directories of results/<study>/ and cannot be method names")
    problems += _train_problems(config["train"], "train.")
    for m in config["methods"]:
        if not has_train_overrides(m):
            continue
        where = f"methods[{m['name']}].train (merged over train): "
        if m["mode"] == "none":
            problems.append(f"methods[{m['name']}]: a method of mode none trains nothing; its train overrides do nothing")
            continue
        merged = merge(config, {"train": method_train(config, m["name"])})
        errors = [e for e in _schema_errors(merged, fill_defaults=False) if e.split(":")[0].startswith("train")]
        problems += [where + e for e in errors]
        if not errors:
            problems += [where + p for p in _train_problems(merged["train"], "train.")]
    for which in ("rl", "ablation"):
        key = f"report.{which}_reference"
        named = (config.get("report") or {}).get(f"{which}_reference")
        if named and named not in methods:
            problems.append(f"{key} = {named!r} is not a method of the study ({methods})")
    problems += _geometry_problems(config)
    arch = ((config.get("assets") or {}).get("gpt") or {}).get("arch") or {}
    if config.get("backbone", "llamagen") == "llamagen" and arch.get("preset"):
        explicit = {k: arch[k] for k in GPT_PRESET_SIZE_KEYS if arch.get(k) is not None}
        if explicit:
            problems.append(
                f"assets.gpt.arch: preset {arch['preset']} fixes {', '.join(GPT_PRESET_SIZE_KEYS)}, but "
                f"{explicit} is set too (a study file is merged over config.yaml, so the demo's sizes are "
                f"inherited unless the study sets them to null)")
    problems += _joint_job_problems(config)
    return problems


# Scheduler settings a site may need (QOS, node features such as a GPU type, any other sbatch
# flag), per rule group of `resources`: passed to the SLURM executor only where set, since the
# plugin turns an empty value into an empty flag (`-C ''`). A group's own value wins over
# `default`'s; null (what the schema fills in) means "not set here".
SCHEDULER_EXTRAS = ("qos", "constraint", "slurm_extra")


def scheduler_extras(config: dict, group: str) -> dict:
    table = config.get("resources") or {}
    own, default = table.get(group) or {}, table.get("default") or {}
    picked = {key: own.get(key) if own.get(key) is not None else default.get(key) for key in SCHEDULER_EXTRAS}
    return {key: value for key, value in picked.items() if value is not None}


def _joint_job_problems(config: dict) -> list[str]:
    """The resource groups whose rules the workflow submits as one SLURM job (its job groups,
    workflow/rules/common.smk) must ask for the same scheduler settings: a round's sample + score
    always; in the demo the world (default, demo_train, tokenize)."""
    joint = [["sample", "score"]]
    if (config.get("demo") or {}).get("enabled"):
        joint.append(["default", "demo_train", "tokenize"])
    problems = []
    for groups in joint:
        if len({json.dumps(scheduler_extras(config, g), sort_keys=True) for g in groups}) > 1:
            problems.append(
                f"resources: {', '.join(groups)} run as one job, so their {'/'.join(SCHEDULER_EXTRAS)} must "
                "agree; got " + "; ".join(f"{g}: {scheduler_extras(config, g) or 'none'}" for g in groups))
    return problems


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
        if a["perceptual"].get("vgg16"):
            files["assets.perceptual.vgg16"] = a["perceptual"]["vgg16"]
    if config["prompts"].get("captions_csv"):
        files["prompts.captions_csv"] = config["prompts"]["captions_csv"]
    if config["backbone"] == "llamagen":
        files["assets.vq.checkpoint"] = (a.get("vq") or {}).get("checkpoint")
        files["assets.gpt.checkpoint"] = (a.get("gpt") or {}).get("checkpoint")
        files["assets.text_encoder.path"] = (a.get("text_encoder") or {}).get("path")
    else:
        files["assets.janus.path"] = (a.get("janus") or {}).get("path")
    return files


def codebook_size(config: dict) -> int:
    """The VQ codebook size of a study's backbone, without torch (the workflow calls this while it
    parses): LlamaGen from assets.vq.arch; Janus from its directory's config.json, in either layout
    (transformers: vq_config.num_embeddings; original DeepSeek: gen_vision_config.params.image_token_size)."""
    if config.get("backbone", "llamagen") != "janus":
        return int((config["assets"]["vq"].get("arch") or {}).get("codebook_size", 16384))
    path = Path(config["assets"]["janus"]["path"]) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"assets.janus.path: no config.json in {path.parent}")
    doc = json.loads(path.read_text())
    if "vq_config" in doc:
        return int(doc["vq_config"].get("num_embeddings", 16384))
    try:
        return int(doc["gen_vision_config"]["params"]["image_token_size"])
    except KeyError as e:
        raise ValueError(f"{path}: neither vq_config.num_embeddings nor gen_vision_config.params."
                         f"image_token_size: not a Janus config ({e})") from e


def missing_assets(config: dict) -> list[str]:
    """`key: path` for every asset that does not exist. In the demo, rules make them: none missing."""
    if config.get("demo", {}).get("enabled"):
        return []
    return [
        f"{key}: {path}"
        for key, path in asset_files(config).items()
        if path is None or not Path(path).exists()
    ]


# Checksums the upstream projects publish, by file name: OpenAI's CLIP URL carries the file's
# sha256; torch.hub-style names end in its first 8 hex digits (torch-fidelity's Inception,
# torchvision's VGG16). Every other asset has none published: record yours (--checksums).
PUBLISHED_SHA256 = {
    "ViT-B-32.pt": "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af",
}
PUBLISHED_SHA256_PREFIX = {
    "weights-inception-2015-12-05-6726825d.pth": "6726825d",
    "pt_inception-2015-12-05-6726825d.pth": "6726825d",
    "vgg16-397923af.pth": "397923af",
}


def asset_checksums(config: dict) -> list[tuple[str, str, str, str]]:
    """(config key, file, sha256, verdict) for every asset file (each file of a directory asset but
    the COCO tree); verdict: "published: match", "published: DIFFERS" or "" (none published)."""
    from ranke.io import sha256_file  # (pandas / pyarrow: not at the workflow's parse time)

    rows = []
    for key, path in asset_files(config).items():
        if path is None or key == "assets.coco_root" or not Path(path).exists():
            continue
        path = Path(path)
        for f in sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]:
            digest = sha256_file(f)
            if f.name in PUBLISHED_SHA256:
                verdict = "published: " + ("match" if digest == PUBLISHED_SHA256[f.name] else "DIFFERS")
            elif f.name in PUBLISHED_SHA256_PREFIX:
                verdict = "published: " + ("match" if digest.startswith(PUBLISHED_SHA256_PREFIX[f.name]) else "DIFFERS")
            else:
                verdict = ""
            rows.append((key, str(f), digest, verdict))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ranke check-assets", description=__doc__)
    p.add_argument("configfiles", nargs="*", help="config files merged over config.yaml")
    p.add_argument("--checksums", action="store_true",
                   help="also print every asset file's sha256 (and check it where the upstream publishes one)")
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
    if args.checksums:
        rows = asset_checksums(config)
        for key, path, digest, verdict in rows:
            print(f"{digest}  {path}  ({key}{'; ' + verdict if verdict else ''})")
        if any(verdict.endswith("DIFFERS") for *_, verdict in rows):
            print("some files differ from the checksum their upstream publishes (see DIFFERS above)")
            return 1
    return 0


# ---------------------------------------------------------------------------------------------
# The FID reference file a config names. The workflow calls this while it parses the Snakefile,
# in every Snakemake process (each cluster job starts one), so it lives here, free of torch,
# rather than in ranke.fid_reference (which computes the statistics).


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "-", text).strip("-") or "x"


# score.fid_protocol: how images reach the Inception network (see ranke.metrics.fid).
#   clean:          PIL-bicubic resize to 299 in float, clip to [0, 255] (clean-fid "clean", what the
#                   paper's FIDs used: RankE evaluations/t2i/evaluation.py:456-481)
#   torch-fidelity: uint8 into torch-fidelity's own forward (TF1-style bilinear resize inside)
FID_PROTOCOLS = ("clean", "torch-fidelity")
DEFAULT_FID_PROTOCOL = "clean"
# The one extractor whose input resizing the protocol chooses (= ranke.metrics.fid.INCEPTION; kept
# here as a string so that this module stays free of torch). Every other extractor (the demo's
# clip-image, torch-fidelity's CLIP/VGG extractors) always preprocesses its own way.
FID_PROTOCOL_EXTRACTOR = "inception-v3-compat"


def configured_fid_protocol(cfg: dict) -> str:
    """score.fid_protocol (default clean), validated."""
    value = (cfg.get("score") or {}).get("fid_protocol", DEFAULT_FID_PROTOCOL)
    if value not in FID_PROTOCOLS:
        raise ValueError(f"score.fid_protocol must be one of {list(FID_PROTOCOLS)}, got {value!r}")
    return value


def applied_fid_protocol(extractor: str, protocol: str) -> str | None:
    """The protocol as it applies to `extractor`: `protocol` for Inception, None (does not apply:
    the extractor's own preprocessing) for any other extractor."""
    if protocol not in FID_PROTOCOLS:
        raise ValueError(f"FID protocol must be one of {list(FID_PROTOCOLS)}, got {protocol!r}")
    return protocol if extractor == FID_PROTOCOL_EXTRACTOR else None


def reference_cache_key(coco_root: str | os.PathLike, split: str, n: int, seed: int, image_size: int,
                        extractor: str, protocol: str | None = None) -> str:
    """File stem encoding dataset, subset, resolution, extractor and FID protocol, e.g.
    `coco-3f2a9c1d_val_all_256px_inception-v3-compat_clean` or
    `coco-3f2a9c1d_val_n30000-seed0_256px_clip-image` (no protocol: it does not apply to clip-image).

    The dataset part is the root's folder name plus a short hash of the normalised root path, so two
    datasets that share a folder name do not share a cache entry.
    """
    root = os.path.normpath(str(coco_root))
    tag = f"{_slug(Path(root).name)}-{hashlib.sha1(root.encode()).hexdigest()[:8]}"
    subset = "all" if not n else f"n{int(n)}-seed{int(seed)}"
    key = f"{tag}_{_slug(split)}_{subset}_{int(image_size)}px_{_slug(extractor)}"
    return f"{key}_{_slug(protocol)}" if protocol else key


def reference_settings(cfg: dict) -> dict:
    """What the reference depends on, from the (partial) config: assets.coco_root, assets.fid,
    image_size, score.fid_protocol and the optional score.fid_reference {split, n, seed}.
    `fid_protocol` is None for extractors the protocol does not apply to."""
    ref = (cfg.get("score") or {}).get("fid_reference") or {}
    n = int(ref.get("n") or 0)
    extractor = cfg["assets"]["fid"]["extractor"]
    return {
        "dataset_root": os.path.normpath(str(cfg["assets"]["coco_root"])),
        "split": ref.get("split", "val"),
        "subset_n": n,
        "subset_seed": int(ref.get("seed", 0)) if n else None,
        "resolution": int(cfg["image_size"]),
        "extractor": extractor,
        "fid_protocol": applied_fid_protocol(extractor, configured_fid_protocol(cfg)),
        "weights": cfg["assets"]["fid"].get("weights"),
    }


def reference_key_from_config(cfg: dict) -> str:
    s = reference_settings(cfg)
    return reference_cache_key(s["dataset_root"], s["split"], s["subset_n"], s["subset_seed"] or 0,
                               s["resolution"], s["extractor"], s["fid_protocol"])
