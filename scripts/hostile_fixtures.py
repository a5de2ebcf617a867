#!/usr/bin/env python3
"""Writes tests/fixtures/hostile/: small files that claim far more than they
weigh (issue 10). Each is refused by one bound of src/import/bounds.rs, ods.rs
or the row builder; the integration tests upload them and the fuzzer starts
from them. The benchmark `cargo bench --bench hostile` builds the full-size
versions (gigabytes inflated) itself.

    python3 scripts/hostile_fixtures.py
"""
import os
import zipfile

HERE = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "hostile")
MAIN = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
REL = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
PKG = "http://schemas.openxmlformats.org/package/2006/relationships"


def write_zip(name, parts):
    path = os.path.join(HERE, name)
    with zipfile.ZipFile(path, "w") as z:
        for i, (part, data) in enumerate(parts):
            method = zipfile.ZIP_STORED if i == 0 else zipfile.ZIP_DEFLATED
            z.writestr(zipfile.ZipInfo(part), data, compress_type=method, compresslevel=9)
    print(f"{name}: {os.path.getsize(path)} bytes")


def xlsx(name, sheet_data, shared=None):
    rels = f'<Relationship Id="rId1" Type="{REL}/worksheet" Target="worksheets/sheet1.xml"/>'
    if shared is not None:
        rels += f'<Relationship Id="rId2" Type="{REL}/sharedStrings" Target="sharedStrings.xml"/>'
    parts = [
        ("[Content_Types].xml",
         '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
         '<Default Extension="xml" ContentType="application/xml"/></Types>'),
        ("_rels/.rels",
         f'<Relationships xmlns="{PKG}"><Relationship Id="rId1" Type="{REL}/officeDocument" '
         'Target="xl/workbook.xml"/></Relationships>'),
        ("xl/workbook.xml",
         f'<workbook xmlns="{MAIN}" xmlns:r="{REL}"><sheets>'
         '<sheet name="Hoja1" sheetId="1" r:id="rId1"/></sheets></workbook>'),
        ("xl/_rels/workbook.xml.rels", f'<Relationships xmlns="{PKG}">{rels}</Relationships>'),
        ("xl/worksheets/sheet1.xml",
         f'<worksheet xmlns="{MAIN}"><sheetData>' + sheet_data + "</sheetData></worksheet>"),
    ]
    if shared is not None:
        parts.append(("xl/sharedStrings.xml", f'<sst xmlns="{MAIN}">{shared}</sst>'))
    write_zip(name, parts)


def inline(ref, text):
    return f'<c r="{ref}" t="inlineStr"><is><t>{text}</t></is></c>'


HEADER = '<row r="1">' + inline("A1", "telefono") + inline("B1", "nombre") + "</row>"
MB16 = 16 * 1024 * 1024

# One cell of 16 MiB written in the sheet.
xlsx("celda_enorme.xlsx",
     HEADER + '<row r="2">' + inline("A2", "3138539155") + inline("B2", "x" * MB16) + "</row>")
# One shared string of 16 MiB, used by one cell.
xlsx("texto_compartido_enorme.xlsx",
     HEADER + '<row r="2">' + inline("A2", "3138539155") + '<c r="B2" t="s"><v>0</v></c></row>',
     shared="<si><t>" + "x" * MB16 + "</t></si>")
# 16 MiB of whitespace between two rows.
xlsx("espacios.xlsx",
     HEADER + " " * MB16 + '<row r="2">' + inline("A2", "3138539155") + "</row>")

# One number repeated over 1,000 columns and 50,000 rows: 50 million cells.
ODS_NS = ('xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0" '
          'xmlns:table="urn:oasis:names:tc:opendocument:xmlns:table:1.0" '
          'xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0"')
cell = '<table:table-cell office:value-type="string"><text:p>{}</text:p></table:table-cell>'
content = (f'<?xml version="1.0" encoding="UTF-8"?><office:document-content {ODS_NS}>'
           '<office:body><office:spreadsheet><table:table table:name="Hoja1">'
           '<table:table-row>' + cell.format("telefono") + cell.format("nombre") + '</table:table-row>'
           '<table:table-row table:number-rows-repeated="50000">'
           '<table:table-cell table:number-columns-repeated="1000" office:value-type="float" '
           'office:value="3138539155"/></table:table-row>'
           '</table:table></office:spreadsheet></office:body></office:document-content>')
write_zip("repeticiones.ods", [
    ("mimetype", "application/vnd.oasis.opendocument.spreadsheet"),
    ("content.xml", content),
])
