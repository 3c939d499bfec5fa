"""The compatibility matrix's page: one self-contained HTML file (inline CSS and JS, the data
embedded as JSON). The table is written here, escaped; the script only opens a cell's detail, and
writes nothing but text (textContent). Cannot change a cell: not part of the cache's key."""

from __future__ import annotations

import html
import json
from pathlib import Path

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em;margin:0 0 .3em}h2{font-size:1.15em;margin:1.6em 0 .3em}
.meta{color:#555;margin:.2em 0}
table.matrix{border-collapse:collapse;margin:.5em 0}
table.matrix th,table.matrix td{border:1px solid #ccc;padding:3px 6px;white-space:nowrap}
table.matrix thead th{background:#f4f4f4;font-weight:600;vertical-align:bottom}
table.matrix th.entry{text-align:left;font-weight:normal;max-width:34em;overflow:hidden;text-overflow:ellipsis}
.group{display:inline-block;font-size:.8em;color:#555;background:#eee;border-radius:3px;padding:0 4px;margin-right:4px}
th small{display:block;font-weight:normal;color:#666}
td.cell{text-align:center;cursor:pointer;min-width:5.5em}
td.cell:focus,td.cell.selected{outline:3px solid #1565c0;outline-offset:-3px}
.st-applies{background:#2e7d32;color:#fff}
.st-offset{background:#a5d6a7}
.st-rebases{background:#fff176}
.st-conflicts{background:#e53935;color:#fff;font-weight:600}
.st-upstream{background:#bdbdbd}
.st-unavailable{background:repeating-linear-gradient(45deg,#fff,#fff 4px,#ddd 4px,#ddd 8px);color:#555}
td.caveat::after{content:" *"}
th.unavailable{background:repeating-linear-gradient(45deg,#f4f4f4,#f4f4f4 4px,#ddd 4px,#ddd 8px)}
tfoot td{font-size:.85em;color:#444;text-align:center;border:1px solid #ccc}
.legend span{display:inline-block;padding:2px 8px;margin:2px 4px 2px 0;border:1px solid #ccc}
#detail{position:fixed;right:0;top:0;bottom:0;width:min(48em,50vw);box-sizing:border-box;overflow:auto;
  background:#fff;border-left:2px solid #1565c0;padding:1em;box-shadow:-4px 0 12px rgba(0,0,0,.15)}
main{overflow-x:auto}
body.detail-open main{margin-right:min(48em,50vw)}
#detail[hidden]{display:none}
#detail table{border-collapse:collapse;font-size:.9em;width:100%}
#detail td,#detail th{border:1px solid #ddd;padding:2px 5px;text-align:left;vertical-align:top;overflow-wrap:anywhere}
#detail tr.file td{background:#e3f2fd;font-family:monospace;font-weight:600}
#detail td.notes{font-size:.85em;color:#555}
#detail tr.hunk td:nth-child(-n+3),#detail th:nth-child(-n+3){white-space:nowrap;overflow-wrap:normal}
#detail td.notes{width:30%}
#detail .h-conflict{background:#ffcdd2}#detail .h-upstreamed{background:#eee}
#detail .h-fuzzy,#detail .h-merged{background:#fff9c4}
#detail-close{float:right}
code{font-size:.95em}
"""

_JS = """
(function(){
  var data = JSON.parse(document.getElementById('matrix-data').textContent);
  var panel = document.getElementById('detail');
  function el(tag, text, cls){var e=document.createElement(tag); if(text!==undefined&&text!==null) e.textContent=String(text); if(cls) e.className=cls; return e;}
  function show(td){
    var up = data.upstreams[+td.dataset.u], row = up.rows[+td.dataset.r], col = +td.dataset.c;
    var cell = row.cells[col], ver = up.versions[col];
    document.querySelectorAll('td.cell.selected').forEach(function(x){x.classList.remove('selected');});
    td.classList.add('selected');
    panel.dataset.upstream = up.name; panel.dataset.entry = row.name; panel.dataset.version = ver.id;
    panel.dataset.status = cell.status;
    document.getElementById('detail-title').textContent = up.name + ' ' + ver.label + ': ' + row.name;
    var v = ver.commit ? ('commit ' + ver.commit + (ver.origin ? ' (' + ver.origin + ')' : '')) : '';
    document.getElementById('detail-version').textContent = v + (ver.note ? ' - ' + ver.note : '');
    document.getElementById('detail-summary').textContent = cell.summary + (cell.cached ? ' (from the cache)' : '');
    var cav = document.getElementById('detail-caveats'); cav.textContent = '';
    (cell.caveats||[]).forEach(function(c){cav.appendChild(el('li', c));});
    var tb = document.getElementById('detail-hunks').tBodies[0]; tb.textContent = '';
    var last = null;
    (cell.hunks||[]).forEach(function(h){
      var shown = h.file + (h.new_file && h.new_file !== h.file ? ' (from ' + h.new_file + ')' : '');
      if (h.file !== last) {  // one header row per file, its hunks below it
        var fr = el('tr', null, 'file'); var fd = el('td', shown); fd.colSpan = 5; fr.appendChild(fd);
        fr.dataset.file = h.file; tb.appendChild(fr); last = h.file;
      }
      var tr = el('tr', null, 'hunk h-' + h.status);
      tr.dataset.file = h.file;
      tr.appendChild(el('td', h.old_start));
      tr.appendChild(el('td', h.status));
      tr.appendChild(el('td', h.at === undefined ? '' : h.at));
      tr.appendChild(el('td', h.reason || ''));
      var notes = [];
      Object.keys(h).forEach(function(k){
        if (['file','new_file','old_start','status','at','reason'].indexOf(k) < 0) notes.push(k + ': ' + h[k]);
      });
      tr.appendChild(el('td', notes.join('; '), 'notes'));
      tb.appendChild(tr);
    });
    document.getElementById('detail-nohunks').hidden = (cell.hunks||[]).length > 0;
    panel.hidden = false;
    document.body.classList.add('detail-open');
  }
  document.querySelectorAll('td.cell').forEach(function(td){
    td.addEventListener('click', function(){show(td);});
    td.addEventListener('keydown', function(e){if(e.key==='Enter'||e.key===' '){e.preventDefault(); show(td);}});
  });
  document.getElementById('detail-close').addEventListener('click', function(){
    panel.hidden = true;
    document.body.classList.remove('detail-open');
    document.querySelectorAll('td.cell.selected').forEach(function(x){x.classList.remove('selected');});
  });
  document.addEventListener('keydown', function(e){if(e.key==='Escape') document.getElementById('detail-close').click();});
})();
"""


def _e(s) -> str:
    return html.escape(str(s), quote=True)


def _script_json(data: dict) -> str:
    # Inside <script>, '<', '>' and '&' are written as JSON escapes: no text can end the element.
    return json.dumps(data).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_html(data: dict) -> str:
    from .matrix import CONFLICTS, REBASES, UNAVAILABLE

    s = data["cells"]
    out = ["<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
           "<title>Compatibility matrix</title>", f"<style>{_CSS}</style></head><body>",
           "<main>", "<h1>Compatibility matrix</h1>",
           f"<p class=\"meta\">Every entry of every series (groups: {_e(', '.join(data['groups']))}) on each upstream "
           f"version, the entries before it applied first. Generated {_e(data['generated'])} by "
           f"<code>make matrix</code>; {s['total']} cells, {s['cached']} from the cache, {s['computed']} computed, "
           f"{s['unavailable']} not computed. Click a cell for its hunks.</p>",
           "<p class=\"legend\" id=\"legend\">"]
    for st, text in data["statuses"].items():
        out.append(f"<span class=\"st-{_e(st)}\" data-status=\"{_e(st)}\">{_e(text)}</span>")
    out.append("<span>* : computed with a caveat (see the cell)</span></p>")
    for ui, u in enumerate(data["upstreams"]):
        pin = u["pin"]
        out.append(f"<section class=\"upstream\" id=\"up-{_e(u['name'])}\" data-upstream=\"{_e(u['name'])}\">")
        out.append(f"<h2>{_e(u['name'])}</h2><p class=\"meta\">pin {_e(pin['version'])}"
                   + (f" <code>{_e(pin['commit'])}</code> ({_e(pin['origin'])})" if pin.get("commit") else "")
                   + "</p>")
        if pin.get("reason"):
            out.append(f"<p class=\"meta unavailable\">The pinned source is not available, so no cell is computed: "
                       f"{_e(pin['reason'])}</p>")
        out.append(f"<table class=\"matrix\" id=\"matrix-{_e(u['name'])}\" data-upstream=\"{_e(u['name'])}\">")
        out.append("<thead><tr><th class=\"corner\">patch</th>")
        for v in u["versions"]:
            title = "; ".join(x for x in (v.get("commit") and f"commit {v['commit']}", v.get("origin"), v.get("note"),
                                          v.get("reason") and f"not available: {v['reason']}") if x)
            sub = {"pin": "pin", "pypi": "PyPI", "listed": "listed", "newest": "newest", "given": "given"}[v["kind"]]
            if v.get("wheel"):
                sub += " wheel"
            cls = "version" + (" unavailable" if v.get("reason") else "")
            out.append(f"<th class=\"{cls}\" data-version=\"{_e(v['id'])}\" title=\"{_e(title)}\">"
                       f"{_e(v['label'])}<small>{_e(sub)}</small></th>")
        out.append("</tr></thead><tbody>")
        for ri, r in enumerate(u["rows"]):
            title = r["name"] + (f" (sha256 {r['sha256']})" if r.get("sha256") else "") + (
                f"; {r['reason']}" if r.get("reason") else "")
            out.append(f"<tr class=\"entry\" data-entry=\"{_e(r['name'])}\" data-group=\"{_e(r['group'])}\">"
                       f"<th class=\"entry\" title=\"{_e(title)}\"><span class=\"group\">{_e(r['group'])}</span>"
                       f"<span class=\"entry-name\">{_e(r['name'])}</span>"
                       + (" <small>(external)</small>" if r["external"] else "") + "</th>")
            for ci, c in enumerate(r["cells"]):
                cls = f"cell st-{c['status']}" + (" caveat" if c.get("caveats") else "")
                out.append(f"<td class=\"{_e(cls)}\" tabindex=\"0\" data-u=\"{ui}\" data-r=\"{ri}\" data-c=\"{ci}\" "
                           f"data-version=\"{_e(c['version'])}\" data-status=\"{_e(c['status'])}\" "
                           f"title=\"{_e(c['summary'])}\">{_e(c['text'])}</td>")
            out.append("</tr>")
        out.append("</tbody><tfoot><tr><td>breaks</td>")
        for ci, v in enumerate(u["versions"]):
            sts = [r["cells"][ci]["status"] for r in u["rows"]]
            bad = sum(x == CONFLICTS for x in sts)
            na = sum(x == UNAVAILABLE for x in sts)
            rb = sum(x == REBASES for x in sts)
            parts = [f"{bad} need conflicts resolved" if bad else "", f"{rb} rebase" if rb else "",
                     f"{na} n/a" if na else ""]
            out.append(f"<td>{_e(', '.join(p for p in parts if p) or 'nothing')}</td>")
        out.append("</tr></tfoot></table></section>")
    out.append("</main>")
    out.append("<aside id=\"detail\" hidden><button id=\"detail-close\" type=\"button\">close</button>"
               "<h3 id=\"detail-title\"></h3><p id=\"detail-version\" class=\"meta\"></p>"
               "<p id=\"detail-summary\"></p><ul id=\"detail-caveats\"></ul>"
               "<p id=\"detail-nohunks\" hidden>No hunk was placed (the cell was not computed).</p>"
               "<table id=\"detail-hunks\"><thead><tr><th>old line</th><th>status</th><th>new line</th>"
               "<th>reason</th><th>notes</th></tr></thead><tbody></tbody></table></aside>")
    out.append(f"<script type=\"application/json\" id=\"matrix-data\">{_script_json(data)}</script>")
    out.append(f"<script>{_JS}</script></body></html>\n")
    return "\n".join(out)


def summary(data: dict, out_dir: Path) -> str:
    """The matrix as text: per upstream, per version, each entry's cell."""
    from .matrix import UNAVAILABLE

    lines = []
    for u in data["upstreams"]:
        pin = u["pin"]
        lines.append(f"{u['name']} (pin {pin['version']}"
                     + (f" {pin['commit'][:12]}" if pin.get("commit") else "") + f"): {len(u['rows'])} entries x "
                     f"{len(u['versions'])} versions")
        if pin.get("reason"):
            lines.append(f"  pinned source not available: {pin['reason']}")
        width = max([len(r["name"]) for r in u["rows"]] + [8])
        for j, v in enumerate(u["versions"]):
            lines.append(f"  {v['label']}" + (f"  ({v['commit'][:12]})" if v.get("commit") and v["label"] != v["commit"][:8]
                                              else "") + (f"  NOT AVAILABLE: {v['reason']}" if v.get("reason") else ""))
            if pin.get("reason") and not v.get("reason"):
                lines.append("    not computed: the pinned source is not available")
            if v.get("reason") or pin.get("reason"):
                continue
            for r in u["rows"]:
                c = r["cells"][j]
                extra = f": {c['reason']}" if c["status"] == UNAVAILABLE else ""
                if c.get("conflict_files"):
                    extra = " in " + ", ".join(c["conflict_files"][:4]) + (" ..." if len(c["conflict_files"]) > 4 else "")
                if c.get("caveats"):
                    extra += f" [{len(c['caveats'])} caveat{'s' if len(c['caveats']) > 1 else ''}]"
                lines.append(f"    {r['name']:<{width}}  {c['text']}{extra}")
    s = data["cells"]
    lines.append(f"{s['total']} cells: {s['cached']} from the cache, {s['computed']} computed "
                 f"({s['simulated']} with the rebase simulation), {s['unavailable']} not computed; "
                 f"{data['seconds']:.1f} s")
    lines.append(f"wrote {out_dir / 'matrix.json'} and {out_dir / 'index.html'}")
    return "\n".join(lines)
