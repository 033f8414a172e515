# Sampling the evaluation prompts: the base policy (baseline) and each round's policy, once per
# replicate (its sampling seed: sampling.seed + seed).


rule baseline:
    input:
        prompts=PROMPTS,
        models=base_model_files(),
    output:
        f"{RESULTS}/base/seed_{{seed}}/round_0/samples.parquet",
    log:
        f"{LOGS}/base/seed_{{seed}}/round_0/sample.log",
    priority: CRITICAL_PATH_PRIORITY
    conda:
        CONDA_ENV
    threads: res("sample", "threads")
    resources:
        **scheduler_extras("sample"),
        runtime=res("sample", "runtime"),
        mem_mb=res("sample", "mem_mb"),
        gpu=res("sample", "gpu"),
        cpus_per_gpu=res("sample", "cpus_per_gpu"),
    params:
        cfg=replicate_config("sample", "sampling"),
    shell:
        "python -m ranke sample --config {params.cfg:q} --method base --round 0"
        " --checkpoint base --prompts {input.prompts:q} --out {output:q} --threads {threads} 2> {log:q}"


rule sample:
    input:
        prompts=PROMPTS,
        checkpoint=f"{RUN}/checkpoint",
    output:
        f"{RUN}/samples.parquet",
    log:
        f"{RUN_LOGS}/sample.log",
    # Rounds from 1 only: round 0 is `baseline`. An output pattern that also matched round 0 would
    # let the Snakemake inside an evaluation group job (which may use only the group's rules)
    # pick this rule for the base samples, delete them, and fail for want of a round-0 checkpoint.
    wildcard_constraints:
        round=r"[1-9]\d*",
    priority: CRITICAL_PATH_PRIORITY
    group:
        evaluate_group
    conda:
        CONDA_ENV
    threads: res("sample", "threads")
    resources:
        **scheduler_extras("sample"),
        runtime=res("sample", "runtime"),
        mem_mb=res("sample", "mem_mb"),
        gpu=res("sample", "gpu"),
        cpus_per_gpu=res("sample", "cpus_per_gpu"),
    params:
        cfg=replicate_config("sample", "sampling"),
    shell:
        "python -m ranke sample --config {params.cfg:q} --method {wildcards.method}"
        " --round {wildcards.round} --checkpoint {input.checkpoint:q} --prompts {input.prompts:q}"
        " --out {output:q} --threads {threads} 2> {log:q}"
