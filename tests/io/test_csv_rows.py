"""Issue #12 case 10: a CSV/TSV row with too few or too many fields names the file and the line."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from cite_files import make_cite, write_tables

from omicsclip.errors import InputError
from omicsclip.io import text
from omicsclip.io.ingest import ingest
from omicsclip.io.readers import open_input


@pytest.fixture(scope="module")
def cite():
    return make_cite(n_cells=12, n_genes=8)


def _edit_line(path, lineno: int, edit) -> None:
    """Replace physical line ``lineno`` (1-based, the header is line 1) by ``edit(line)``."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", newline="") as fh:
        lines = fh.read().split("\n")
    lines[lineno - 1] = edit(lines[lineno - 1])
    with opener(path, "wt", newline="") as fh:
        fh.write("\n".join(lines))


def _refused(tmp_path, inputs, **kw) -> str:
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    with pytest.raises(InputError) as err:
        ingest(inputs, out / "s.zarr", **kw)
    assert err.value.exit_code == 2
    assert list(out.iterdir()) == []
    msg = str(err.value)
    assert "\n" not in msg
    assert "NaN" not in msg
    return msg


@pytest.mark.parametrize("name", ["rna.csv", "rna.tsv", "rna.csv.gz"])
def test_short_row_names_file_and_line(cite, tmp_path, name):
    rna, prot = write_tables(cite, tmp_path / name, tmp_path / "prot.csv")
    sep = "\t" if ".tsv" in name else ","
    _edit_line(rna, 7, lambda ln: sep.join(ln.split(sep)[:5]))  # 8 genes + the barcode = 9 fields
    msg = _refused(tmp_path, [rna, prot])
    assert msg == f"{rna}: line 7 has 5 fields, expected 9"


def test_long_row_names_file_and_line(cite, tmp_path):
    rna, prot = write_tables(cite, tmp_path / "rna.csv", tmp_path / "prot.csv")
    _edit_line(prot, 4, lambda ln: ln + ",3,4")  # 7 antibodies + barcode = 8 fields
    msg = _refused(tmp_path, [rna, prot])
    assert msg == f"{prot}: line 4 has 10 fields, expected 8"


def test_row_with_only_a_name(cite, tmp_path):
    rna, prot = write_tables(cite, tmp_path / "rna.csv", tmp_path / "prot.csv")
    _edit_line(rna, 13, lambda ln: ln.split(",")[0])  # the last row, as a truncated file leaves it
    assert _refused(tmp_path, [rna, prot]) == f"{rna}: line 13 has 1 field, expected 9"


def test_genes_in_rows_short_row(cite, tmp_path):
    rna, prot = write_tables(cite, tmp_path / "rna.csv", tmp_path / "prot.csv", genes_in_rows=True)
    _edit_line(rna, 3, lambda ln: ",".join(ln.split(",")[:-2]))  # 12 cells + the gene name = 13 fields
    msg = _refused(tmp_path, [rna, prot], genes_in_rows=True)
    assert msg == f"{rna}: line 3 has 11 fields, expected 13"


def test_short_row_when_streamed_in_blocks(cite, tmp_path, monkeypatch):
    monkeypatch.setattr(text, "_IN_MEMORY_BYTES", 0)
    monkeypatch.setattr(text, "_BLOCK", 3)
    rna, prot = write_tables(cite, tmp_path / "rna.csv", tmp_path / "prot.csv")
    _edit_line(rna, 11, lambda ln: ",".join(ln.split(",")[:4]))
    assert _refused(tmp_path, [rna, prot], chunk_cells=4) == f"{rna}: line 11 has 4 fields, expected 9"


def test_line_numbers_count_quoted_newlines_and_blank_lines(tmp_path):
    rna = tmp_path / "rna.csv"
    rna.write_text('barcode,"gene\na",g2\n\nA,1,2\n"B\nx",1,2\nC,1\n')
    prot = tmp_path / "prot.csv"
    prot.write_text('barcode,p1\nA,1\n"B\nx",2\nC,3\n')
    assert _refused(tmp_path, [rna, prot]) == f"{rna}: line 7 has 2 fields, expected 3"


def test_empty_field_is_still_a_missing_value(cite, tmp_path):
    """A row of the right length with an empty field is a NaN value, reported at its cell and feature."""
    rna, prot = write_tables(cite, tmp_path / "rna.csv", tmp_path / "prot.csv")
    _edit_line(rna, 5, lambda ln: ",".join(ln.split(",")[:3] + [""] + ln.split(",")[4:]))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(InputError, match="NaN/inf values.*GENE2"):
        ingest([rna, prot], out / "s.zarr")


def test_names_with_newlines_and_na_barcodes_round_trip(tmp_path):
    """Quoted names spanning lines are one header field; a barcode "NA" is a name, not a missing value."""
    rna = tmp_path / "rna.csv"
    rna.write_text('barcode,"gene\na","g,2",g3\nNA,1,2,0\n"",0,1,4\n"B\r\nx",5,0,0\n')
    prot = tmp_path / "prot.csv"
    prot.write_text('barcode,CD3\nNA,1\n"",2\n"B\r\nx",3\n')
    with open_input([rna, prot]) as src:
        d = src.read()
    assert d.gene_names == ["gene\na", "g,2", "g3"]
    assert d.barcodes == ["NA", "", "B\r\nx"]
    np.testing.assert_array_equal(d.rna.toarray(), [[1, 2, 0], [0, 1, 4], [5, 0, 0]])
    np.testing.assert_array_equal(d.prot, [[1], [2], [3]])


def test_separator_follows_the_extension(tmp_path):
    """A .tsv header whose names hold more commas than tabs is still tab-separated (it was guessed from counts)."""
    rna = tmp_path / "rna.tsv"
    rna.write_text("barcode\tCD4,CD8,x\tg2\nA\t1\t2\nB\t3\t4\n")
    prot = tmp_path / "prot.csv"
    prot.write_text('barcode,"p\t1\t2\t3"\nA,1\nB,2\n')
    with open_input([rna, prot]) as src:
        d = src.read()
    assert d.gene_names == ["CD4,CD8,x", "g2"]
    assert d.protein_names == ["p\t1\t2\t3"]


def test_tab_separated_table_named_csv(tmp_path):
    rna = tmp_path / "rna.csv"
    rna.write_text("barcode\tg1\tg2\nA\t1\t2\nB\t3\t4\n")
    prot = tmp_path / "prot.csv"
    prot.write_text("barcode,p1\nA,1\nB,2\n")
    with open_input([rna, prot]) as src:
        assert src.genes == ["g1", "g2"]
