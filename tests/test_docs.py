"""The README shows the committed default run's main table as the report stage wrote it."""

from __future__ import annotations


def test_readme_main_table_is_the_committed_report(repo):
    table = (repo / "reports" / "tables" / "main.md").read_text().strip()
    assert table in (repo / "README.md").read_text(), "README's main table differs from reports/tables/main.md"
    assert (repo / "reports" / "figures" / "ablation_bars.png").is_file()
