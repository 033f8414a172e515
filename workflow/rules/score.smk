# Decode each round's samples with that round's decoder and score them: FID, CLIP score,
# reward, and the latent-covariate-shift statistics of the generated codes.


rule fid_reference:
    input:
        ASSETS["coco_root"],
        ASSETS["fid"]["weights"],
    output:
        fid_reference_path(),
    log:
        # beside the shared cache of references, not in one study's tree
        f"logs/fid_reference/{Path(fid_reference_path()).stem}.log",
    # every score job waits for it, and it takes seconds: before the round jobs that fill the cores
    priority: CRITICAL_PATH_PRIORITY
    conda:
        CONDA_ENV
    threads: res("score", "threads")
    resources:
        **scheduler_extras("score"),
        runtime=res("score", "runtime"),
        mem_mb=res("score", "mem_mb"),
        gpu=res("score", "gpu"),
        cpus_per_gpu=res("score", "cpus_per_gpu"),
    params:
        cfg=fid_reference_config(),
    shell:
        "python -m ranke fid-reference --config {params.cfg:q} --out {output:q} --threads {threads} 2> {log:q}"


rule score:
    input:
        samples=score_samples,
        checkpoint=score_checkpoint_inputs,
        prompts=PROMPTS,
        code_hist=f"{TOKENS}/code_hist.parquet",
        fid_ref=fid_reference_path(),
        clip=ASSETS["clip"]["weights"],
        reward=ASSETS["reward"]["weights"],
    output:
        metrics=f"{RUN}/metrics.parquet",
        per_sample=f"{RUN}/per_sample.parquet",
        bootstrap=f"{RUN}/bootstrap.parquet",
        grid=f"{RUN}/grid.png",
    log:
        f"{RUN_LOGS}/score.log",
    group:
        evaluate_group
    conda:
        CONDA_ENV
    threads: res("score", "threads")
    resources:
        **scheduler_extras("score"),
        runtime=res("score", "runtime"),
        mem_mb=res("score", "mem_mb"),
        gpu=res("score", "gpu"),
        cpus_per_gpu=res("score", "cpus_per_gpu"),
    params:
        cfg=replicate_config("score", "score", "sampling", "rounds", "prompts"),
        checkpoint=score_checkpoint,
    shell:
        "python -m ranke score --config {params.cfg:q} --method {wildcards.method}"
        " --replicate {wildcards.seed} --round {wildcards.round} --samples {input.samples:q}"
        " --checkpoint {params.checkpoint:q} --prompts {input.prompts:q} --code-hist {input.code_hist:q}"
        " --fid-ref {input.fid_ref:q} --out {output.metrics:q} --per-sample {output.per_sample:q}"
        " --bootstrap {output.bootstrap:q} --grid {output.grid:q} --threads {threads} 2> {log:q}"
