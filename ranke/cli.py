"""`python -m ranke <command> ...`: one sub-command per pipeline stage, each a thin wrapper.

Every stage module exposes `main(argv) -> int`; this file only dispatches, so that
`python -m ranke tokenize --help` shows that stage's own options.
"""

from __future__ import annotations

import importlib
import logging
import sys

# command -> module whose main(argv) implements it (kept in pipeline order)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo-data": ("ranke.demo.dataset_stage", "write the synthetic shapes dataset in COCO layout"),
    "demo-train": ("ranke.demo.train", "train one demo base model (vq | text | clip | gpt)"),
    "demo-quality": ("ranke.demo.quality", "measure the demo base models' quality bars"),
    "tokenize": ("ranke.tokenize", "COCO-layout images -> tokens.parquet + code histogram"),
    "prompts": ("ranke.prompts", "evaluation prompt set (COCO-30K protocol) -> prompts.parquet"),
    "sample": ("ranke.generate", "generate codes for the eval prompts -> samples.parquet"),
    "round": ("ranke.train.launch", "run one training round (submitit job) -> checkpoint dir"),
    "fid-reference": ("ranke.fid_reference", "reference FID statistics of the real images (cached by key)"),
    "score": ("ranke.score", "decode + FID + CLIP + code shift -> metrics.parquet"),
    "report": ("ranke.report.build", "tables and plots from all metrics"),
    "check-assets": ("ranke.config", "validate a config and list missing asset files"),
    "standins": ("ranke.standins", "write a study's assets offline in their real formats + a config overlay"),
    "install-profile": ("ranke.profile", "install the SLURM profile for `snakemake --profile slurm`"),
    "unlock": ("ranke.unlock", "remove a killed snakemake's stale lock, if no snakemake still works there"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: python -m ranke <command> [options]    (python -m ranke --version)", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"}:
        print(_usage())
        return 0
    if argv[0] == "--version":
        from ranke.runtime import code_version

        print(code_version())  # the package version and the git commit the code came from
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"unknown command '{name}'\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    try:
        return int(module.main(rest) or 0)
    except Exception as e:  # noqa: BLE001 - every failure: traceback to the log, then one line
        # The traceback goes to stderr (the rule's log) through logging; the last line of the log,
        # what `snakemake --show-failed-logs` and a user's `tail` see first, names what failed and
        # where (stage messages name their file or config key).
        logging.getLogger("ranke").error("%s failed", name, exc_info=True)
        print(f"ranke {name}: error: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        return 1
