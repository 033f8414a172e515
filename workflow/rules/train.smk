# One training round of one method in one replicate. The rule runs on the submitting host
# (localrule): the round itself is a submitit job (SLURM, local or debug per config `cluster`), so
# the DAG never holds a cluster slot while it waits for its own inner job. A killed round resumes
# from work/.


localrules:
    train_round,


rule train_round:
    input:
        init=round_init_inputs,
        tokens=f"{TOKENS}/train.parquet",
        models=base_model_files(),
        reward=ASSETS["reward"]["weights"],
    output:
        checkpoint=directory(f"{RUN}/checkpoint"),
        train_log=f"{RUN}/train_log.parquet",
    log:
        f"{RUN_LOGS}/train.log",
    # a method's rounds are a chain (round r starts from round r-1) that ends in its last
    # evaluation: advance the chains first, so that scoring fills the gaps instead of the tail
    priority: CRITICAL_PATH_PRIORITY
    conda:
        CONDA_ENV
    resources:
        **scheduler_extras("default"),
        runtime=res("default", "runtime"),
        mem_mb=res("default", "mem_mb"),
    params:
        cfg=round_config,
        init=round_init,
        work=f"{RUN}/work",
    shell:
        "python -m ranke round --config {params.cfg:q} --method {wildcards.method}"
        " --round {wildcards.round} --init {params.init:q} --tokens {input.tokens:q}"
        " --work {params.work:q} --out {output.checkpoint:q} --log-parquet {output.train_log:q}"
        " 2> {log:q}"
