"""Builders for test inputs."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from models import Channel, Identity, IdentityKind, InboundMessage, Sender


def make_message(
    external_id: str | None = None,
    *,
    email: str | None = "kehu@example.com",
    phone: str | None = None,
    text: str = "我的订单还没有发货，请帮忙查一下",
    channel: Channel = Channel.API,
    **extra,
) -> InboundMessage:
    identities = []
    if email:
        identities.append(Identity(IdentityKind.EMAIL, email))
    if phone:
        identities.append(Identity(IdentityKind.PHONE, phone))
    return InboundMessage(
        channel=channel,
        external_id=external_id or uuid.uuid4().hex,
        sender=Sender(tuple(identities), extra.pop("name", "张三")),
        text=text,
        received_at=extra.pop("received_at", datetime.now(UTC)),
        raw=extra.pop("raw", text.encode()),
        **extra,
    )


class KeywordClassifier:
    """A simple implementation of the Classifier protocol for router tests: labels from keywords.

    `priority:P0`-style tags in the text set a head directly; `lowconf` makes it unsure.
    """

    version = "keyword-test-1"

    def predict(self, text: str):
        from models.prediction import LabelScore, Prediction

        labels = {"type": "inquiry", "category": "service", "priority": "P3"}
        keywords = {
            "宕机": {"type": "incident", "category": "technical", "priority": "P0"},
            "down": {"type": "incident", "category": "technical", "priority": "P0"},
            "扣款": {"type": "incident", "category": "transaction", "priority": "P1"},
            "charge": {"type": "incident", "category": "transaction", "priority": "P1"},
            "投诉": {"type": "complaint", "category": "service", "priority": "P2"},
            "complain": {"type": "complaint", "category": "service", "priority": "P2"},
            "建议": {"type": "suggestion", "category": "product", "priority": "P3"},
            "退款": {"type": "request", "category": "service", "priority": "P2"},
        }
        for word, found in keywords.items():
            if word in text.lower():
                labels = dict(found)
                break
        for head in ("type", "category", "priority"):
            for token in text.split():
                if token.startswith(f"{head}:"):
                    labels[head] = token.split(":", 1)[1]
        confidence = 0.2 if "lowconf" in text else 0.9
        return Prediction(LabelScore(labels["type"], confidence), LabelScore(labels["category"], confidence),
                          LabelScore(labels["priority"], confidence), (), self.version)

    def predict_many(self, texts):
        return [self.predict(t) for t in texts]


def cli_invoker(command, database_url: str, monkeypatch, tmp_path, *, unset: tuple[str, ...] = ()):
    """Run a click `command` as a person at a terminal would: on `database_url`, from an empty working
    directory (no paidan.toml), with the environment variables in `unset` removed. The returned
    `invoke(*args, ok=True, input=None)` asserts exit status 0 unless `ok=False`."""
    from click.testing import CliRunner

    monkeypatch.setenv("PAIDAN_DATABASE_URL", database_url)
    for name in unset:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()

    def invoke(*args: str, ok: bool = True, input: str | None = None):
        result = runner.invoke(command, list(args), catch_exceptions=False, input=input)
        if ok:
            assert result.exit_code == 0, result.output
        return result

    return invoke
