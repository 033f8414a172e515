"""Stage `report`: the paper's tables and figures, built only from metrics / train-log Parquet files.

tables.py  main table (paper layout) + per-round table: Markdown, LaTeX (booktabs), CSV
plots.py   training curves, CLIP-FID plane, code shift, train-log curves, sample grid
build.py   report(...) writes every file atomically; `python -m ranke report` CLI
"""
