# COCO layout -> one row per image with its captions and VQ codes, and the real-code histogram.


rule tokenize:
    input:
        coco=ASSETS["coco_root"],
        vq=base_vq_files(),
    output:
        f"{TOKENS}/{{split}}.parquet",
    log:
        f"{TOKEN_LOGS}/{{split}}.log",
    priority: CRITICAL_PATH_PRIORITY
    group:
        DEMO_GROUP
    conda:
        CONDA_ENV
    threads: max(1, config["tokenize"]["workers"])  # the stage's loader processes
    resources:
        **scheduler_extras("tokenize"),
        runtime=res("tokenize", "runtime"),
        mem_mb=res("tokenize", "mem_mb"),
        gpu=res("tokenize", "gpu"),
        cpus_per_gpu=res("tokenize", "cpus_per_gpu"),
    params:
        cfg=stage_config("tokenize", "bad_images", "tokenize"),
    shell:
        "python -m ranke tokenize split --config {params.cfg:q} --split {wildcards.split}"
        " --out {output:q} 2> {log:q}"


rule code_histogram:
    input:
        f"{TOKENS}/{config['tokenize']['histogram_split']}.parquet",
    output:
        f"{TOKENS}/code_hist.parquet",
    log:
        f"{TOKEN_LOGS}/code_hist.log",
    group:
        DEMO_GROUP
    conda:
        CONDA_ENV
    resources:
        **scheduler_extras("default"),
        runtime=res("default", "runtime"),
        mem_mb=res("default", "mem_mb"),
    params:
        codebook_size=codebook_size(config),
    shell:
        "python -m ranke tokenize histogram --tokens {input:q}"
        " --codebook-size {params.codebook_size} --out {output:q} 2> {log:q}"
