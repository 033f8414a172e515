# The demo world: a synthetic captioned-shapes dataset in COCO layout and the tiny base models,
# trained from scratch and saved in the formats of their real counterparts. Only for demo.enabled.

if DEMO:

    rule demo_data:
        output:
            directory(ASSETS["coco_root"]),
        log:
            f"{WORLD_LOGS}/data.log",
        group:
            DEMO_GROUP
        conda:
            CONDA_ENV
        resources:
            **scheduler_extras("default"),
            runtime=res("default", "runtime"),
            mem_mb=res("default", "mem_mb"),
        params:
            cfg=stage_config("demo_data", "seed", "demo"),
        shell:
            "python -m ranke demo-data --config {params.cfg:q} --out {output:q} 2> {log:q}"

    rule demo_vq:
        input:
            coco=ASSETS["coco_root"],
        output:
            ASSETS["vq"]["checkpoint"],
        log:
            f"{WORLD_LOGS}/vq.log",
        priority: CRITICAL_PATH_PRIORITY
        group:
            DEMO_GROUP
        conda:
            CONDA_ENV
        threads: 1  # VQ and CLIP train side by side, one core each
        resources:
            **scheduler_extras("demo_train"),
            runtime=res("demo_train", "runtime"),
            mem_mb=res("demo_train", "mem_mb"),
            gpu=res("demo_train", "gpu"),
            cpus_per_gpu=res("demo_train", "cpus_per_gpu"),
        params:
            cfg=stage_config("demo_vq", "seed", "demo"),
        shell:
            "python -m ranke demo-train vq --config {params.cfg:q} --coco {input.coco:q} --threads {threads}"
            " --out {output:q} 2> {log:q}"

    rule demo_text:
        input:
            coco=ASSETS["coco_root"],
        output:
            directory(ASSETS["text_encoder"]["path"]),
        log:
            f"{WORLD_LOGS}/text.log",
        priority: CRITICAL_PATH_PRIORITY
        group:
            DEMO_GROUP
        conda:
            CONDA_ENV
        resources:
            **scheduler_extras("default"),
            runtime=res("default", "runtime"),
            mem_mb=res("default", "mem_mb"),
        params:
            cfg=stage_config("demo_text", "seed", "demo"),
        shell:
            "python -m ranke demo-train text --config {params.cfg:q} --coco {input.coco:q} --threads {threads}"
            " --out {output:q} 2> {log:q}"

    rule demo_clip:
        input:
            coco=ASSETS["coco_root"],
        output:
            config=ASSETS["clip"]["config"],
            weights=ASSETS["clip"]["weights"],
        log:
            f"{WORLD_LOGS}/clip.log",
        group:
            DEMO_GROUP
        conda:
            CONDA_ENV
        threads: 1  # VQ and CLIP train side by side, one core each
        resources:
            **scheduler_extras("demo_train"),
            runtime=res("demo_train", "runtime"),
            mem_mb=res("demo_train", "mem_mb"),
            gpu=res("demo_train", "gpu"),
            cpus_per_gpu=res("demo_train", "cpus_per_gpu"),
        params:
            cfg=stage_config("demo_clip", "seed", "demo"),
            outdir=parent_dir_of_weights,
        shell:
            "python -m ranke demo-train clip --config {params.cfg:q} --coco {input.coco:q} --threads {threads}"
            " --out {params.outdir:q} 2> {log:q}"

    rule demo_gpt:
        input:
            tokens=f"{TOKENS}/train.parquet",
            text=ASSETS["text_encoder"]["path"],
        output:
            ASSETS["gpt"]["checkpoint"],
        log:
            f"{WORLD_LOGS}/gpt.log",
        priority: CRITICAL_PATH_PRIORITY
        group:
            DEMO_GROUP
        conda:
            CONDA_ENV
        threads: 2
        resources:
            **scheduler_extras("demo_train"),
            runtime=res("demo_train", "runtime"),
            mem_mb=res("demo_train", "mem_mb"),
            gpu=res("demo_train", "gpu"),
            cpus_per_gpu=res("demo_train", "cpus_per_gpu"),
        params:
            cfg=stage_config("demo_gpt", "seed", "demo"),
        shell:
            "python -m ranke demo-train gpt --config {params.cfg:q} --tokens {input.tokens:q} --threads {threads}"
            " --t5 {input.text:q} --out {output:q} 2> {log:q}"

    rule demo_quality:
        input:
            models=base_model_files(),
            clip=ASSETS["clip"]["weights"],
            tokens=f"{TOKENS}/val.parquet",
        output:
            f"{RESULTS}/demo/quality.parquet",
        log:
            f"{LOGS}/demo/quality.log",
        conda:
            CONDA_ENV
        # seconds of work, mostly imports: one thread, so that it runs beside the report (or a
        # score) instead of after it, at the end of the critical path
        threads: 1
        resources:
            **scheduler_extras("demo_train"),
            runtime=res("demo_train", "runtime"),
            mem_mb=res("demo_train", "mem_mb"),
            gpu=res("demo_train", "gpu"),
            cpus_per_gpu=res("demo_train", "cpus_per_gpu"),
        params:
            cfg=stage_config("demo_quality", "seed", "demo", "sampling", "prompts"),
        shell:
            "python -m ranke demo-quality --config {params.cfg:q} --tokens {input.tokens:q} --threads {threads}"
            " --out {output:q} 2> {log:q}"
