"""Text corpora for golf: the committed Austen corpus, user text files, and a large offline corpus.

* :func:`default_documents` reads ``golf/data/corpora/austen.jsonl.xz`` (six Jane Austen novels, one
  document per chapter), shipped inside the package, and checks it against ``austen.manifest.json``.
* :func:`read_text_files` reads the user's own ``.txt`` / ``.jsonl`` files (optionally ``.gz`` / ``.xz`` /
  ``.zst`` compressed).
* :func:`build_large_corpus` fetches Debian documentation packages with ``apt-get download`` (never
  installs them), unpacks them with ``dpkg -x`` into a cache folder and turns reST / HTML / POD into plain
  text: about 60-75 MB of English, from the machine's package mirror alone.

See ``docs/corpora.md`` for sources, licences and sizes.
"""

from __future__ import annotations

import gzip
import hashlib
import html
import json
import logging
import lzma
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path

from golf.errors import GolfError

__all__ = [
    "Document",
    "default_documents",
    "read_text_files",
    "build_large_corpus",
    "rst_to_text",
    "html_to_text",
    "pod_to_text",
    "unwrap_paragraphs",
    "austen_chapters",
]

log = logging.getLogger(__name__)

DEFAULT_CORPUS = "austen"
# Where the committed corpus lives; tests monkeypatch this to a folder holding a tampered copy.
CORPORA_DIR = resources.files("golf.data").joinpath("corpora")


@dataclass
class Document:
    text: str
    source: str
    title: str = ""


# --------------------------------------------------------------------------------------------------
# The committed default corpus
# --------------------------------------------------------------------------------------------------


def _corpus_files(name: str = DEFAULT_CORPUS):
    return CORPORA_DIR.joinpath(f"{name}.jsonl.xz"), CORPORA_DIR.joinpath(f"{name}.manifest.json")


def default_documents() -> list[Document]:
    """The committed Austen corpus (269 chapters of six novels), verified against its manifest's sha256."""
    data_file, manifest_file = _corpus_files()
    fix = "restore golf/data/corpora/ from git (git checkout -- golf/data/corpora) or reinstall golf"
    try:
        manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
        compressed = data_file.read_bytes()
    except (OSError, ValueError) as exc:
        raise GolfError(f"{data_file} / {manifest_file.name}: cannot read the default corpus ({exc}); {fix}") from exc
    try:
        raw = lzma.decompress(compressed)
    except lzma.LZMAError as exc:
        raise GolfError(f"{data_file}: not a valid xz file ({exc}); {fix}") from exc
    digest = hashlib.sha256(raw).hexdigest()
    if digest != manifest.get("sha256"):
        raise GolfError(
            f"{data_file}: sha256 {digest[:16]}… does not match {manifest_file.name} "
            f"({str(manifest.get('sha256'))[:16]}…): the corpus was modified or is corrupt; {fix}"
        )
    docs = [_doc_from_record(json.loads(line), DEFAULT_CORPUS) for line in raw.decode("utf-8").splitlines() if line]
    if len(docs) != manifest.get("documents"):
        raise GolfError(f"{data_file}: {len(docs)} documents but the manifest says {manifest.get('documents')}; {fix}")
    return docs


def _doc_from_record(rec: dict, source: str) -> Document:
    return Document(text=rec["text"], source=rec.get("source", source), title=str(rec.get("title", "")))


# --------------------------------------------------------------------------------------------------
# User text files
# --------------------------------------------------------------------------------------------------

_TEXT_SUFFIXES = (".txt", ".jsonl")
_COMPRESSIONS = ("", ".gz", ".xz", ".zst")
_DOC_BREAK_RE = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)+")  # two or more blank lines


def _kind_of(path: Path) -> tuple[str, str] | None:
    name = path.name.lower()
    for comp in _COMPRESSIONS:
        for suffix in _TEXT_SUFFIXES:
            if name.endswith(suffix + comp):
                return suffix, comp
    return None


def _open_bytes(path: Path, comp: str) -> bytes:
    raw = path.read_bytes()
    if comp == ".gz":
        return gzip.decompress(raw)
    if comp == ".xz":
        return lzma.decompress(raw)
    if comp == ".zst":
        import zstandard

        return zstandard.ZstdDecompressor().decompressobj().decompress(raw)
    return raw


def read_text_files(paths: list[Path]) -> list[Document]:
    """Documents from the user's files, in the order given (folders: their supported files, sorted).

    * ``.txt``: split into documents at every run of two or more blank lines (``"\\n\\n\\n"``); a file
      whose paragraphs are separated by single blank lines is one document. CRLF is read as LF.
    * ``.jsonl``: one JSON object per line with a string field ``"text"`` (FineWeb's
      ``docs_selected.jsonl`` layout); ``"title"`` or ``"id"``, when present, becomes the title.

    Either may be compressed: ``.gz``, ``.xz`` or ``.zst`` after the suffix. Empty documents are dropped.
    """
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and _kind_of(f))
            if not found:
                raise GolfError(f"{p}: folder holds no .txt or .jsonl files (optionally .gz/.xz/.zst); add some")
            files.extend(found)
        elif not p.exists():
            raise GolfError(f"{p}: no such file; check the path")
        else:
            files.append(p)
    docs: list[Document] = []
    for f in files:
        kind = _kind_of(f)
        if kind is None:
            raise GolfError(
                f"{f}: unsupported file type; use .txt or .jsonl (optionally compressed .gz/.xz/.zst)"
            )
        suffix, comp = kind
        try:
            raw = _open_bytes(f, comp)
        except (OSError, EOFError, lzma.LZMAError, gzip.BadGzipFile, ValueError) as exc:
            raise GolfError(f"{f}: cannot decompress ({exc}); re-create the file") from exc
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise GolfError(f"{f}: not UTF-8 text (byte {exc.start}); convert it, e.g. iconv -t UTF-8") from exc
        text = text.replace("\r\n", "\n")
        if suffix == ".txt":
            for part in _DOC_BREAK_RE.split(text):
                part = part.strip("\n")
                if part.strip():
                    docs.append(Document(text=part, source=f.name, title=f.name))
            continue
        for lineno, line in enumerate(text.split("\n"), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise GolfError(f"{f}:{lineno}: invalid JSON ({exc.msg}); each line must be one JSON object") from exc
            if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
                raise GolfError(f'{f}:{lineno}: no string field "text"; each line must look like {{"text": "..."}}')
            if rec["text"].strip():
                title = rec.get("title", rec.get("id", ""))
                docs.append(Document(text=rec["text"], source=f.name, title=str(title)))
    return docs


# --------------------------------------------------------------------------------------------------
# Plain-text helpers
# --------------------------------------------------------------------------------------------------


def unwrap_paragraphs(lines: list[str]) -> str:
    """Join hard-wrapped lines: blank-line-separated blocks become one line each (lines stripped and joined
    with a single space); blocks are separated by ``"\\n\\n"``."""
    paras: list[str] = []
    block: list[str] = []
    for line in lines + [""]:
        if line.strip():
            block.append(line.strip())
        elif block:
            paras.append(" ".join(block))
            block = []
    return "\n\n".join(paras)


_CHAPTER_RE = re.compile(r"^(?:CHAPTER|Chapter) (?:[0-9]+|[IVXLC]+)\.?\s*$")
_VOLUME_RE = re.compile(r"^\s*VOLUME [IVXLC]+\.?\s*$")


def austen_chapters(title: str, lines: list[str]) -> list[dict]:
    """One record per chapter of a novel given as its lines (janeaustenr layout).

    The title page before the first chapter heading goes with chapter 1; a ``VOLUME n`` heading goes with
    the chapter that follows it. Chapters are numbered 1..N through the whole novel (Emma's printed
    numbering restarts in every volume; the heading text itself is kept verbatim)."""
    heads = [i for i, line in enumerate(lines) if _CHAPTER_RE.match(line.strip())]
    if not heads:
        raise GolfError(f"{title}: no chapter headings found; check the janeaustenr data")
    starts = [0]
    for h in heads[1:]:
        start = h
        j = h - 1
        while j > 0 and not lines[j].strip():
            j -= 1
        if _VOLUME_RE.match(lines[j]):
            start = j
        starts.append(start)
    ends = starts[1:] + [len(lines)]
    return [
        {"text": unwrap_paragraphs(lines[s:e]), "source": DEFAULT_CORPUS, "title": title, "chapter": k}
        for k, (s, e) in enumerate(zip(starts, ends), 1)
    ]


# --------------------------------------------------------------------------------------------------
# reST -> text
# --------------------------------------------------------------------------------------------------

# Directives whose whole block (line + indented body) is dropped: code, tables, toctrees, images, includes.
_RST_DROP = {
    "toctree", "index", "code-block", "code", "sourcecode", "literalinclude", "highlight", "image", "figure",
    "kernel-doc", "kernel-abi", "kernel-feat", "kernel-include", "include", "raw", "tabularcolumns",
    "csv-table", "list-table", "flat-table", "table", "productionlist", "doctest", "testcode", "testsetup",
    "testcleanup", "testoutput", "graphviz", "math", "sectionauthor", "moduleauthor", "module", "currentmodule",
    "program", "cssclass", "rst-class", "contents", "audit-event", "opcode", "highlightlang", "parsed-literal",
    "default-role", "role", "autosummary", "automodule", "autoclass", "autofunction", "digraph", "ditaa",
    "kfigure", "kernel-figure", "kernel-render", "SPDX-License-Identifier", "c:namespace", "c:namespace-push",
    "c:namespace-pop", "cpp:namespace", "py:module", "py:currentmodule", "js:module", "django-admin-option",
    "setting", "templatetag", "templatefilter", "fieldlookup", "pdbcommand", "availability", "maxdepth",
    "raw-latex", "raw-html",
}
# Every other directive keeps its indented body; these also drop their arguments (not text).
_RST_NO_ARGS = {"only", "ifconfig", "class", "container", "hlist", "compound", "glossary", "impl-detail"}
_RST_VERSION = {"versionadded": "New in version {}.", "versionchanged": "Changed in version {}.",
                "deprecated": "Deprecated since version {}.", "deprecated-removed": "Deprecated since version {}."}
# Object descriptions (Sphinx domains): keep the signature as a line.
_RST_OBJECTS = {"function", "method", "class", "attribute", "data", "exception", "decorator", "decoratormethod",
                "classmethod", "staticmethod", "describe", "object", "cmdoption", "option", "envvar",
                "coroutinefunction",
                "coroutinemethod", "abstractmethod", "property", "type", "macro", "member", "var", "struct", "enum",
                "enumerator", "union"}

_ADORN_RE = re.compile(r"^([=\-~^\"'`#*+<>_:.!$%&,/;?@\\|])\1{2,}\s*$")
_SIMPLE_TABLE_RE = re.compile(r"^[=\-]{2,}(?: +[=\-]{2,})+\s*$")
_DIRECTIVE_RE = re.compile(r"^\.\.\s+(\|[^|]+\|\s+)?([\w:.+-]+)::(?:\s+(.*))?$")
_OPTION_RE = re.compile(r"^\s*:[\w -]+:(\s.*)?$")
_ITEM_RE = re.compile(  # a list item or field-list line starts a new line inside a block
    r"^(?:[-*+•]\s+|#\.\s+|\(?\d{1,3}[.)]\s+|\(?[a-zA-Z][.)]\s+|\(?[ivx]{1,4}[.)]\s+|:[^:`\s][^:`]*:(?:\s+|$))"
)

_ROLE_RE = re.compile(r":[\w.+-]+(?::[\w.+-]+)*:`((?:[^`\\]|\\.)+)`")
_LITERAL_RE = re.compile(r"``(?!\s)(.+?)(?<!\s)``(?!`)")
_LINK_RE = re.compile(r"`([^`<]*?)\s*<[^`>]*>`_{1,2}")
_REF_RE = re.compile(r"`([^`]+)`_{1,2}(?!\w)")
_INTERP_RE = re.compile(r"`([^`]+)`")
_FOOTREF_RE = re.compile(r"\s?\[(?:#[\w-]*|\d+|\*)\]_")
_CITEREF_RE = re.compile(r"\[([A-Za-z][\w.-]*)\]_")
_STRONG_RE = re.compile(r"\*\*(?!\s)(.+?)(?<!\s)\*\*")
_EMPH_RE = re.compile(r"(?<![\w*\\])\*(?!\s)([^*]+?)(?<!\s)\*(?![\w*])")
_SUBST_RE = re.compile(r"(?<![\w|])\|([^\s|](?:[^|]*[^\s|])?)\|_{0,2}(?![\w|])")
_NAMEREF_RE = re.compile(r"(?<=[A-Za-z0-9])__?(?=[\s.,;:!?)]|$)")


def _rst_role(m: re.Match) -> str:
    content = m.group(1).replace("\\`", "`")
    link = re.match(r"^(.*?)\s*<[^<>]*>$", content, re.S)
    if link and link.group(1):
        content = link.group(1)
    content = content.lstrip("!")
    if content.startswith("~"):
        content = content[1:].rsplit(".", 1)[-1]
    return content


def _rst_inline(text: str) -> str:
    literals: list[str] = []

    def keep_literal(m: re.Match) -> str:
        literals.append(m.group(1))
        return f"\x00{len(literals) - 1}\x00"

    text = _LITERAL_RE.sub(keep_literal, text)  # protect ``...`` from the rules below
    text = _ROLE_RE.sub(_rst_role, text)
    text = _LINK_RE.sub(lambda m: m.group(1), text)
    text = _REF_RE.sub(lambda m: m.group(1), text)
    text = _INTERP_RE.sub(lambda m: m.group(1), text)
    text = _FOOTREF_RE.sub("", text)
    text = _CITEREF_RE.sub(lambda m: f"[{m.group(1)}]", text)
    text = _STRONG_RE.sub(lambda m: m.group(1), text)
    text = _EMPH_RE.sub(lambda m: m.group(1), text)
    text = _SUBST_RE.sub(lambda m: m.group(1), text)
    text = _NAMEREF_RE.sub("", text)
    text = text.replace("\\ ", "")
    return re.sub("\x00(\\d+)\x00", lambda m: literals[int(m.group(1))], text)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def rst_to_text(src: str) -> str:
    """reST (Sphinx) source to readable text.

    Drops: comments, targets, substitution definitions, section adornment lines, grid/simple-table rules,
    grid tables, literal blocks (``::``), doctest blocks (``>>>``) and code/table/toctree/include/image
    directives. Keeps admonition and object-description bodies (object signatures as a line), and the
    text of inline roles, links, ``literals``, **strong** and *emphasis*. Paragraphs and list items are
    unwrapped to one line each; paragraphs are separated by a blank line."""
    lines = src.expandtabs(8).replace("\r\n", "\n").split("\n")
    n = len(lines)
    out: list[str] = []

    def skip_block(i: int, base: int) -> int:
        """Index after the block of blank or deeper-indented lines that follows line i."""
        j = i + 1
        while j < n and (not lines[j].strip() or _indent(lines[j]) > base):
            j += 1
        return j

    i = 0
    while i < n:
        line = lines[i]
        s = line.strip()
        ind = _indent(line)
        if not s:
            out.append("")
            i += 1
            continue
        if s == ".." or s.startswith(".. "):
            m = _DIRECTIVE_RE.match(s)
            if m is None:
                foot = re.match(r"^\.\.\s+\[(?:#[\w-]*|\d+|\*|[A-Za-z][\w.-]*)\]\s*(.*)$", s)
                if foot:  # footnote / citation: keep its text, drop the label
                    out.append(" " * ind + foot.group(1))
                    i += 1
                    continue
                i = skip_block(i, ind)  # comment, hyperlink target
                out.append("")
                continue
            subst, name, args = m.group(1), m.group(2), (m.group(3) or "").strip()
            short = name.split(":")[-1]
            i += 1
            while i < n and lines[i].strip() and _OPTION_RE.match(lines[i]) and _indent(lines[i]) > ind:
                i += 1  # directive options
            if subst or name in _RST_DROP:
                i = skip_block(i - 1, ind)
                out.append("")
                continue
            if name in _RST_VERSION:
                version, _, rest = args.partition(" ")
                out.append(" " * ind + _RST_VERSION[name].format(version) + (" " + rest if rest else ""))
                out.append("")
            elif short in _RST_OBJECTS or ":" in name:
                if args:
                    out.append(" " * ind + args)
                    out.append("")
            elif args and name not in _RST_NO_ARGS:
                out.append(" " * ind + args)  # admonition / topic / rubric title, seealso text
                out.append("")
            continue
        if s.startswith(">>>"):
            while i < n and lines[i].strip():
                i += 1
            out.append("")
            continue
        if _ADORN_RE.match(s) or _SIMPLE_TABLE_RE.match(s):
            i += 1
            continue
        if (s.startswith("+-") or s.startswith("+=")) and s.endswith("+"):
            while i < n and lines[i].strip()[:1] in ("+", "|"):
                i += 1
            out.append("")
            continue
        if s.startswith("| ") or s == "|":
            line = " " * ind + s[2:]
            s = s[2:]
        para_end = i + 1 >= n or not lines[i + 1].strip()
        if para_end and s.endswith("::"):
            if s == "::":
                line = ""
            elif s.endswith(" ::"):
                line = line.rstrip()[:-3]
            else:
                line = line.rstrip()[:-1]
            if line.strip():
                out.append(line)
            # the literal block: following blank lines + lines indented deeper than this paragraph
            j = i + 1
            while j < n and not lines[j].strip():
                j += 1
            if j < n and _indent(lines[j]) > ind:
                i = skip_block(i, ind)
                out.append("")
            else:
                i += 1
            continue
        out.append(line)
        i += 1
    return _unwrap_structured(out, _rst_inline)


def _unwrap_structured(lines: list[str], inline) -> str:
    """Blank-line-separated blocks; inside a block, a line at the indentation of the previous one (or of a
    list item's text) continues it, anything else starts a new line. Inline markup is resolved after
    joining, so roles split across lines are caught."""
    blocks: list[str] = []
    block: list[str] = []
    prev_ind = cont_ind = -1
    for line in lines + [""]:
        s = line.strip()
        if not s:
            if block:
                text = "\n".join(inline(b).strip() for b in block)
                if text.strip():
                    blocks.append(text)
                block = []
            continue
        ind = _indent(line)
        item = _ITEM_RE.match(s)
        if block and not item and (ind == prev_ind or ind == cont_ind):
            block[-1] += " " + s
        else:
            block.append(s)
            cont_ind = ind + (item.end() if item else 0)
        prev_ind = ind
    return "\n\n".join(blocks)


# --------------------------------------------------------------------------------------------------
# HTML -> text
# --------------------------------------------------------------------------------------------------

_HTML_SKIP_TAGS = {"script", "style", "head", "nav", "header", "footer", "pre", "noscript", "svg", "math",
                   "button", "form", "select", "textarea", "template", "object", "iframe"}
# Navigation, tables of contents and code, by class (any tag; "div" / "a": that tag only) and by id.
_HTML_SKIP_CLASSES = {
    "*": {"navheader", "navfooter", "sphinxsidebar", "sphinxsidebarwrapper", "related", "toc", "toctree-wrapper",
          "searchformwrapper", "breadcrumb", "breadcrumbs", "programlisting", "screen", "synopsis", "cmdsynopsis",
          "funcsynopsis", "literallayout", "highlight", "doctest", "linenodiv", "docnav", "navigation",
          "legalnotice", "revhistory", "nosearch", "menu-bar", "sidebar-scrollbox", "nav-wrapper",
          "nav-wide-wrapper", "mobile-nav-chapters", "section-toc", "contents", "shortcontents", "api_metadata",
          "changelog", "searchresults-outer"},
    "div": {"header", "footer", "nav"},
    "a": {"headerlink", "mark"},
}
_HTML_SKIP_IDS = {"hd", "ft", "global-nav", "sidebar", "searchbox", "banner", "breadcrumbs", "footer", "column2",
                  "toc", "gtoc", "menu-bar", "search-wrapper", "alt-docs", "searchresults-outer"}
_HTML_BLOCK = {"p", "div", "br", "h1", "h2", "h3", "h4", "h5", "h6", "li", "ul", "ol", "dl", "dt", "dd", "tr",
               "table", "thead", "tbody", "section", "article", "blockquote", "hr", "title", "figure",
               "figcaption", "caption", "main", "aside", "body", "html"}
_HTML_CELL = {"td", "th"}
_HTML_VOID = {"br", "hr", "img", "meta", "link", "input", "col", "area", "base", "wbr", "source", "embed"}


class _HTMLText(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.paras: list[str] = []
        self.buf: list[str] = []
        self.skip_tag: str | None = None
        self.skip_depth = 0

    def _flush(self) -> None:
        text = " ".join("".join(self.buf).split())
        if text:
            self.paras.append(text)
        self.buf = []

    def handle_starttag(self, tag, attrs):
        if self.skip_depth:
            if tag == self.skip_tag:
                self.skip_depth += 1
            return
        if tag not in _HTML_VOID:
            a = dict(attrs)
            classes = set((a.get("class") or "").split())
            if (tag in _HTML_SKIP_TAGS or classes & _HTML_SKIP_CLASSES["*"]
                    or classes & _HTML_SKIP_CLASSES.get(tag, set()) or a.get("id") in _HTML_SKIP_IDS):
                self.skip_tag, self.skip_depth = tag, 1
                return
        if tag in _HTML_BLOCK:
            self._flush()
        elif tag in _HTML_CELL:
            self.buf.append(" ")

    def handle_startendtag(self, tag, attrs):
        if not self.skip_depth and tag in _HTML_BLOCK:
            self._flush()

    def handle_endtag(self, tag):
        if self.skip_depth:
            if tag == self.skip_tag:
                self.skip_depth -= 1
            return
        if tag in _HTML_BLOCK:
            self._flush()
        elif tag in _HTML_CELL:
            self.buf.append(" ")

    def handle_data(self, data):
        if not self.skip_depth:
            self.buf.append(data)


def html_to_text(src: str) -> str:
    """HTML to text with the stdlib parser: drops <head>, scripts, styles, <pre> code, navigation and
    table-of-contents blocks (by tag, class or id), and ¶ header links; each block element becomes a
    paragraph with whitespace collapsed; paragraphs are separated by a blank line."""
    p = _HTMLText()
    p.feed(src)
    p.close()
    p._flush()
    return "\n\n".join(p.paras)


# --------------------------------------------------------------------------------------------------
# POD -> text
# --------------------------------------------------------------------------------------------------

_POD_CODE_RE = re.compile(r"([A-Z])<(<+\s+|(?!<))")
_POD_ENTITIES = {"lt": "<", "gt": ">", "verbar": "|", "sol": "/"}


def _pod_escape(name: str) -> str:
    name = name.strip()
    if name in _POD_ENTITIES:
        return _POD_ENTITIES[name]
    if re.fullmatch(r"0x[0-9a-fA-F]+", name):
        return chr(int(name, 16))
    if re.fullmatch(r"0[0-7]*", name):
        return chr(int(name, 8)) if len(name) > 1 else "\x00"
    if name.isdigit():
        return chr(int(name))
    out = html.unescape(f"&{name};")
    return "" if out.startswith("&") else out


def _pod_link(content: str) -> str:
    if "|" in content:
        return content.split("|", 1)[0]
    if re.match(r"^\w+:[^:\s]\S*$", content):  # URL
        return content
    name, slash, section = content.partition("/")
    section = section.strip('"')
    if not slash:
        return name
    return f'"{section}" in {name}' if name else f'"{section}"'


def _pod_parse(s: str, i: int, close: str | None) -> tuple[str, int]:
    """Parse formatting codes from s[i:] until `close` (None: end of string). Returns (text, index after)."""
    out: list[str] = []
    while i < len(s):
        if close is not None and s.startswith(close, i):
            return "".join(out), i + len(close)
        m = _POD_CODE_RE.match(s, i)
        if m:
            code, opener = m.group(1), m.group(2)
            if opener:  # C<< ... >> form: closes at whitespace + the same number of '>'
                count = 1 + opener.strip().count("<")
                inner_close = re.compile(r"\s+" + ">" * count)
                mm = inner_close.search(s, m.end())
                end = mm.start() if mm else len(s)
                inner, _ = _pod_parse(s[m.end() : end], 0, None)
                i = mm.end() if mm else len(s)
            else:
                inner, i = _pod_parse(s, m.end(), ">")
            if code == "E":
                out.append(_pod_escape(inner))
            elif code == "L":
                out.append(_pod_link(inner))
            elif code in ("X", "Z"):
                pass
            else:
                out.append(inner)
            continue
        out.append(s[i])
        i += 1
    return "".join(out), i


def _pod_inline(text: str) -> str:
    return _pod_parse(text, 0, None)[0]


def pod_to_text(src: str) -> str:
    """POD to text: headings and =item labels become lines, ordinary paragraphs are unwrapped, verbatim
    (indented) paragraphs, =begin/=end and =for blocks, and code after =cut are dropped; formatting codes
    keep their text (E<gt> -> '>', L<text|target> -> 'text', X<> / Z<> removed)."""
    paras = re.split(r"\n[ \t]*\n", src.replace("\r\n", "\n"))
    out: list[str] = []
    in_begin = False
    in_code = not src.lstrip().startswith("=")
    for p in paras:
        if not p.strip():
            continue
        if p.startswith("="):
            m = re.match(r"=(\w+)\s*(.*)", p, re.S)
            cmd, rest = (m.group(1), m.group(2)) if m else ("", "")
            in_code = cmd == "cut"
            if in_begin:
                in_begin = cmd != "end"
                continue
            if cmd.startswith("head") or cmd == "item":
                t = " ".join(rest.split())
                if cmd == "item":
                    t = re.sub(r"^(?:\*\s*|\d+\.?\s*)", "", t)
                t = _pod_inline(t).strip()
                if t:
                    out.append(t)
            elif cmd == "begin":
                in_begin = True
            continue
        if in_begin or in_code or p[0] in " \t":
            continue
        t = _pod_inline(" ".join(line.strip() for line in p.split("\n") if line.strip())).strip()
        if t:
            out.append(t)
    return "\n\n".join(out)


# --------------------------------------------------------------------------------------------------
# Special sources
# --------------------------------------------------------------------------------------------------


def _kjv_documents(bible_bin: Path, data_dir: Path) -> list[tuple[str, str]]:
    """(book, text) pairs from the bible-kjv program: a '<Book> <n>' heading line per chapter, then
    the chapter's verses joined into one paragraph (verse numbers dropped)."""
    try:
        res = subprocess.run(
            [str(bible_bin), "-l", "100000", "-p", str(data_dir) + "/", "gen1:1-rev22:21"],
            capture_output=True, check=True, timeout=300,
        )
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        raise GolfError(
            f"{bible_bin}: could not print the KJV text ({exc}); it needs libreadline8 "
            "(apt-get install libreadline8), or delete the cache folder and retry"
        ) from exc
    books: list[tuple[str, list[str]]] = []
    verses: list[str] = []

    def end_chapter() -> None:
        if verses:
            books[-1][1].append(" ".join(verses))
            verses.clear()

    for line in res.stdout.decode("utf-8", "replace").split("\n"):
        if not line.strip():
            continue
        vm = re.match(r"^\s+\d+ (.*)$", line)
        if vm:
            verses.append(vm.group(1).strip())
            continue
        hm = re.match(r"^(.+) (\d+)$", line.strip())
        if hm:
            end_chapter()
            if not books or books[-1][0] != hm.group(1):
                books.append((hm.group(1), []))
            books[-1][1].append(line.strip())
        elif verses:
            verses[-1] += " " + line.strip()
    end_chapter()
    return [(book, "\n\n".join(parts)) for book, parts in books]


def _jargon_documents(path: Path) -> list[tuple[str, str]]:
    """The Jargon File (plain text): table of contents dropped, paragraphs unwrapped, {cross-refs} kept as
    words; one document for the front chapters and one per initial letter of the lexicon."""
    text = gzip.decompress(path.read_bytes()).decode("utf-8")
    lines = text.split("\n")
    starts = [i for i, line in enumerate(lines) if line.strip() == "Welcome to the Jargon File"]
    lines = lines[starts[1] if len(starts) > 1 else 0 :]
    body = unwrap_paragraphs(lines)
    body = re.sub(r"\{([^{}\n]+)\}", r"\1", body)
    docs: list[tuple[str, list[str]]] = [("front matter", [])]
    for para in body.split("\n\n"):
        m = re.match(r"^:(.+?):", para)
        if m:
            letter = m.group(1)[:1].upper()
            letter = letter if letter.isalpha() else "0"
            if docs[-1][0] != letter:
                docs.append((letter, []))
            para = para[1:].replace(":", "", 1)
        docs[-1][1].append(para)
    return [(title, "\n\n".join(paras)) for title, paras in docs if paras]


# --------------------------------------------------------------------------------------------------
# The large corpus
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Source:
    name: str
    package: str  # exact name, or a regex (with a literal prefix) resolved to the newest candidate
    licence: str
    kind: str  # rst | html | pod | kjv | jargon
    base: str = ""  # glob (relative to the package root) of the folder holding the files; only it is unpacked
    pattern: str = ""  # glob relative to base
    exclude: tuple[str, ...] = ()  # regexes searched in the path relative to base
    only: str = ""  # regex the path relative to base must match (searched), when set
    helper: str = ""  # a second package needed (kjv: the reader program)
    unpack: tuple[str, ...] = ()  # folders (globs) to unpack; default: base

    @property
    def subtrees(self) -> tuple[str, ...]:
        return self.unpack or ((self.base,) if self.base else ())


_RUST_BOOKS = ("book", "reference", "nomicon", "rust-by-example", "rustc", "embedded-book", "edition-guide", "rustdoc")

LARGE_SOURCES: tuple[_Source, ...] = (
    _Source("linux-doc", r"linux-doc-\d+\.\d+", "GPL-2.0 (a few files CC-BY-4.0 / GFDL-1.1+)", "rst",
            "usr/share/doc/linux-doc-*/html/_sources", "**/*.rst.txt", (r"^translations/",)),
    _Source("python-doc", r"python3\.\d+-doc", "PSF-2.0", "rst",
            "usr/share/doc/python3.*/html/_sources", "**/*.txt"),
    _Source("perl-doc", "perl-doc", "GPL-1.0+ or Artistic-1.0", "pod", "usr/share/perl/5.*/pod", "*.pod"),
    _Source("postgresql-doc", r"postgresql-doc-\d+", "PostgreSQL", "html",
            "usr/share/doc/postgresql-doc-*/html", "*.html", (r"^(bookindex|index)\.html$",)),
    _Source("django-doc", "python-django-doc", "BSD-3-Clause", "html", "usr/share/doc/python-django-doc/html",
            "**/*.html", (r"^(_\w+|_modules)/", r"^(genindex|search|py-modindex|index|contents)\.html$")),
    _Source("sqlite-doc", "sqlite3-doc", "public domain", "html", "usr/share/doc/sqlite3", "**/*.html",
            (r"^(search\.d|syntax|images)/", r"^(sitemap|docs|keyword_index|toc|capi3ref)\.html$")),
    _Source("rust-books", "rust-doc", "MIT or Apache-2.0", "html", "usr/share/doc/rust-doc/html", "**/*.html",
            (r"(^|/)(print|toc|404)\.html$",), rf"^({'|'.join(_RUST_BOOKS)})/",
            unpack=tuple(f"usr/share/doc/rust-doc/html/{book}" for book in _RUST_BOOKS)),
    _Source("nodejs-doc", "nodejs-doc", "MIT", "html", "usr/share/doc/nodejs/api", "*.html",
            (r"^(all|index)\.html$",)),
    _Source("r-manuals", "r-doc-html", "GPL-2 (R manuals: verbatim/modified copies permitted)", "html",
            "usr/share/R/doc/manual", "*.html"),
    _Source("kjv", "bible-kjv-text", "public domain", "kjv", "usr/lib", helper="bible-kjv"),
    _Source("debian-handbook", "debian-handbook", "GPL-2.0+ or CC-BY-SA-3.0", "html",
            "usr/share/doc/debian-handbook/html/en-US", "*.html", (r"^(index|ix01)\.html$",)),
    _Source("debian-reference", "debian-reference-en", "GPL-2.0+", "html", "usr/share/debian-reference",
            "*.en.html", (r"^index\.en\.html$",)),
    _Source("developers-reference", "developers-reference", "GPL-2.0", "rst",
            "usr/share/developers-reference/_sources", "*.rst.txt"),
    _Source("debian-policy", "debian-policy", "GPL-2.0+", "rst", "usr/share/doc/debian-policy",
            "**/_sources/*.rst.txt"),
    _Source("jargon", "jargon-text", "public domain", "jargon", "usr/share/doc/jargon-text", "jargon.txt.gz"),
)

_PROCESSING_VERSION = 3  # bump when a stripper changes: invalidates the cached text


def _run(cmd: list[str], cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "LC_ALL": "C"}  # apt-cache's "Candidate:" must not be translated
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def _natural_key(s: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def _resolve_packages(specs: list[str]) -> dict[str, tuple[str, str] | None]:
    """spec -> (package, candidate version) or None. A spec is an exact name or a regex such as
    ``linux-doc-\\d+\\.\\d+``, resolved to the newest-numbered name that has an install candidate.
    Two apt-cache calls in all (each costs ~1 s)."""
    exact = lambda spec: re.fullmatch(r"[a-z0-9][a-z0-9.+-]*", spec) is not None  # noqa: E731
    all_names = _run(["apt-cache", "pkgnames"]).stdout.split() if not all(map(exact, specs)) else []
    options = {
        spec: [spec] if exact(spec)
        else sorted((n for n in all_names if re.fullmatch(spec, n)), key=_natural_key, reverse=True)
        for spec in specs
    }
    names = sorted({n for names in options.values() for n in names})
    out = _run(["apt-cache", "policy", *names]).stdout if names else ""
    blocks = re.finditer(r"^(\S+):\n\s+Installed:.*\n\s+Candidate:\s*(\S+)", out, re.M)
    candidate = {m.group(1): m.group(2) for m in blocks if m.group(2) != "(none)"}
    return {spec: next(((n, candidate[n]) for n in options[spec] if n in candidate), None) for spec in specs}


def _fetch_package(
    package: str, cache_dir: Path, subtrees: tuple[str, ...] = (), version: str | None = None
) -> tuple[Path, str]:
    """Download (``apt-get download``) and unpack a package under cache_dir (cached). With ``subtrees``
    (globs such as ``usr/share/doc/x/html``) only those folders are unpacked, via
    ``dpkg-deb --fsys-tarfile | tar`` (rust-doc unpacks to 580 MB, of which 30 MB are used); if that fails
    (a hard link into a folder left out), or without subtrees, the whole package is unpacked with ``dpkg -x``."""
    root = cache_dir / "pkgs" / package
    marker = root / ".golf-extracted"
    if marker.exists() and version in (None, marker.read_text().strip()):
        return root, marker.read_text().strip()
    debs = cache_dir / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    for old in debs.glob(f"{package}_*.deb"):
        old.unlink()
    res = _run(["apt-get", "download", package], cwd=debs)
    found = sorted(debs.glob(f"{package}_*.deb"))
    if res.returncode != 0 or not found:
        last = (res.stderr.strip().splitlines() or ["no output"])[-1]
        raise GolfError(
            f"apt-get download {package} failed ({last}); run `apt-get update` and check the network to the "
            "Debian mirror, or pass your own text files instead"
        )
    deb = found[-1]
    version = _run(["dpkg-deb", "-f", str(deb), "Version"]).stdout.strip()
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    res = None
    if subtrees:
        members = " ".join(shlex.quote(f"./{t}/*") for t in subtrees)
        cmd = (f"dpkg-deb --fsys-tarfile {shlex.quote(str(deb))} | "
               f"tar -x -C {shlex.quote(str(root))} --wildcards {members}")
        res = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True, timeout=600)
        if res.returncode != 0:
            shutil.rmtree(root)
            root.mkdir(parents=True)
    if res is None or res.returncode != 0:
        res = _run(["dpkg", "-x", str(deb), str(root)])
    if res.returncode != 0:
        raise GolfError(f"unpacking {deb.name} failed ({res.stderr.strip()[-200:]}); delete {cache_dir} and retry")
    marker.write_text(version + "\n")
    deb.unlink()  # the unpacked tree is the cache; the .deb is not needed again
    return root, version


def _decode(path: Path) -> str:
    raw = path.read_bytes()
    if path.name.endswith(".gz"):
        raw = gzip.decompress(raw)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _source_documents(src: _Source, root: Path, helper_root: Path | None) -> list[tuple[str, str]]:
    """(title, text) pairs for one source, in sorted path order."""
    if src.kind == "kjv":
        return _kjv_documents(helper_root / "usr/bin/bible", root / "usr/lib")
    bases = sorted(root.glob(src.base))
    if not bases:
        raise GolfError(f"{root}: no folder matching {src.base} in package {src.package}; delete the cache and retry")
    base = bases[-1]
    files = sorted(base.glob(src.pattern), key=lambda p: p.relative_to(base).as_posix())
    out: list[tuple[str, str]] = []
    for f in files:
        rel = f.relative_to(base).as_posix()
        skipped = any(re.search(x, rel) for x in src.exclude) or (src.only and not re.search(src.only, rel))
        if not f.is_file() or skipped:
            continue
        if src.kind == "jargon":
            out.extend((f"Jargon File: {t}", text) for t, text in _jargon_documents(f))
            continue
        text = {"rst": rst_to_text, "html": html_to_text, "pod": pod_to_text}[src.kind](_decode(f))
        title = re.sub(r"\.(rst\.txt|txt|html|pod)$", "", rel)
        if text.strip():
            out.append((title, text))
    return out


def _which(tool: str) -> bool:
    return shutil.which(tool) is not None


def build_large_corpus(
    cache_dir: Path, min_bytes: int = 60_000_000, max_bytes: int | None = 70_000_000
) -> tuple[list[Document], list[dict]]:
    """≥ ``min_bytes`` of English text from Debian documentation packages plus the Austen corpus.

    Packages are fetched with ``apt-get download`` and unpacked under ``cache_dir`` (only the folders read,
    via ``dpkg-deb --fsys-tarfile | tar``; ``dpkg -x`` of the whole package when that fails); nothing is
    installed. The extracted text is cached there too, so a second call does no download and no parsing. One document per source file (KJV: per book; Jargon File: per letter), in a fixed order:
    sources as in :data:`LARGE_SOURCES` then Austen, files sorted by path. When the total exceeds
    ``max_bytes``, whole documents are dropped in a fixed pseudo-random order (sha256 of source/title)
    until it fits. Returns the documents and a table of
    ``{source, package, version, licence, files, bytes}`` (bytes: UTF-8 text kept).
    """
    cache_dir = Path(cache_dir)
    missing_tools = [t for t in ("apt-get", "apt-cache", "dpkg", "dpkg-deb", "tar", "bash") if not _which(t)]
    if missing_tools:
        raise GolfError(
            f"build_large_corpus needs Debian's {', '.join(missing_tools)} (not on PATH); run it on a Debian or "
            "Ubuntu machine, or give your own text with read_text_files"
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    text_dir = cache_dir / "text"
    text_dir.mkdir(exist_ok=True)
    docs: list[Document] = []
    table: list[dict] = []
    unavailable: list[str] = []
    resolved_all = _resolve_packages([src.package for src in LARGE_SOURCES])
    for src in LARGE_SOURCES:
        resolved = resolved_all[src.package]
        if resolved is None:  # no candidate (apt lists missing?): fall back on text cached by an earlier call
            old = sorted(text_dir.glob(f"{src.name}_*_v{_PROCESSING_VERSION}.jsonl"),
                         key=lambda p: _natural_key(p.name))
            if not old:
                unavailable.append(src.package)
                continue
            resolved = tuple(old[-1].name[len(src.name) + 1 :].rsplit("_", 2)[:2])
            resolved = (resolved[0], resolved[1].replace("%3a", ":"))
        package, version = resolved
        cached = text_dir / f"{src.name}_{package}_{version}_v{_PROCESSING_VERSION}.jsonl".replace(":", "%3a")
        if cached.exists():
            pairs = [tuple(json.loads(line)) for line in cached.read_text(encoding="utf-8").splitlines()]
        else:
            t0 = time.perf_counter()
            root, version = _fetch_package(package, cache_dir, src.subtrees, version)
            helper_root = _fetch_package(src.helper, cache_dir)[0] if src.helper else None
            pairs = _source_documents(src, root, helper_root)
            tmp = cached.with_suffix(".tmp")
            with tmp.open("w", encoding="utf-8") as fh:
                for pair in pairs:
                    fh.write(json.dumps(list(pair), ensure_ascii=False) + "\n")
            os.replace(tmp, cached)
            log.info("%s: %s %s: %d documents in %.1fs", src.name, package, version, len(pairs),
                     time.perf_counter() - t0)
        docs.extend(Document(text=text, source=src.name, title=title) for title, text in pairs)
        table.append({"source": src.name, "package": package, "version": version, "licence": src.licence,
                      "files": len(pairs), "bytes": sum(len(t.encode("utf-8")) for _, t in pairs)})
    austen = default_documents()
    manifest = json.loads(_corpus_files()[1].read_text(encoding="utf-8"))
    docs.extend(austen)
    table.append({"source": DEFAULT_CORPUS, "package": manifest["package"], "version": manifest["version"],
                  "licence": manifest["licence"], "files": len(austen),
                  "bytes": sum(len(d.text.encode("utf-8")) for d in austen)})
    total = sum(row["bytes"] for row in table)
    if max_bytes is not None and total > max_bytes:
        sizes = [len(d.text.encode("utf-8")) for d in docs]
        order = sorted(range(len(docs)),
                       key=lambda k: hashlib.sha256(f"{docs[k].source}/{docs[k].title}".encode()).hexdigest())
        dropped: set[int] = set()
        for k in order:
            if total <= max_bytes:
                break
            if docs[k].source == DEFAULT_CORPUS:
                continue
            dropped.add(k)
            total -= sizes[k]
        for row in table:
            gone = [k for k in dropped if docs[k].source == row["source"]]
            row["files"] -= len(gone)
            row["bytes"] -= sum(sizes[k] for k in gone)
        docs = [d for k, d in enumerate(docs) if k not in dropped]
    if total < min_bytes:
        why = f"packages without an install candidate: {', '.join(unavailable)}" if unavailable else "sources too small"
        raise GolfError(
            f"large corpus has {total / 1e6:.1f} MB of text, below the {min_bytes / 1e6:.0f} MB needed ({why}); "
            "run `apt-get update` (Debian bookworm or later main archive), or lower min_bytes"
        )
    return docs, table


# --------------------------------------------------------------------------------------------------
# Maintenance: regenerate the committed Austen corpus (needs R and r-cran-janeaustenr)
# --------------------------------------------------------------------------------------------------

AUSTEN_NOVELS = (  # janeaustenr object name, title, in publication order
    ("sensesensibility", "Sense and Sensibility"),
    ("prideprejudice", "Pride and Prejudice"),
    ("mansfieldpark", "Mansfield Park"),
    ("emma", "Emma"),
    ("northangerabbey", "Northanger Abbey"),
    ("persuasion", "Persuasion"),
)


def rebuild_austen(out_dir: Path) -> dict:
    """Write ``austen.jsonl.xz`` and ``austen.manifest.json`` into out_dir from the installed R package
    (``apt-get install -y --no-install-recommends r-cran-janeaustenr``). Returns the manifest."""
    import tempfile

    version = _run(["dpkg-query", "-W", "-f", "${Version}", "r-cran-janeaustenr"]).stdout.strip()
    if not _which("Rscript") or not version:
        raise GolfError("rebuild_austen needs Rscript and r-cran-janeaustenr; "
                        "apt-get install -y --no-install-recommends r-cran-janeaustenr")
    records: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        names = ",".join(f'"{n}"' for n, _ in AUSTEN_NOVELS)
        script = (f"library(janeaustenr); for (n in c({names})) {{ con <- file(file.path('{tmp}', paste0(n, '.txt')),"
                  " 'w', encoding='UTF-8'); writeLines(enc2utf8(get(n)), con); close(con) }")
        res = _run(["Rscript", "-e", script])
        if res.returncode != 0:
            raise GolfError(f"Rscript failed extracting janeaustenr ({res.stderr.strip()[-200:]}); reinstall it")
        for obj, title in AUSTEN_NOVELS:
            lines = Path(tmp, f"{obj}.txt").read_text(encoding="utf-8").split("\n")
            if lines and lines[-1] == "":
                lines.pop()
            records.extend(austen_chapters(title, lines))
    jsonl = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "austen.jsonl.xz").write_bytes(lzma.compress(jsonl, preset=9))
    manifest = {
        "name": DEFAULT_CORPUS,
        "file": "austen.jsonl.xz",
        "documents": len(records),
        "text_bytes": sum(len(r["text"].encode("utf-8")) for r in records),
        "jsonl_bytes": len(jsonl),
        "sha256": hashlib.sha256(jsonl).hexdigest(),
        "package": "r-cran-janeaustenr",
        "version": version,
        "licence": "MIT (janeaustenr package, Julia Silge); the novels are public domain",
        "novels": {title: sum(1 for r in records if r["title"] == title) for _, title in AUSTEN_NOVELS},
        "split": "one document per chapter; the title page goes with chapter 1; VOLUME headings go with the "
                 "chapter after them; hard-wrapped lines joined with one space, paragraphs separated by a blank line",
    }
    (out_dir / "austen.manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return manifest


if __name__ == "__main__":  # python -m golf.data.corpora rebuild-austen | large CACHE_DIR
    if sys.argv[1:2] == ["rebuild-austen"]:
        print(json.dumps(rebuild_austen(Path(__file__).with_name("corpora")), indent=2))
    elif sys.argv[1:2] == ["large"] and len(sys.argv) == 3:
        logging.basicConfig(level=logging.INFO, format="[corpora] %(message)s")
        t0 = time.perf_counter()
        documents, rows = build_large_corpus(Path(sys.argv[2]))
        for row in rows:
            print(json.dumps(row))
        print(f"{len(documents)} documents, {sum(r['bytes'] for r in rows)} bytes, "
              f"{time.perf_counter() - t0:.1f}s")
    else:
        print("usage: python -m golf.data.corpora rebuild-austen | large CACHE_DIR", file=sys.stderr)
        sys.exit(2)
