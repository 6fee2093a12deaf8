"""bench/results files: compact, floats to 5 significant digits, one run per line, and
read back as the same data (a resumed benchmark continues from it)."""

from __future__ import annotations

import json

from bench.seeded import results_json, significant


def test_a_results_file_reads_back_rounded_with_one_run_per_line() -> None:
    runs = {f"SST-2/dp/fedsvd/seed{s}": {"curve": [70.123456789 + s, 71.98765432],
                                         "minutes": 2.3456789, "refusals": 0,
                                         "commit": "abc"} for s in range(3)}
    summary = {"SST-2/dp": {"fedsvd": {"mean": 71.0512345, "seeds": 3}}}
    text = results_json([{"commit": "abc"}], summary, runs)
    back = json.loads(text)
    assert back["runs"]["SST-2/dp/fedsvd/seed1"]["curve"] == [71.123, 71.988]
    assert back["summary"]["SST-2/dp"]["fedsvd"] == {"mean": 71.051, "seeds": 3}
    assert back == significant({"history": [{"commit": "abc"}], "summary": summary,
                                "runs": runs})
    run_lines = [line for line in text.splitlines() if line.startswith('"SST-2/')]
    assert len(run_lines) == 3  # one line per run: a resumed benchmark's diff is its runs
    assert significant(123456.7) == 123460.0 and significant(True) is True
