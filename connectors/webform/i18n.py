"""Chinese and English texts of the web channel, and how a request picks its language."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from models.message import STATE_WORDS

LANGUAGES = ("zh", "en")

# key -> (zh, en). Placeholders use str.format names.
TEXTS: dict[str, tuple[str, str]] = {
    "site_name": ("客户服务", "Customer support"),
    "switch_to": ("English", "中文"),
    "contact_title": ("联系我们", "Contact us"),
    "contact_intro": (
        "请描述您遇到的问题，我们会尽快回复。邮箱和手机号码至少填写一项。",
        "Tell us what happened and we will get back to you. Give an email address, a phone number, or both.",
    ),
    "name": ("姓名", "Name"),
    "email": ("邮箱", "Email"),
    "phone": ("手机号码", "Phone"),
    "phone_hint": (
        "中国大陆以外的号码请加国家代码，如 +1 415 555 0100",
        "Include the country code outside mainland China, e.g. +1 415 555 0100",
    ),
    "subject": ("主题", "Subject"),
    "message": ("问题描述", "Message"),
    "attachments": ("附件", "Attachments"),
    "attachments_hint": (
        "最多 {max_files} 个文件，每个不超过 {max_size}；支持图片（PNG、JPEG、GIF、WebP）、PDF、TXT、CSV、LOG、DOCX、XLSX。",
        "Up to {max_files} files, {max_size} each: images (PNG, JPEG, GIF, WebP), PDF, TXT, CSV, LOG, DOCX, XLSX.",
    ),
    "honeypot": ("请勿填写此项", "Leave this field empty"),
    "submit": ("提交", "Send"),
    "form_has_errors": ("提交未成功，请修改下列标出的内容后重试。", "Your message was not sent yet: please fix the fields marked below."),
    "confirm_title": ("已收到您的留言", "We received your message"),
    "confirm_ticket": ("您的工单号", "Your ticket number"),
    "confirm_keep": (
        "请保存此工单号，凭工单号和联系方式可随时查询处理进度。",
        "Keep this number: with it and your contact details you can follow your request.",
    ),
    "confirm_due": ("我们将在 {due}内首次回复您。", "We will first reply within {due}."),
    "confirm_status_link": ("查询工单进度", "Check the status of your ticket"),
    "honeypot_thanks": ("感谢您的留言。", "Thank you for your message."),
    "new_message_link": ("再提交一个问题", "Send another message"),
    "status_title": ("查询工单", "Ticket status"),
    "status_intro": (
        "请输入工单号以及提交时使用的邮箱或手机号码。",
        "Enter your ticket number and the email address or phone number you used.",
    ),
    "ticket_number": ("工单号", "Ticket number"),
    "contact": ("邮箱或手机号码", "Email or phone"),
    "lookup": ("查询", "Look up"),
    "not_found": (
        "没有找到与该工单号和联系方式相符的工单，请检查后重试。",
        "No ticket matches this number and contact. Please check both and try again.",
    ),
    "ticket_state": ("状态", "Status"),
    "ticket_subject": ("主题", "Subject"),
    "ticket_created": ("创建时间", "Opened"),
    "conversation": ("沟通记录", "Conversation"),
    "from_you": ("您", "You"),
    "from_support": ("客服", "Support"),
    "add_message": ("补充说明", "Add a message"),
    "send_message": ("发送", "Send"),
    "message_added": ("您的补充说明已收到。", "Your message was added to the ticket."),
    "mark_solved": ("✅ 问题已解决", "✅ This is solved"),
    "mark_solved_hint": ("问题已解决？点这里结束工单；之后再补充说明会重新打开它。",
                         "All sorted? Close the ticket here; adding a message later opens it again."),
    "marked_solved": ("已标记为已解决，谢谢！", "Marked as solved, thank you!"),
    "already_solved": ("这个工单已经解决了。", "This ticket is already solved."),
    "no_messages": ("暂无记录。", "Nothing here yet."),
    **{f"state_{state}": words for state, words in STATE_WORDS.items()},
    "error_title": ("出错了", "Something went wrong"),
    "back_to_form": ("返回表单", "Back to the form"),
    "csrf_failed": (
        "安全校验未通过：表单已失效或浏览器未发送 Cookie。请刷新页面后重新提交（请先复制您填写的内容）。",
        "The security check failed: the form is stale or your browser did not send its cookie. Reload the page and "
        "send again (copy what you wrote first).",
    ),
    "csrf_expired": (
        "表单已过期，我们保留了您填写的内容，请核对后再次提交。",
        "The form had expired. We kept what you wrote: check it and send again.",
    ),
    "too_large": (
        "附件过大：每个文件不超过 {max_size}，最多 {max_files} 个文件。您的留言尚未提交。",
        "Attachment too large (max {max_size} each, {max_files} files). Your message was not sent.",
    ),
    "too_large_back": ("请返回上一页，移除或压缩较大的附件后重试。", "Go back, remove or shrink the large attachments and try again."),
    "rate_limited": (
        "提交过于频繁，请在 {seconds} 秒后重试。返回上一页可保留已填写的内容。",
        "Too many requests from your network. Try again in {seconds} seconds; going back keeps what you typed.",
    ),
    "unavailable": (
        "系统暂时无法保存您的留言，请稍后（约 {seconds} 秒后）重新提交。您填写的内容已保留。",
        "We could not store your message just now. Please send it again in about {seconds} seconds; what you wrote "
        "is kept below.",
    ),
    "unavailable_plain": ("系统暂时不可用，请稍后重试。", "The service is temporarily unavailable. Please try again shortly."),
    "page_not_found": ("页面不存在。", "This page does not exist."),
    "bad_request": ("无法处理该请求。", "This request cannot be handled."),
    "bad_form": ("无法读取提交的表单，请刷新页面后重试。", "We could not read the submitted form. Reload the page and try again."),
    # Field problems: code -> text. Each names what to do.
    "err_required": ("此项必填。", "This field is required."),
    "err_too_long": ("内容过长：最多 {max} 个字符。", "Too long: at most {max} characters."),
    "err_email_invalid": ("邮箱地址格式不正确。", "This is not a valid email address."),
    "err_phone_invalid": (
        "手机号码无效；中国大陆以外的号码请加国家代码（如 +1）。",
        "This is not a valid phone number; include the country code outside mainland China (e.g. +1).",
    ),
    "err_contact_required": ("邮箱和手机号码请至少填写一项。", "Give an email address or a phone number (or both)."),
    "err_contact_invalid": ("请填写提交时使用的邮箱或手机号码。", "Enter the email address or phone number you used."),
    "err_ticket_number_invalid": ("工单号格式应类似 GD20261123001。", "A ticket number looks like GD20261123001."),
    "err_too_many_attachments": ("附件过多：最多 {max} 个。", "Too many attachments: at most {max}."),
    "err_attachment_too_large": (
        "“{filename}”过大：每个文件不超过 {max_size}。",
        "{filename} is too large: at most {max_size} per file.",
    ),
    "err_attachment_empty": ("“{filename}”是空文件。", "{filename} is empty."),
    "err_attachment_type": (
        "不支持“{filename}”的文件类型；支持图片（PNG、JPEG、GIF、WebP）、PDF、TXT、CSV、LOG、DOCX、XLSX。",
        "{filename}: this file type is not accepted. Allowed: images (PNG, JPEG, GIF, WebP), PDF, TXT, CSV, LOG, "
        "DOCX, XLSX.",
    ),
    "err_attachment_mismatch": ("“{filename}”的内容与扩展名不符。", "{filename}: the content does not match the file extension."),
    "err_attachment_invalid": ("“{filename}”无法读取。", "{filename} could not be read."),
    "err_base64": ("附件内容不是有效的 base64 编码。", "Not valid base64."),
    "err_key_required": ("缺少幂等键。", "Required: send an Idempotency-Key header or an external_id field."),
    "err_key_mismatch": (
        "Idempotency-Key 与 external_id 不一致。",
        "The Idempotency-Key header and external_id differ; send one of them.",
    ),
    "err_key_invalid": ("幂等键格式不正确。", "At most 200 characters of A-Z a-z 0-9 - _ . : @ / + =."),
    "minutes": ("{n} 分钟", "{n} minutes"),
    "minute": ("{n} 分钟", "{n} minute"),
    "hours": ("{n} 小时", "{n} hours"),
    "hour": ("{n} 小时", "{n} hour"),
    "days": ("{n} 天", "{n} days"),
    "day": ("{n} 天", "{n} day"),
    "api_docs_title": ("API 文档", "API documentation"),
    # The satisfaction survey page (connectors/webform/surveys.py).
    "survey_title": ("服务满意度调查", "How did we do?"),
    "survey_intro": (
        "您的工单 {number} 已处理完毕。您对本次服务满意吗？",
        "Your ticket {number} has been resolved. How satisfied are you with our help?",
    ),
    "survey_rating": ("评分", "Your rating"),
    "survey_rating_1": ("1 · 非常不满意", "1 · Very dissatisfied"),
    "survey_rating_2": ("2 · 不满意", "2 · Dissatisfied"),
    "survey_rating_3": ("3 · 一般", "3 · Neither"),
    "survey_rating_4": ("4 · 满意", "4 · Satisfied"),
    "survey_rating_5": ("5 · 非常满意", "5 · Very satisfied"),
    "survey_comment": ("意见或建议（选填）", "Anything you would like to tell us (optional)"),
    "survey_submit": ("提交评价", "Send my rating"),
    "survey_choose": ("请选择一个评分（1–5）。", "Choose a rating from 1 to 5."),
    "survey_answered": (
        "您的评价：{rating}。在 {closes} 之前可以修改。",
        "Your answer: {rating}. You can change it until {closes}.",
    ),
    "survey_thanks": (
        "感谢您的评价！在 {closes} 之前可以随时修改。",
        "Thank you for your answer! You can change it until {closes}.",
    ),
    "survey_closed": (
        "本次调查已结束，不再接受评价。如问题仍未解决，请重新联系我们。",
        "This survey has closed and no longer takes answers. If your problem is not solved, please contact us again.",
    ),
    "survey_not_found": (
        "该调查链接无效或已失效，请检查链接是否完整。",
        "This survey link is not valid. Check that the whole link from the email was opened.",
    ),
}


def text(key: str, lang: str, **params: object) -> str:
    zh, en = TEXTS[key]
    template = zh if lang == "zh" else en
    return template.format(**params) if params else template


def translator(lang: str) -> Callable[..., str]:
    """`t("key", name=value)` for one language, handed to the templates."""
    return lambda key, **params: text(key, lang, **params)


def state_label(state: str, lang: str) -> str:
    """A ticket state in words; a state this page does not know is shown as it is."""
    key = "state_" + state
    return text(key, lang) if key in TEXTS else state


def normalise_language(tag: str | None) -> str | None:
    """'zh-CN', 'zh-Hant-TW', 'ZH' -> 'zh'; 'en-GB' -> 'en'; anything else -> None."""
    if not tag:
        return None
    primary = tag.strip().lower().replace("_", "-").split("-", 1)[0]
    return primary if primary in LANGUAGES else None


def parse_accept_language(header: str | None) -> str | None:
    """The supported language the browser prefers most (RFC 9110 quality values), or None."""
    if not header:
        return None
    best: tuple[float, int, str] | None = None
    for position, item in enumerate(header.split(",")[:50]):
        tag, _, params = item.strip().partition(";")
        quality = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        lang = normalise_language(tag)
        if lang is None or not quality > 0:  # `not >` also rejects NaN
            continue
        candidate = (-quality, position, lang)
        if best is None or candidate < best:
            best = candidate
    return best[2] if best else None


def pick_language(query: str | None, cookie: str | None, accept_language: str | None, default: str) -> str:
    """An explicit ?lang= wins, then the remembered choice, then the browser's preference."""
    return (
        normalise_language(query)
        or normalise_language(cookie)
        or parse_accept_language(accept_language)
        or default
    )


def format_duration(delta: timedelta, lang: str) -> str:
    """4 hours / 4 小时; 15 minutes; 2 days — rounded to the largest sensible unit."""
    minutes = max(1, round(delta.total_seconds() / 60))
    if minutes < 60:
        n, unit = minutes, "minute"
    elif minutes < 48 * 60:
        hours = minutes / 60
        n, unit = (int(hours) if hours == int(hours) else round(hours, 1)), "hour"
    else:
        days = minutes / (24 * 60)
        n, unit = (int(days) if days == int(days) else round(days, 1)), "day"
    return text(unit if n == 1 else unit + "s", lang, n=n)
