"""`hfl site check`'s data line counts the site's own columns, not the model's inputs."""

from __future__ import annotations

from pathlib import Path

from hfl.rpc.settings import Settings
from hfl.site import check_data


def test_the_data_line_counts_the_columns_of_the_file(tmp_path: Path) -> None:
    rows = ["age,bp,outcome", *(f"{50 + i},{120 + i if i % 5 else ''},{i % 2}" for i in range(40))]
    data = tmp_path / "patients.csv"
    data.write_text("\n".join(rows) + "\n")
    settings = Settings(role="facility", dataset=f"csv:{data}", label="outcome", tls=False)
    found = check_data(settings)  # type: ignore[arg-type]
    assert found.status == "ok", found
    assert found.detail.endswith(f"records, 2 feature columns (csv:{data})")  # not the 4 model inputs
