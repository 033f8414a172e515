# The evaluation prompt set: COCO-30K protocol (one fixed-seed caption per val image, or the
# release's prompt file read as the official sampler reads it: prompts.captions_csv).


rule prompts:
    input:
        coco=ASSETS["coco_root"],
        captions_csv=prompt_file_inputs(),
    output:
        PROMPTS,
    log:
        f"{LOGS}/prompts.log",
    group:
        DEMO_GROUP
    conda:
        CONDA_ENV
    resources:
        **scheduler_extras("default"),
        runtime=res("default", "runtime"),
        mem_mb=res("default", "mem_mb"),
    params:
        cfg=stage_config("prompts", "prompts"),
    shell:
        "python -m ranke prompts --config {params.cfg:q} --out {output:q} 2> {log:q}"
