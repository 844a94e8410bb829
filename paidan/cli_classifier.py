"""`paidan classify | evaluate | benchmark | train | model …`: the classifier's command line.

The lead's `paidan.cli` adds these with ``cli.add_command(...)``. Settings come from the click context
object when it is a ``Settings`` (tests, the main group), else from ``Settings()``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from classifier.corrections import Correction, load_corrections, record_version
from classifier.data import csv_columns, csv_files, read_csv
from classifier.errors import ClassifierError, ModelIncompatible, ModelNotFound
from classifier.evaluate import compact, evaluate_examples
from classifier.explain import explain
from classifier.service import SERVICE_HEADS, ModelClassifier
from classifier.store import ModelStore
from paidan.console import make_console
from paidan.settings import Settings


def _settings() -> Settings:
    ctx = click.get_current_context(silent=True)
    obj = ctx.find_object(Settings) if ctx is not None else None
    return obj if isinstance(obj, Settings) else Settings()


def _console(err: bool = False) -> Console:
    return make_console(err=err)


@contextmanager
def _clear_errors() -> Iterator[None]:
    """Our own errors become a one-line message and exit status 1, never a traceback."""
    try:
        yield
    except ClassifierError as e:
        raise click.ClickException(str(e)) from e


@contextmanager
def _progress(total: int, label: str) -> Iterator[Any]:
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=_console(err=True),
        transient=False,
    ) as progress:
        task = progress.add_task(label, total=total)

        def step(done: str) -> None:
            progress.update(task, advance=1, description=f"{label}: {done} done")

        yield step


def _database(settings: Settings):
    """An engine when the database exists and has our tables; None otherwise (classify needs none)."""
    from sqlalchemy import inspect
    from sqlalchemy.exc import SQLAlchemyError

    from paidan.db import make_engine, normalise_url

    url = normalise_url(settings.database_url)
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1] if "///" in url else ""
        if not path or path == ":memory:" or not Path(path).exists():
            return None
    try:
        engine = make_engine(url)
        if not inspect(engine).has_table("label_corrections"):
            engine.dispose()
            return None
        return engine
    except SQLAlchemyError:
        return None


def _audit(settings: Settings, version: str, path: Path, metrics: dict[str, Any], active: bool) -> str | None:
    """Copy a version (and whether it is active) into model_versions; returns a note when impossible."""
    from sqlalchemy.exc import SQLAlchemyError

    from paidan.db import transaction

    engine = _database(settings)
    if engine is None:
        return "no database with model_versions reachable: the model store alone records this"
    try:
        with transaction(engine) as session:
            record_version(session, version, str(path.resolve()), metrics, active=active)
    except SQLAlchemyError as e:
        return f"database audit failed ({type(e).__name__}); the model store is still authoritative"
    finally:
        engine.dispose()
    return None


def _corrections(settings: Settings) -> tuple[list[Correction], str | None]:
    from sqlalchemy.exc import SQLAlchemyError

    from paidan.db import transaction

    engine = _database(settings)
    if engine is None:
        return [], "no database with label_corrections: training on training_data/ only"
    try:
        with transaction(engine) as session:
            return load_corrections(session), None
    except SQLAlchemyError as e:
        return [], f"could not read corrections ({type(e).__name__}): training on training_data/ only"
    finally:
        engine.dispose()


def _summary(metrics: dict[str, Any]) -> dict[str, Any]:
    return {h: {"accuracy": round(m["accuracy"], 4), "macro_f1": round(m["macro_f1"], 4)} for h, m in metrics.items()}


# -- classify ------------------------------------------------------------------------------------


@click.command("classify")
@click.argument("text")
@click.option("--json", "as_json", is_flag=True, help="Print the prediction as JSON.")
@click.option("--explain", "with_reasons", is_flag=True,
              help="Also show, per label, the words and character n-grams that favoured it most over the runner-up.")
def classify(text: str, as_json: bool, with_reasons: bool) -> None:
    """Classify TEXT (use - to read it from standard input) with the active model.

    Prints type, category and priority with their confidences, and any priority rule that fired.
    """
    settings = _settings()
    if text == "-":
        text = sys.stdin.read()
    with _clear_errors():
        classifier = ModelClassifier.load_active(settings.model_dir)
        prediction = classifier.predict(text)
    reasons = explain(classifier.fast, text) if with_reasons else {}
    if as_json:
        out = prediction.as_dict()
        if with_reasons:
            out["explain"] = {head: reason.as_dict() for head, reason in reasons.items()}
        click.echo(json.dumps(out, ensure_ascii=False))
        return
    for head in SERVICE_HEADS:
        score = getattr(prediction, head)
        click.echo(f"{head:<9} {score.label:<11} {score.confidence:.2f}")
    click.echo(f"rules     {', '.join(prediction.rules) or '-'}")
    click.echo(f"model     {prediction.model_version}")
    for head, reason in reasons.items():
        cues = "  ".join(f"“{c.term}” {c.weight:+.2f}" for c in reason.cues) or "-"
        ruled = "" if getattr(prediction, head).label == reason.label else f"; a rule set {getattr(prediction, head).label}"
        click.echo(f"why {head} = {reason.label} over {reason.runner_up} (log-odds {reason.log_odds:.2f}{ruled}): {cues}")


# -- evaluate ------------------------------------------------------------------------------------


def _confusion_style(correct: bool, count: int, row_total: int) -> str:
    """Shading a terminal shows at a glance: right answers green, mistakes red as they grow (share of the row)."""
    if count == 0:
        return "dim"
    if correct:
        return "bold green"
    return "bold red" if count >= 0.1 * row_total else "red"


def _print_metrics(console: Console, metrics: dict[str, Any]) -> None:
    for head, m in metrics.items():
        console.print(f"\n[bold]{head}[/bold]  accuracy {m['accuracy']:.4f}  macro-F1 {m['macro_f1']:.4f}  (n={m['n']})")
        table = Table("label", "precision", "recall", "f1", "support")
        for label, c in m["per_class"].items():
            table.add_row(label, f"{c['precision']:.3f}", f"{c['recall']:.3f}", f"{c['f1']:.3f}", str(c["support"]))
        console.print(table)
        labels = m["confusion"]["labels"]
        confusion = Table("true \\ predicted", *labels, title="confusion matrix")
        for i, (label, row) in enumerate(zip(labels, m["confusion"]["matrix"])):
            confusion.add_row(label, *(Text(str(v), style=_confusion_style(i == j, v, sum(row))) for j, v in enumerate(row)))
        console.print(confusion)
        if "p0" in m:
            p0 = m["p0"]
            console.print(
                f"P0 recall {p0['with_rules']['recall']:.3f} with rules "
                f"({p0['with_rules']['false_positives']} false P0), "
                f"{p0['model_only']['recall']:.3f} model only ({p0['model_only']['false_positives']} false P0)"
            )


@click.command("evaluate")
@click.option("--data", "data", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="CSV with a text column and any of type, category, priority (other columns are ignored).")
@click.option("--json", "as_json", is_flag=True, help="Print {head: {accuracy, macro_f1, per_class}} as JSON.")
def evaluate(data: Path, as_json: bool) -> None:
    """Score the active model on a labelled CSV: accuracy, macro-F1, per-class table, confusion matrix."""
    settings = _settings()
    with _clear_errors():
        classifier = ModelClassifier.load_active(settings.model_dir)
        columns = csv_columns(data)
        heads = [h for h in classifier.heads if h in columns]
        if "text" not in columns or not heads:
            raise click.ClickException(
                f"{data}: needs a 'text' column and at least one of {', '.join(classifier.heads)} "
                f"(the header has: {', '.join(columns)})"
            )
        examples = read_csv(data, heads)
        metrics = evaluate_examples(classifier, examples, heads)
    if as_json:
        click.echo(json.dumps(compact(metrics), ensure_ascii=False))
    else:
        console = _console()
        console.print(f"model {classifier.version} on {data} ({len(examples)} rows)")
        _print_metrics(console, metrics)


# -- benchmark -----------------------------------------------------------------------------------


@click.command("benchmark")
@click.option("--train", "train_csv", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--test", "test_csv", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--label", required=True, help="The label column to learn (the text column is 'text').")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def benchmark(train_csv: Path, test_csv: Path, label: str, as_json: bool) -> None:
    """Train a fresh pipeline on any CSV and report accuracy, macro-F1 and fit time on another.

    Uses the default pipeline settings (fitted on every core) and no priority rules; the active model is not touched.
    """
    from classifier.train import TrainConfig, fit_model

    with _clear_errors():
        train_rows = read_csv(train_csv, [label])
        test_rows = read_csv(test_csv, [label])
        started = time.perf_counter()
        trained = fit_model(train_rows, [label], TrainConfig())
        fit_seconds = time.perf_counter() - started
        metrics = evaluate_examples(trained.classifier("benchmark", use_rules=False), test_rows, [label])[label]
    result = {
        "label": label,
        "accuracy": round(metrics["accuracy"], 4),
        "macro_f1": round(metrics["macro_f1"], 4),
        "fit_seconds": round(fit_seconds, 3),
        "train_rows": len(train_rows),
        "test_rows": len(test_rows),
        "features": int(trained.features.n_features_out_),
    }
    if as_json:
        click.echo(json.dumps(result))
    else:
        for key, value in result.items():
            click.echo(f"{key:<12} {value}")


# -- train ---------------------------------------------------------------------------------------


def _train(settings: Settings, force: bool, use_corrections: bool, jobs: int | None = None) -> Any:
    from classifier.train import SERVICE_CONFIG, count_steps, no_training_data, train_version

    config = SERVICE_CONFIG if jobs is None else dataclasses.replace(SERVICE_CONFIG, n_jobs=jobs)

    notes: list[str] = []
    corrections: list[Correction] = []
    if use_corrections:
        corrections, note = _corrections(settings)
        if note:
            notes.append(note)
    store = ModelStore(settings.model_dir)
    total = count_steps(SERVICE_HEADS, SERVICE_CONFIG) + 2
    with _clear_errors():
        if not csv_files(settings.training_data_dir / "train"):  # say so before drawing a progress bar
            raise no_training_data(settings.training_data_dir)
    with _clear_errors(), _progress(total, "training") as step:
        result = train_version(settings.training_data_dir, store, corrections, force=force, config=config, progress=step)
    note = _audit(settings, result.version, result.path, _summary(result.new_metrics), result.promoted)
    if note:
        notes.append(note)
    return result, notes


def _print_train(result: Any, notes: list[str]) -> None:
    console = _console()
    for note in notes:
        console.print(f"[dim]note: {note}[/dim]")
    m = result.merge
    console.print(
        f"trained {result.version} on {result.train_rows} rows "
        f"({m.corrections} corrections: {m.overridden} labels overridden, {m.added} new texts, "
        f"{m.skipped_heldout} held-out texts skipped) in {result.seconds:.1f} s; held-out rows: {result.heldout_rows}"
    )
    table = Table("head", f"active ({result.old_version or '-'})", "new", "Δ macro-F1", "accuracy active → new",
                  title="held-out macro-F1")
    for head, new in result.new_metrics.items():
        old = (result.old_metrics or {}).get(head)
        table.add_row(
            head,
            f"{old['macro_f1']:.4f}" if old else "-",
            f"{new['macro_f1']:.4f}",
            f"{new['macro_f1'] - old['macro_f1']:+.4f}" if old else "-",
            (f"{old['accuracy']:.4f} → " if old else "") + f"{new['accuracy']:.4f}",
        )
    console.print(table)
    if result.new_blind:
        old_blind = result.old_blind or {}
        console.print("blind split (writers who never saw the training data), macro-F1 active → new: " + "; ".join(
            (f"{head} {old_blind[head]['macro_f1']:.4f} → " if head in old_blind else f"{head} ")
            + f"{new['macro_f1']:.4f}" for head, new in result.new_blind.items()))
    p0 = result.new_metrics.get("priority", {}).get("p0")
    if p0:
        console.print(f"P0 recall {p0['with_rules']['recall']:.3f} ({p0['with_rules']['false_positives']} false P0)")
    if result.promoted:
        console.print(f"[green]promoted {result.version}[/green]" + (f" ({'; '.join(result.reasons)})" if result.reasons else ""))
    else:
        console.print(f"[yellow]not promoted[/yellow]: {'; '.join(result.reasons)}; use --force to promote anyway")


@click.command("train")
@click.option("--force", is_flag=True, help="Promote even if a head's held-out macro-F1 drops by more than 0.01.")
@click.option("--no-corrections", is_flag=True, help="Ignore the supervisors' corrections in the database.")
@click.option("--jobs", type=click.IntRange(min=1), default=None, metavar="N",
              help="Worker processes for fitting (default: one per core). The model is the same either way; "
                   "--jobs 1 leaves the other cores to a busy `paidan serve` on the same machine.")
def train(force: bool, no_corrections: bool, jobs: int | None) -> None:
    """Retrain from training_data/ plus supervisors' corrections, compare with the active model, promote.

    The new version is evaluated on training_data/heldout/ next to the active one and promoted only if
    no head's macro-F1 drops by more than 0.01 (--force overrides). It is kept either way. A running
    `paidan serve` labels new tickets with a promoted version within a few seconds; no restart.
    """
    result, notes = _train(_settings(), force, not no_corrections, jobs)
    _print_train(result, notes)


# -- model ---------------------------------------------------------------------------------------


@click.group("model")
def model() -> None:
    """List, promote and roll back trained model versions."""


@model.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the versions as JSON.")
def model_list(as_json: bool) -> None:
    """List model versions, newest last, with held-out macro-F1 per head; * marks the active one."""
    store = ModelStore(_settings().model_dir)
    versions = store.versions()
    if as_json:
        click.echo(json.dumps([
            {"version": v.version, "active": v.active, "created_at": v.created_at, "heldout": v.metrics} for v in versions
        ]))
        return
    if not versions:
        click.echo(f"no model versions in {store.root}")
        return
    for v in versions:
        scores = "  ".join(f"{h} {m.get('macro_f1', 0):.3f}" for h, m in v.metrics.items())
        click.echo(f"{'*' if v.active else ' '} {v.version}  {v.created_at[:19]}  {scores}")


@model.command("promote")
@click.argument("version")
def model_promote(version: str) -> None:
    """Make VERSION the active model (no gate: this is a deliberate choice).

    A running `paidan serve` labels new tickets with it within a few seconds; no restart."""
    settings = _settings()
    store = ModelStore(settings.model_dir)
    with _clear_errors():
        path = store.path(version)
        ModelClassifier.load(path)  # refuse a version this installation cannot serve
        store.promote(version)
    metrics = {h: m for h, m in next((v.metrics for v in store.versions() if v.version == version), {}).items()}
    note = _audit(settings, version, path, metrics, True)
    click.echo(f"active model: {version}")
    if note:
        click.echo(f"note: {note}", err=True)


@model.command("rollback")
def model_rollback() -> None:
    """Re-activate the version that was active before the current one.

    A running `paidan serve` labels new tickets with it within a few seconds; no restart."""
    settings = _settings()
    store = ModelStore(settings.model_dir)
    with _clear_errors():
        version = store.rollback()
    metrics = next((v.metrics for v in store.versions() if v.version == version), {})
    note = _audit(settings, version, store.path(version), metrics, True)
    click.echo(f"active model: {version}")
    if note:
        click.echo(f"note: {note}", err=True)


@model.command("report")
@click.option("--days", type=click.IntRange(min=1), default=30, show_default=True,
              help="Look at tickets classified in the last DAYS days.")
@click.option("--top", type=click.IntRange(min=1), default=10, show_default=True,
              help="How many of the most frequent corrections to list.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def model_report(days: int, top: int, as_json: bool) -> None:
    """How the classifier does in production, from the supervisors' corrections.

    Per model version, label and confidence band: how many tickets it labelled and how many of those
    supervisors corrected (a floor on its errors: not every ticket is checked), the label pairs it
    confuses most, and how many corrections the active model has not learned from yet (`paidan train`).
    """
    from datetime import UTC, datetime, timedelta

    from sqlalchemy.exc import SQLAlchemyError

    from classifier.quality import corrections_after, load_quality_inputs, quality_report
    from paidan.db import transaction

    settings = _settings()
    engine = _database(settings)
    if engine is None:
        raise click.ClickException(
            f"no paidan database at {settings.database_url}: run `paidan serve` (or `paidan db upgrade`) first")
    until = datetime.now(UTC)
    since = until - timedelta(days=days)
    active, last_id, trained_at = _active_training_point(settings)
    try:
        with transaction(engine) as session:
            classified, corrections = load_quality_inputs(session, since, until)
            pending = corrections_after(session, last_id, trained_at) if active else None
    except SQLAlchemyError as e:
        raise click.ClickException(f"could not read the database ({type(e).__name__}): {e}") from e
    finally:
        engine.dispose()
    report = quality_report(classified, corrections, since=since, until=until,
                            triage_threshold=settings.routing.triage_threshold, pending=pending, active_version=active)
    if as_json:
        click.echo(json.dumps(report.as_dict()))
        return
    _print_report(report, days, top)


def _active_training_point(settings: Settings) -> tuple[str | None, int | None, Any]:
    """The active version, the newest correction it trained on and when it was trained."""
    from datetime import datetime

    store = ModelStore(settings.model_dir)
    active = store.active()
    if active is None:
        return None, None, None
    try:
        meta = ModelStore.read_metadata(store.path(active))
    except ClassifierError:
        return active, None, None
    last_id = (meta.get("training_data") or {}).get("last_correction_id")
    try:
        trained_at = datetime.fromisoformat(meta.get("created_at", ""))
    except ValueError:
        trained_at = None
    return active, last_id, trained_at


def _bar(share: float, width: int = 20) -> str:
    filled = round(max(0.0, min(share, 1.0)) * width)
    return "█" * filled + "·" * (width - filled)


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _share(part: int, whole: int) -> str:
    return f"{part / whole:.1%}" if whole else "-"


def _print_report(report: Any, days: int, top: int) -> None:
    console = _console()
    if not report.tickets:
        console.print(f"no tickets were classified in the last {days} days")
    else:
        by_head = ", ".join(f"{h} {n}" for h, n in report.corrected.items())
        console.print(
            f"{_count(report.tickets, 'ticket')} classified in the last {days} days by "
            f"{_count(len(report.versions), 'model version')}; supervisors corrected {report.any_corrected:,} ({_share(report.any_corrected, report.tickets)}): "
            f"{by_head}. Corrections are a floor on errors: not every ticket is checked.")

        versions = Table("version", "tickets", *report.corrected, "any head", title="corrected tickets by model version")
        for v in report.versions:
            versions.add_row(v.version, f"{v.tickets:,}",
                             *(f"{v.corrected[h]} ({_share(v.corrected[h], v.tickets)})" for h in report.corrected),
                             f"{v.any_corrected} ({_share(v.any_corrected, v.tickets)})")
        console.print(versions)

        labels = Table("head", "label", "labelled", "corrected away", "", "corrected to (missed)",
                       title="per label: how often supervisors moved tickets away from it, and to it")
        for r in report.labels:
            share = r.corrected_away / r.predicted if r.predicted else 0.0
            labels.add_row(r.head, r.label, f"{r.predicted:,}", f"{r.corrected_away} ({_share(r.corrected_away, r.predicted)})",
                           _bar(share), str(r.corrected_to))
        console.print(labels)

        if report.confusions:
            pairs = Table("head", "model said", "supervisor said", "tickets", "e.g.",
                          title=f"most frequent corrections (top {min(top, len(report.confusions))})")
            for c in report.confusions[:top]:
                pairs.add_row(c.head, c.model_label, c.final_label, str(c.tickets), ", ".join(c.examples))
            console.print(pairs)

        bands = Table("confidence", "tickets", "type or category corrected", "",
                      title=f"does confidence mean right? (triage threshold {report.triage_threshold:.2f})")
        for b in report.bands:
            share = b.corrected / b.tickets if b.tickets else 0.0
            name = f"{b.low:.2f}–{b.high:.2f}" + (" (to triage)" if b.triaged else "")
            bands.add_row(name, f"{b.tickets:,}", f"{b.corrected} ({_share(b.corrected, b.tickets)})", _bar(share))
        console.print(bands)
    if report.unclassified_corrections:
        console.print(f"{_count(report.unclassified_corrections, 'corrected ticket')} had no model labels in this period "
                      "(classified earlier, or while no model was active)")
    if report.active_version is None:
        console.print("no active model: `paidan model ensure` trains one")
    elif report.pending is not None:
        hint = "; `paidan train` learns from them" if report.pending else ""
        console.print(f"active model {report.active_version}: {_count(report.pending, 'correction')} since it was trained{hint}")


@model.command("ensure")
def model_ensure() -> None:
    """Make sure a usable model is active: train one from training_data/ and promote it if not.

    Needs no network and no database; `make run` calls it. An active model that this installation
    cannot load (e.g. after a library upgrade) is replaced.
    """
    settings = _settings()
    try:
        classifier = ModelClassifier.load_active(settings.model_dir)
        click.echo(f"active model: {classifier.version}")
        return
    except (ModelNotFound, ModelIncompatible) as e:
        click.echo(f"{e}; training one from {settings.training_data_dir}", err=True)
    result, notes = _train(settings, force=True, use_corrections=False)
    for note in notes:
        click.echo(f"note: {note}", err=True)
    scores = ", ".join(f"{h} macro-F1 {m['macro_f1']:.3f}" for h, m in result.new_metrics.items())
    click.echo(f"active model: {result.version} ({scores or 'no held-out data'})")


COMMANDS = (classify, evaluate, benchmark, train, model)
