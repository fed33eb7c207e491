"""The ``quantstudy`` command.

    quantstudy run PARAMS [--steps S ...] [--from STEP] [--force] [--run-id ID] [--no-report]
    quantstudy validate PARAMS
    quantstudy report RUN_DIR
    quantstudy bench PARAMS --out DIR [--checkpoint DIR] [--baseline DIR] [--no-production] [--lm-head H]

The demo data and the tiny demo model are built by ``quantstudy-demo`` (package
``quantstudy_demo``, which depends on this one, never the other way round).

Exit codes: 0 ok, 1 a step (or the report) failed, 2 bad params or bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from quantstudy.config.params import ParamsError, load_params

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _show(path: Path) -> str:
    """A path relative to the working directory when it lies under it."""
    try:
        return os.path.relpath(path) if Path(path).resolve().is_relative_to(Path.cwd().resolve()) else str(path)
    except ValueError:
        return str(path)


def _err(msg: str) -> None:
    print(msg, file=sys.stderr)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quantstudy", description="Run the 4-bit AWQ serving study: step notebooks, run folders, report."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the study's step notebooks for a params file")
    run.add_argument("params", help="params YAML file, e.g. params/default.yaml")
    pick = run.add_mutually_exclusive_group()
    pick.add_argument(
        "--steps", nargs="+", metavar="STEP", help="run only these steps (01_calibration or calibration, ...)"
    )
    pick.add_argument("--from", dest="from_step", metavar="STEP", help="run this step and the ones after it")
    run.add_argument("--force", action="store_true", help="re-run steps even when unchanged")
    run.add_argument("--run-id", help="run folder name under outputs/ (default: the params file's stem)")
    run.add_argument("--no-report", action="store_true", help="do not build the report afterwards")

    val = sub.add_parser("validate", help="validate a params file")
    val.add_argument("params")

    rep = sub.add_parser("report", help="build the report for a run folder")
    rep.add_argument("run_dir")
    rep.add_argument("--allow-stale", action="store_true", help="render even when steps are stale (with a banner)")

    sn = sub.add_parser("sync-notebooks", help="rewrite the notebooks' parameters cells from params/default.yaml")
    sn.add_argument("--params", default="params/default.yaml")

    bn = sub.add_parser("bench", help="run the step-04 benchmark on one AWQ checkpoint (e.g. on a GPU machine)")
    bn.add_argument("params", help="params YAML file; its study.device and benchmark section are used")
    bn.add_argument(
        "--checkpoint", help="AutoAWQ GEMM 4-bit checkpoint folder (default: the production-shaped model only)"
    )
    bn.add_argument("--baseline", help="dense baseline folder (default: the dequantized checkpoint)")
    bn.add_argument("--out", required=True, help="folder for metrics.json and the figures")
    bn.add_argument("--no-production", action="store_true", help="skip the production-shaped model")
    bn.add_argument(
        "--lm-head",
        choices=("float", "bfloat16", "int8"),
        help="the output head fast4 serves on a CPU (default: the params' serve.lm_head)",
    )

    cp = sub.add_parser("compare", help="put run folders side by side on one HTML page")
    cp.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="two or more run folders")
    cp.add_argument("--out", required=True, help="the HTML page to write")
    cp.add_argument("--force", action="store_true", help="compare runs even when their quality budgets differ")

    bd = sub.add_parser("bench-doc", help="regenerate a benchmark page's tables (FOLDER/README.md) from metrics.json")
    bd.add_argument("folder", help="page folder, e.g. docs/gpu-benchmark-h100")
    bd.add_argument("--check", action="store_true", help="rewrite nothing; exit 2 if the README differs from metrics")
    return parser


def _print_json(value: Any) -> None:
    if hasattr(value, "model_dump"):
        value = value.model_dump(mode="json")
    print(json.dumps(value, indent=2, default=str))


def cmd_run(args: argparse.Namespace, pipeline: Any = None) -> int:
    from quantstudy.pipeline import manifest, runner  # each command loads only what it runs

    try:
        result = runner.run_study(
            args.params,
            steps=args.steps,
            from_step=args.from_step,
            force=args.force,
            run_id=args.run_id,
            pipeline=pipeline,
        )
    except runner.StepSelectionError as exc:
        _err(f"error: {exc}")
        return EXIT_USAGE
    failed = result.failed
    if failed is not None:
        _err(f"error: {failed.error_line()}")
        _err(f"  executed notebook: {_show(failed.notebook)}")
        return EXIT_FAILED
    counts: dict[str, int] = {}
    for o in result.outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    detail = ", ".join(f"{n} {s}" for s, n in counts.items()) or "nothing selected"
    print(f"run {result.run_id}: {detail} -> {_show(result.run_dir)}")
    use_pipeline = pipeline or runner.Pipeline()
    if result.complete and use_pipeline.report and not args.no_report:
        try:
            _, message = runner.build_report_if_available(result.run_dir)
        except Exception as exc:  # the run itself succeeded; say what broke
            _err(f"error: report failed: {type(exc).__name__}: {exc}")
            return EXIT_FAILED
        print(message)
    elif not result.complete:
        stale = manifest.read_manifest(result.run_dir).get("stale_steps") or []
        if stale:
            print(
                f"stale steps (their inputs changed since they ran): {', '.join(stale)}; "
                f"no report built (quantstudy run {args.params} re-runs them)"
            )
        manifest.mark_report_out_of_date(
            result.run_dir, "the run is incomplete or has stale steps" + (f" ({', '.join(stale)})" if stale else "")
        )
    return EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    load_params(args.params)
    print(f"ok: {args.params}")
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        _err(f"error: {run_dir}: not a run folder")
        return EXIT_USAGE
    try:
        from quantstudy.report import build_report  # type: ignore[attr-defined]
    except ImportError as exc:
        _err(f"error: quantstudy.report.build_report is not available ({exc})")
        return EXIT_FAILED
    from quantstudy.report import ReportError  # each command loads only what it runs

    try:
        result = build_report(run_dir, allow_stale=args.allow_stale)
    except ReportError as exc:
        _err(f"error: {exc}")
        return EXIT_FAILED
    print(f"report: {result}" if result is not None else "report built")
    return EXIT_OK


def cmd_sync_notebooks(args: argparse.Namespace) -> int:
    from quantstudy.config.notebooks import sync_notebooks  # each command loads only what it runs

    changed = sync_notebooks(params_path=args.params)
    print("parameters cells rewritten:", ", ".join(changed) if changed else "none (already in sync)")
    return EXIT_OK


def cmd_bench(args: argparse.Namespace) -> int:
    from quantstudy.steps import benchmark as bench  # each command loads only what it runs

    params = load_params(args.params)
    if args.lm_head:
        params = params.model_copy(update={"serve": params.serve.model_copy(update={"lm_head": args.lm_head})})
    if args.checkpoint is None and args.no_production:
        _err("--no-production needs --checkpoint: there is nothing else to benchmark")
        return EXIT_USAGE
    for name in ("checkpoint", "baseline"):
        folder = getattr(args, name)
        if folder and not (Path(folder) / "config.json").is_file():
            _err(f"--{name} {folder}: no config.json there; pass a model checkpoint folder")
            return EXIT_USAGE
    try:
        print("inference paths:", {k: v or "available" for k, v in bench.available_paths(params.study.device).items()})
        metrics = bench.benchmark_checkpoint(
            params, args.checkpoint, args.out, baseline=args.baseline, production=not args.no_production
        )
    except bench.BenchError as exc:
        _err(str(exc))
        return EXIT_USAGE
    summary = {
        name: {
            "agreement": m["agreement"],
            "speedups": [r for r in m["speedups"] if r["scope"] == "full_model" or r.get("mode") == "graphed"],
            "harness": m.get("harness", []),
            "traps": m["traps"],
            "env": m["env"],
        }
        for name, m in metrics.items()
        if isinstance(m, dict) and "speedups" in m
    }
    _print_json({"targets": metrics["targets"], **summary, "wall_s": metrics["wall_s"]})
    print(f"metrics and figures written to {_show(Path(args.out))}")
    return EXIT_OK


def cmd_bench_doc(args: argparse.Namespace) -> int:
    from quantstudy.report import benchdoc  # each command loads only what it runs

    readme = _show(Path(args.folder) / "README.md")
    try:
        if args.check:
            drift = benchdoc.check_doc(args.folder)
            if drift:
                _err(drift)
                return EXIT_USAGE
            print(f"ok: {readme} matches its metrics.json")
        else:
            changed = benchdoc.write_doc(args.folder)
            print(f"{readme} {'rewritten' if changed else 'unchanged'}")
    except benchdoc.BenchDocError as exc:
        _err(f"error: {exc}")
        return EXIT_USAGE
    return EXIT_OK


def cmd_compare(args: argparse.Namespace) -> int:
    from quantstudy.report.compare import CompareError, compare_runs  # each command loads only what it runs

    try:
        _, message = compare_runs(args.run_dirs, args.out, force=args.force)
    except CompareError as exc:
        _err(f"error: {exc}")
        return EXIT_USAGE
    print(message)
    return EXIT_OK


COMMANDS = {
    "bench": cmd_bench,
    "bench-doc": cmd_bench_doc,
    "run": cmd_run,
    "validate": cmd_validate,
    "report": cmd_report,
    "sync-notebooks": cmd_sync_notebooks,
    "compare": cmd_compare,
}


def main(argv: Sequence[str] | None = None, pipeline: Any = None) -> int:
    """Entry point. ``pipeline`` (a runner.Pipeline) replaces the real steps, for tests.

    Returns the exit code (the console script passes it to sys.exit); argparse usage
    errors exit with 2 themselves.
    """
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            code = cmd_run(args, pipeline)
        else:
            code = COMMANDS[args.command](args)
    except ParamsError as exc:
        _err(str(exc))
        code = EXIT_USAGE
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
