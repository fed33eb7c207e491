"""What step 02 quantizes: checkpoint names, the plan (AWQ per calibration set and bit width,
RTN references, the other AutoAWQ search settings), and the calibration sets step 01 wrote."""

from __future__ import annotations

from pathlib import Path

from quantstudy import contracts
from quantstudy.paths import resolve
from quantstudy.steps.quantize.checks import QuantizeError

SEARCH_VARIANTS = ((False, False), (True, False), (False, True), (True, True))  # (duo_scaling, apply_clip)


def checkpoint_name(
    method: str, bits: int, group_size: int, source: str | None = None, draw: int | None = None, tag: str | None = None
) -> str:
    """e.g. awq-w4-g128-indomain-d0, rtn-w4-g128, awq-w3-g128-generic-d1-sim."""
    parts = [method, f"w{bits}", f"g{group_size}"]
    if source:
        parts.append(source.replace("_", ""))
    if draw is not None:
        parts.append(f"d{draw}")
    if tag:
        parts.append(tag)
    if bits < 4:
        parts.append("sim")
    return "-".join(parts)


def plan_checkpoints(P, set_records: list[dict]) -> list[dict]:
    """AWQ per calibration set x bit width, RTN per bit width, and (optionally) the other
    AutoAWQ search settings on in-domain draw 0, so the default is chosen from measurements."""
    q = P.quantize
    plan = []
    for bits in q.bits:
        if q.rtn_reference:
            plan.append(
                {
                    "method": "rtn",
                    "bits": bits,
                    "set": None,
                    "duo_scaling": None,
                    "apply_clip": None,
                    "name": checkpoint_name("rtn", bits, q.group_size),
                }
            )
        for rec in set_records:
            tag = f"n{rec['n_samples']}" if rec.get("sweep") else None
            plan.append(
                {
                    "method": "awq",
                    "bits": bits,
                    "set": rec["name"],
                    "source": rec["source"],
                    "draw": rec["draw"],
                    "n_samples": rec["n_samples"],
                    "sweep": rec.get("sweep", False),
                    "duo_scaling": q.duo_scaling,
                    "apply_clip": q.apply_clip,
                    "name": checkpoint_name("awq", bits, q.group_size, rec["source"], rec["draw"], tag),
                }
            )
    plan += _llmcompressor_plan(q, set_records)
    if q.compare_search_settings:
        base = next(
            (r for r in set_records if r["source"] == "in_domain" and r["draw"] == 0 and not r.get("sweep")),
            set_records[0] if set_records else None,
        )
        if base is not None:
            for duo, clip in SEARCH_VARIANTS:
                if (duo, clip) == (q.duo_scaling, q.apply_clip):
                    continue
                tag = f"duo{int(duo)}-clip{int(clip)}"
                plan.append(
                    {
                        "method": "awq",
                        "bits": 4,
                        "set": base["name"],
                        "source": base["source"],
                        "draw": base["draw"],
                        "n_samples": base["n_samples"],
                        "sweep": False,
                        "variant": True,
                        "duo_scaling": duo,
                        "apply_clip": clip,
                        "name": checkpoint_name("awq", 4, q.group_size, base["source"], base["draw"], tag),
                    }
                )
    return plan


def _llmcompressor_plan(q, set_records: list[dict]) -> list[dict]:
    """llm-compressor's AWQ on every set AutoAWQ calibrates (same settings; suffix ``-llmc``), and,
    with ``quantize.assistant_only``, again on each in-domain draw with the assistant-token mask
    (``-llmc-asst``). Sample-count sweeps stay AutoAWQ's."""
    if "llmcompressor" not in q.backends:
        return []
    plan = []
    for rec in (r for r in set_records if not r.get("sweep")):
        masks = [None, "assistant"] if q.assistant_only and rec["source"] == "in_domain" else [None]
        for mask in masks:
            tag = "llmc" if mask is None else "llmc-asst"
            plan.append(
                {
                    "method": "awq",
                    "backend": "llmcompressor",
                    "loss_mask": mask,
                    "bits": 4,
                    "set": rec["name"],
                    "source": rec["source"],
                    "draw": rec["draw"],
                    "n_samples": rec["n_samples"],
                    "sweep": False,
                    "duo_scaling": q.duo_scaling,
                    "apply_clip": False,
                    "name": checkpoint_name("awq", 4, q.group_size, rec["source"], rec["draw"], tag),
                }
            )
    return plan


def calibration_sets(calibration_dir: str | Path) -> list[dict]:
    """The set records step 01 wrote (its metrics.json), checked to exist on disk."""
    folder = resolve(calibration_dir)
    metrics = folder / "metrics.json"
    if not metrics.is_file():
        raise QuantizeError(f"{metrics} not found: run step 01_calibration first (input_dirs['01_calibration'])")
    sets = contracts.read("01_calibration", folder)["sets"]
    for s in sets:
        if not (folder / "sets" / s["name"] / "set.json").is_file():
            raise QuantizeError(f"calibration set {s['name']!r} is missing under {folder / 'sets'}; re-run step 01")
    return sets
