# Paper tables and plots from every run's metrics, bootstrap resamples and training log, with
# intervals across replicates and within each. The report() outputs (with the captions in
# workflow/report/) make `snakemake --report report.html` self-contained.


rule report:
    input:
        metrics=all_run_files("metrics.parquet"),
        bootstrap=all_run_files("bootstrap.parquet"),
        train_logs=all_train_logs(),
        grids=final_grids(),
        prompts=PROMPTS,
    output:
        main=report(
            f"{REPORT_DIR}/main_table.html",
            caption="../report/main_table.rst",
            category="Tables",
            labels={"table": "main (paper layout)"},
        ),
        main_files=multiext(f"{REPORT_DIR}/main_table", ".md", ".tex", ".note.tex", ".csv"),
        ablation=report(
            f"{REPORT_DIR}/ablation_table.html",
            caption="../report/ablation_table.rst",
            category="Tables",
            labels={"table": "ablations"},
        ),
        ablation_files=multiext(f"{REPORT_DIR}/ablation_table", ".md", ".tex", ".note.tex", ".csv"),
        rounds=report(
            f"{REPORT_DIR}/rounds_table.html",
            caption="../report/rounds_table.rst",
            category="Tables",
            labels={"table": "every round"},
        ),
        rounds_files=multiext(f"{REPORT_DIR}/rounds_table", ".md", ".tex", ".note.tex", ".csv"),
        deltas=f"{REPORT_DIR}/deltas.csv",
        replicates=f"{REPORT_DIR}/replicates.csv",
        protocol=f"{REPORT_DIR}/protocol.json",
        front_page=FRONT_PAGE,
        curves=report(
            f"{REPORT_DIR}/curves.png",
            caption="../report/curves.rst",
            category="Figures",
            labels={"figure": "metrics over rounds"},
        ),
        pareto=report(
            f"{REPORT_DIR}/pareto.png",
            caption="../report/pareto.rst",
            category="Figures",
            labels={"figure": "FID-CLIP plane"},
        ),
        code_shift=report(
            f"{REPORT_DIR}/code_shift.png",
            caption="../report/code_shift.rst",
            category="Figures",
            labels={"figure": "code shift"},
        ),
        train_curves=report(
            f"{REPORT_DIR}/train_curves.png",
            caption="../report/train_curves.rst",
            category="Figures",
            labels={"figure": "training log"},
        ),
        samples=report(
            f"{REPORT_DIR}/samples.png",
            caption="../report/samples.rst",
            category="Figures",
            labels={"figure": "samples"},
        ),
        pdfs=expand(
            f"{REPORT_DIR}/{{name}}.pdf",
            name=["curves", "pareto", "code_shift", "train_curves", "samples"],
        ),
    log:
        f"{LOGS}/report.log",
    group:
        FINAL_GROUP
    conda:
        CONDA_ENV
    resources:
        **scheduler_extras("default"),
        runtime=res("default", "runtime"),
        mem_mb=res("default", "mem_mb"),
    params:
        cfg=stage_config("report", "study", "methods", "replicates", "report"),
        config_hash=CONFIG_HASH,
        out_dir=dir_of_output_main,
    shell:
        "python -m ranke report --config {params.cfg:q} --config-hash {params.config_hash}"
        " --metrics {input.metrics:q} --bootstrap {input.bootstrap:q} --train-logs {input.train_logs:q}"
        " --grids {input.grids:q} --prompts {input.prompts:q} --out-dir {params.out_dir:q} 2> {log:q}"
