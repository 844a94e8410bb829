"""`paidan classify | evaluate | benchmark | train | model …` through click's CliRunner."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from sqlalchemy import select

from classifier.service import ModelClassifier
from classifier.train import load_split
from models.tables import LabelCorrection, ModelVersion
from paidan.cli_classifier import COMMANDS, _confusion_style
from paidan.db import make_engine, transaction, upgrade
from paidan.settings import Settings

DATA = Path(__file__).resolve().parent.parent / "training_data"
pytestmark = pytest.mark.skipif(not (DATA / "train").is_dir(), reason="training_data is absent")


@click.group()
def cli() -> None:
    """Stand-in for the lead's `paidan` group."""


for command in COMMANDS:
    cli.add_command(command)


def _write(path: Path, rows: list[dict[str, str]], columns: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict:
    """A small copy of the training data, a migrated SQLite database and a model made by `model ensure`."""
    root = tmp_path_factory.mktemp("cli")
    train, _ = load_split(DATA, "train")
    heldout, _ = load_split(DATA, "heldout")
    as_rows = lambda examples: [{"text": e.text, **e.labels, "lang": "x"} for e in examples]  # noqa: E731
    columns = ["text", "type", "category", "priority", "lang"]
    _write(root / "data" / "train" / "a.csv", as_rows(train[::3]), columns)
    _write(root / "data" / "heldout" / "a.csv", as_rows(heldout[::2]), columns)
    _write(root / "data" / "blind" / "a.csv", as_rows(heldout[1::4]), columns)
    url = f"sqlite:///{root / 'paidan.db'}"
    upgrade(url)
    settings = Settings(model_dir=root / "models", training_data_dir=root / "data", database_url=url)
    result = CliRunner().invoke(cli, ["model", "ensure"], obj=settings)
    assert result.exit_code == 0, result.output
    return {"root": root, "settings": settings, "url": url, "heldout": heldout, "train": train, "columns": columns}


def run(workspace: dict, *args: str):
    return CliRunner().invoke(cli, list(args), obj=workspace["settings"])


def test_ensure_is_idempotent(workspace) -> None:
    result = run(workspace, "model", "ensure")
    assert result.exit_code == 0 and "active model:" in result.output
    assert len(list((workspace["root"] / "models").glob("2*"))) == 1


def test_classify_json(workspace) -> None:
    result = run(workspace, "classify", "--json", "支付系统宕机了，所有顾客都付不了款！")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert set(data) == {"type", "category", "priority", "rules", "model_version"}
    assert data["priority"]["label"] == "P0" and "payment_system_down" in data["rules"]
    for head in ("type", "category", "priority"):
        assert set(data[head]) == {"label", "confidence"} and 0 <= data[head]["confidence"] <= 1


def test_classify_explain_names_the_cues_of_each_label(workspace) -> None:
    text = "收银机连不上网络，一直报错"
    data = json.loads(run(workspace, "classify", "--json", "--explain", text).output)
    assert set(data["explain"]) == {"type", "category", "priority"}
    for head, reason in data["explain"].items():
        assert reason["label"] == data[head]["label"] or data["rules"]  # a rule may raise the priority
        assert reason["runner_up"] != reason["label"] and reason["log_odds"] >= 0
        assert reason["cues"] and all(c["weight"] > 0 and c["kind"] in ("word", "chars", "pair") for c in reason["cues"])
    lines = run(workspace, "classify", "--explain", "").output.splitlines()  # empty text: labels, no cues
    assert any(line.startswith("why type = ") for line in lines)
    text_output = run(workspace, "classify", "--explain", text).output
    assert "why category = " in text_output and "“" in text_output


def test_classify_text_output_and_bad_input(workspace) -> None:
    result = run(workspace, "classify", "")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0].startswith("type ")
    assert "rules     -" in result.output


def test_ensure_without_training_data_says_so_before_any_progress_bar(tmp_path) -> None:
    settings = Settings(model_dir=tmp_path / "models", training_data_dir=tmp_path / "nothing",
                        database_url=f"sqlite:///{tmp_path / 'x.db'}")
    result = CliRunner().invoke(cli, ["model", "ensure"], obj=settings)
    assert result.exit_code == 1
    assert "no training CSV files" in result.output and "Traceback" not in result.output
    assert not re.search(r"(^|\s)\d+/\d+(\s|$)", result.output, re.MULTILINE)  # no "training 0/8" progress bar


def test_classify_without_a_model_is_a_clear_error(tmp_path) -> None:
    settings = Settings(model_dir=tmp_path / "none", database_url=f"sqlite:///{tmp_path / 'x.db'}")
    result = CliRunner().invoke(cli, ["classify", "hello"], obj=settings)
    assert result.exit_code == 1
    assert "no active model" in result.output and "paidan model ensure" in result.output
    assert "Traceback" not in result.output


def test_evaluate_json_has_exactly_the_documented_shape(workspace, tmp_path) -> None:
    rows = [{"text": e.text, "type": e.labels["type"], "priority": e.labels["priority"], "channel": "web"} for e in workspace["heldout"][:80]]
    data = _write(tmp_path / "eval.csv", rows, ["text", "type", "priority", "channel"])
    result = run(workspace, "evaluate", "--data", str(data), "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert set(out) == {"type", "priority"}  # only the heads the CSV has
    for head, m in out.items():
        assert set(m) == {"accuracy", "macro_f1", "per_class"}
        assert 0 <= m["accuracy"] <= 1 and 0 <= m["macro_f1"] <= 1
        for label, c in m["per_class"].items():
            assert set(c) == {"precision", "recall", "f1", "support"}
        assert sum(c["support"] for c in m["per_class"].values()) == 80


def test_evaluate_text_output_has_table_and_confusion_matrix(workspace, tmp_path) -> None:
    rows = [{"text": e.text, "category": e.labels["category"]} for e in workspace["heldout"][:40]]
    data = _write(tmp_path / "eval.csv", rows, ["text", "category"])
    result = run(workspace, "evaluate", "--data", str(data))
    assert result.exit_code == 0, result.output
    assert "macro-F1" in result.output and "confusion matrix" in result.output and "precision" in result.output


def test_confusion_cells_are_shaded_by_what_they_mean() -> None:
    # right answers green; mistakes red, bold once they are a tenth of the true label's messages
    assert _confusion_style(True, 17, 20) == "bold green"
    assert _confusion_style(False, 1, 20) == "red"
    assert _confusion_style(False, 2, 20) == "bold red"
    assert _confusion_style(False, 0, 20) == _confusion_style(True, 0, 0) == "dim"


def test_evaluate_rejects_a_csv_without_labels(workspace, tmp_path) -> None:
    data = _write(tmp_path / "plain.csv", [{"text": "hi", "lang": "en"}], ["text", "lang"])
    result = run(workspace, "evaluate", "--data", str(data))
    assert result.exit_code != 0 and "plain.csv" in result.output and "type" in result.output


def test_benchmark_on_any_label_column(workspace, tmp_path) -> None:
    train = _write(tmp_path / "a.csv", [{"text": e.text, "lang": e.labels["category"]} for e in workspace["train"][:600]], ["text", "lang"])
    test = _write(tmp_path / "b.csv", [{"text": e.text, "lang": e.labels["category"]} for e in workspace["heldout"][:100]], ["text", "lang"])
    result = run(workspace, "benchmark", "--train", str(train), "--test", str(test), "--label", "lang", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["accuracy"] > 0.5 and out["fit_seconds"] > 0 and out["train_rows"] == 600 and out["test_rows"] == 100
    bad = run(workspace, "benchmark", "--train", str(train), "--test", str(test), "--label", "nope")
    assert bad.exit_code == 1 and "a.csv: missing column 'nope'" in bad.output


def test_train_with_corrections_then_list_promote_rollback(workspace) -> None:
    engine = make_engine(workspace["url"])
    example = workspace["train"][1]
    with transaction(engine) as session:
        session.add(LabelCorrection(text=example.text, head="priority", old_label=example.labels["priority"],
                                    new_label="P1" if example.labels["priority"] != "P1" else "P2", corrected_by="sup"))
    refused = run(workspace, "train", "--jobs", "0")
    assert refused.exit_code == 2 and "--jobs" in refused.output
    result = run(workspace, "train", "--force", "--jobs", "1")
    assert result.exit_code == 0, result.output
    assert "held-out macro-F1" in result.output and "1 corrections" in result.output and "promoted" in result.output
    assert re.search(r"blind split \(writers who never saw the training data\), macro-F1 active → new: "
                     r"type 0\.\d{4} → 0\.\d{4}; category", result.output), result.output
    listing = run(workspace, "model", "list", "--json")
    versions = json.loads(listing.output)
    assert len(versions) == 2 and versions[-1]["active"] and "type" in versions[-1]["heldout"]
    meta = json.loads((workspace["root"] / "models" / versions[-1]["version"] / "metadata.json").read_text())
    assert meta["training_data"]["blind_rows"] == len(workspace["heldout"][1::4]) and "macro_f1" in meta["blind"]["type"]
    first, second = versions[0]["version"], versions[1]["version"]
    first_meta = json.loads((workspace["root"] / "models" / first / "metadata.json").read_text())
    assert (first_meta["config"]["n_jobs"], meta["config"]["n_jobs"]) == (-1, 1)  # every core by default; --jobs 1

    rolled = run(workspace, "model", "rollback")
    assert rolled.exit_code == 0 and f"active model: {first}" in rolled.output
    promoted = run(workspace, "model", "promote", second)
    assert promoted.exit_code == 0 and f"active model: {second}" in promoted.output
    missing = run(workspace, "model", "promote", "no-such-version")
    assert missing.exit_code == 1 and "no model version 'no-such-version'" in missing.output

    with transaction(engine) as session:
        rows = {r.version: r.active for r in session.scalars(select(ModelVersion))}
    engine.dispose()
    assert rows == {second: True, first: False} or rows == {second: True}


@pytest.mark.parametrize("args", [["classify"], ["evaluate"], ["benchmark"], ["train"], ["model"], ["model", "ensure"], ["model", "report"]])
def test_every_command_has_help(args) -> None:
    result = CliRunner().invoke(cli, [*args, "--help"])
    assert result.exit_code == 0 and len(result.output) > 100


def test_tickets_explain_shows_the_words_behind_the_labels(workspace, tmp_path) -> None:
    from datetime import UTC, datetime

    from factories import make_message
    from paidan.cli import cli as paidan
    from router.config import RouterConfig
    from router.intake import Intake
    from router.routing import route_pending

    settings = workspace["settings"]
    engine = make_engine(workspace["url"])
    intake = Intake(engine)
    receipt = intake.accept_now(make_message("explain-cues", text="收银机连不上网络，一直报错", subject="收银机故障"))
    intake.close()
    with transaction(engine) as session:
        route_pending(session, ModelClassifier.load_active(settings.model_dir), RouterConfig(), datetime.now(UTC))
    engine.dispose()

    def explain(*args: str) -> str:
        result = CliRunner().invoke(paidan, ["tickets", "explain", receipt.ticket_number, *args], obj=settings)
        assert result.exit_code == 0, result.output
        return result.output

    data = json.loads(explain("--json"))
    cues, predicted = data["labels"]["cues"], data["labels"]["prediction"]
    assert set(cues) == {"type", "category", "priority"}
    for head in ("type", "category"):
        assert cues[head]["label"] == predicted[head]["label"] and cues[head]["cues"]
    assert any("收银" in c["term"] for c in cues["category"]["cues"])
    assert "why category=" in explain()

    # The version that labelled the ticket is gone from the store: the explanation says so.
    gone = Settings(model_dir=tmp_path / "empty", training_data_dir=settings.training_data_dir,
                    database_url=settings.database_url)
    result = CliRunner().invoke(paidan, ["tickets", "explain", receipt.ticket_number], obj=gone)
    assert result.exit_code == 0 and "no cues: model " in result.output and "cannot be loaded here" in result.output



def test_model_report_counts_what_supervisors_corrected_and_what_is_not_learned_yet(workspace, tmp_path) -> None:
    from datetime import UTC, datetime

    from factories import make_message
    from models.tables import Message, Ticket
    from router.config import RouterConfig
    from router.intake import Intake
    from router.routing import route_pending

    url = f"sqlite:///{tmp_path / 'report.db'}"
    upgrade(url)
    settings = Settings(model_dir=tmp_path / "models", training_data_dir=workspace["settings"].training_data_dir,
                        database_url=url)

    def report(*args: str):
        result = CliRunner().invoke(cli, ["model", "report", *args], obj=settings)
        assert result.exit_code == 0, result.output
        return result.output

    assert CliRunner().invoke(cli, ["model", "ensure"], obj=settings).exit_code == 0
    assert "no tickets were classified in the last 30 days" in report()

    engine = make_engine(url)
    intake = Intake(engine)
    texts = ["收银机连不上网络，一直报错", "退款什么时候到账？", "发票抬头开错了，请重新开一张", "建议增加夜间模式"]
    numbers = [intake.accept_now(make_message(f"report-{i}", text=t)).ticket_number for i, t in enumerate(texts)]
    intake.close()
    with transaction(engine) as session:
        route_pending(session, ModelClassifier.load_active(settings.model_dir), RouterConfig(), datetime.now(UTC))
        tickets = {t.number: t for t in session.scalars(select(Ticket))}
        first = {n: session.scalar(select(Message.id).where(Message.ticket_id == tickets[n].id)) for n in numbers}
        model_type = tickets[numbers[0]].type
        wrong_type = "suggestion" if model_type != "suggestion" else "request"
        session.add_all([
            LabelCorrection(message_id=first[numbers[0]], text=texts[0], head="type", old_label=model_type,
                            new_label=wrong_type, corrected_by="sup"),
            LabelCorrection(message_id=first[numbers[1]], text=texts[1], head="priority",
                            old_label=tickets[numbers[1]].priority, new_label=tickets[numbers[1]].priority,
                            corrected_by="sup"),  # agrees with the model: not an error
        ])
    engine.dispose()

    data = json.loads(report("--json"))
    assert data["tickets"] == 4 and data["any_corrected"] == 1 and data["corrected"]["type"] == 1
    [version] = data["versions"]
    assert version["tickets"] == 4 and version["any_corrected"] == 1
    assert data["confusions"] == [{"head": "type", "model_label": model_type, "final_label": wrong_type,
                                   "tickets": 1, "examples": [numbers[0]]}]
    assert sum(b["tickets"] for b in data["bands"]) == 4
    assert data["pending_corrections"] == 2  # the model was trained before either correction

    text = report()
    assert "4 tickets classified in the last 30 days" in text and "corrected 1 (25.0%)" in text
    assert "2 corrections since it was trained; `paidan train` learns from them" in text

    assert CliRunner().invoke(cli, ["train", "--force"], obj=settings).exit_code == 0
    assert json.loads(report("--json"))["pending_corrections"] == 0
    assert "0 corrections since it was trained" in report()


def test_model_report_without_a_database_says_how_to_get_one(tmp_path) -> None:
    settings = Settings(model_dir=tmp_path / "models", training_data_dir=tmp_path / "data",
                        database_url=f"sqlite:///{tmp_path / 'none.db'}")
    result = CliRunner().invoke(cli, ["model", "report"], obj=settings)
    assert result.exit_code == 1 and "no paidan database" in result.output and "Traceback" not in result.output
