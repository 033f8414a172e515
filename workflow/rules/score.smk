# Decode each round's samples with that round's decoder and score them: FID, CLIP score,
# reward, and the latent-covariate-shift statistics of the generated codes.


rule fid_reference:
    input:
        ASSETS["coco_root"],
        ASSETS["fid"]["weights"],
    output:
        fid_reference_path(),
    params:
        cfg=fid_reference_config(),
    conda:
        CONDA_ENV
    log:
        "logs/score/fid_reference.log",
    threads: res("score", "threads")
    resources:
        runtime=res("score", "runtime"),
        mem_mb=res("score", "mem_mb"),
        gpu=res("score", "gpu"),
        cpus_per_gpu=res("score", "cpus_per_gpu"),
    shell:
        "python -m ranke fid-reference --config-json {params.cfg:q} --out {output:q} --threads {threads} 2> {log:q}"


rule score:
    input:
        samples=score_samples,
        checkpoint=score_checkpoint_inputs,
        prompts="results/prompts.parquet",
        code_hist="results/tokens/code_hist.parquet",
        fid_ref=fid_reference_path(),
        clip=ASSETS["clip"]["weights"],
        reward=ASSETS["reward"]["weights"],
    output:
        metrics="results/{method}/round_{round}/metrics.parquet",
        grid="results/{method}/round_{round}/grid.png",
    params:
        cfg=stage_config("score", "sampling", "rounds", "prompts"),
        checkpoint=score_checkpoint,
    group:
        evaluate_group
    conda:
        CONDA_ENV
    log:
        "logs/{method}/round_{round}/score.log",
    threads: res("score", "threads")
    resources:
        runtime=res("score", "runtime"),
        mem_mb=res("score", "mem_mb"),
        gpu=res("score", "gpu"),
        cpus_per_gpu=res("score", "cpus_per_gpu"),
    shell:
        "python -m ranke score --config-json {params.cfg:q} --method {wildcards.method}"
        " --round {wildcards.round} --samples {input.samples:q} --checkpoint {params.checkpoint:q}"
        " --prompts {input.prompts:q} --code-hist {input.code_hist:q} --fid-ref {input.fid_ref:q}"
        " --out {output.metrics:q} --grid {output.grid:q} --threads {threads} 2> {log:q}"
