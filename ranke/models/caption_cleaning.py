"""Caption cleaning applied to every prompt before FLAN-T5 (the official RankE text preprocessing).

The official code (syjmelody/RankE at 2798acc, ``language/t5.py``; LlamaGen, PixArt-alpha and
DeepFloyd IF carry the same function) lower-cases and scrubs each caption inside
``T5Embedder.get_text_embeddings`` (t5.py:58-59) with ``T5Embedder.text_preprocessing``
(t5.py:81-89), which runs ``T5Embedder.clean_caption`` (t5.py:96-201, ``basic_clean`` at t5.py:91-94,
``bad_punct_regex`` at t5.py:17) twice. The T5 encoder was trained on captions cleaned this way, so
the policy must see them cleaned the same way. This module restates those rules, in the same order
and with the same effect, as the ordered list ``RULES``; ``clean_caption`` is one pass and
``t5_caption`` the official two passes. Equality with the official function is pinned by
tests/fixtures/caption_cleaning/golden.json (made by running the upstream code itself).

Where it is used: the T5 input only, in training rollouts and in evaluation sampling, because the
official code cleans inside the T5 embedder and nowhere else:

* training rollouts: ``get_text_embeddings(batch_prompts)`` (autoregressive/post_train/trainer.py:393)
  cleans for T5, while the reward gets the RAW captions, ``self.reward_model(images,
  expanded_prompts)`` with ``expanded_prompts`` built from the raw ``batch_prompts``
  (trainer.py:441-443); the decoder's reward loss also gets the raw ``rollout_data["prompts"]``
  (trainer.py:603-604, 698), and the CLIP reward tokenises those texts as given
  (autoregressive/models/vqrl_models.py:278);
* evaluation: the sampler cleans for T5 only (autoregressive/sample/sample_t2i_ddp.py:180) and writes
  the raw prompts, merely stripped, to captions.txt (sample_t2i_ddp.py:158); the CLIP score reads
  that file back (evaluations/t2i/evaluation.py:349-352, 374) and tokenises the raw captions
  (evaluation.py:429).

So the CLIP score and the CLIP reward must NOT be given the cleaned caption.

The rules keep the recipe's quirks on purpose, since equality with the official output is the point:

* lower-casing (and the punctuation rules) run BEFORE ftfy, so most Latin-1 mojibake ("CafÃ©")
  can no longer be repaired ("Ã" becomes "ã", "©" is scrubbed as bad punctuation); only mojibake
  that survives those steps ("â€œhiâ€\\x9d", "itâ€¦") is fixed;
* URLs are removed before the HTML is parsed, so an ``href`` URL is already gone when the tag is;
  the URL rule only strips the "http(s)://" prefix and hosts ending in one of eight TLDs
  (com co ru net org edu gov it), so "example.de/page" survives as "example. de page"; its second
  form is keyed on "www:" (with a colon), which real text hardly has;
* '+' becomes a space (URL decoding of the whole caption): "1+1" -> "1 1";
* dashes and underscores become spaces only when a caption has MORE than three of them in total;
* ``caption.strip()`` near the end has its result discarded (t5.py:194), so a caption that starts
  with a space at that point keeps its enclosing quotes in that pass (the second pass removes them);
* the extension and spam-word rules have no closing word boundary: "epsilon" -> "ilon", "pdfs" -> "s".
"""

from __future__ import annotations

import html
import re
import urllib.parse
import warnings
from dataclasses import dataclass
from typing import Callable

import ftfy
from bs4 import BeautifulSoup, MarkupResemblesLocatorWarning

# bs4 warns when the markup looks like a file name or URL ("cat.jpg"); the caption is parsed as
# text on purpose, and the warning does not change the output, so it is only noise here.
warnings.filterwarnings("ignore", category=MarkupResemblesLocatorWarning)

__all__ = ["Rule", "RULES", "clean_caption", "rule", "t5_caption"]


@dataclass(frozen=True)
class Rule:
    """One cleaning step: ``apply`` maps the caption to the caption; ``what`` says what it does."""

    name: str
    what: str
    apply: Callable[[str], str]


def _sub(pattern: str, replacement: str, flags: int = 0) -> Callable[[str], str]:
    """A rule body that replaces every match of `pattern` (Python `re`, Unicode-aware \\w \\d \\s \\b)."""
    compiled = re.compile(pattern, flags)

    def apply(text: str) -> str:
        return compiled.sub(replacement, text)

    return apply


def _char_class(chars: str) -> str:
    """A regex character class matching exactly the characters of `chars`."""
    return "[" + "".join(re.escape(c) for c in chars) + "]"


# Host names ending in these top-level domains count as URLs (any other TLD survives).
URL_TLDS = ("com", "co", "ru", "net", "org", "edu", "gov", "it")


def _url_rule(scheme: str) -> Callable[[str], str]:
    """Remove a `scheme:` prefix (with up to three slashes, or with the one character after it) or a
    host ending in one of URL_TLDS together with its path, unless an '@' follows (an e-mail's user)."""
    prefix = scheme + r":(?:/{1,3}|[a-zA-Z0-9%])"
    host = r"[a-zA-Z0-9.\-]+\.(?:" + "|".join(URL_TLDS) + r")[\w/-]*\b/?(?!@)"
    return _sub(r"\b(?:" + prefix + "|" + host + ")", "")


def _html_text(text: str) -> str:
    """The text content of `text` parsed as HTML: tags and comments dropped, entities decoded once."""
    return BeautifulSoup(text, features="html.parser").text


# Unicode blocks of Chinese characters and CJK symbols. Together they are the single range
# U+31C0-U+9FFF; hiragana, katakana (U+3040-U+30FF) and hangul are NOT in it and are kept.
CJK_BLOCKS = (
    ("\u31c0", "\u31ef"),  # CJK Strokes
    ("\u31f0", "\u31ff"),  # Katakana Phonetic Extensions
    ("\u3200", "\u32ff"),  # Enclosed CJK Letters and Months
    ("\u3300", "\u33ff"),  # CJK Compatibility
    ("\u3400", "\u4dbf"),  # CJK Unified Ideographs Extension A
    ("\u4dc0", "\u4dff"),  # Yijing Hexagram Symbols
    ("\u4e00", "\u9fff"),  # CJK Unified Ideographs
)

# Every character written "-" after normalisation (a run of them becomes ONE "-").
DASHES = (
    "\u002d"  # HYPHEN-MINUS (so "--" and "---" collapse to "-")
    "\u058a"  # ARMENIAN HYPHEN
    "\u05be"  # HEBREW PUNCTUATION MAQAF
    "\u1400"  # CANADIAN SYLLABICS HYPHEN
    "\u1806"  # MONGOLIAN TODO SOFT HYPHEN
    "\u2010\u2011\u2012\u2013\u2014\u2015"  # HYPHEN, NON-BREAKING HYPHEN, FIGURE/EN/EM DASH, HORIZONTAL BAR
    "\u2e17"  # DOUBLE OBLIQUE HYPHEN
    "\u2e1a"  # HYPHEN WITH DIAERESIS
    "\u2e3a\u2e3b"  # TWO-EM DASH, THREE-EM DASH
    "\u2e40"  # DOUBLE HYPHEN
    "\u301c"  # WAVE DASH
    "\u3030"  # WAVY DASH
    "\u30a0"  # KATAKANA-HIRAGANA DOUBLE HYPHEN
    "\ufe31\ufe32"  # PRESENTATION FORMS FOR VERTICAL EM / EN DASH
    "\ufe58"  # SMALL EM DASH
    "\ufe63"  # SMALL HYPHEN-MINUS
    "\uff0d"  # FULLWIDTH HYPHEN-MINUS
)  # not U+2212 MINUS SIGN, which is kept

# Characters written '"' (double) and "'" (single) after normalisation.
DOUBLE_QUOTES = "`\u00b4\u00ab\u00bb\u201c\u201d\u00a8"  # ` ´ « » “ ” ¨
SINGLE_QUOTES = "\u2018\u2019"  # ‘ ’

# Symbols that only decorate web captions; each run of them becomes one space.
BAD_PUNCTUATION = (
    "#\u00ae\u2022\u00a9\u2122&@\u00b7\u00ba\u00bd\u00be\u00bf\u00a1\u00a7~"  # # ® • © ™ & @ · º ½ ¾ ¿ ¡ § ~
    ")(][}{|\\/*"
)

# File extensions that mark a caption token as a file name (and the word itself as spam).
FILE_EXTENSIONS = ("png", "jpg", "jpeg", "bmp", "webp", "eps", "pdf", "apk", "mp4")
_EXTENSIONS = "(?:" + "|".join(FILE_EXTENSIONS) + ")"


def _dashes_to_spaces_if_many(text: str) -> str:
    """'this-is-my-cute-cat' -> 'this is my cute cat', but only when the caption holds more than
    three '-' and '_' together; then EVERY '-' and '_' becomes a space."""
    if sum(text.count(c) for c in "-_") > 3:
        return re.sub(r"[-_]", " ", text)
    return text


RULES: tuple[Rule, ...] = (
    # Scraped captions are often URL-encoded ("a%20cat"); decoding also turns '+' into a space.
    Rule("url_decode", "decode %XX escapes and '+' as space", urllib.parse.unquote_plus),
    # T5 sees lower-case text only, trimmed.
    Rule("strip_lower", "trim surrounding whitespace and lower-case", lambda t: t.strip().lower()),
    # Some datasets write a placeholder <person>, which the HTML rule would delete as a tag.
    Rule("person_placeholder", "'<person>' -> 'person'", _sub(r"<person>", "person")),
    # Links carry no visual content. Runs before the HTML rule (so URLs inside tags go first).
    Rule("urls_http", "remove http(s): prefixes and hosts ending in a listed TLD", _url_rule("https?")),
    # The same rule keyed on "www:" (with a colon): it still removes listed-TLD hosts that the
    # first rule's removals brought together.
    Rule("urls_www", "remove www: prefixes and hosts ending in a listed TLD", _url_rule("www")),
    # Captions scraped from web pages keep their markup and entities.
    Rule("html_text", "keep the text of the HTML: drop tags and comments, decode entities", _html_text),
    # Social-media handles name people, not picture content.
    Rule("at_handles", "remove @nickname", _sub(r"@\w+", "")),
    # Chinese characters are mostly absent from T5's English SentencePiece vocabulary (<unk>).
    Rule("cjk", "remove CJK strokes, symbols and ideographs (U+31C0-U+9FFF)",
         _sub("[" + "".join(f"{lo}-{hi}" for lo, hi in CJK_BLOCKS) + "]+", "")),
    # One dash for the tokenizer, whatever the script or typesetting.
    Rule("dashes", "every run of dash variants -> '-'", _sub(_char_class(DASHES) + "+", "-")),
    # One double and one single quote character.
    Rule("double_quotes", "typographic double quotes and accents -> '\"'", _sub(_char_class(DOUBLE_QUOTES), '"')),
    Rule("single_quotes", "curly single quotes -> \"'\"", _sub(_char_class(SINGLE_QUOTES), "'")),
    # Entities escaped twice survive the HTML rule once decoded ("&amp;quot;" -> "&quot;").
    Rule("quot_entity", "remove '&quot' and '&quot;'", _sub(r"&quot;?", "")),
    # Only "&amp" is removed: a following ';' stays.
    Rule("amp_entity", "remove '&amp'", _sub(r"&amp", "")),
    # IP addresses are noise from server logs and image hosts.
    Rule("ip_addresses", "IPv4 address -> ' '", _sub(r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}", " ")),
    # A trailing "1:23 " is an article or video timestamp id.
    Rule("article_ids", "remove a trailing 'd:dd' followed by whitespace", _sub(r"\d:\d\d\s+$", "")),
    # Captions read from JSON/CSV exports sometimes hold the two characters backslash + 'n'.
    Rule("literal_newlines", "the two characters '\\n' -> ' '", _sub(r"\\n", " ")),
    # Hashtag numbers ("#1", "#12345") and long digit runs (ids, phone numbers) say nothing visual.
    Rule("hash_numbers_short", "remove '#' with 1-3 digits", _sub(r"#\d{1,3}\b", "")),
    Rule("hash_numbers_long", "remove '#' with 5 or more digits", _sub(r"#\d{5,}\b", "")),
    Rule("long_numbers", "remove numbers of 6 or more digits", _sub(r"\b\d{6,}\b", "")),
    # File names ("IMG_1234.jpg") are not descriptions; no closing boundary ("a.pngs" -> "s").
    Rule("filenames", "remove tokens ending in '.<image/document extension>'", _sub(r"\S+\." + _EXTENSIONS, "")),
    # Shouting punctuation: """SALE""" and "..." runs.
    Rule("quote_runs", "runs of 2+ quote characters -> '\"'", _sub(r"[\"']{2,}", '"')),
    Rule("dot_runs", "runs of 2+ dots -> ' '", _sub(r"\.{2,}", " ")),
    # Decorations such as ***SALE***, #tags, (c), brackets and slashes.
    Rule("bad_punctuation", "each run of decorative symbols -> ' '",
         _sub(_char_class(BAD_PUNCTUATION) + "+", " ")),
    # A dot standing alone between words (left after removals).
    Rule("lone_dots", "' . ' -> ' '", _sub(r"\s+\.\s+", " ")),
    # Slug-style captions ("this-is-my-cute-cat", "this_is_my_cute_cat") made of joined words.
    Rule("slug_separators", "if there are more than 3 '-'/'_' in all, each -> ' '", _dashes_to_spaces_if_many),
    # --- the upstream basic_clean: repair the text encoding and entities left by the steps above.
    # Lower-casing ran first, so most Latin-1 mojibake is beyond repair by now (see module doc).
    Rule("ftfy", "ftfy.fix_text: mojibake, ligatures, fullwidth letters, curly quotes, NFC", ftfy.fix_text),
    Rule("html_unescape_twice", "decode HTML entities, twice", lambda t: html.unescape(html.unescape(t))),
    Rule("strip", "trim surrounding whitespace", str.strip),
    # --- product codes and web-shop spam.
    Rule("codes_letters_digits", "remove 1-3 letters + 3-15 digits ('jc6640')",
         _sub(r"\b[a-zA-Z]{1,3}\d{3,15}\b", "")),
    Rule("codes_letters_digits_letters", "remove letters+digits+letters ('jc6640vc')",
         _sub(r"\b[a-zA-Z]+\d+[a-zA-Z]+\b", "")),
    Rule("codes_digits_letters_digits", "remove digits+letters+digits ('6640vc231')",
         _sub(r"\b\d+[a-zA-Z]+\d+\b", "")),
    Rule("shipping", "remove '[worldwide] [free] shipping'", _sub(r"(worldwide\s+)?(free\s+)?shipping", "")),
    Rule("download", "remove '[free] download [free]'", _sub(r"(free\s)?download(\sfree)?", "")),
    Rule("click_for", "remove 'click for|on <word>'", _sub(r"\bclick\b\s(?:for|on)\s\w+", "")),
    # No closing boundary: a word starting with an extension loses it ("epsilon" -> "ilon").
    Rule("extension_words", "remove extension words ('png', 'jpg image(s)')",
         _sub(r"\b" + _EXTENSIONS + r"(\simage[s]?)?", "")),
    Rule("page_numbers", "remove 'page <number>'", _sub(r"\bpage\s+\d+\b", "")),
    Rule("codes_alternating", "alternating letter/digit codes ('j2d1a2a') -> ' '",
         _sub(r"\b\d*[a-zA-Z]+\d+[a-zA-Z]+\d+[a-zA-Z\d]*\b", " ")),
    # Image sizes: 1920x1080, Cyrillic 'х' and the multiplication sign included.
    Rule("dimensions", "remove '<number>x<number>'", _sub(r"\b\d+\.?\d*[x\u0445\u00d7]\d+\.?\d*\b", "")),
    # --- spacing, so the tokenizer sees words and punctuation as usual.
    Rule("colon_spacing", "'word : x' -> 'word: x'", _sub(r"\b\s+:\s+", ": ")),
    Rule("space_after_punctuation", "space after ',' '.' '/' before a word ('a,b' -> 'a, b')",
         _sub(r"(\D[,./])\b", r"\1 ")),
    Rule("collapse_whitespace", "every whitespace run -> ' '", _sub(r"\s+", " ")),
    # Upstream calls caption.strip() here and discards the result: NO strip at this point, so a
    # caption that now starts with a space keeps its enclosing quotes in this pass.
    Rule("enclosing_quotes", "remove one pair of quotes enclosing the whole caption",
         _sub(r"^[\"'](.+)[\"']$", r"\1", re.DOTALL)),
    Rule("leading_punctuation", "remove one leading ' _ , - : ;", _sub(r"^['_,\-:;]", "")),
    Rule("trailing_punctuation", "remove one trailing ' _ , - : +", _sub(r"['_,\-:+]$", "")),
    # A caption that is a single dot-token (".htaccess", ".jpg") has nothing left to describe.
    Rule("dot_token_caption", "a caption that is one token starting with '.' -> ''", _sub(r"^\.\S+$", "")),
    Rule("final_strip", "trim surrounding whitespace", str.strip),
)

_BY_NAME = {r.name: r for r in RULES}
assert len(_BY_NAME) == len(RULES), "rule names must be unique"


def rule(name: str) -> Rule:
    """The rule called `name` (to apply or test one step alone)."""
    return _BY_NAME[name]


def clean_caption(text: str) -> str:
    """One pass of the official caption cleaning (T5Embedder.clean_caption): every rule, in order."""
    text = str(text)  # as upstream: a non-string caption (e.g. a NaN from a table) is cleaned as text
    for r in RULES:
        text = r.apply(text)
    return text


def t5_caption(text: str) -> str:
    """The caption as the official code feeds it to T5 (T5Embedder.text_preprocessing): cleaned
    twice, because the text encoder's training data was cleaned twice."""
    return clean_caption(clean_caption(text))
