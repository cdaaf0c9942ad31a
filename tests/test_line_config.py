"""``edge-lora run --config line.yaml``: run options from a file, the command line still wins."""

from __future__ import annotations

import json

from click.testing import CliRunner
from line_helpers import FIXTURE, bundle_copy

from edge_lora.cli.main import main


def _lines(path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_run_takes_its_options_from_a_config_file_and_the_command_line_wins(tmp_path):
    bundle = bundle_copy(tmp_path)
    config = tmp_path / "line.yaml"
    config.write_text(
        f"bundle: {bundle}\nsource: {FIXTURE / 'frames'}\nout: {tmp_path / 'a.jsonl'}\n"
        f"json: {tmp_path / 'summary.json'}\nconf: 0.5\nmax-frames: 3\n"
    )
    r = CliRunner().invoke(main, ["run", "--config", str(config)])
    assert r.exit_code == 0, r.output
    assert len(_lines(tmp_path / "a.jsonl")) == 3
    assert json.loads((tmp_path / "summary.json").read_text())["images"] == 3

    r = CliRunner().invoke(
        main, ["run", "--config", str(config), "--max-frames", "1", "--out", str(tmp_path / "b.jsonl")]
    )
    assert r.exit_code == 0, r.output
    assert len(_lines(tmp_path / "b.jsonl")) == 1 and len(_lines(tmp_path / "a.jsonl")) == 3


def test_a_bad_config_file_exits_2_naming_it(tmp_path):
    config = tmp_path / "line.yaml"
    for text, needle in (("sorce: x\n", "unknown key 'sorce'"), ("- a\n- b\n", "expected a mapping")):
        config.write_text(text)
        r = CliRunner().invoke(main, ["run", "--config", str(config)])
        assert r.exit_code == 2, r.output
        assert "--config" in r.output and needle in r.output
