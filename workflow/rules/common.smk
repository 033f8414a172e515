# Helpers shared by all rule files (config validation, paths, per-stage config, resources).

import hashlib
import json
import os
from pathlib import Path

from ranke.config import (
    ConfigError,
    codebook_size,
    method_train,
    missing_assets,
    validate_config,
)
from ranke.config import scheduler_extras as config_scheduler_extras

# The one validation path (ranke.config.validate_config, also what tests and `python -m ranke
# check-assets` use): the schema, its defaults filled in, then every constraint between keys, each
# message naming its keys, before any job starts.
try:
    validate_config(config)
except ConfigError as e:
    raise WorkflowError(str(e)) from None

# A real study must have every asset before any job starts (the demo makes its own).
_missing = missing_assets(config)
if _missing:
    raise WorkflowError(
        "missing asset files (set the paths in your study config; nothing is downloaded):\n  "
        + "\n  ".join(_missing)
    )

# The software of every rule (used with `--sdm conda`; otherwise the active venv runs the rules).
CONDA_ENV = "../../envs/ranke.yaml"

METHODS = {m["name"]: m for m in config["methods"]}
TRAINED = [name for name, m in METHODS.items() if m["mode"] != "none"]
N_ROUNDS = config["rounds"]["n"]
DEMO = config["demo"]["enabled"]
ASSETS = config["assets"]
REPLICATES = [int(s) for s in config["replicates"]]

# One results tree and one log tree per study, so that studies live side by side. A run of one
# (method, replicate seed, round) keeps everything in RUN; round 0 is the base model.
STUDY = config["study"]
RESULTS = f"results/{STUDY}"
LOGS = f"logs/{STUDY}"
RUN = f"{RESULTS}/{{method}}/seed_{{seed}}/round_{{round}}"
RUN_LOGS = f"{LOGS}/{{method}}/seed_{{seed}}/round_{{round}}"
# The demo world (dataset, base models and the tokens its base GPT trains on) is shared by every
# study on it (the demo, its ablations): its files and logs live under demo.root, and only the
# first study that needs them makes them. A real study tokenizes COCO into its own tree.
WORLD = config["demo"]["root"]
WORLD_LOGS = f"{WORLD}/logs"
TOKENS = f"{WORLD}/tokens" if DEMO else f"{RESULTS}/tokens"
TOKEN_LOGS = f"{WORLD_LOGS}/tokenize" if DEMO else f"{LOGS}/tokenize"
PROMPTS = f"{RESULTS}/prompts.parquet"
REPORT_DIR = f"{RESULTS}/report"
# The Snakemake report's front page: written by the report stage (study, what was compared, the
# main table, code version, config hash); before that, a page that says to run the workflow.
FRONT_PAGE = f"{REPORT_DIR}/front_page.rst"
# (absolute: the report stage writes it into the working directory, which need not be the
# Snakefile's, against which `report:` resolves a relative path)
REPORT_FRONT_PAGE = (
    os.path.abspath(FRONT_PAGE) if os.path.exists(FRONT_PAGE) else "workflow/report/workflow.rst"
)
# what the report states it was made from: the whole (validated) config
CONFIG_HASH = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[
    :12
]

# Job groups: on a cluster each group runs as one job, which saves a queue wait and a Python +
# torch start per stage; a local run ignores them. The demo world (CPU minutes in all) is one job
# up to the trained base policy; on a real study the same rules are separate GPU jobs.
DEMO_GROUP = "demo_world" if DEMO else None
# A round's sampling and its scoring use the same GPU one after the other: one job per round
# (evaluate_group below). In the demo the report (seconds of plotting) also joins the evaluation
# of every method's last round, which it waits for anyway: one queue wait less. Not on a real
# study, where that job would hold all the final rounds' GPUs while it plots.
FINAL_GROUP = "final_evaluation" if DEMO else None

# When cores are short (a local run, or inside a group job) the jobs that others wait for go
# first: the chain demo_data -> VQ -> tokenize -> GPT gates every later stage (CLIP, prompts and
# the code histogram fill the gaps), and a sampling job gates its scoring. Tiny CI config, 2 cores:
# the demo world in 31-33 s instead of 35-36 s.
CRITICAL_PATH_PRIORITY = 10


# ---------------------------------------------------------------------------------------------
# Config handed to stages: only the sections a stage reads, so that Snakemake's params trigger
# reruns exactly the stages whose settings changed. Each stage gets it as a small JSON file named
# by its content (STAGE_CONFIGS/<stage>-<hash>.json), written here when the workflow is parsed:
# the command lines and failure messages stay one line long, the file says exactly what the job
# ran with, and a changed setting is a changed file name, hence a changed param.

STAGE_CONFIGS = ".ranke/stage-config"

# `seed` is not among them: it seeds only the demo base models (the demo rules ask for it), and a
# replicate's seed reaches exactly its own rounds and samples (replicate_config below).
_RUNTIME_KEYS = ["backbone", "device", "precision", "image_size", "assets"]


def _sections(*sections):
    cfg = {key: config[key] for key in _RUNTIME_KEYS if key in config}
    for section in sections:
        if section == "methods":
            cfg["methods"] = config["methods"]  # a list: the tables keep the study's order
        else:
            cfg[section] = config[section]
    return cfg


def config_file(stage, cfg):
    """Write `cfg` (if not already there) as STAGE_CONFIGS/<stage>-<hash>.json; return its path."""
    text = json.dumps(cfg, sort_keys=True, indent=1) + "\n"
    path = Path(STAGE_CONFIGS) / f"{stage}-{hashlib.sha256(text.encode()).hexdigest()[:12]}.json"
    if not path.exists():  # identical content by construction: a concurrent writer is harmless
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".tmp-{path.name}.{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, path)
    return str(path)


def stage_config(stage, *sections):
    return config_file(stage, _sections(*sections))


def replicate_config(stage, *sections):
    """stage_config for one replicate: the evaluation sampling seed of replicate s is
    sampling.seed + s, the same for every method of the replicate (paired comparisons)."""

    def cfg_of(wildcards):
        cfg = _sections(*sections)
        if "sampling" in cfg:
            cfg["sampling"] = dict(
                cfg["sampling"], seed=int(config["sampling"]["seed"]) + int(wildcards.seed)
            )
        return config_file(stage, cfg)

    return cfg_of


def fid_reference_config():
    """Only what the reference statistics depend on (not the rest of `score`)."""
    cfg = _sections("bad_images")
    cfg["score"] = {
        "batch_size": config["score"]["batch_size"],
        "fid_protocol": config["score"]["fid_protocol"],
        "fid_reference": config["score"]["fid_reference"],
    }
    return config_file("fid_reference", cfg)


def round_config(wildcards):
    """A round reads its own method only (not the other methods), the train block with that
    method's overrides merged in, and its replicate's seed."""
    cfg = _sections("rounds", "cluster")
    cfg["methods"] = {wildcards.method: METHODS[wildcards.method]}
    cfg["train"] = method_train(config, wildcards.method)
    cfg["seed"] = int(wildcards.seed)
    return config_file("round", cfg)


# ---------------------------------------------------------------------------------------------
# Resources: one profile serves every stage because each rule reads its own from the config.


def res(group, key):
    table = config.get("resources", {})
    default = {"runtime": 30, "mem_mb": 4000, "gpu": 0, "cpus_per_gpu": 0, "threads": 2}
    default.update(table.get("default", {}))
    return table.get(group, default).get(key, default[key])


def scheduler_extras(group):
    """qos / constraint / slurm_extra of a rule group, only those set (ranke.config)."""
    return config_scheduler_extras(config, group)


# ---------------------------------------------------------------------------------------------
# Paths


def run_dir(method, seed, r):
    return RUN.format(method=method, seed=seed, round=r)


def checkpoint_of(method, seed, r):
    """The checkpoint a (method, replicate, round) decodes/samples with: round 0 is the base assets."""
    if int(r) == 0:
        return "base"
    return f"{run_dir(method, seed, r)}/checkpoint"


def base_model_files():
    """The base model's files: LlamaGen's GPT, VQ and T5, or the Janus directory (and processor)."""
    if config["backbone"] == "janus":
        janus = ASSETS["janus"]
        return [janus["path"]] + ([janus["processor"]] if janus.get("processor") else [])
    return [
        ASSETS["gpt"]["checkpoint"],
        ASSETS["vq"]["checkpoint"],
        ASSETS["text_encoder"]["path"],
    ]


def base_vq_files():
    """What the base codes depend on: LlamaGen's VQ file, or the Janus directory (its VQ is part
    of the model's weights)."""
    if config["backbone"] == "janus":
        return [ASSETS["janus"]["path"]]
    return [ASSETS["vq"]["checkpoint"]]


def round_init(wildcards):
    r = int(wildcards.round)
    return "base" if r == 1 else checkpoint_of(wildcards.method, wildcards.seed, r - 1)


def round_init_inputs(wildcards):
    r = int(wildcards.round)
    if r == 1:
        return base_model_files()
    return [checkpoint_of(wildcards.method, wildcards.seed, r - 1)]


def samples_of(method, seed, r):
    """Decoder-only rounds keep the base policy, so they score the base samples of their replicate."""
    if int(r) == 0 or METHODS[method]["mode"] == "decoder":
        return f"{run_dir('base', seed, 0)}/samples.parquet"
    return f"{run_dir(method, seed, r)}/samples.parquet"


def final_round(method):
    return 0 if METHODS[method]["mode"] == "none" else N_ROUNDS


def evaluate_group(wildcards):
    """The job group of a round's sample + score (see FINAL_GROUP above)."""
    if FINAL_GROUP and int(wildcards.round) == final_round(wildcards.method):
        return FINAL_GROUP
    return "evaluate"


def score_samples(wildcards):
    return samples_of(wildcards.method, wildcards.seed, wildcards.round)


def score_checkpoint(wildcards):
    return checkpoint_of(wildcards.method, wildcards.seed, wildcards.round)


def score_checkpoint_inputs(wildcards):
    if int(wildcards.round) == 0:
        return base_vq_files()
    return [checkpoint_of(wildcards.method, wildcards.seed, wildcards.round)]


def prompt_file_inputs():
    """The released prompt file, when the study samples its prompts instead of drawing them."""
    path = config["prompts"].get("captions_csv")
    return [path] if path else []


def fid_reference_path():
    from ranke.config import reference_key_from_config

    return f"resources/fid/{reference_key_from_config(config)}.pt"


def scored_runs():
    """(method, seed, round) of every scored run: the base at round 0, every trained method's rounds."""
    runs = []
    for seed in REPLICATES:
        runs.append(("base", seed, 0))
        runs += [(m, seed, r) for m in TRAINED for r in range(1, N_ROUNDS + 1)]
    return runs


def all_run_files(name):
    return [f"{run_dir(m, s, r)}/{name}" for m, s, r in scored_runs()]


def all_train_logs():
    return [f"{run_dir(m, s, r)}/train_log.parquet" for m, s, r in scored_runs() if r > 0]


def final_grids():
    """The report's sample grid: the first replicate's final round of every method."""
    seed = REPLICATES[0]
    grids = [f"{run_dir('base', seed, 0)}/grid.png"]
    grids += [f"{run_dir(m, seed, N_ROUNDS)}/grid.png" for m in TRAINED]
    return grids


def demo_outputs():
    return [f"{RESULTS}/demo/quality.parquet"] if DEMO else []


REPORT_FILES = [
    "main_table.md",
    "main_table.tex",
    "main_table.csv",
    "main_table.html",
    "ablation_table.md",
    "ablation_table.csv",
    "rounds_table.md",
    "rounds_table.csv",
    "deltas.csv",
    "replicates.csv",
    "curves.png",
    "pareto.png",
    "code_shift.png",
    "train_curves.png",
    "samples.png",
]


def report_outputs():
    return [f"{REPORT_DIR}/{name}" for name in REPORT_FILES]


def parent_dir_of_weights(wildcards, output):
    """The demo CLIP stage writes a directory; its rule declares the two files in it."""
    return str(Path(output.weights).parent)


def dir_of_output_main(wildcards, output):
    return str(Path(output.main).parent)
