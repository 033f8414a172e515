# The evaluation prompt set: COCO-30K protocol (one fixed-seed caption per val image).


rule prompts:
    input:
        ASSETS["coco_root"],
    output:
        "results/prompts.parquet",
    params:
        cfg=stage_config("prompts"),
    group:
        DEMO_GROUP
    conda:
        CONDA_ENV
    log:
        "logs/prompts.log",
    resources:
        runtime=res("default", "runtime"),
        mem_mb=res("default", "mem_mb"),
    shell:
        "python -m ranke prompts --config-json {params.cfg:q} --out {output:q} 2> {log:q}"
