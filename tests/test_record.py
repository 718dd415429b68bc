"""The typed record: what is read back equals what was written, old schemas are read or refused by name."""

from __future__ import annotations

import json
import math

import pytest

from harness.core.record import (
    SCHEMA,
    ResultLine,
    RunRecord,
    UnreadableRecordError,
    known_summary,
)

BINS = {"lower": [0.0, 0.5], "upper": [0.5, 1.0], "count": [3, 7], "confidence": [0.4, 0.9], "accuracy": [None, 0.8]}
REPORT = {"acc": 0.8, "ece": 0.05, "mce": 0.1, "adaptive_ece": 0.06, "classwise_ece": 0.01, "nll": 0.6, "brier": 0.3,
          "confidence": 0.75, "n": 10, "reliability": BINS}


def _record(**changes) -> dict:
    record = {"schema": SCHEMA, "status": "ok", "config": {"method": "flyp"}, "config_digest": "abc", "method": "flyp",
              "versions": {"torch": "2"}, "paths": {"run_dir": "r", "record": "r/record.json"},
              "id_test": "mnist", "tests": {"mnist": REPORT | {"ece_ci": [0.03, 0.07], "ece_floor": 0.02,
                                                                "ece_floor_sd": 0.005}},
              "summary": {"id_acc": 0.8, "ts_id_ece": 0.04, "teacher_ood_acc": 0.5, "ts_temperature": 1.3},
              "spectrum": {"features": "f", "pretrained": {"sigma_min": 1e-6, "sigma_min_rel": 0.1, "sigma_max": 0.5,
                                                           "condition_number": math.inf, "effective_rank": 3.0,
                                                           "singular_values": [0.5, 1e-6]},
                           "finetuned": {"sigma_min": 0.0, "sigma_min_rel": 0.0, "sigma_max": 0.5,
                                         "condition_number": math.inf, "effective_rank": 2.0,
                                         "singular_values": [0.5, 0.0]}}}
    return record | changes


def test_a_written_record_reads_back_equal_field_by_field(tmp_path):
    record = RunRecord.model_validate(_record())
    path = record.write(tmp_path / "record.json")
    raw = json.loads(path.read_text())
    assert raw["schema"] == SCHEMA and raw["tests"]["mnist"]["reliability"]["accuracy"] == [None, 0.8]
    again = RunRecord.read(path)
    assert again == record
    assert again.spectrum.pretrained.condition_number == math.inf  # JSON's Infinity survives the round trip
    assert again.tests["mnist"].ece_ci == (0.03, 0.07)


def test_schema_1_records_are_read_with_the_fields_they_lack_empty(tmp_path):
    old = _record(schema=1, tests={"mnist": REPORT})
    old["spectrum"]["finetuned"].pop("sigma_min_rel")
    (tmp_path / "record.json").write_text(json.dumps(old))
    record = RunRecord.read(tmp_path / "record.json")
    assert record.schema_version == 1 and record.tests["mnist"].ece_floor is None
    assert record.spectrum.finetuned.sigma_min_rel is None


@pytest.mark.parametrize("schema", [0, SCHEMA + 1, None, "2"])
def test_other_schemas_are_refused_naming_the_version(tmp_path, schema):
    (tmp_path / "record.json").write_text(json.dumps(_record(schema=schema)))
    with pytest.raises(UnreadableRecordError, match=f"schema {schema} cannot be read .* reads schemas 1, 2, 3, 4, {SCHEMA}"):
        RunRecord.read(tmp_path / "record.json")


def test_a_bad_field_is_named(tmp_path):
    (tmp_path / "record.json").write_text(json.dumps(_record(status="done")))
    with pytest.raises(UnreadableRecordError, match="bad field status"):
        RunRecord.read(tmp_path / "record.json")
    (tmp_path / "record.json").write_text(json.dumps(_record(summary={"val_accuracy": 0.9})))
    with pytest.raises(UnreadableRecordError, match="unknown summary key 'val_accuracy'"):
        RunRecord.read(tmp_path / "record.json")
    (tmp_path / "record.json").write_text("{not json")
    with pytest.raises(UnreadableRecordError, match="not valid JSON"):
        RunRecord.read(tmp_path / "record.json")


def test_results_lines_carry_the_schema_and_schema_2_lines_without_one_are_read():
    line = ResultLine(trial=3, state="COMPLETE", point="p", params={"variant": "carot"}, seed=1, values=[0.9],
                      status="ok", summary={"val_acc": 0.9}, record="runs/x/record.json")
    raw = json.loads(line.dumps())
    assert raw["schema"] == SCHEMA and raw["trial"] == 3
    assert ResultLine.parse(line.dumps(), "results.jsonl:1") == line
    old = {key: value for key, value in raw.items() if key != "schema"}
    assert ResultLine.parse(json.dumps(old), "results.jsonl:2").schema_version == 2
    with pytest.raises(UnreadableRecordError, match="results.jsonl:3: schema 9 cannot be read"):
        ResultLine.parse(json.dumps(raw | {"schema": 9}), "results.jsonl:3")


def test_known_summary_keeps_only_summary_keys():
    values = {"id_acc": 0.5, "teacher_ood_ece": 0.1, "status": "ok", "_step": 3, "test/mnist/acc": 0.4, "ts_temperature": 2}
    assert known_summary(values) == {"id_acc": 0.5, "teacher_ood_ece": 0.1, "ts_temperature": 2.0}
