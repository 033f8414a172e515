# Sampling the evaluation prompts: the base policy (baseline) and each round's policy.


rule baseline:
    input:
        prompts="results/prompts.parquet",
        models=base_model_files(),
    output:
        "results/base/round_0/samples.parquet",
    params:
        cfg=stage_config("sampling"),
    priority: CRITICAL_PATH_PRIORITY
    conda:
        CONDA_ENV
    log:
        "logs/base/round_0/sample.log",
    threads: res("sample", "threads")
    resources:
        runtime=res("sample", "runtime"),
        mem_mb=res("sample", "mem_mb"),
        gpu=res("sample", "gpu"),
        cpus_per_gpu=res("sample", "cpus_per_gpu"),
    shell:
        "python -m ranke sample --config-json {params.cfg:q} --method base --round 0"
        " --checkpoint base --prompts {input.prompts:q} --out {output:q} --threads {threads} 2> {log:q}"


rule sample:
    # Rounds from 1 only: round 0 is `baseline`. An output pattern that also matched round 0 would
    # let the Snakemake inside an evaluation group job (which may use only the group's rules)
    # pick this rule for the base samples, delete them, and fail for want of a round-0 checkpoint.
    wildcard_constraints:
        round=r"[1-9]\d*",
    input:
        prompts="results/prompts.parquet",
        checkpoint="results/{method}/round_{round}/checkpoint",
    output:
        "results/{method}/round_{round}/samples.parquet",
    params:
        cfg=stage_config("sampling"),
    priority: CRITICAL_PATH_PRIORITY
    group:
        evaluate_group
    conda:
        CONDA_ENV
    log:
        "logs/{method}/round_{round}/sample.log",
    threads: res("sample", "threads")
    resources:
        runtime=res("sample", "runtime"),
        mem_mb=res("sample", "mem_mb"),
        gpu=res("sample", "gpu"),
        cpus_per_gpu=res("sample", "cpus_per_gpu"),
    shell:
        "python -m ranke sample --config-json {params.cfg:q} --method {wildcards.method}"
        " --round {wildcards.round} --checkpoint {input.checkpoint:q} --prompts {input.prompts:q}"
        " --out {output:q} --threads {threads} 2> {log:q}"
