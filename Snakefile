# RankE: policy (GRPO) + VQ-decoder co-evolution for discrete autoregressive text-to-image models.
#
#   snakemake --cores 2                                   the demo study (config.yaml)
#   snakemake --profile slurm --configfile workflow/studies/llamagen_xl.yaml
#
# Data flows one way: COCO (or the demo world) -> tokens -> prompts -> samples -> rounds -> metrics -> report,
# under results/<study>/ (config `study`), one run per method x replicate seed x round.

import os

from snakemake.utils import min_version

min_version("9.20")


# Resolved next to this file, so `snakemake -s <repo>/Snakefile --directory <elsewhere>` works too.
configfile: os.path.join(workflow.basedir, "config.yaml")


include: "workflow/rules/common.smk"


# `snakemake --report report.html`: its front page (workflow/rules/common.smk)
report: REPORT_FRONT_PAGE


wildcard_constraints:
    method="|".join(METHODS),
    seed=r"\d+",
    round=r"\d+",
    split="train|val",


include: "workflow/rules/demo.smk"
include: "workflow/rules/tokenize.smk"
include: "workflow/rules/prompts.smk"
include: "workflow/rules/generate.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/score.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        report_outputs(),
        demo_outputs(),
