"""The committed benchmark pages are what `quantstudy bench-doc` renders from their metrics.json
(fast: JSON and Markdown only, no model loading)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from quantstudy.cli import main
from quantstudy.report import benchdoc

REPO = Path(__file__).resolve().parents[1]
PAGES = sorted(benchdoc.PAGES.values(), key=lambda p: p.folder)
IDS = [p.folder for p in PAGES]


def _copy(page: benchdoc.Page, tmp_path: Path) -> Path:
    """The page folder (README and metrics.json files only) under tmp_path, same folder name."""
    src = REPO / page.folder
    dst = tmp_path / src.name
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.png"))
    return dst


def _metrics_paths(page: benchdoc.Page, folder: Path) -> list[Path]:
    return [(folder / run.subfolder if run.subfolder else folder) / "metrics.json" for run in page.runs]


def _edit(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data, indent=2))


def _row(records: list[dict], **match) -> dict:
    (found,) = [r for r in records if all(r[k] == v for k, v in match.items())]
    return found


@pytest.mark.parametrize("page", PAGES, ids=IDS)
def test_committed_page_is_its_rendered_metrics(page):
    readme = REPO / page.folder / "README.md"
    assert readme.read_text(encoding="utf-8") == benchdoc.render_doc(REPO / page.folder), (
        f"{readme} drifted from its metrics.json: run `{page.regenerate}`"
    )


@pytest.mark.parametrize("page", PAGES, ids=IDS)
def test_page_states_its_regenerate_command_near_the_top(page):
    lines = (REPO / page.folder / "README.md").read_text(encoding="utf-8").splitlines()
    top = " ".join(lines[:8])
    assert f"`{page.regenerate}`" in top and f"`{page.regenerate} --check`" in top
    assert lines.count(page.begin) == 1 and lines.count(benchdoc.END) == 1
    assert lines.index(page.begin) < lines.index(benchdoc.END)


@pytest.mark.parametrize("page", PAGES, ids=IDS)
def test_shape_mapping_matches_its_params_file_and_metrics(page):
    """The page-spec numbers metrics.json lacks are the params file's, and the layer count agrees."""
    for run, path in zip(page.runs, _metrics_paths(page, REPO / page.folder)):
        if run.model != "production":  # a --checkpoint run: its model is the checkpoint's, not a params shape
            assert json.loads(path.read_text())[run.model]["env"]["checkpoint"].endswith(
                run.command.split("--checkpoint ")[1].split()[0]
            ), path
            continue
        bench = yaml.safe_load((REPO / run.shape.params).read_text())["benchmark"]
        assert (bench["prod_intermediate_size"], bench["prod_num_kv_heads"], bench["prod_vocab_size"]) == (
            run.shape.intermediate_size,
            run.shape.num_kv_heads,
            run.shape.vocab_size,
        ), run.shape.params
        env = json.loads(path.read_text())["production"]["env"]
        assert env["full_num_layers"] == bench["prod_num_layers"], path
        assert run.shape.params in run.command


def test_cpu_page_numbers_come_from_metrics(tmp_path):
    page = benchdoc.PAGES["cpu-benchmark-1b-shapes"]
    folder = _copy(page, tmp_path)
    before = benchdoc.render_block(folder)
    assert "| 1 | 2.03x [2.01, 2.23] | 2.74x | 0.64x |" in before

    def edit(m):
        sp = m["production"]["speedups"]
        row = _row(sp, path="fast4", batch=1, context=128, scope="full_model")
        row.update(decode_speedup=9.876, decode_speedup_low=9.5, decode_speedup_high=10.25, prefill_speedup=1.234)
        _row(sp, path="fast4", batch=1, context=128, scope="layers")["decode_speedup"] = 11.111

    _edit(folder / "default" / "metrics.json", edit)
    after = benchdoc.render_block(folder)
    assert "| 1 | 9.88x [9.50, 10.25] | 11.11x | 1.23x |" in after
    assert "2.03x [2.01, 2.23]" not in after
    assert [a for a, b in zip(before.splitlines(), after.splitlines()) if a != b] == [
        line for line in before.splitlines() if "2.03x" in line
    ]


def test_gpu_page_numbers_come_from_metrics(tmp_path):
    page = benchdoc.PAGES["gpu-benchmark-h100"]
    folder = _copy(page, tmp_path)

    def edit(m):
        t = _row(m["production"]["timings"], path="fast4", batch=32, context=1024, scope="full_model")
        t.update(decode_tok_s_median=12345.64, decode_tok_s_min=11000.0, decode_tok_s_max=13000.06)
        _row(m["demo"]["memory"], path="fast4")["weight_bytes_full_model"] = 1_234_567_890
        _row(m["production"]["fleet"], path="naive4", batch_size=1)["devices_at_peak"] = 4321

    _edit(folder / "metrics.json", edit)
    text = benchdoc.render_doc(folder)
    assert "| fast4 | 32 | 1024 | 12,345.6 [11,000.0, 13,000.1] |" in text
    assert "| demo | fast4 | 1,234.6 |" in text
    assert "| naive4 | 1 | 19.7 | 4,321 |" in text
    assert "950.5 [937.8, 968.5]" not in text


def test_graphed_page_numbers_come_from_metrics(tmp_path):
    """Graphed rows (scope measured), the harness table and the graphed target all come from metrics.json."""
    page = benchdoc.PAGES["gpu-benchmark-h100-graphed"]
    folder = _copy(page, tmp_path)

    def edit(m):
        prod = m["production"]
        t = _row(prod["timings"], path="torchint4", mode="graphed", batch=1, context=128, scope="measured")
        t.update(decode_tok_s_median=777.7, decode_tok_s_min=700.0, decode_tok_s_max=800.0)
        prod["harness"][0]["decode_graphed_over_eager"] = 9.87
        prod["targets"]["gpu_graphed_4bit_decode_speedup_b1"].update(measured=1.61, met=True)

    _edit(folder / "metrics.json", edit)
    text = benchdoc.render_doc(folder)
    assert "| torchint4 | graphed | 1 | 128 | 777.7 [700.0, 800.0] |" in text
    assert "| 1 | 128 | 9.87x [" in text
    assert "measured 1.61x" in text and "**met**" in text


def test_prose_outside_the_block_is_kept(tmp_path):
    page = benchdoc.PAGES["gpu-benchmark-h100"]
    folder = _copy(page, tmp_path)
    readme = folder / "README.md"
    readme.write_text(readme.read_text().replace("**Finding: the trap.**", "**Finding (edited): the trap.**"))
    text = benchdoc.render_doc(folder)
    assert "**Finding (edited): the trap.**" in text
    assert text == readme.read_text()
    assert benchdoc.write_doc(folder) is False


@pytest.mark.parametrize("page", PAGES, ids=IDS)
def test_check_passes_on_committed_pages(page, capsys):
    assert main(["bench-doc", str(REPO / page.folder), "--check"]) == 0
    assert "matches" in capsys.readouterr().out


@pytest.mark.parametrize("page", PAGES, ids=IDS)
def test_check_fails_on_a_drifted_copy_and_write_repairs_it(page, tmp_path, capsys):
    folder = _copy(page, tmp_path)
    readme = folder / "README.md"
    committed = readme.read_text()

    def edit(m):
        t = _row(m["production"]["timings"], path="baseline", batch=1, context=128, scope="full_model")
        t["prefill_tok_s_median"] = 123456.0
        row = _row(m["production"]["speedups"], path="fast4", batch=1, context=128, scope="full_model")
        row["prefill_speedup"] = 7.77
        if page.folder == "docs/cpu-lm-head":  # that page shows decode speed-ups only
            row["decode_speedup"] = 7.77

    _edit(_metrics_paths(page, folder)[0], edit)
    capsys.readouterr()
    assert main(["bench-doc", str(folder), "--check"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(readme) in err[0] and "bench-doc" in err[0]
    assert readme.read_text() == committed  # --check rewrites nothing

    assert main(["bench-doc", str(folder)]) == 0
    assert "rewritten" in capsys.readouterr().out
    assert readme.read_text() != committed and "7.77" in readme.read_text()
    assert main(["bench-doc", str(folder), "--check"]) == 0
    assert benchdoc.write_doc(folder) is False


@pytest.mark.parametrize("page", PAGES, ids=IDS)
def test_missing_metrics_is_a_one_line_error_naming_the_file(page, tmp_path, capsys):
    folder = _copy(page, tmp_path)
    missing = _metrics_paths(page, folder)[-1]
    missing.unlink()
    with pytest.raises(benchdoc.BenchDocError) as exc:
        benchdoc.render_doc(folder)
    msg = str(exc.value)
    assert "\n" not in msg and str(missing) in msg and "quantstudy bench " in msg
    assert main(["bench-doc", str(folder), "--check"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(missing) in err[0]


@pytest.mark.parametrize("page", PAGES, ids=IDS)
def test_missing_markers_is_a_one_line_error_naming_the_file(page, tmp_path, capsys):
    folder = _copy(page, tmp_path)
    readme = folder / "README.md"
    readme.write_text(
        "".join(line for line in readme.read_text().splitlines(keepends=True) if not line.startswith("<!-- "))
    )
    before = readme.read_text()
    with pytest.raises(benchdoc.BenchDocError) as exc:
        benchdoc.render_doc(folder)
    msg = str(exc.value)
    assert "\n" not in msg and str(readme) in msg and page.begin in msg and benchdoc.END in msg
    assert main(["bench-doc", str(folder)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(readme) in err[0]
    assert readme.read_text() == before


def test_unknown_folder_and_broken_metrics_are_one_line_errors(tmp_path, capsys):
    (tmp_path / "elsewhere").mkdir()
    assert main(["bench-doc", str(tmp_path / "elsewhere"), "--check"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "elsewhere" in err[0] and "PAGES" in err[0]

    folder = _copy(benchdoc.PAGES["gpu-benchmark-h100"], tmp_path)
    _edit(folder / "metrics.json", lambda m: m["production"].pop("timings"))
    with pytest.raises(benchdoc.BenchDocError, match="timings") as exc:
        benchdoc.render_doc(folder)
    assert "\n" not in str(exc.value) and str(folder / "metrics.json") in str(exc.value)
