"""Step 02's driver: quantize every planned checkpoint (a record per checkpoint as soon as it
exists), and metrics.json with the performance targets checked as measured figures."""

from __future__ import annotations

import json
from pathlib import Path

from tqdm.auto import tqdm

from quantstudy import contracts
from quantstudy.paths import resolve
from quantstudy.steps.calibration.masks import set_assistant_masks
from quantstudy.steps.calibration.sets import load_set
from quantstudy.steps.quantize.archive import rollback_line
from quantstudy.steps.quantize.llmc import quantize_llmc
from quantstudy.steps.quantize.search import QuantRequest, quantize_awq, quantize_rtn


def run_plan(P, plan: list[dict], baseline_dir: Path, sets_dir: Path, output_dir: Path) -> list[dict]:
    """Quantize every planned checkpoint under output_dir/checkpoints; a record per checkpoint is
    written as soon as it exists (records.jsonl), so a later failure loses nothing."""
    from transformers import AutoTokenizer  # seconds to import; the package imports this module

    tokenizer = AutoTokenizer.from_pretrained(str(baseline_dir))
    out = Path(output_dir) / "checkpoints"
    out.mkdir(parents=True, exist_ok=True)
    log = Path(output_dir) / "records.jsonl"
    records = []
    for spec in tqdm(plan, desc="quantize"):
        req = QuantRequest(
            model_path=str(baseline_dir),
            out_dir=out / spec["name"],
            bits=spec["bits"],
            group_size=P.quantize.group_size,
            zero_point=P.quantize.zero_point,
            version=P.quantize.version,
            duo_scaling=bool(spec["duo_scaling"]),
            apply_clip=bool(spec["apply_clip"]),
            dtype=P.model.dtype,
            device=P.study.device,
            trust_remote_code=P.model.trust_remote_code,
            search_autocast=P.quantize.search_autocast,
        )
        if spec["method"] == "rtn":
            rec = quantize_rtn(req, tokenizer)
        elif spec.get("backend") == "llmcompressor":
            samples, meta = load_set(Path(sets_dir) / spec["set"])
            masks = set_assistant_masks(Path(sets_dir) / spec["set"], tokenizer) if spec["loss_mask"] else None
            rec = quantize_llmc(req, tokenizer, samples, meta["max_seq_len"], spec["source"], spec["draw"], masks)
        else:
            samples, meta = load_set(Path(sets_dir) / spec["set"])
            rec = quantize_awq(req, tokenizer, samples, meta["max_seq_len"], spec["source"], spec["draw"])
        rec.update({k: spec.get(k) for k in ("set", "sweep", "variant", "n_samples")})
        rec.setdefault("backend", "autoawq")
        if rec["simulated"] and rec.get("effective_bits_per_weight") is None:
            # What it would take if packed: bits + (fp16 scale + packed zero) per group.
            rec["effective_bits_per_weight"] = round(rec["bits"] + (16 + rec["bits"]) / P.quantize.group_size, 4)
            rec["effective_bits_note"] = "nominal (simulated, not packed)"
        records.append(rec)
        with open(log, "a") as fh:
            fh.write(json.dumps(rec) + "\n")
    return records


def write_metrics(
    output_dir: str | Path,
    P,
    records: list[dict],
    sanity: list[dict],
    archive: dict,
    wall_s: float,
    calibration_dir: str | Path | None = None,
) -> dict:
    """metrics.json of step 02, with the performance targets checked as measured figures."""
    awq = [r for r in records if r["method"] == "awq"]
    cal_wall = None
    if calibration_dir and (resolve(calibration_dir) / contracts.FILENAME).is_file():
        cal_wall = contracts.read("01_calibration", calibration_dir)["wall_s"]
    flagged = [r["name"] for r in sanity if r.get("worse_than_rtn_on_own_domain")]
    metrics = {
        "baseline_archive": {"files": archive, "rollback": rollback_line(Path(output_dir) / "baseline")},
        "checkpoints": records,
        "sanity": sanity,
        "worse_than_rtn_on_own_domain": flagged,
        "search_settings": _search_settings(awq, sanity),
        "targets": _targets(P, awq, wall_s, cal_wall),
        "wall_s": round(wall_s, 1),
    }
    return contracts.write("02_quantize", output_dir, metrics, default=str)


def _search_settings(awq: list[dict], sanity: list[dict]) -> list[dict]:
    """The AutoAWQ search-setting variants and the 4-bit default on the same calibration set,
    each with its search time and in-domain quality."""
    variant_set = next((v["set"] for v in awq if v.get("variant")), None)
    by = {r["name"]: r for r in sanity}
    return [
        {
            "name": r["name"],
            "duo_scaling": r["duo_scaling"],
            "apply_clip": r["apply_clip"],
            "search_wall_s": r["search_wall_s"],
            "vs_rtn_in_domain": by[r["name"]].get("vs_rtn_pct_in_domain"),
            "ppl_in_domain": by[r["name"]].get("ppl_in_domain"),
        }
        for r in awq
        if r.get("variant") or (r["set"] == variant_set and r["bits"] == 4)
    ]


def _targets(P, awq: list[dict], wall_s: float, cal_wall: float | None) -> dict:
    """AutoAWQ's search time (default settings) and the wall time of steps 01 + 02, against the
    params' targets; llm-compressor's search times stay in its records."""
    default_search = [
        r["search_wall_s"] for r in awq if not r.get("variant") and r.get("backend", "autoawq") == "autoawq"
    ]
    return {
        "awq_search_s_max": {
            "measured": max(default_search) if default_search else None,
            "target": P.targets.awq_search_s_max,
            "met": bool(default_search) and max(default_search) <= P.targets.awq_search_s_max,
        },
        "steps_01_02_wall_s": {
            "measured": round(wall_s + (cal_wall or 0), 1),
            "target": P.targets.steps_01_02_wall_s,
            "met": (wall_s + (cal_wall or 0)) <= P.targets.steps_01_02_wall_s,
            "step_01_s": cal_wall,
            "step_02_s": round(wall_s, 1),
        },
    }
