"""`paidan serve` on Telegram, against a loopback stand-in for the Bot API: a customer writes to the
bot, is acknowledged with a ticket number, a supervisor is told, answers from the agent console,
and the answer reaches the customer's chat."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.tables import Message, Ticket
from paidan.db import make_engine
from serving import wait_for
from telegram_api import FakeBotAPI

CUSTOMER, SUPERVISOR = 555001, 777001
RECEIPT = b"\xff\xd8\xff\xe0 a refund receipt, as a jpeg" * 50


def private_message(update_id: int, user_id: int, message_id: int, text: str, name: str = "王芳",
                    reply_to: dict | None = None) -> dict:
    message = {"message_id": message_id, "date": 1_796_000_000 + update_id,
               "from": {"id": user_id, "is_bot": False, "first_name": name, "language_code": "zh-hans"},
               "chat": {"id": user_id, "type": "private", "first_name": name}, "text": text}
    if reply_to:
        message["reply_to_message"] = reply_to
    return {"update_id": update_id, "message": message}


def sent_to(fake: FakeBotAPI, chat_id: int) -> list[str]:
    return [r["text"] for r in fake.requests("sendMessage") if r.get("chat_id") == chat_id]


def test_a_customer_on_telegram_is_answered_from_the_agent_console(database_url, tmp_path):
    env = {**os.environ, "PAIDAN_DATABASE_URL": database_url, "PAIDAN_WEB_PORT": "0", "PAIDAN_SECRET_KEY": "t",
           "PAIDAN_EMAIL__SMTP_ENABLED": "false", "PAIDAN_MODEL_DIR": str(tmp_path / "no-models")}
    cli = [sys.executable, "-m", "paidan.cli"]
    subprocess.run([*cli, "agents", "add", "李雷", "--role", "supervisor", "--telegram-id", str(SUPERVISOR),
                    "--skills", "transaction,zh"], env=env, cwd=tmp_path, check=True, capture_output=True)
    with FakeBotAPI() as fake:
        env |= {"PAIDAN_TELEGRAM__TOKEN": fake.token, "PAIDAN_TELEGRAM__API_BASE": fake.base,
                "PAIDAN_TELEGRAM__POLL_TIMEOUT_SECONDS": "1", "PAIDAN_TELEGRAM__SEND_POLL_SECONDS": "0.2"}
        fake.push_update(private_message(1, CUSTOMER, 10, "/start"))
        fake.push_update(private_message(2, CUSTOMER, 11, "上周申请的退款还没到账，订单号 20261130-7781"))
        proc = subprocess.Popen([*cli, "serve"], cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
        lines: list[str] = []
        import threading

        log_reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
        log_reader.start()
        try:
            # The customer: a welcome, then the acknowledgement with the ticket number.
            ack = wait_for(lambda: [t for t in sent_to(fake, CUSTOMER) if "GD" in t], "the acknowledgement", lines)
            number = re.search(r"GD\d{11,}", ack[0]).group(0)
            assert "您好" in sent_to(fake, CUSTOMER)[0]  # /start's welcome, not a ticket
            # The supervisor hears of it (no model here, so it waits for triage).
            wait_for(lambda: [t for t in sent_to(fake, SUPERVISOR) if number in t], "the supervisor's notice", lines)
            # …and answers from the console; the reply reaches the customer's chat.
            fake.push_update(private_message(3, SUPERVISOR, 20, f"/reply {number} 您好，退款今天会到账。", name="李雷"))
            wait_for(lambda: [t for t in sent_to(fake, CUSTOMER) if "退款今天会到账" in t], "the reply", lines)
            # A photo from the console, captioned as a reply, reaches the customer as one message.
            fake.add_file("receipt", RECEIPT)
            photo = private_message(4, SUPERVISOR, 22, "", name="李雷")
            del photo["message"]["text"]
            photo["message"] |= {"caption": f"/reply {number} 这是退款凭证",
                                 "photo": [{"file_id": "receipt", "file_unique_id": "r", "width": 800, "height": 600,
                                            "file_size": len(RECEIPT)}]}
            fake.push_update(photo)
            [document] = wait_for(lambda: [r for r in fake.requests("sendDocument") if r.get("chat_id") == CUSTOMER],
                                  "the photo to the customer", lines)
            assert "这是退款凭证" in document["caption"] and number in document["caption"]
            assert document["document"] == {"filename": "photo.jpg", "size": len(RECEIPT),
                                            "sha256": hashlib.sha256(RECEIPT).hexdigest()}
            fake.push_update(private_message(5, SUPERVISOR, 21, f"/resolve {number}", name="李雷"))
            wait_for(lambda: [t for t in sent_to(fake, SUPERVISOR) if "resolved" in t.lower() or "已解决" in t],
                     "the console's answer to /resolve", lines)
            # A customer's reply to the acknowledgement continues the same ticket.
            fake.push_update(private_message(6, CUSTOMER, 12, "谢谢，收到了",
                                             reply_to={"message_id": 1, "date": 1_796_000_001, "text": ack[0],
                                                       "chat": {"id": CUSTOMER, "type": "private"}}))
            wait_for(lambda: fake.confirmed_offset and fake.confirmed_offset > 6, "update 6 confirmed", lines)
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0, "".join(lines)
    log_reader.join(30)  # the log to its last line ("paidan stopped"): read a moment after the process ended
    engine = make_engine(database_url)
    with Session(engine) as session:
        tickets = session.scalars(select(Ticket)).all()
        texts = session.scalars(select(Message.text).order_by(Message.id)).all()
    engine.dispose()
    assert [t.number for t in tickets] == [number], texts
    assert texts == ["上周申请的退款还没到账，订单号 20261130-7781", "您好，退款今天会到账。", "这是退款凭证", "谢谢，收到了"]
    assert "paidan stopped" in "".join(lines) and "Traceback" not in "".join(lines)

