"""PII masking: e-mail and IP addresses replaced with placeholders."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from lmforge.data.documents import Document
from lmforge.data.step import Step


@dataclass
class PIIConfig:
    email: bool = True  # replace e-mail addresses
    ip: bool = True  # replace IPv4 / IPv6 addresses
    email_placeholder: str = "<EMAIL>"  # what an e-mail address becomes
    ip_placeholder: str = "<IP>"  # what an IP address becomes


EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}\b")
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
IPV4 = re.compile(rf"(?<![\d.]){_OCTET}(?:\.{_OCTET}){{3}}(?![\d.]*\d)")
IPV6 = re.compile(
    r"(?<![:\w])(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}(?![:\w])|"
    r"(?<![:\w])(?:[0-9A-Fa-f]{1,4}:){1,6}:(?:[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4}){0,5})?(?![:\w])"
)

_DOTTED = re.compile(r"\d\.\d{1,3}\.\d")
_HEXCOLON = re.compile(r"[0-9A-Fa-f]:[0-9A-Fa-f:]*:")


def mask_pii(text: str, cfg: PIIConfig, counters: Counter | None = None) -> str:
    if cfg.email and "@" in text:
        text, n = EMAIL.subn(cfg.email_placeholder, text)
        if counters is not None and n:
            counters["emails_masked"] += n
    if cfg.ip:
        # cheap gates first: most documents have no dotted quad and no "::"/hex colon groups
        n4 = n6 = 0
        if _DOTTED.search(text):
            text, n4 = IPV4.subn(cfg.ip_placeholder, text)
        if ":" in text and _HEXCOLON.search(text):
            text, n6 = IPV6.subn(cfg.ip_placeholder, text)
        if counters is not None and n4 + n6:
            counters["ips_masked"] += n4 + n6
    return text


class PIIStep(Step):
    name = "pii"
    cfg: PIIConfig

    def __call__(self, doc: Document) -> Document | str:
        doc.text = mask_pii(doc.text, self.cfg, self.counters)
        return doc
