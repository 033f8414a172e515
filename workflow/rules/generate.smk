# Sampling the evaluation prompts: the base policy (baseline) and each round's policy.


ruleorder: baseline > sample


rule baseline:
    input:
        prompts="results/prompts.parquet",
        models=base_model_files(),
    output:
        "results/base/round_0/samples.parquet",
    params:
        cfg=stage_config("sampling"),
    conda:
        CONDA_ENV
    log:
        "logs/base/round_0/sample.log",
    threads: 2
    resources:
        runtime=res("sample", "runtime"),
        mem_mb=res("sample", "mem_mb"),
        gpu=res("sample", "gpu"),
        cpus_per_gpu=res("sample", "cpus_per_gpu"),
    shell:
        "python -m ranke sample --config-json {params.cfg:q} --method base --round 0"
        " --checkpoint base --prompts {input.prompts:q} --out {output:q} 2> {log:q}"


rule sample:
    input:
        prompts="results/prompts.parquet",
        checkpoint="results/{method}/round_{round}/checkpoint",
    output:
        "results/{method}/round_{round}/samples.parquet",
    params:
        cfg=stage_config("sampling"),
    group:
        EVALUATE_GROUP
    conda:
        CONDA_ENV
    log:
        "logs/{method}/round_{round}/sample.log",
    threads: 2
    resources:
        runtime=res("sample", "runtime"),
        mem_mb=res("sample", "mem_mb"),
        gpu=res("sample", "gpu"),
        cpus_per_gpu=res("sample", "cpus_per_gpu"),
    shell:
        "python -m ranke sample --config-json {params.cfg:q} --method {wildcards.method}"
        " --round {wildcards.round} --checkpoint {input.checkpoint:q} --prompts {input.prompts:q}"
        " --out {output:q} 2> {log:q}"
