"""Protein name harmonisation: the shipped alias table, affixes/case/separators, user mappings, collisions."""

from __future__ import annotations

import logging
import tomllib
from importlib.resources import files

import pytest
from conftest import REPO

from omicsclip.errors import InputError
from omicsclip.io.protein_names import (
    alias_table,
    builtin_aliases,
    canonical_name,
    harmonise_protein_names,
    match_protein_names,
    name_key,
    read_alias_file,
)

EXAMPLES = {
    "PD-1": "CD279", "CD279": "CD279", "PD1 (CD279)": "CD279", "PD-1 (CD279)": "CD279", "PDCD1": "CD279",
    "HLA-DR": "HLA-DR", "HLA.DR": "HLA-DR", "HLA_DR": "HLA-DR", "MHCII (HLA-DR)": "HLA-DR", "MHCII": "HLA-DR",
    "CD8a": "CD8a", "CD8": "CD8a", "IL7Ralpha (CD127)": "CD127", "CD127": "CD127", "IL7R": "CD127",
    "B220 (CD45R)": "CD45R", "C-kit (CD117)": "CD117", "B7-H1 (PD-L1)": "CD274", "PD-L1 (CD274)": "CD274",
    "EpCAM (CD326)": "CD326", "PECAM (CD31)": "CD31", "Ox40 (CD134)": "CD134", "CD223 (lag3)": "CD223",
    "CD366 (tim3)": "CD366", "CTLA4": "CD152", "CTLA-4": "CD152", "CCR7": "CD197", "L-selectin": "CD62L",
    "CD62L": "CD62L", "TCRb": "TCRab", "TCR αβ": "TCRab", "TCRg": "TCRgd", "LAMP1": "CD107a",
    "HLA-A,B,C": "HLA-ABC", "CD26 (Adenosine)": "CD26", "4-1BB": "CD137", "TIGIT": "TIGIT", "cd4": "CD4",
    "CD8a_TotalSeqB": "CD8a", "CD3_TotalSeqC": "CD3", "CD14-TotalSeqA": "CD14", "ADT_CD19": "CD19",
    "adt-CD16": "CD16", "CITE_CD56": "CD56", "CD4_TotalSeq-B": "CD4",
}

ECCITE = ["B220 (CD45R)", "B7-H1 (PD-L1)", "C-kit (CD117)", "CCR7", "CD11b", "CD11c", "CD138", "CD14", "CD16",
          "CD19", "CD1a", "CD2", "CD223 (lag3)", "CD24", "CD26 (Adenosine)", "CD27", "CD28", "CD3", "CD34",
          "CD366 (tim3)", "CD4", "CD44", "CD45", "CD45RA", "CD45RO", "CD5", "CD56", "CD62L", "CD66b", "CD69",
          "CD7", "CD77", "CD8", "CTLA4", "EpCAM (CD326)", "HLA-A,B,C", "IL7Ralpha (CD127)", "IgG1", "IgG2a",
          "LAMP1", "MHCII (HLA-DR)", "Ox40 (CD134)", "PD-1 (CD279)", "PD-L1 (CD274)", "PD1 (CD279)",
          "PECAM (CD31)", "Siglec-8", "TCRb", "TCRg"]


@pytest.mark.parametrize(("name", "canonical"), sorted(EXAMPLES.items()))
def test_table_knows_the_examples(name, canonical):
    assert canonical_name(name, alias_table()) == canonical


def test_table_covers_common_targets_and_every_canonical_maps_to_itself():
    table = builtin_aliases()
    targets = set(table.values())
    assert len(targets) >= 150
    for c in targets:
        assert table[name_key(c)] == c


def test_table_ships_as_package_data():
    res = files("omicsclip").joinpath("data", "protein_aliases.tsv")
    assert res.is_file()
    assert res.read_text(encoding="utf-8").count("\n") > 300
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "data/*.tsv" in setuptools["package-data"]["omicsclip"]


def test_keys_ignore_case_separators_and_affixes_but_not_digit_separators():
    assert name_key("HLA.DR") == name_key("hla_dr") == name_key("HLA DR") == name_key("HLA-DR")
    assert name_key("CD8a_TotalSeqB") == name_key("ADT_cd8A") == name_key("CITE-CD8a") == "cd8a"
    assert name_key("CD45.1") != name_key("CD451")
    table = alias_table()
    assert canonical_name("CD4-1", table) is None  # --make-unique's second CD4 is not CD41
    assert canonical_name("CD45.1", table) == "CD45.1"


def test_unknown_names_and_isotypes_are_kept_unchanged():
    names = ["Foo_TotalSeqB", "IgG1", "Mouse_IgG2a_isotype", "my protein", "CD4"]
    out, rep = harmonise_protein_names(names)
    assert out == names
    assert rep.mapped == {}
    assert rep.unknown == names[:4]


def test_eccite_panel_keeps_every_column_and_reports_collisions(caplog):
    with caplog.at_level(logging.WARNING, logger="omicsclip.io.protein_names"):
        out, rep = harmonise_protein_names(ECCITE)
    assert len(out) == len(set(out)) == len(ECCITE)
    assert out[ECCITE.index("PD-1 (CD279)")] == "CD279"
    assert out[ECCITE.index("PD1 (CD279)")] == "PD1 (CD279)"  # second CD279: kept under its own name
    assert out[ECCITE.index("B7-H1 (PD-L1)")] == "CD274"
    assert out[ECCITE.index("PD-L1 (CD274)")] == "PD-L1 (CD274)"
    assert rep.collisions == {"PD-L1 (CD274)": "CD274", "PD1 (CD279)": "CD279"}
    assert "PD1 (CD279)" in caplog.text
    assert rep.mapped["MHCII (HLA-DR)"] == "HLA-DR"
    assert set(rep.unknown) == {"IgG1", "IgG2a"}
    uns = rep.to_uns()
    assert dict(zip(uns["mapped_from"], uns["mapped_to"], strict=True)) == rep.mapped
    assert rep.describe().startswith("protein names: 19 mapped (B220 (CD45R) -> CD45R, ")


def test_a_column_already_canonical_keeps_the_name():
    out, rep = harmonise_protein_names(["PD-1", "CD279"])
    assert out == ["PD-1", "CD279"]
    assert rep.collisions == {"PD-1": "CD279"}


def test_parts_that_disagree_stay_unknown():
    out, rep = harmonise_protein_names(["CD4 (CD8)"])
    assert out == ["CD4 (CD8)"]
    assert rep.unknown == ["CD4 (CD8)"]


@pytest.mark.parametrize(("fname", "text"), [
    ("m.tsv", "name\tcanonical\nCD8\tCD8\nMyAb-7\tCD4\n"),
    ("m.csv", "# ours\nCD8,CD8\n\"MyAb-7\",CD4\n"),
    ("m.yaml", "CD8: CD8\nMyAb-7: CD4\n"),
])
def test_user_mapping_overrides_the_table(tmp_path, fname, text):
    path = tmp_path / fname
    path.write_text(text)
    assert read_alias_file(path) == [("CD8", "CD8"), ("MyAb-7", "CD4")]
    out, rep = harmonise_protein_names(["CD8", "myab_7", "PD-1"], path)
    assert out == ["CD8", "CD4", "CD279"]
    assert rep.mapped == {"myab_7": "CD4", "PD-1": "CD279"}
    out2, _ = harmonise_protein_names(["CD8", "myab_7"], {"CD8": "CD8", "MyAb-7": "CD4"})
    assert out2 == out[:2]


def test_user_entries_that_name_no_column_are_reported(tmp_path, caplog):
    """A misspelt alias would otherwise pass unnoticed: its protein just stays unknown."""
    with caplog.at_level(logging.WARNING):
        out, rep = harmonise_protein_names(["MyAb-7", "PD-1", "Clone 12 (CD99)"],
                                           {"MyAb-7": "CD4", "MyAb7x": "CD8a", "CD99": "CD99", "Clone 12": "CD99"})
    assert out == ["CD4", "CD279", "CD99"]
    assert rep.unused_aliases == ["MyAb7x"]  # CD99 -> CD99 says nothing; "Clone 12" matched a part
    assert "1 entries of the user alias file named no column (MyAb7x)" in rep.describe()
    assert rep.to_uns()["unused_aliases"] == ["MyAb7x"]
    assert not caplog.records  # some entries were used: no warning
    _, renamed = match_protein_names(["myab_7", "PD1"], ["CD4", "PD1"], {"MyAb-7": "CD4", "Other": "CD8a"})
    assert renamed.unused_aliases == []  # judged when the names were read (harmonised), not again here
    # a file none of whose entries names a column: the wrong file for this panel?
    path = tmp_path / "other_lab.tsv"
    path.write_text("Ab-A\tCD4\nAb-B\tCD8a\n")
    with caplog.at_level(logging.WARNING):
        _, rep = harmonise_protein_names(["CD4", "CD8"], path)
    assert rep.unused_aliases == ["Ab-A", "Ab-B"]
    assert f"none of the 2 entries of the user alias file {path} names a protein of this input" in caplog.text
    assert harmonise_protein_names(["CD4"])[1].unused_aliases == []  # the shipped table alone: nothing to report


def test_user_mapping_onto_another_input_name_loses_nothing():
    out, rep = harmonise_protein_names(["Foo", "Bar"], {"Foo": "Bar"})
    assert out == ["Foo", "Bar"]
    assert rep.collisions == {"Foo": "Bar"}


@pytest.mark.parametrize(("fname", "text", "match"), [
    ("missing.tsv", None, "protein alias file not found"),
    ("three.tsv", "a\tb\tc\n", r"line 1: expected two non-empty columns \(name, canonical\), got 3"),
    ("empty.csv", "# nothing\n", "no mappings"),
    ("half.csv", "CD8,CD8\nCD4,\n", "line 2: expected two non-empty columns"),
    ("list.yaml", "- CD8\n- CD4\n", "expected one YAML mapping"),
    ("bad.yaml", "a: [\n", "not valid YAML"),
    ("conflict.tsv", "PD-1\tCD279\nPD1\tFOO\n", "maps to both"),
    ("typo.tsv", "name\tcanonicl\nMyAb-7\tCD4\n", "line 1 looks like a header, but its second column is 'canonicl'"),
])
def test_malformed_mapping_files_are_one_line_input_errors(tmp_path, fname, text, match):
    path = tmp_path / fname
    if text is not None:
        path.write_text(text)
    with pytest.raises(InputError, match=match) as exc:
        harmonise_protein_names(["CD4"], path)
    assert "\n" not in str(exc.value)


def test_match_to_a_model_with_old_names():
    model = ["PD-1", "CD8a", "CCR7", "HLA.DR", "Foo"]
    query = ["CD279", "CD8_TotalSeqB", "CD197", "MHCII (HLA-DR)", "Foo", "Bar", "PD1 (CD279)"]
    out, rep = match_protein_names(query, model)
    assert out == ["PD-1", "CD8a", "CCR7", "HLA.DR", "Foo", "Bar", "PD1 (CD279)"]
    assert rep.unknown == ["Bar", "PD1 (CD279)"]
    assert rep.collisions == {"PD1 (CD279)": "PD-1"}
    exact, _ = match_protein_names(["PD-1", "CD279"], ["PD-1"])
    assert exact == ["PD-1", "CD279"]  # the model's own name wins
