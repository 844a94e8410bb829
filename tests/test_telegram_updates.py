"""connectors.telegram.updates: pure reading of Bot API updates, on hand-made updates and on the
corpus of real ones (/work/shared/corpus/telegram; that part skips when the corpus is absent)."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from connectors.telegram.updates import Incoming, is_command, is_private, read_update, to_inbound
from models.message import Attachment, Channel, Identity, IdentityKind, ThreadRefs

CORPUS = Path("/work/shared/corpus/telegram")
NOW = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
CUSTOMER = {"id": 5550001, "is_bot": False, "first_name": "小明", "last_name": "王",
            "username": "xiaoming", "language_code": "zh-hans"}
PRIVATE_CHAT = {"id": 5550001, "type": "private", "first_name": "小明"}


def message_update(update_id: int = 10, **fields) -> dict:
    message = {"message_id": 77, "from": CUSTOMER, "chat": PRIVATE_CHAT, "date": 1763884800}
    message.update(fields)
    return {"update_id": update_id, "message": message}


def inbound(update: dict, **kwargs):
    return to_inbound(read_update(update), received_at=NOW, **kwargs)


# ---- plain private messages ---------------------------------------------------------------------


def test_private_text_message_becomes_an_inbound_message():
    update = message_update(text="我的订单还没到")
    incoming = read_update(update)
    assert incoming.kind == "message" and is_private(incoming)
    assert (incoming.update_id, incoming.chat_id, incoming.message_id) == (10, 5550001, 77)
    assert incoming.date == datetime(2025, 11, 23, 8, 0, tzinfo=UTC)
    msg = to_inbound(incoming, received_at=NOW)
    assert msg.channel == Channel.TELEGRAM
    assert msg.external_id == "5550001:77"
    assert msg.sender.identities == (Identity(IdentityKind.TELEGRAM, "5550001"),)
    assert msg.sender.display_name == "小明 王"
    assert msg.text == "我的订单还没到"
    assert msg.language == "zh"
    assert msg.flags == () and msg.thread_refs.ticket_number is None
    assert msg.received_at == NOW


def test_raw_is_the_update_as_compact_utf8_json():
    update = message_update(text="你好")
    raw = read_update(update).raw
    assert json.loads(raw.decode("utf-8")) == update
    assert "你好".encode() in raw and b": " not in raw


@pytest.mark.parametrize("code, language", [("zh-hans", "zh"), ("en-US", "en"), ("ru", "ru"), ("", None), (None, None)])
def test_language_is_the_primary_subtag(code, language):
    user = {**CUSTOMER, "language_code": code}
    assert inbound(message_update(text="hi", **{"from": user})).language == language


def test_missing_fields_are_tolerated():
    for update in ({}, {"update_id": 3}, {"message": None}, {"message": {"chat": "x"}}, {"update_id": "x", "message": {}},
                   {"callback_query": {}}, [], None, {"message": {"photo": [None, 3], "from": [], "contact": 1}}):
        incoming = read_update(update)  # type: ignore[arg-type]
        assert isinstance(incoming, Incoming)
    assert read_update({"update_id": 3}).kind == "other"


def test_an_incoming_without_sender_is_not_a_customer_message():
    channel_post = {"update_id": 4, "channel_post": {"message_id": 1, "date": 1, "text": "news",
                                                     "chat": {"id": -100123, "type": "channel", "title": "News"}}}
    incoming = read_update(channel_post)
    assert incoming.kind == "other" and incoming.chat_type == "channel" and incoming.text == "news"
    with pytest.raises(ValueError):
        to_inbound(incoming, received_at=NOW)


def test_group_message_is_recognised_as_not_private():
    group = {"id": -1001293752024, "type": "supergroup", "title": "Shop chat"}
    incoming = read_update(message_update(text="hello", chat=group))
    assert incoming.kind == "message" and not is_private(incoming) and incoming.chat_type == "supergroup"
    assert inbound(message_update(text="hello", chat=group)).external_id == "-1001293752024:77"


# ---- edits, replies, ticket numbers -------------------------------------------------------------


def test_edited_message_has_its_own_key_and_flag():
    update = {"update_id": 11, "edited_message": {**message_update(text="fixed typo")["message"], "edit_date": 1763884900}}
    incoming = read_update(update)
    assert incoming.kind == "edited_message"
    msg = to_inbound(incoming, received_at=NOW)
    assert msg.external_id == "5550001:77:edit:1763884900"
    assert msg.flags == ("edited",) and msg.text == "fixed typo"


def test_new_asks_for_a_ticket_of_its_own_and_its_edit_does_not():
    fresh = inbound(message_update(text="/new 订单 GD20261124001 的发票开错了"))
    assert fresh.thread_refs == ThreadRefs(new_ticket=True) and fresh.text == "订单 GD20261124001 的发票开错了"
    update = {"update_id": 12, "edited_message": {**message_update(text="/new 订单的发票开错了!")["message"],
                                                  "edit_date": 1763884900}}
    edit = inbound(update)
    assert edit.thread_refs.new_ticket is False and edit.text == "订单的发票开错了!"  # joins the ticket it corrects


def test_reply_to_our_acknowledgement_names_the_ticket():
    ack = {"message_id": 70, "from": {"id": 123456, "is_bot": True, "first_name": "Paidan"}, "chat": PRIVATE_CHAT,
           "date": 1763884000, "text": "已收到，工单号 GD20261123001，我们会尽快回复。"}
    update = message_update(text="还没有消息吗？", reply_to_message=ack)
    incoming = read_update(update)
    assert incoming.reply_to_message_id == 70 and "GD20261123001" in incoming.reply_to_text
    assert inbound(update).thread_refs.ticket_number == "GD20261123001"


def test_ticket_number_typed_in_the_text_wins_over_the_reply():
    ack = {"message_id": 70, "chat": PRIVATE_CHAT, "date": 1, "text": "ticket GD20261123001"}
    update = message_update(text="about gd20261120007 please", reply_to_message=ack)
    assert inbound(update).thread_refs.ticket_number == "GD20261120007"


def test_short_or_embedded_numbers_are_not_ticket_numbers():
    assert inbound(message_update(text="GD2026112")).thread_refs.ticket_number is None  # too short
    assert inbound(message_update(text="XGD20261123001")).thread_refs.ticket_number is None


# ---- contacts -----------------------------------------------------------------------------------


def test_own_contact_share_gives_the_phone_identity():
    update = message_update(contact={"phone_number": "8613800138000", "first_name": "小明", "user_id": 5550001})
    incoming = read_update(update)
    assert incoming.contact_phone == "8613800138000"
    assert inbound(update).sender.identities == (
        Identity(IdentityKind.TELEGRAM, "5550001"), Identity(IdentityKind.PHONE, "+8613800138000"))


def test_plus_sign_is_kept_once():
    update = message_update(contact={"phone_number": "+86 138 0013 8000", "user_id": 5550001})
    assert inbound(update).sender.of_kind(IdentityKind.PHONE).value == "+8613800138000"


def test_someone_elses_contact_is_not_the_senders_phone():
    for contact in ({"phone_number": "8613900139000", "first_name": "Li", "user_id": 777},
                    {"phone_number": "8613900139000", "first_name": "Li"}):  # no user_id: not on Telegram
        update = message_update(contact=contact)
        assert read_update(update).contact_phone is None
        msg = inbound(update)
        assert msg.sender.of_kind(IdentityKind.PHONE) is None
        assert "8613900139000" in msg.text  # still shown to the agent as content


# ---- media --------------------------------------------------------------------------------------


def test_photo_keeps_only_the_largest_size_and_the_caption():
    sizes = [{"file_id": "small", "file_unique_id": "a", "width": 90, "height": 60, "file_size": 1000},
             {"file_id": "large", "file_unique_id": "c", "width": 1280, "height": 853, "file_size": 90000},
             {"file_id": "medium", "file_unique_id": "b", "width": 320, "height": 213, "file_size": 9000}]
    update = message_update(photo=sizes, caption="破损的包装")
    incoming = read_update(update)
    assert incoming.files == (("large", "photo.jpg", "image/jpeg", 90000),)
    assert incoming.text == "破损的包装" and incoming.media_group_id is None
    assert read_update(message_update(photo=sizes, media_group_id="13620918271")).media_group_id == "13620918271"
    assert inbound(update).flags == ("attachment_missing",)
    given = (Attachment("photo.jpg", "image/jpeg", b"\xff\xd8jpeg"),)
    assert inbound(update, attachments=given).flags == ()


def test_document_voice_and_animation_are_files_once():
    doc = {"file_id": "d1", "file_unique_id": "u", "file_name": "发票.pdf", "mime_type": "application/pdf", "file_size": 2048}
    assert read_update(message_update(document=doc)).files == (("d1", "发票.pdf", "application/pdf", 2048),)
    voice = {"file_id": "v1", "file_unique_id": "u", "duration": 3, "mime_type": "audio/ogg", "file_size": 4321}
    assert read_update(message_update(voice=voice)).files == (("v1", "voice.ogg", "audio/ogg", 4321),)
    gif = {"file_id": "g1", "file_unique_id": "u", "mime_type": "video/mp4", "file_name": "x.mp4"}
    assert len(read_update(message_update(animation=gif, document=gif)).files) == 1


@pytest.mark.parametrize("fields, text", [
    ({"sticker": {"file_id": "s", "emoji": "😀", "width": 512, "height": 512}}, "[sticker 😀]"),
    ({"location": {"latitude": 31.2304, "longitude": 121.4737}}, "[location 31.23,121.47]"),
    ({"dice": {"emoji": "🎲", "value": 4}}, "[dice 🎲 4]"),
    ({"venue": {"location": {"latitude": 1, "longitude": 2}, "title": "仓库", "address": "上海"}}, "[venue 仓库, 上海]"),
])
def test_non_file_content_is_described_in_the_text(fields, text):
    incoming = read_update(message_update(**fields))
    assert incoming.text == text and incoming.files == ()


# ---- callback queries and commands --------------------------------------------------------------


def test_callback_query():
    update = {"update_id": 12, "callback_query": {
        "id": "4382bfdwdsb323b2d9", "chat_instance": "-1", "data": "accept:GD20261123001",
        "from": {"id": 9000001, "is_bot": False, "first_name": "Agent", "language_code": "en"},
        "message": {"message_id": 5, "date": 1763884000, "chat": {"id": 9000001, "type": "private"},
                    "text": "New ticket GD20261123001 for you"}}}
    incoming = read_update(update)
    assert incoming.kind == "callback_query"
    assert (incoming.callback_id, incoming.callback_data) == ("4382bfdwdsb323b2d9", "accept:GD20261123001")
    assert (incoming.from_id, incoming.chat_id, incoming.message_id) == (9000001, 9000001, 5)
    assert incoming.text == "" and "GD20261123001" in incoming.reply_to_text


@pytest.mark.parametrize("text, command", [
    ("/start", "/start"), ("/help@paidan_test_bot", "/help"), ("/start ref-42", "/start"),
    ("/Status GD20261123001", "/status"), ("hello /start", None), ("/", None), ("", None),
])
def test_is_command(text, command):
    assert is_command(read_update(message_update(text=text))) == command


def test_command_for_another_bot_is_not_ours():
    incoming = read_update(message_update(text="/start@other_bot"))
    assert is_command(incoming, bot_username="paidan_test_bot") is None
    assert is_command(incoming, bot_username="other_bot") == "/start"


# ---- the corpus of real updates -----------------------------------------------------------------


def corpus_updates() -> list[tuple[str, dict]]:
    """(file name, update) for every corpus file; bare messages use their wrapped-update file."""
    if not (CORPUS / "MANIFEST.tsv").exists():
        return []
    rows = csv.DictReader((CORPUS / "MANIFEST.tsv").open(encoding="utf-8"), delimiter="\t")
    return [(row["file"], json.loads((CORPUS / (row["wrapped_update_file"] or row["file"])).read_text("utf-8")))
            for row in rows]


needs_corpus = pytest.mark.skipif(not (CORPUS / "MANIFEST.tsv").exists(), reason="Telegram corpus not present")


@needs_corpus
def test_every_corpus_file_reads_without_exception():
    files = sorted(p for p in CORPUS.rglob("*.json"))
    assert len(files) >= 61
    for path in files:  # bare messages too, read as (unknown) updates
        incoming = read_update(json.loads(path.read_text("utf-8")))
        assert incoming.kind in ("message", "edited_message", "callback_query", "other"), path.name
    for name, update in corpus_updates():
        incoming = read_update(update)
        if incoming.kind in ("message", "edited_message") and incoming.from_id is not None:
            msg = to_inbound(incoming, received_at=NOW)
            assert msg.external_id.startswith(f"{incoming.chat_id}:{incoming.message_id}"), name


@needs_corpus
def test_corpus_private_text_messages():
    updates = dict(corpus_updates())
    msg = to_inbound(read_update(updates["teloxide_message_de_text.json"]), received_at=NOW)
    assert msg.external_id == "250918540:199785"
    assert msg.sender.identities == (Identity(IdentityKind.TELEGRAM, "250918540"),)
    assert msg.sender.display_name == "Андрей Власов" and msg.text == "Лол кек 😂" and msg.language == "en"
    msg = to_inbound(read_update(updates["teloxide_update_message.json"]), received_at=NOW)
    assert msg.external_id == "218485655:6557" and msg.text == "hello there"


@needs_corpus
def test_corpus_channel_groups_edits_callbacks_and_media():
    updates = {name: read_update(update) for name, update in corpus_updates()}
    channel = updates["aiogram2_message_from_channel.json"]
    assert channel.kind == "other" and channel.chat_type == "channel" and channel.from_id is None
    assert not is_private(updates["teloxide_update_issue_1107_2.json"])
    assert is_command(updates["teloxide_update_issue_1107_2.json"]) == "/report"
    edited = updates["aiogram2_edited_message.json"]
    assert to_inbound(edited, received_at=NOW).external_id == "12345678:12345:edit:1508825379"
    assert updates["aiogram2_message_with_contact.json"].contact_phone is None  # no user_id in the card
    assert updates["aiogram2_reply_message.json"].reply_to_text == "Hi, world!"
    assert updates["aiogram2_message_with_photo.json"].text == "photo description"
    assert len(updates["aiogram2_message_with_photo.json"].files) == 1
    assert updates["aiogram2_message_with_sticker.json"].text == "[sticker 🛠]"
    assert updates["aiogram2_message_with_sticker.json"].files == ()
    assert updates["aiogram2_message_with_document.json"].files[0][1] == "test.docx"
    callback = updates["bloodcell_2_callback_query.json"]
    assert callback.kind == "callback_query" and callback.callback_data == "button2_bijoy"
    assert updates["teloxide_update_new_update_kind_error.json"].kind == "other"
    assert updates["ptba_chat_member_updated.json"].kind == "other"
    assert is_command(updates["bloodcell_1_message.json"]) == "/start"
