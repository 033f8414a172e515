# One training round of one method. The rule runs on the submitting host (localrule): the round
# itself is a submitit job (SLURM, local or debug per config `cluster`), so the DAG never holds a
# cluster slot while it waits for its own inner job. A killed round resumes from work/.


localrules:
    train_round,


rule train_round:
    input:
        init=round_init_inputs,
        tokens="results/tokens/train.parquet",
        models=base_model_files(),
        reward=ASSETS["reward"]["weights"],
    output:
        checkpoint=directory("results/{method}/round_{round}/checkpoint"),
        train_log="results/{method}/round_{round}/train_log.parquet",
    params:
        cfg=round_config,
        init=round_init,
        work="results/{method}/round_{round}/work",
    conda:
        CONDA_ENV
    log:
        "logs/{method}/round_{round}/train.log",
    resources:
        runtime=res("default", "runtime"),
        mem_mb=res("default", "mem_mb"),
    shell:
        "python -m ranke round --config-json {params.cfg:q} --method {wildcards.method}"
        " --round {wildcards.round} --init {params.init:q} --tokens {input.tokens:q}"
        " --work {params.work:q} --out {output.checkpoint:q} --log-parquet {output.train_log:q}"
        " 2> {log:q}"
