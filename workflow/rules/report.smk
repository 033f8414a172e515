# Paper tables and plots from every round's metrics and training log.


rule report:
    input:
        metrics=all_metrics(),
        train_logs=all_train_logs(),
        grids=final_grids(),
    output:
        [f"results/report/{name}" for name in REPORT_FILES],
    params:
        cfg=stage_config("methods", "rounds", "sampling"),
    conda:
        CONDA_ENV
    log:
        "logs/report.log",
    resources:
        runtime=res("default", "runtime"),
        mem_mb=res("default", "mem_mb"),
    shell:
        "python -m ranke report --config-json {params.cfg:q} --metrics {input.metrics:q}"
        " --train-logs {input.train_logs:q} --grids {input.grids:q} --out-dir results/report 2> {log:q}"
