"""The staff ledger as a printable PDF (fpdf2): A4 landscape, the site's tax-agency ID number in
the heading, one row per shift, page numbers; what an inspector is handed on site."""
from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Sequence

from fpdf import FPDF

from host_sync.timeutil import now

# DejaVu covers every name a card portal sends; without it the core font (Latin-1) is used
_FONTS = ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
          "/usr/share/fonts/dejavu/DejaVuSans.ttf")
COLS = (("Name", 40), ("Personal ID", 28), ("Contractor", 36), ("Org. no", 24), ("Card", 30),
        ("Start", 30), ("End", 30), ("Readers", 22), ("Corrected", 16), ("Flagged", 21))


def ledger_pdf(site: dict, day: dt.date, tz_name: str, rows: Sequence[Sequence[str]]) -> bytes:
    pdf = FPDF(orientation="L", unit="mm", format="A4")
    font = next((f for f in _FONTS if Path(f).exists()), None)
    if font:
        pdf.add_font("body", "", font)
        bold = font.replace("DejaVuSans.ttf", "DejaVuSans-Bold.ttf")
        pdf.add_font("body", "B", bold if Path(bold).exists() else font)
        fam = "body"
    else:
        fam = "helvetica"

    def text(s: str) -> str:
        return s if font else s.encode("latin-1", "replace").decode("latin-1")

    pdf.set_title("Personalliggare %s %s" % (site["id"], day.isoformat()))
    pdf.set_creator("grindvakt")
    pdf.set_auto_page_break(True, margin=12)
    pdf.alias_nb_pages()
    pdf.add_page()
    pdf.set_font(fam, "B", 14)
    pdf.cell(0, 8, text("Personalliggare: %s (%s)" % (site["name"], site["id"])),
             new_x="LMARGIN", new_y="NEXT")
    pdf.set_font(fam, "", 10)
    pdf.cell(0, 6, text("Site ID number %s. Shifts on %s (%s). Printed %s." % (
        site["tax_site_id"], day.isoformat(), tz_name, now().strftime("%Y-%m-%d %H:%M UTC"))),
        new_x="LMARGIN", new_y="NEXT")
    pdf.ln(2)

    def header() -> None:
        pdf.set_font(fam, "B", 8)
        pdf.set_fill_color(230, 230, 230)
        for name, w in COLS:
            pdf.cell(w, 6, name, border=1, fill=True)
        pdf.ln()
        pdf.set_font(fam, "", 8)

    header()
    for r in rows:
        if pdf.will_page_break(6):
            pdf.add_page()
            header()
        cells = (r[3], r[4], r[1], r[2], r[5], r[6], r[7], r[8], "yes" if r[9] else "", r[10])
        for (name, w), c in zip(COLS, cells):
            s = text(str(c))
            while s and pdf.get_string_width(s) > w - 2:
                s = s[:-1]
            pdf.cell(w, 6, s, border=1)
        pdf.ln()
    pdf.ln(2)
    pdf.cell(0, 6, text("%d shift(s). Page %s of {nb}." % (len(rows), pdf.page_no())))
    return bytes(pdf.output())
