"""One document, two renderings: self-contained HTML (inline CSS, figures as base64 PNG) and Markdown (figures as
files beside it). Both are produced from the same :class:`Document`, so their sections and table cells are the
same strings."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field


@dataclass
class Paragraph:
    text: str
    kind: str = "p"  # p | note | warn


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    id: str | None = None
    caption: str = ""
    notes: list[str] = field(default_factory=list)
    align: list[str] | None = None  # per column: 'l' or 'r'


@dataclass
class Figure:
    name: str  # file stem, [a-z0-9_-]
    png: bytes
    caption: str
    title: str = ""  # the image's alt text (short)


@dataclass
class Finding:
    title: str
    result: str
    claim: str | None
    verdict: str  # agrees | disagrees | inconclusive | info
    basis: str


Block = Paragraph | Bullets | Table | Figure | Finding


@dataclass
class Section:
    title: str
    id: str
    blocks: list[Block] = field(default_factory=list)


@dataclass
class Document:
    title: str
    sections: list[Section] = field(default_factory=list)

    @property
    def figures(self) -> list[Figure]:
        return [b for s in self.sections for b in s.blocks if isinstance(b, Figure)]


# ---- HTML --------------------------------------------------------------------------------------------------------
CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0;color:#1d232a;background:#fff;
 line-height:1.45;font-size:15px}
main{max-width:1360px;margin:0 auto;padding:18px 28px 60px}
h1{font-size:26px;margin:8px 0 4px}h2{font-size:20px;margin:34px 0 10px;border-bottom:2px solid #e3e7ec;
 padding-bottom:4px}
nav{font-size:13px;margin:6px 0 14px}nav a{margin-right:14px;color:#2a62b8;text-decoration:none}
.wrap{overflow-x:auto;margin:8px 0}
table{border-collapse:collapse;font-size:12.5px;font-variant-numeric:tabular-nums}
th,td{border:1px solid #d5dbe2;padding:3px 7px;vertical-align:top}
th{background:#f1f4f8;text-align:left;font-weight:600}
tbody tr:nth-child(even){background:#fafbfc}
td.r{text-align:right;white-space:nowrap}
caption{caption-side:top;text-align:left;font-weight:600;padding:4px 0}
.note{font-size:12.5px;color:#4a5560;margin:3px 0}
.warn{background:#fff4e0;border-left:4px solid #e3a008;padding:6px 10px}
figure{margin:14px 0 22px}figure img{max-width:100%;border:1px solid #e3e7ec}
figcaption{font-size:13px;color:#3d4750;max-width:1100px}
.finding{border:1px solid #d5dbe2;border-left:5px solid #8a96a3;border-radius:3px;padding:8px 12px;margin:10px 0}
.finding.agrees{border-left-color:#2e9d55}.finding.disagrees{border-left-color:#d04437}
.finding.inconclusive{border-left-color:#e3a008}
.finding h3{font-size:15px;margin:0 0 4px}.finding .v{font-size:12px;text-transform:uppercase;font-weight:700;
 letter-spacing:.03em;margin-left:6px;color:#56606b}
.finding p{margin:4px 0}.claim{color:#33404d}.basis{font-size:12.5px;color:#56606b}
"""
# The test hook: once everything has loaded, record on <body> how many images decoded (a broken data URI or a
# missing file shows as images-failed > 0 in a headless browser's DOM dump).
SCRIPT = """window.addEventListener('load',function(){var ok=0,bad=0,im=document.images;
for(var i=0;i<im.length;i++){if(im[i].complete&&im[i].naturalWidth>0){ok++}else{bad++}}
document.body.dataset.imagesTotal=im.length;document.body.dataset.imagesLoaded=ok;
document.body.dataset.imagesFailed=bad;});"""


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def _html_table(t: Table) -> str:
    align = t.align or ["l"] * len(t.headers)
    out = [f'<div class="wrap"><table{f" id={chr(34)}{t.id}{chr(34)}" if t.id else ""}>']
    if t.caption:
        out.append(f"<caption>{_e(t.caption)}</caption>")
    if any(t.headers):  # a key / value table has no header row
        out.append("<thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in t.headers) + "</tr></thead>")
    out.append("<tbody>")
    for row in t.rows:
        out.append("<tr>" + "".join(f'<td class="{a}">{_e(c)}</td>' for c, a in zip(row, align, strict=True))
                   + "</tr>")
    out.append("</tbody></table></div>")
    out += [f'<p class="note">{_e(n)}</p>' for n in t.notes]
    return "\n".join(out)


def _html_block(b: Block) -> str:
    if isinstance(b, Paragraph):
        cls = {"p": "", "note": ' class="note"', "warn": ' class="warn"'}[b.kind]
        return f"<p{cls}>{_e(b.text)}</p>"
    if isinstance(b, Bullets):
        return "<ul>" + "".join(f"<li>{_e(i)}</li>" for i in b.items) + "</ul>"
    if isinstance(b, Table):
        return _html_table(b)
    if isinstance(b, Figure):
        data = base64.b64encode(b.png).decode("ascii")
        return (f'<figure id="fig-{b.name}"><img alt="{_e(b.title or b.name)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{_e(b.caption)}</figcaption></figure>")
    claim = f'<p class="claim"><b>Paper:</b> {_e(b.claim)}</p>' if b.claim else ""
    return (f'<div class="finding {b.verdict}"><h3>{_e(b.title)}<span class="v">{_e(b.verdict)}</span></h3>'
            f"<p><b>Here:</b> {_e(b.result)}</p>{claim}<p class=\"basis\"><b>Basis:</b> {_e(b.basis)}</p></div>")


def to_html(doc: Document) -> str:
    nav = "".join(f'<a href="#{s.id}">{_e(s.title)}</a>' for s in doc.sections)
    body = []
    for s in doc.sections:
        body.append(f'<section id="{s.id}"><h2>{_e(s.title)}</h2>')
        body += [_html_block(b) for b in s.blocks]
        body.append("</section>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{_e(doc.title)}</title>"
            f"<style>{CSS}</style><script>{SCRIPT}</script></head>\n<body><main><h1>{_e(doc.title)}</h1>"
            f"<nav>{nav}</nav>\n" + "\n".join(body) + "\n</main></body></html>\n")


# ---- Markdown ----------------------------------------------------------------------------------------------------
def md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _md_table(t: Table) -> str:
    align = t.align or ["l"] * len(t.headers)
    out = [f"**{t.caption}**", ""] if t.caption else []
    out.append("| " + " | ".join(md_cell(h) for h in t.headers) + " |")
    out.append("|" + "|".join("---:" if a == "r" else "---" for a in align) + "|")
    out += ["| " + " | ".join(md_cell(c) for c in row) + " |" for row in t.rows]
    if t.notes:
        out.append("")
        out += [f"*{n}*" if len(t.notes) == 1 else f"- *{n}*" for n in t.notes]
    return "\n".join(out)


def _md_block(b: Block, figures_dir: str) -> str:
    if isinstance(b, Paragraph):
        return {"p": b.text, "note": f"*{b.text}*", "warn": f"> **{b.text}**"}[b.kind]
    if isinstance(b, Bullets):
        return "\n".join(f"- {i}" for i in b.items)
    if isinstance(b, Table):
        return _md_table(b)
    if isinstance(b, Figure):
        return f"![{b.title or b.name}]({figures_dir}/{b.name}.png)\n\n*{b.caption}*"
    lines = [f"**{b.title}** — *{b.verdict}*", "", f"- Here: {b.result}"]
    if b.claim:
        lines.append(f"- Paper: {b.claim}")
    lines.append(f"- Basis: {b.basis}")
    return "\n".join(lines)


def to_markdown(doc: Document, figures_dir: str = "figures") -> str:
    out = [f"# {doc.title}", ""]
    for s in doc.sections:
        out += [f"## {s.title}", ""]
        for b in s.blocks:
            out += [_md_block(b, figures_dir), ""]
    return "\n".join(out)


def table_cells(doc: Document, table_id: str) -> list[list[str]] | None:
    """The body cells of the table ``table_id`` (tests compare them with the rendered forms)."""
    for s in doc.sections:
        for b in s.blocks:
            if isinstance(b, Table) and b.id == table_id:
                return [list(r) for r in b.rows]
    return None
