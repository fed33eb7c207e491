"""Params files: good ones load; every bad one is refused through the CLI with one line
on stderr, no traceback, exit code 2, naming the file and the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from quantstudy import cli
from quantstudy.config.params import STEP_SECTIONS, load_params, step_parameters, to_yaml

REPO = Path(__file__).resolve().parents[1]
REPO_PARAMS = sorted((REPO / "params").glob("*.yaml"))


def validate(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(["validate", str(path)])
    out, err = capsys.readouterr()
    return code, out, err


def assert_refused(code: int, err: str, *needles: str) -> str:
    assert code == 2
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def refused_by_validate(path: Path, capsys: pytest.CaptureFixture[str], *needles: str) -> str:
    code, out, err = validate(path, capsys)
    assert out == ""
    return assert_refused(code, err, *needles)


# --------------------------------------------------------------------------- good files
def test_fixture_params_validate(write_params, capsys):
    path = write_params()
    code, out, err = validate(path, capsys)
    assert code == 0, err
    assert out.strip() == f"ok: {path}"


def test_defaults_round_trip_through_yaml(write_params, project):
    p = load_params(write_params())
    again = project / "params" / "again.yaml"
    again.write_text(to_yaml(p))
    assert load_params(again) == p


def test_empty_file_is_refused(write_params, capsys):
    """An empty file would silently start the whole default study: refused."""
    for text in ("", "# only a comment\n"):
        refused_by_validate(write_params(text=text), capsys, "the file is empty", "params/default.yaml")


def test_binary_and_non_utf8_files(write_params, project, capsys):
    (project / "params" / "bin.yaml").write_bytes(b"\xff\xfe\x00binary")
    refused_by_validate(project / "params" / "bin.yaml", capsys, "bin.yaml", "not a UTF-8 text file")
    (project / "params" / "nul.yaml").write_bytes(b"study:\n  name: a\x00b\n")
    refused_by_validate(project / "params" / "nul.yaml", capsys, "nul.yaml", "NUL")


def test_yaml_error_names_the_line_where_the_construct_starts(write_params, capsys):
    path = write_params(text="study:\n  seed: [1\nmodel: x\n")
    refused_by_validate(path, capsys, "line 2", "noticed at line 3", "not valid YAML")


def test_directories_are_not_files(write_params, project, capsys):
    (project / "params" / "folder.yaml").mkdir()
    refused_by_validate(project / "params" / "folder.yaml", capsys, "is a directory")
    path = write_params(**{"data.conversations": "data"})
    refused_by_validate(path, capsys, "data.conversations", "which is a directory")


def test_type_errors_read_plainly(write_params, capsys):
    err = refused_by_validate(
        write_params(**{"study.seed": "abc"}), capsys, "study.seed", "expected an integer", "'abc'"
    )
    assert "Input should be" not in err
    err = refused_by_validate(
        write_params(**{"calibration.scrub": "maybe"}), capsys, "calibration.scrub", "true or false"
    )
    assert "Input should be" not in err


def test_step_parameters_are_flat_literals(write_params):
    p = load_params(write_params())
    for step, sections in STEP_SECTIONS.items():
        flat = step_parameters(p, step)
        assert all("_" in k and k.split("_", 1)[0] in sections for k in flat)
        assert flat["study_seed"] == 0 if "study" in sections else "study_seed" not in flat
        yaml.safe_dump(flat)  # plain literals only


@pytest.mark.parametrize("path", REPO_PARAMS, ids=[p.name for p in REPO_PARAMS])
def test_repo_params_files_are_valid(path):
    # Data files and the demo model may not be generated on a fresh clone: check the rest.
    load_params(path, check_files=False)


def test_repo_has_params_files():
    assert (REPO / "params" / "default.yaml") in REPO_PARAMS


# --------------------------------------------------------------------------- bad files
def test_unknown_key_suggests_the_right_one(write_params, capsys):
    path = write_params(**{"quantize.grup_size": 64})
    line = refused_by_validate(path, capsys, str(path), "quantize.grup_size", "group_size")
    assert "did you mean 'group_size'" in line


def test_unknown_section(write_params, capsys):
    raw = yaml.safe_load(write_params().read_text())
    raw["quantise"] = {"bits": [4]}
    path = write_params(text=yaml.safe_dump(raw))
    refused_by_validate(path, capsys, str(path), "quantise", "quantize")


def test_wrong_type(write_params, capsys):
    path = write_params(**{"calibration.n_samples": "many"})
    refused_by_validate(path, capsys, str(path), "calibration.n_samples", "'many'")


def test_out_of_range(write_params, capsys):
    path = write_params(**{"evaluate.confidence": 1.5})
    refused_by_validate(path, capsys, str(path), "evaluate.confidence", "1.5")


def test_missing_input_file(write_params, capsys):
    path = write_params(**{"data.conversations": "data/nowhere.jsonl"})
    refused_by_validate(path, capsys, str(path), "data.conversations", "data/nowhere.jsonl")


def test_missing_model_folder(write_params, capsys):
    path = write_params(**{"model.path": "models/absent"})
    refused_by_validate(path, capsys, str(path), "model.path", "models/absent")


def test_impossible_combination(write_params, capsys):
    path = write_params(**{"model.dtype": "float16", "study.device": "cpu"})
    refused_by_validate(path, capsys, str(path), "model.dtype", "float16", "cpu")


def test_served_head_names_its_choices_and_its_device(write_params, capsys):
    path = write_params(**{"serve.lm_head": "int4"})
    refused_by_validate(path, capsys, str(path), "serve.lm_head", "'int4'")
    path = write_params(**{"serve.lm_head": "int8", "study.device": "cuda"})
    refused_by_validate(path, capsys, str(path), "serve.lm_head", "cuda", "float")


def test_group_size_must_divide_model_widths(write_params, capsys):
    path = write_params(**{"quantize.group_size": 512})
    refused_by_validate(path, capsys, str(path), "quantize.group_size", "512")


def test_unsupported_model_type_lists_supported(write_params, project, capsys):
    (project / "models" / "tiny" / "config.json").write_text(
        '{"model_type": "bert", "hidden_size": 256, "intermediate_size": 768}'
    )
    path = write_params()
    refused_by_validate(path, capsys, str(path), "model.path", "'bert'", "llama")


def test_rollout_margin_needs_a_budget_line(write_params, capsys):
    path = write_params(**{"evaluate.budget": [{"metric": "retention_acc", "max_drop": 2.0, "unit": "points"}]})
    refused_by_validate(path, capsys, str(path), "evaluate.budget", "satisfaction")


def test_yaml_syntax_error(write_params, capsys):
    path = write_params(text="study:\n  name: [unclosed\nmodel: {\n")
    refused_by_validate(path, capsys, str(path), "not valid YAML", "line")


def test_missing_params_file(project, capsys):
    refused_by_validate(project / "params" / "nope.yaml", capsys, "nope.yaml", "not found")


def test_run_refuses_bad_params_before_any_notebook(write_params, project, capsys):
    path = write_params(**{"quantize.grup_size": 64})
    code = cli.main(["run", str(path)])
    _, err = capsys.readouterr()
    assert_refused(code, err, "quantize.grup_size")
    assert not (project / "outputs").exists()


def test_console_script_exit_code_and_stderr(write_params, project):
    """The installed `quantstudy` script: one line, no traceback, exit 2."""
    path = write_params(**{"quantize.grup_size": 64})
    script = Path(sys.executable).with_name("quantstudy")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "quantstudy.cli"]
    done = subprocess.run([*cmd, "validate", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert_refused(done.returncode, done.stderr, "quantize.grup_size", "group_size")
    assert done.stdout == ""


def test_targets_come_from_params(write_params, capsys):
    from quantstudy.config.params import TargetsSection
    from quantstudy.steps.benchmark import goals

    assert load_params(write_params(**{"targets.awq_search_s_max": 120.0})).targets.awq_search_s_max == 120.0
    refused_by_validate(write_params(**{"targets.evaluation_wall_s": 0}), capsys, "targets.evaluation_wall_s")
    default = goals.targets(2.0, 4.0, "cpu")
    assert (
        default["cpu_fast_decode_speedup_1b_b1"]["target"] == 2.5
        and not default["cpu_fast_decode_speedup_1b_b1"]["met"]
    )
    looser = goals.targets(2.0, 4.0, "cpu", goals=TargetsSection(fast_decode_speedup=1.5, quantized_bytes_ratio=5.0))
    assert looser["cpu_fast_decode_speedup_1b_b1"] == {
        **looser["cpu_fast_decode_speedup_1b_b1"],
        "target": 1.5,
        "met": True,
    }
    assert (
        looser["quantized_linear_bytes_vs_fp16"]["target"] == 5.0
        and not looser["quantized_linear_bytes_vs_fp16"]["met"]
    )


# --------------------------------------------------------------------------- inputs read before any step
def _item(i: int, **over) -> str:
    import json

    rec = {
        "item_id": f"t{i}",
        "task": "retention",
        "context": "User: hi\nAssistant: Hello",
        "choices": [" a", " b"],
        "answer": 0,
        **over,
    }
    return json.dumps(rec) + "\n"


def test_every_bad_task_item_line_is_reported_before_any_step(write_params, project, capsys):
    lines = [_item(1), _item(2, answer=5), _item(3, choices=[" a", " a"]), "{not json\n", _item(5, task="quiz")]
    (project / "data" / "task_items.jsonl").write_text("".join(lines))
    code, out, err = validate(write_params(), capsys)
    assert code == 2 and "Traceback" not in err
    assert "data.task_items" in err and "4 bad lines" in err
    for where, why in (
        (":2:", "answer must be an index"),
        (":3:", "choices must be distinct"),
        (":4:", "not valid JSON"),
        (":5:", "unknown task"),
    ):
        assert any(where in ln and why in ln for ln in err.splitlines()), (where, err)


def test_many_bad_lines_show_the_first_twenty_and_the_count(write_params, project, capsys):
    (project / "data" / "task_items.jsonl").write_text("".join(_item(i, answer=9) for i in range(30)))
    code, _, err = validate(write_params(), capsys)
    assert code == 2 and "30 bad lines (first 20 below)" in err
    assert sum("answer must be an index" in ln for ln in err.splitlines()) == 20


def test_conversations_lexicon_logs_and_model_config_are_read_up_front(write_params, project, capsys):
    (project / "data" / "conversations.jsonl").write_text('{"conversation_id": "c1", "turns": []}\n')
    refused_by_validate(write_params(), capsys, "data.conversations", "turns")
    from conftest import conversation_lines

    (project / "data" / "conversations.jsonl").write_text(conversation_lines(2))
    (project / "data" / "lexicon.json").write_text('{"product": "Lumen"}')
    refused_by_validate(
        write_params(**{"data.domain_lexicon": "data/lexicon.json"}),
        capsys,
        "data.domain_lexicon",
        "'product'",
        "list of strings",
    )
    (project / "data" / "logs.csv").write_text("timestamp,arm,conversation_id\n2024-01-01,baseline,c1\n")
    refused_by_validate(write_params(**{"rollout.logs": "data/logs.csv"}), capsys, "rollout.logs", "satisfaction")
    (project / "models" / "tiny" / "config.json").write_text('{"hidden_size": 256,')
    refused_by_validate(write_params(), capsys, "model.path", "config.json", "not valid JSON")
    (project / "models" / "tiny" / "config.json").write_text('{"hidden_size": "256", "intermediate_size": 768}')
    refused_by_validate(write_params(), capsys, "model.path", "hidden_size must be an integer")
