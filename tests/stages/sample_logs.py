"""Reading back ``--log_sample_ids`` (``<output_dir>/sample_ids/dp<rank>.jsonl``) for the stage tests."""

import json
from pathlib import Path

from longvila.engine.sample_log import SAMPLE_LOG_DIR


def read_sample_logs(output_dir: Path) -> dict[int, dict[str, list[int]]]:
    """Step -> {"ids", "skipped"} over every DP rank's file."""
    steps: dict[int, dict[str, list[int]]] = {}
    for path in sorted((Path(output_dir) / SAMPLE_LOG_DIR).glob("dp*.jsonl")):
        for line in path.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                entry = steps.setdefault(record["step"], {"ids": [], "skipped": []})
                entry["ids"] += record["ids"]
                entry["skipped"] += record["skipped"]
    return steps
