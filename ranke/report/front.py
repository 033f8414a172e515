"""The Snakemake report's front page (`snakemake --report report.html`): reStructuredText that says
which study this is, what was compared, its main table with the table's note, and the code
version and config hash it was made with.

The report stage writes it (front_page.rst beside the tables); the Snakefile's `report:` directive
names it once it exists (before the first run, workflow/report/workflow.rst stands in). Snakemake
renders it with Jinja2 and then docutils: the page is one Jinja2 raw block, and its text is escaped
for reStructuredText (`*`, `|`, `_`, backquotes would otherwise start markup).
"""

from __future__ import annotations

from ranke.report import tables

_RST_SPECIAL = "\\*`|_"


def rst_escape(text: str) -> str:
    return "".join("\\" + ch if ch in _RST_SPECIAL else ch for ch in str(text))


def _list_table(grid: tables.Grid) -> list[str]:
    lines = [".. list-table::", "   :header-rows: 1", ""]

    def cell(text: str, bold: bool) -> str:
        text = rst_escape(text)
        return f"**{text}**" if bold and text else text or " "

    for i, row in enumerate([grid.header_line(), *grid.body]):
        cells = [cell(text, (i - 1, j) in grid.bold) for j, text in enumerate(row)]
        lines.append(f"   * - {cells[0]}")
        lines += [f"     - {c}" for c in cells[1:]]
    return lines


def front_page(main: tables.MainTable, methods: dict[str, tables.MethodInfo], provenance: dict) -> str:
    study = provenance.get("study") or "?"
    title = f"RankE study: {study}"
    replicates = provenance.get("replicates") or []
    compared = [f"{info.label} ({name}: {info.mode or '?'}, decoder {info.decoder or '?'})"
                for name, info in methods.items()]
    grid = tables.main_grid(main)
    lines = [
        title, "=" * len(title), "",
        rst_escape(f"Compared: {'; '.join(compared)}."), "",
        rst_escape(f"Replicates (training and sampling seeds): {', '.join(map(str, replicates)) or '?'}. "
                   "Code version: " + str(provenance.get("code_version") or "?")
                   + f". Config hash: {provenance.get('config_hash') or '?'}."), "",
        "Main table", "----------", "",
        *_list_table(grid), "",
        rst_escape(grid.note), "",
        "The tables (HTML, and as Markdown, LaTeX and CSV beside them) and the figures are under Tables "
        "and Figures; every paired comparison with its p-value is in deltas.csv.", "",
    ]
    text = "\n".join(lines).replace("endraw", "end raw")
    return "{% raw %}\n" + text + "{% endraw %}\n"
