"""`classifier.quality`: joining the model's labels with supervisors' corrections of the same tickets."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from classifier.quality import Classified, TicketCorrection, band_edges, quality_report

T0 = datetime(2026, 12, 1, 9, tzinfo=UTC)


def labelled(ticket: str, version: str, type_: str, category: str, priority: str, confidence: float) -> Classified:
    return Classified(ticket, version, {"type": type_, "category": category, "priority": priority}, confidence, T0)


def report(classified, corrections, threshold=0.45):
    return quality_report(classified, corrections, since=T0 - timedelta(days=30), until=T0, triage_threshold=threshold)


def test_the_final_label_decides_and_an_undone_correction_is_not_the_models_error() -> None:
    classified = [
        labelled("A", "v1", "inquiry", "service", "P3", 0.95),
        labelled("B", "v1", "inquiry", "service", "P2", 0.50),
        labelled("C", "v2", "incident", "technical", "P1", 0.30),
        labelled("D", "v2", "complaint", "service", "P2", 0.80),
    ]
    corrections = [
        TicketCorrection("A", "type", "complaint", 1),
        TicketCorrection("B", "priority", "P1", 2),  # a VIP bump undone later: the model said P2
        TicketCorrection("B", "priority", "P2", 3),
        TicketCorrection("C", "category", "transaction", 4),
        TicketCorrection("C", "type", "request", 5),
        TicketCorrection("C", "type", "complaint", 6),  # the newest correction of a head wins
        TicketCorrection("Z", "type", "inquiry", 7),  # a ticket with no model labels in the period
    ]
    r = report(classified, corrections)
    assert (r.tickets, r.any_corrected, r.unclassified_corrections) == (4, 2, 1)
    assert r.corrected == {"type": 2, "category": 1, "priority": 0}
    v1, v2 = r.versions
    assert (v1.version, v1.tickets, v1.corrected, v1.any_corrected) == ("v1", 2, {"type": 1, "category": 0, "priority": 0}, 1)
    assert (v2.version, v2.tickets, v2.corrected, v2.any_corrected) == ("v2", 2, {"type": 1, "category": 1, "priority": 0}, 1)

    rows = {(x.head, x.label): (x.predicted, x.corrected_away, x.corrected_to) for x in r.labels}
    assert rows[("type", "inquiry")] == (2, 1, 0)
    assert rows[("type", "incident")] == (1, 1, 0)
    assert rows[("type", "complaint")] == (1, 0, 2)  # the model missed two complaints
    assert rows[("category", "transaction")] == (0, 0, 1)
    assert rows[("priority", "P2")] == (2, 0, 0)

    top = r.confusions[0]
    assert len(r.confusions) == 3 and top.tickets == 1
    assert {(c.head, c.model_label, c.final_label, c.examples) for c in r.confusions} == {
        ("type", "inquiry", "complaint", ("A",)), ("type", "incident", "complaint", ("C",)),
        ("category", "technical", "transaction", ("C",)),
    }


def test_confidence_bands_start_at_the_triage_threshold_and_count_every_ticket_once() -> None:
    assert band_edges(0.45) == [0.0, 0.45, 0.6, 0.75, 0.9, 1.0]
    assert band_edges(0.6) == [0.0, 0.6, 0.75, 0.9, 1.0]
    classified = [labelled(str(i), "v1", "inquiry", "service", "P3", c)
                  for i, c in enumerate([0.1, 0.44, 0.45, 0.59, 0.6, 0.89, 0.9, 0.99, 1.0])]
    corrections = [TicketCorrection("0", "category", "technical", 1), TicketCorrection("1", "priority", "P2", 2),
                   TicketCorrection("8", "type", "complaint", 3)]
    bands = report(classified, corrections).bands
    assert [(b.low, b.high, b.tickets, b.corrected, b.triaged) for b in bands] == [
        (0.0, 0.45, 2, 1, True),  # the priority correction of ticket 1 is not about this confidence
        (0.45, 0.6, 2, 0, False),
        (0.6, 0.75, 1, 0, False),
        (0.75, 0.9, 1, 0, False),
        (0.9, 1.0, 3, 1, False),  # 1.0 itself belongs to the last band
    ]
    assert sum(b.tickets for b in bands) == len(classified)


def test_an_empty_period_gives_an_empty_report() -> None:
    r = report([], [])
    assert (r.tickets, r.any_corrected, r.versions, r.labels, r.confusions) == (0, 0, [], [], [])
    assert all(b.tickets == 0 for b in r.bands)
    assert r.as_dict()["bands"][0] == {"low": 0.0, "high": 0.45, "tickets": 0, "corrected": 0, "triaged": True}
