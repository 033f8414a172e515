"""ranke.models.caption_cleaning: equality with the official RankE caption cleaning, rule by rule.

The golden pairs were produced by running the upstream T5Embedder.clean_caption / text_preprocessing
(syjmelody/RankE 2798acc, language/t5.py) on fixed captions; see tests/fixtures/caption_cleaning/README.md.
"""

from __future__ import annotations

import importlib.metadata
import json

import pytest

from conftest import FIXTURES
from ranke.models.caption_cleaning import RULES, clean_caption, rule, t5_caption

GOLDEN_PATH = FIXTURES / "caption_cleaning" / "golden.json"
GOLDEN = json.loads(GOLDEN_PATH.read_text(encoding="utf-8"))
CASES = GOLDEN["cases"]


def _versions_note() -> str:
    """Recorded vs installed library versions, shown when a golden comparison fails."""
    installed = {name: importlib.metadata.version(name) for name in ("ftfy", "beautifulsoup4")}
    return f"fixture made with {GOLDEN['libraries']}, installed {installed}"


def _apply(rules, text: str) -> str:
    for r in rules:
        text = r.apply(text)
    return text


def test_fixture_is_from_the_pinned_upstream_commit():
    src = GOLDEN["source"]
    assert src["repository"] == "syjmelody/RankE"
    assert src["commit"].startswith("2798acc")
    assert (src["file"], src["one_pass"]) == ("language/t5.py", "T5Embedder.clean_caption")
    assert len(CASES) >= 80
    assert len({c["input"] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[f"case{i:03d}" for i in range(len(CASES))])
def test_one_pass_matches_official_clean_caption(case):
    assert clean_caption(case["input"]) == case["one_pass"], f"input {case['input']!r}; {_versions_note()}"


@pytest.mark.parametrize("case", CASES, ids=[f"case{i:03d}" for i in range(len(CASES))])
def test_two_passes_match_official_text_preprocessing(case):
    assert t5_caption(case["input"]) == case["two_pass"], f"input {case['input']!r}; {_versions_note()}"


def test_some_captions_change_in_the_second_pass():
    # The two passes are not redundant: the fixture holds captions where the second pass changes the
    # result, so a single-pass t5_caption would fail the two-pass comparison.
    changed = [c["input"] for c in CASES if c["two_pass"] != c["one_pass"]]
    assert len(changed) >= 2, changed


@pytest.mark.parametrize("name", [r.name for r in RULES])
def test_every_rule_is_pinned_by_the_fixture(name):
    # Dropping this rule must change at least one golden output, otherwise the fixture does not check it.
    without = [r for r in RULES if r.name != name]
    broken = [c["input"] for c in CASES if _apply(without, c["input"]) != c["one_pass"]]
    assert broken, f"no golden case depends on rule {name!r}: add a caption that exercises it"


# Single rules applied alone: when one of these fails, its id names the broken rule.
RULE_CASES = [
    ("url_decode", "a%20cat+on%2Fa+mat", "a cat on/a mat"),
    ("strip_lower", "  A Red BUS \n", "a red bus"),
    ("person_placeholder", "a <person> on a horse", "a person on a horse"),
    ("urls_http", "a cat https://example.com/cats/1 here", "a cat  here"),
    ("urls_http", "see example.de/page", "see example.de/page"),  # unlisted TLD: only a prefix would go
    ("urls_http", "see https://example.de/page", "see example.de/page"),
    ("urls_http", "mail john@gmail.com", "mail john@"),
    ("urls_www", "visit www://example.de", "visit example.de"),
    ("urls_www", "visit www.example.org today", "visit  today"),
    ("html_text", "<p>a <b>bold</b> dog</p>", "a bold dog"),
    ("html_text", "fish &amp; chips &lt;b&gt;", "fish & chips <b>"),
    ("html_text", "a <!-- note --> b", "a  b"),
    ("at_handles", "photo by @john_smith today", "photo by  today"),
    ("cjk", "a cat \u732b \u3231 \u4dc0 sitting \u3072\u30ab \uc11c", "a cat    sitting \u3072\u30ab \uc11c"),
    ("dashes", "em\u2014dash en\u2013dash \u301c wave --- run \u2212minus",
     "em-dash en-dash - wave - run \u2212minus"),
    ("double_quotes", "\u201chi\u201d \u00abfr\u00bb `x\u00b4 \u00a8", '"hi" "fr" "x" "'),
    ("single_quotes", "\u2018hi\u2019", "'hi'"),
    ("quot_entity", "say &quot;hi&quot and", "say hi and"),
    ("amp_entity", "salt &amp; pepper", "salt ; pepper"),
    ("ip_addresses", "server 192.168.0.1 rack", "server   rack"),
    ("article_ids", "video 1:23  ", "video "),
    ("article_ids", "video 1:23", "video 1:23"),  # only with trailing whitespace
    ("literal_newlines", "one\\ntwo", "one two"),
    ("hash_numbers_short", "#1 dog #42", " dog "),
    ("hash_numbers_short", "#1234 dog", "#1234 dog"),  # four digits: neither hash rule
    ("hash_numbers_long", "#12345 dog", " dog"),
    ("long_numbers", "id 123456 and 12345", "id  and 12345"),
    # Extensions are matched in lower case only: the rule runs after strip_lower.
    ("filenames", "IMG_1.JPG and photo.jpeg and x.pngs", "IMG_1.JPG and  and s"),
    ("quote_runs", "''a'' and \"\"\"b\"\"\"", '"a" and "b"'),
    ("dot_runs", "wait... what..", "wait  what "),
    ("bad_punctuation", "***sale*** (c) a/b #tag", " sale   c  a b  tag"),
    ("lone_dots", "a tree . and . more", "a tree and more"),
    ("slug_separators", "this-is-my-cute-cat", "this is my cute cat"),
    ("slug_separators", "this_is-my_cute-cat", "this is my cute cat"),  # "-" and "_" count together
    ("slug_separators", "one-two-three-four", "one-two-three-four"),  # exactly three: kept
    ("ftfy", "don\u00e2\u20ac\u2122t \ufb01sh \uff21", "don't fish A"),
    ("html_unescape_twice", "a &amp;amp; b &lt;", "a & b <"),
    ("strip", "  a  ", "a"),
    ("codes_letters_digits", "item jc6640 here", "item  here"),
    ("codes_letters_digits_letters", "item jc6640vc here", "item  here"),
    ("codes_digits_letters_digits", "item 6640vc231 here", "item  here"),
    ("shipping", "dress worldwide free shipping now", "dress  now"),
    ("download", "free download free now", " now"),
    ("click_for", "click for details now", " now"),
    ("extension_words", "jpg images of an epsilon", " of an ilon"),
    ("page_numbers", "page 12 of the book", " of the book"),
    ("codes_alternating", "code a1b2c3 here", "code   here"),
    ("dimensions", "size 1920x1080 and 2.5\u00d73.5 and 3\u04455", "size  and  and "),
    ("colon_spacing", "a bench : reading", "a bench: reading"),
    ("space_after_punctuation", "fruit,oranges.apples/pears", "fruit, oranges. apples/ pears"),
    ("space_after_punctuation", "3,5 and 2.5", "3,5 and 2.5"),  # a digit before the mark: kept
    ("collapse_whitespace", "a \t b\n\nc", "a b c"),
    ("enclosing_quotes", "\"a cat on a mat'", "a cat on a mat"),
    ("enclosing_quotes", " 'a cat'", " 'a cat'"),  # a leading space stops it (the discarded strip)
    ("leading_punctuation", "--a cat", "-a cat"),  # one character only
    ("trailing_punctuation", "a cat++", "a cat+"),
    ("dot_token_caption", ".htaccess", ""),
    ("dot_token_caption", ".htaccess file", ".htaccess file"),
    ("final_strip", " a cat ", "a cat"),
]


@pytest.mark.parametrize(("name", "text", "expected"), RULE_CASES,
                         ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(RULE_CASES)])
def test_single_rule(name, text, expected):
    assert rule(name).apply(text) == expected


def test_rule_cases_cover_every_rule():
    assert {r.name for r in RULES} == {n for n, _, _ in RULE_CASES}


def test_rule_names_are_unique_and_lookup_is_exact():
    names = [r.name for r in RULES]
    assert len(names) == len(set(names))
    assert rule("urls_http") is RULES[names.index("urls_http")]
    with pytest.raises(KeyError):
        rule("no_such_rule")


# Whole-pipeline effects of single rules: a failure names what the caption lost or kept.
def test_url_is_removed():
    assert clean_caption("A cat on a sofa https://www.example.com/cats/123 today") == "a cat on a sofa today"


def test_html_entity_is_unescaped():
    assert clean_caption("He said &quot;hello&quot; to the dog") == 'he said "hello" to the dog'
    assert clean_caption("Fish &amp; Chips") == "fish chips"  # '&' is then scrubbed as bad punctuation


def test_dash_variants_are_normalised():
    assert clean_caption("An em\u2014dash and an en\u2013dash") == "an em-dash and an en-dash"


def test_repeated_dots_are_collapsed():
    assert clean_caption("A train next to a forest...") == "a train next to a forest"
    assert clean_caption("Wait... what") == "wait what"


def test_lower_casing_runs_before_ftfy():
    # Upstream order: lower-case first, ftfy last, so Latin-1 mojibake of 'é' ("Ã©") is beyond repair
    # ('Ã' -> 'ã', '©' scrubbed), while mojibake of curly quotes (lower-case invariant) is repaired.
    assert clean_caption("Caf\u00c3\u00a9 with a view") == "caf\u00e3 with a view"
    assert clean_caption("He said \u00e2\u20ac\u0153hi\u00e2\u20ac\x9d") == 'he said "hi"'


def test_discarded_strip_leaves_quotes_for_the_second_pass():
    # 'free shipping' is removed, leaving " 'red dress'": the leading space stops the quote rule in
    # the first pass; the second pass removes the leftover quote.
    assert clean_caption("free shipping 'red dress'") == "'red dress"
    assert t5_caption("free shipping 'red dress'") == "red dress"


def test_t5_caption_is_two_passes():
    text = "&lt;b&gt;Bold&lt;/b&gt; TEXT"
    assert clean_caption(text) == "<b>bold< b> text"
    assert t5_caption(text) == clean_caption(clean_caption(text)) == "bold< b> text"


def test_non_string_caption_is_cleaned_as_text():
    assert clean_caption(float("nan")) == "nan"
