"""Task files (YAML schema and errors), user JSONL/CSV/HF files, the registry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from metaskill.core.errors import MetaskillError, NotFoundError, TaskError
from metaskill.tasks import (
    get_task,
    load_task_file,
    make_registry,
    register_task_file,
    validate_task_file,
)
from metaskill.tasks.sources import FieldMap, read_records, records_to_examples


def write(p: Path, text: str) -> Path:
    p.write_text(text, encoding="utf-8")
    return p


@pytest.fixture
def reviews(tmp_path: Path) -> Path:
    rows = [{"rid": f"r{i}", "text": f"review number {i}", "label": i % 2,
             "topic": ["food", "service"][i % 2]} for i in range(60)]
    return write(tmp_path / "reviews.jsonl", "".join(json.dumps(r) + "\n" for r in rows))


TASK_YAML = """\
name: my_reviews
version: 2
description: Reviews, positive or negative
kind: classification
source:
  path: reviews.jsonl
  fields:
    input: text
    answer: label
    skills: topic
    id: rid
    label_map: {"0": negative, "1": positive}
labels: [negative, positive]
template: "Review: {input}\\nSentiment:"
instructions: Answer with one word.
verifier: {name: label}
split: {seed: 0, sizes: {train: 20, dev: 10, test: 30}}
"""


def test_yaml_task_file_loads(tmp_path: Path, reviews: Path) -> None:
    p = write(tmp_path / "t.yaml", TASK_YAML)
    t = load_task_file(p)
    assert (t.name, t.version, t.kind) == ("my_reviews", "2", "classification")
    assert {k: len(v) for k, v in t.splits.items()} == {"train": 20, "dev": 10, "test": 30}
    ex = t.splits["test"][0]
    assert ex.id.startswith("r") and ex.answer in ("negative", "positive")
    assert ex.skills in (["food"], ["service"])
    assert t.render(ex) == f"Review: {ex.input}\nSentiment:"
    assert t.verifier.to_spec()["labels"] == ["negative", "positive"]
    assert t.metadata["split_protocol"]["seed"] == 0
    ids = [e.id for v in t.splits.values() for e in v]
    assert len(set(ids)) == 60
    # same file, same split; another seed, another split
    assert [e.id for e in load_task_file(p).splits["test"]] == [e.id for e in t.splits["test"]]
    write(tmp_path / "t1.yaml", TASK_YAML.replace("seed: 0", "seed: 1"))
    assert [e.id for e in load_task_file(tmp_path / "t1.yaml").splits["test"]] != [
        e.id for e in t.splits["test"]]


def test_yaml_over_builtin_loader(tmp_path: Path) -> None:
    p = write(tmp_path / "s.yaml", "name: sst2_terse\nsource: {loader: sst2, options: "
              "{n_test: 40}}\ntemplate: '{input} =>'\nverifier: {name: contains}\n")
    t = validate_task_file(p)
    assert len(t.splits["test"]) == 40 and t.render(t.splits["test"][0]).endswith(" =>")
    assert t.verifier.name == "contains" and t.labels == ["negative", "positive"]


@pytest.mark.parametrize(("text", "expect"), [
    ("name: x\n", "field 'source': missing required field; add it."),
    ("name: x\nsource: {loder: sst2}\n", "field 'source.loder': unknown field; allowed here: "
     "loader, options, path, splits, format, fields."),
    ("name: x\nsource: {loader: sst2}\ntemplat: '{input}'\n", "field 'templat': unknown field"),
    ("name: My Task\nsource: {loader: sst2}\n", "field 'name': use snake_case"),
    ("name: x\nsource: {loader: sst2, path: a.jsonl}\n",
     "field 'source': set exactly one of loader, path or splits (got loader, path)"),
    ("name: x\nkind: regression\nsource: {loader: sst2}\n", "field 'kind': must be"),
    ("name: x\nsource: {path: a.jsonl, fields: {inptu: q}}\n",
     "field 'source.fields.inptu': unknown field; allowed here: input, answer"),
    ("name: x\nsource:\n  loader: sst2\n   bad: indent\n", ":4: invalid YAML"),
    ("- just\n- a list\n", "a task file is a YAML mapping"),
    ("name: x\nlabels: [a]\nsource: {loader: sst2}\n", "field 'labels': give at least two"),
])
def test_schema_errors_are_one_line_with_file_field_and_fix(
    tmp_path: Path, text: str, expect: str
) -> None:
    p = write(tmp_path / "bad.yaml", text)
    with pytest.raises(TaskError) as info:
        validate_task_file(p)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(str(p)), msg
    assert expect in msg, msg


def test_data_errors_in_task_files(tmp_path: Path, reviews: Path) -> None:
    p = write(tmp_path / "t.yaml", TASK_YAML.replace("answer: label", "answer: lable"))
    with pytest.raises(TaskError, match=r"reviews.jsonl:1: missing field 'lable' \(the answer "
                       r"field\); fields there: label, rid, text, topic"):
        load_task_file(p)
    p = write(tmp_path / "t2.yaml", TASK_YAML.replace("{input}", "{body}"))
    with pytest.raises(TaskError, match=r"template field\(s\) body are not input fields"):
        load_task_file(p)
    p = write(tmp_path / "t3.yaml", TASK_YAML.replace("test: 30", "test: 300"))
    with pytest.raises(TaskError, match="has only 60"):
        load_task_file(p)
    p = write(tmp_path / "t4.yaml", TASK_YAML.replace("dev: 10", "dev: 0"))
    with pytest.raises(TaskError, match="empty"):
        load_task_file(p)
    p = write(tmp_path / "t5.yaml", TASK_YAML.replace('"1": positive', '"1": positve'))
    with pytest.raises(TaskError, match="answer 'positve', not one of the labels"):
        load_task_file(p)
    p = write(tmp_path / "t6.yaml", TASK_YAML.replace("reviews.jsonl", "missing.jsonl"))
    with pytest.raises(TaskError, match=r"missing.jsonl' does not exist"):
        load_task_file(p)
    p = write(tmp_path / "t7.yaml", TASK_YAML.replace("{name: label}", "{name: labl}"))
    with pytest.raises(TaskError, match="Did you mean: label"):
        load_task_file(p)


def test_malformed_jsonl_line_names_file_and_line(tmp_path: Path) -> None:
    p = write(tmp_path / "d.jsonl", '{"input": "a", "answer": "1"}\n\n{"input": "b", answer}\n')
    with pytest.raises(TaskError, match=r"d.jsonl:3: malformed JSON \(.*\); fix or remove"):
        read_records(p)
    p = write(tmp_path / "e.jsonl", '["not", "an", "object"]\n')
    with pytest.raises(TaskError, match=r"e.jsonl:1: expected a JSON object"):
        read_records(p)


def test_csv_with_field_mapping_and_line_numbers(tmp_path: Path) -> None:
    p = write(tmp_path / "q.csv", 'question,answer,skills\n"1+1, please",2,add\n3*3,9,mul;add\n')
    recs = read_records(p)
    assert [r.id for r in recs] == ["q.csv:2", "q.csv:3"]
    exs = records_to_examples(recs, FieldMap(input="question", answer="answer", skills="skills"))
    assert exs[0].input == "1+1, please" and exs[1].skills == ["mul", "add"]
    with pytest.raises(TaskError, match=r"q.csv:2: missing field 'q'"):
        records_to_examples(recs, FieldMap(input="q"))
    bad = write(tmp_path / "b.csv", "a,b\n1,2,3\n")
    with pytest.raises(TaskError, match=r"b.csv:2: more values than header columns"):
        read_records(bad)


def test_file_loader_with_multiple_input_fields(tmp_path: Path) -> None:
    rows = [{"title": f"t{i}", "body": f"b{i}", "y": "yes" if i % 3 else "no"} for i in range(30)]
    p = write(tmp_path / "d.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    t = get_task("file", path=str(p), input=["title", "body"], answer="y", labels=["no", "yes"],
                 template="T: {title}\nB: {body}\nA:")
    assert {k: len(v) for k, v in t.splits.items()} == {"train": 10, "dev": 5, "test": 15}
    ex = t.splits["test"][0]
    assert ex.input == {"title": ex.input["title"], "body": ex.input["body"]}
    assert t.render(ex).startswith("T: t") and t.verifier.name == "label"


def test_presplit_files_and_hf_datasets(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    a = write(tmp_path / "train.jsonl", "".join(
        json.dumps({"input": f"q{i}", "answer": str(i)}) + "\n" for i in range(8)))
    b = write(tmp_path / "test.csv", "input,answer\n" + "".join(f"z{i},{i}\n" for i in range(5)))
    t = get_task("file", splits={"train": str(a), "test": str(b)})
    assert {k: len(v) for k, v in t.splits.items()} == {"train": 8, "test": 5}
    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"q": ["a", "b", "c"], "a": ["1", "2", "3"]}),
        "test": datasets.Dataset.from_dict({"q": ["d", "e"], "a": ["4", "5"]})})
    dd.save_to_disk(str(tmp_path / "hf"))
    t = get_task("file", splits={"train": str(tmp_path / "hf"), "test": str(tmp_path / "hf")},
                 input="q", answer="a")
    assert sorted(e.answer for e in t.splits["test"]) == ["4", "5"]
    assert t.splits["test"][0].id.startswith("hf/test:")
    dd["train"].to_parquet(str(tmp_path / "one.parquet"))
    t = get_task("file", path=str(tmp_path / "one.parquet"), input="q", answer="a",
                 sizes={"train": 1, "test": None})
    assert len(t.splits["test"]) == 2
    with pytest.raises(TaskError, match="holds several splits"):
        get_task("file", path=str(tmp_path / "hf"), input="q", answer="a")


def test_registry_refuses_duplicates_and_registers_files(tmp_path: Path, reviews: Path) -> None:
    reg = make_registry()
    p = write(tmp_path / "t.yaml", TASK_YAML)
    assert register_task_file(p, reg) == "my_reviews"
    assert len(get_task("my_reviews", registry=reg).splits["test"]) == 30
    with pytest.raises(MetaskillError, match="already registered"):
        register_task_file(p, reg)
    clash = write(tmp_path / "c.yaml", "name: sst2\nsource: {loader: trec}\n")
    with pytest.raises(MetaskillError, match="'sst2' is already registered"):
        register_task_file(clash, reg)
    with pytest.raises(NotFoundError, match="Did you mean: my_reviews"):
        get_task("my_review", registry=reg)
    # the module's default registry was not touched
    with pytest.raises(NotFoundError):
        get_task("my_reviews")
    # a YAML path works as a name
    assert get_task(str(p)).name == "my_reviews"
