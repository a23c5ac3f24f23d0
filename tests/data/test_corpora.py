"""The embedded corpora: committed Austen corpus, user text files, markup strippers (fast, offline)."""

from __future__ import annotations

import gzip
import json
import lzma
import shutil
import subprocess
from pathlib import Path

import pytest

from golf.data import corpora
from golf.data.corpora import (
    Document,
    austen_chapters,
    build_large_corpus,
    default_documents,
    html_to_text,
    pod_to_text,
    read_text_files,
    rst_to_text,
    unwrap_paragraphs,
)
from golf.errors import GolfError

# --------------------------------------------------------------------------------------------------
# default corpus
# --------------------------------------------------------------------------------------------------


def test_default_documents_load_and_verify():
    docs = default_documents()
    manifest = json.loads(corpora.CORPORA_DIR.joinpath("austen.manifest.json").read_text())
    assert len(docs) == manifest["documents"] == 269  # one per chapter of six novels
    total = sum(len(d.text.encode("utf-8")) for d in docs)
    assert total == manifest["text_bytes"] > 3_900_000
    assert all(isinstance(d, Document) and d.source == "austen" and d.text.strip() for d in docs)
    titles = list(dict.fromkeys(d.title for d in docs))
    assert titles == ["Sense and Sensibility", "Pride and Prejudice", "Mansfield Park", "Emma",
                      "Northanger Abbey", "Persuasion"]
    assert manifest["novels"] == {t: sum(d.title == t for d in docs) for t in titles}
    # chapter split + unwrapping: chapter 1 starts with the title page, paragraphs are single lines
    first = docs[0].text
    assert first.startswith("SENSE AND SENSIBILITY\n\nby Jane Austen")
    assert "\n\nCHAPTER 1\n\nThe family of Dashwood had long been settled in Sussex.  Their estate was large" in first
    assert "CHAPTER 2" not in first and docs[1].text.startswith("CHAPTER 2\n\n")
    pp = [d for d in docs if d.title == "Pride and Prejudice"]
    assert "It is a truth universally acknowledged, that a single man in possession of a good fortune, " \
           "must be in want of a wife." in pp[0].text
    emma = [d for d in docs if d.title == "Emma"]
    assert emma[18].text.startswith("VOLUME II\n\nCHAPTER I\n\n")  # volume heading moves to the next chapter
    for d in docs:
        for para in d.text.split("\n\n"):
            assert para and "\n" not in para


def _copy_corpus(tmp_path: Path) -> Path:
    for name in ("austen.jsonl.xz", "austen.manifest.json"):
        shutil.copyfile(str(corpora.CORPORA_DIR.joinpath(name)), tmp_path / name)
    return tmp_path


def test_default_documents_tampered_copy_raises(tmp_path, monkeypatch):
    d = _copy_corpus(tmp_path)
    raw = lzma.decompress((d / "austen.jsonl.xz").read_bytes()).replace(b"Elizabeth", b"Elisabeth", 1)
    (d / "austen.jsonl.xz").write_bytes(lzma.compress(raw, preset=0))
    monkeypatch.setattr(corpora, "CORPORA_DIR", d)
    with pytest.raises(GolfError, match=r"austen\.jsonl\.xz: sha256 .* does not match") as exc:
        default_documents()
    assert "\n" not in str(exc.value)


def test_default_documents_corrupt_xz_raises(tmp_path, monkeypatch):
    d = _copy_corpus(tmp_path)
    (d / "austen.jsonl.xz").write_bytes(b"not xz at all")
    monkeypatch.setattr(corpora, "CORPORA_DIR", d)
    with pytest.raises(GolfError, match="not a valid xz file"):
        default_documents()


def test_default_documents_untampered_copy_loads(tmp_path, monkeypatch):
    monkeypatch.setattr(corpora, "CORPORA_DIR", _copy_corpus(tmp_path))
    assert len(default_documents()) == 269


def test_austen_chapters_split():
    lines = ["EMMA", "", "By Jane Austen", "", "VOLUME I", "", "CHAPTER I", "", "Emma Woodhouse, handsome,",
             "clever, and rich.", "", "Second para.", "", "", "VOLUME II", "", "", "CHAPTER I", "", "Again."]
    recs = austen_chapters("Emma", lines)
    assert [r["chapter"] for r in recs] == [1, 2]
    assert recs[0]["text"] == "EMMA\n\nBy Jane Austen\n\nVOLUME I\n\nCHAPTER I\n\nEmma Woodhouse, handsome, " \
                              "clever, and rich.\n\nSecond para."
    assert recs[1] == {"text": "VOLUME II\n\nCHAPTER I\n\nAgain.", "source": "austen", "title": "Emma", "chapter": 2}


def test_unwrap_paragraphs():
    assert unwrap_paragraphs(["  a b", "c  ", "", "", "d", ""]) == "a b c\n\nd"


# --------------------------------------------------------------------------------------------------
# user files
# --------------------------------------------------------------------------------------------------


def test_read_text_files_txt_and_jsonl(tmp_path):
    (tmp_path / "a.txt").write_text("Doc one, para one.\n\nPara two.\n\n\nDoc two.\r\n\n\n\n  \n")
    rows = [{"text": "first", "id": "<urn:1>"}, {"text": "   "}, {"text": "second", "title": "T"}]
    body = "\n".join(json.dumps(r) for r in rows) + "\n\n"
    (tmp_path / "b.jsonl").write_text(body)
    (tmp_path / "c.jsonl.gz").write_bytes(gzip.compress(body.encode()))
    (tmp_path / "d.jsonl.xz").write_bytes(lzma.compress(body.encode()))
    (tmp_path / "e.txt.gz").write_bytes(gzip.compress("zipped text".encode()))
    docs = read_text_files([tmp_path / n for n in ("a.txt", "b.jsonl", "c.jsonl.gz", "d.jsonl.xz", "e.txt.gz")])
    assert [(d.text, d.source, d.title) for d in docs] == [
        ("Doc one, para one.\n\nPara two.", "a.txt", "a.txt"),
        ("Doc two.", "a.txt", "a.txt"),
        ("first", "b.jsonl", "<urn:1>"),
        ("second", "b.jsonl", "T"),
        ("first", "c.jsonl.gz", "<urn:1>"),
        ("second", "c.jsonl.gz", "T"),
        ("first", "d.jsonl.xz", "<urn:1>"),
        ("second", "d.jsonl.xz", "T"),
        ("zipped text", "e.txt.gz", "e.txt.gz"),
    ]
    # a folder expands to its supported files, sorted
    assert [d.source for d in read_text_files([tmp_path])] == [d.source for d in docs]


def test_read_text_files_zst(tmp_path):
    zstandard = pytest.importorskip("zstandard")
    (tmp_path / "z.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(b'{"text": "zz"}\n'))
    assert read_text_files([tmp_path / "z.jsonl.zst"]) == [Document("zz", "z.jsonl.zst", "")]


@pytest.mark.parametrize(
    "name, content, match",
    [
        ("bad.jsonl", b'{"text": "ok"}\n{oops\n', r"bad\.jsonl:2: invalid JSON"),
        ("nofield.jsonl", b'{"body": "x"}\n', r'nofield\.jsonl:1: no string field "text"'),
        ("latin.txt", "caf\xe9".encode("latin-1"), r"latin\.txt: not UTF-8"),
        ("data.csv", b"a,b\n", r"data\.csv: unsupported file type"),
        ("broken.jsonl.gz", b"not gzip", r"broken\.jsonl\.gz: cannot decompress"),
    ],
)
def test_read_text_files_errors(tmp_path, name, content, match):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(GolfError, match=match) as exc:
        read_text_files([tmp_path / name])
    assert "\n" not in str(exc.value)


def test_read_text_files_missing(tmp_path):
    with pytest.raises(GolfError, match="no such file"):
        read_text_files([tmp_path / "nope.txt"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(GolfError, match="folder holds no"):
        read_text_files([tmp_path / "empty"])


# --------------------------------------------------------------------------------------------------
# markup strippers
# --------------------------------------------------------------------------------------------------

RST = """\
.. SPDX-License-Identifier: GPL-2.0

.. _my-target:

==============
The Title
==============

This paragraph is
hard-wrapped and has ``literal``, **bold**, *emph*, a :ref:`link text <target>`,
:func:`~os.path.join`, :c:func:`kmalloc`, `a link <https://example.org>`_, a ref_ and a
footnote [#]_ plus |version|.

Section
-------

Example::

    int x = 1;   /* code is dropped */

Next paragraph.

.. code-block:: c

   return 0;

.. note::

   A note body that
   wraps.

.. versionadded:: 3.2

.. function:: open(file, mode='r')
   :noindex:

   Open *file*.

- item one
  continues
- item two

term
    definition text
    more

+-----+-----+
| a   | b   |
+=====+=====+
| 1   | 2   |
+-----+-----+

>>> print(1)
1

.. toctree::
   :maxdepth: 2

   intro

Done ::

    $ make

The end.
"""


def test_rst_to_text():
    out = rst_to_text(RST)
    assert out.split("\n\n") == [
        "The Title",
        "This paragraph is hard-wrapped and has literal, bold, emph, a link text, join, kmalloc, a link, a ref "
        "and a footnote plus version.",
        "Section",
        "Example:",
        "Next paragraph.",
        "A note body that wraps.",
        "New in version 3.2.",
        "open(file, mode='r')",
        "Open file.",
        "- item one continues\n- item two",
        "term\ndefinition text more",
        "Done",
        "The end.",
    ]


def test_html_to_text():
    src = """<!DOCTYPE html><html><head><title>T</title><style>p {color: red}</style>
    <script>var x = 1;</script></head><body>
    <div class="navheader"><a href="a.html">Prev</a> Up</div>
    <div id="sidebar"><ul><li>menu</li></ul></div>
    <h1>Heading<a class="headerlink" href="#h">&para;</a></h1>
    <p>First   paragraph
       with &amp; entity and <code>code</code> and <b>bold</b>.</p>
    <pre class="programlisting">SELECT 1;</pre>
    <ul><li>one</li><li>two <em>x</em></li></ul>
    <table><tr><td>a</td><td>b</td></tr></table>
    <div class="section"><div class="sidebar"><p>Boxed note</p></div></div>
    <p>Line<br>break</p>
    <div class="navfooter"><div>nested</div>Next</div>
    <p>Last &lt;tag&gt; text.</p></body></html>"""
    assert html_to_text(src).split("\n\n") == [
        "Heading",
        "First paragraph with & entity and code and bold.",
        "one",
        "two x",
        "a b",
        "Boxed note",
        "Line",
        "break",
        "Last <tag> text.",
    ]


def test_pod_to_text():
    src = """=pod

=encoding utf8

=head1 NAME

perlfoo - does B<things>

=head2 The C<< $x->y >> method

This is I<italic>, C<code>, F<file.txt>, L<perlfunc/open>, L<the docs|perlpod>,
L<http://perl.org>, E<lt>tagE<gt>, X<index>S<non breaking> and Z<>text.

    my $code = "dropped";

=over 4

=item * First item

=item 2. Second C<item>

=back

=begin html

<p>dropped</p>

=end html

=for comment dropped too

=cut

sub code_after_cut {}

=head1 AFTER

Back in POD.
"""
    assert pod_to_text(src).split("\n\n") == [
        "NAME",
        "perlfoo - does things",
        "The $x->y method",
        'This is italic, code, file.txt, "open" in perlfunc, the docs, http://perl.org, <tag>, '
        "non breaking and text.",
        "First item",
        "Second item",
        "AFTER",
        "Back in POD.",
    ]


# --------------------------------------------------------------------------------------------------
# large corpus: failures without apt (fast), the real build (slow)
# --------------------------------------------------------------------------------------------------


def test_build_large_corpus_without_apt(tmp_path, monkeypatch):
    monkeypatch.setattr(corpora, "_which", lambda tool: tool not in ("apt-get", "dpkg"))
    with pytest.raises(GolfError, match=r"needs Debian's apt-get, dpkg \(not on PATH\)") as exc:
        build_large_corpus(tmp_path / "cache")
    assert "\n" not in str(exc.value)


def test_fetch_package_download_failure(tmp_path, monkeypatch):
    def fake_run(cmd, cwd=None, timeout=600):
        return subprocess.CompletedProcess(cmd, 100, "", "W: x\nE: Failed to fetch http://mirror/pool/x.deb  404\n")

    monkeypatch.setattr(corpora, "_run", fake_run)
    with pytest.raises(GolfError, match=r"apt-get download perl-doc failed \(E: Failed to fetch .*apt-get update"):
        corpora._fetch_package("perl-doc", tmp_path)


def test_build_large_corpus_nothing_available(tmp_path, monkeypatch):
    monkeypatch.setattr(corpora, "_which", lambda tool: True)
    monkeypatch.setattr(corpora, "_resolve_packages", lambda specs: {s: None for s in specs})
    with pytest.raises(GolfError, match=r"4\.0 MB of text, below the 60 MB needed \(packages without an install "
                                        r"candidate: .*perl-doc.*apt-get update"):
        build_large_corpus(tmp_path / "cache")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("apt-get") is None or shutil.which("dpkg") is None, reason="needs apt-get and dpkg")
def test_build_large_corpus_real(tmp_path_factory):
    cache = tmp_path_factory.mktemp("large-corpus")
    docs, table = build_large_corpus(cache)
    total = sum(len(d.text.encode("utf-8")) for d in docs)
    assert total == sum(row["bytes"] for row in table) >= 60_000_000
    assert {row["source"] for row in table} >= {"linux-doc", "python-doc", "perl-doc", "austen", "kjv"}
    assert all(set(row) == {"source", "package", "version", "licence", "files", "bytes"} for row in table)
    docs2, table2 = build_large_corpus(cache)  # cached: same result
    assert table2 == table and [d.title for d in docs2] == [d.title for d in docs]


def test_build_large_corpus_reuses_cached_text_without_apt_lists(tmp_path, monkeypatch):
    """A source whose package has no candidate now (apt lists gone) is served from the text cache."""
    monkeypatch.setattr(corpora, "_which", lambda tool: True)
    monkeypatch.setattr(corpora, "_resolve_packages", lambda specs: {s: None for s in specs})
    text_dir = tmp_path / "cache" / "text"
    text_dir.mkdir(parents=True)
    name = f"jargon_jargon-text_4.4.7-4.1_v{corpora._PROCESSING_VERSION}.jsonl"
    (text_dir / name).write_text(json.dumps(["Jargon File: A", "hack n. a quick job"]) + "\n")
    docs, table = build_large_corpus(tmp_path / "cache", min_bytes=0)
    assert docs[0] == Document("hack n. a quick job", "jargon", "Jargon File: A")
    assert table[0] == {"source": "jargon", "package": "jargon-text", "version": "4.4.7-4.1",
                        "licence": "public domain", "files": 1, "bytes": 19}
    assert [row["source"] for row in table] == ["jargon", "austen"] and len(docs) == 1 + 269


def test_build_large_corpus_max_bytes_drops_whole_documents(tmp_path, monkeypatch):
    monkeypatch.setattr(corpora, "_which", lambda tool: True)
    monkeypatch.setattr(corpora, "_resolve_packages", lambda specs: {s: None for s in specs})
    text_dir = tmp_path / "cache" / "text"
    text_dir.mkdir(parents=True)
    rows = [json.dumps([f"doc{i}", "x" * 100_000]) for i in range(30)]
    (text_dir / f"kjv_bible-kjv-text_4.38_v{corpora._PROCESSING_VERSION}.jsonl").write_text("\n".join(rows) + "\n")
    austen = 4_021_785
    docs, table = build_large_corpus(tmp_path / "cache", min_bytes=0, max_bytes=austen + 1_050_000)
    kept = [d.title for d in docs if d.source == "kjv"]
    assert len(kept) == 10 and table[0]["files"] == 10 and table[0]["bytes"] == 1_000_000
    assert sum(d.source == "austen" for d in docs) == 269  # never dropped
    again, _ = build_large_corpus(tmp_path / "cache", min_bytes=0, max_bytes=austen + 1_050_000)
    assert [d.title for d in again if d.source == "kjv"] == kept
