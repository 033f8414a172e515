# Paper tables and plots from every round's metrics and training log. The report() outputs (with
# the captions in workflow/report/) make `snakemake --report report.html` self-contained.


rule report:
    input:
        metrics=all_metrics(),
        train_logs=all_train_logs(),
        grids=final_grids(),
        prompts="results/prompts.parquet",
    output:
        main=report(
            "results/report/main_table.html",
            caption="../report/main_table.rst",
            category="Tables",
        ),
        main_files=multiext("results/report/main_table", ".md", ".tex", ".csv"),
        rounds=report(
            "results/report/rounds_table.html",
            caption="../report/rounds_table.rst",
            category="Tables",
        ),
        rounds_files=multiext("results/report/rounds_table", ".md", ".tex", ".csv"),
        protocol="results/report/protocol.json",
        curves=report(
            "results/report/curves.png", caption="../report/curves.rst", category="Figures"
        ),
        pareto=report(
            "results/report/pareto.png", caption="../report/pareto.rst", category="Figures"
        ),
        code_shift=report(
            "results/report/code_shift.png",
            caption="../report/code_shift.rst",
            category="Figures",
        ),
        train_curves=report(
            "results/report/train_curves.png",
            caption="../report/train_curves.rst",
            category="Figures",
        ),
        samples=report(
            "results/report/samples.png", caption="../report/samples.rst", category="Figures"
        ),
        pdfs=expand(
            "results/report/{name}.pdf",
            name=["curves", "pareto", "code_shift", "train_curves", "samples"],
        ),
    params:
        cfg=stage_config("methods", "report"),
        out_dir=dir_of_output_main,
    group:
        FINAL_GROUP
    conda:
        CONDA_ENV
    log:
        "logs/report.log",
    resources:
        runtime=res("default", "runtime"),
        mem_mb=res("default", "mem_mb"),
    shell:
        "python -m ranke report --config-json {params.cfg:q} --metrics {input.metrics:q}"
        " --train-logs {input.train_logs:q} --grids {input.grids:q} --prompts {input.prompts:q}"
        " --out-dir {params.out_dir:q} 2> {log:q}"
