"""Step 01's record: metrics.json, written through the step's contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from quantstudy import contracts


def write_metrics(output_dir: str | Path, pools: dict, records: list[dict], stats: dict, wall_s: float) -> dict:
    """metrics.json of step 01: the scrub report, the independent PII check, the pools, the sets
    (without their texts) and their statistics."""
    metrics = {
        "scrub": {k: v for k, v in pools["scrub"].items()},
        "pii_independent": pools.get("pii_independent"),
        "pools": {
            "generic_texts": len(pools["generic"]),
            "in_domain_texts": len(pools["in_domain"]),
            "in_domain_rendered_with_chat_template": pools.get("chat_template", False),
        },
        "sets": [{k: v for k, v in r.items() if k != "texts"} for r in records],
        "coverage": stats["coverage"],
        "overlap_3gram": stats["overlap_3gram"],
        "length_median": {n: float(np.median(v)) if v else 0 for n, v in stats["lengths"].items()},
        "wall_s": round(wall_s, 1),
    }
    return contracts.write("01_calibration", output_dir, metrics)
