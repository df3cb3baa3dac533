"""A reference index built in memory (ReferenceIndex.build) answers as the same index saved and loaded back."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pandas as pd
import pytest
from conftest import load_bench

from omicsclip.config import default_config
from omicsclip.errors import InputError
from omicsclip.index.reference import ReferenceIndex, write_index_dir

ClusteredEmbeddings = load_bench("index_synth").ClusteredEmbeddings


@pytest.fixture(autouse=True)
def _faiss_threads():
    faiss.omp_set_num_threads(2)


def _section(**kw):
    return {**default_config()["index"], "use_gpu": False, **kw}


def _reference(n=3000, dim=16, n_prot=4, seed=0):
    gen = ClusteredEmbeddings(dim, n_clusters=6, seed=seed)
    rna, labels = gen.sample(n, seed=seed + 1)
    prot = rna + 0.05 * np.random.default_rng(seed).standard_normal(rna.shape).astype(np.float32)
    prot /= np.linalg.norm(prot, axis=1, keepdims=True)
    return {
        "embeddings": {"rna": rna, "prot": prot},
        "cell_ids": [f"cell{i}" for i in range(n)],
        "protein": np.random.default_rng(seed + 2).normal(size=(n, n_prot)).astype(np.float32),
        "protein_names": [f"P{j}" for j in range(n_prot)],
        "labels": pd.DataFrame({"cell_type": [f"type{c}" for c in labels]}),
    }


@pytest.mark.parametrize("kind", ["flat", "ivf_flat", "ivf_sq", "ivf_pq", "hnsw"])
def test_in_memory_index_answers_as_saved_and_loaded(tmp_path, kind):
    ref = _reference()
    section = _section(kind=kind, nprobe=3)
    mem = ReferenceIndex.build(model_fingerprint="fp", section=section, **ref)
    assert list(tmp_path.iterdir()) == []  # building writes nothing
    assert "files" not in mem.meta
    q = ClusteredEmbeddings(16, n_clusters=6, seed=0).sample(80, seed=9)[0]
    before = {m: mem.search(m, q, 10) for m in ("rna", "prot")}
    out = mem.save(tmp_path / "idx")
    assert mem.path == out
    assert set(mem.meta["files"]) == {p.name for p in out.iterdir() if p.name != "meta.json"}
    loaded = ReferenceIndex.load(out, model_fingerprint="fp", use_gpu=False)
    assert loaded.meta == json.loads((out / "meta.json").read_text()) == mem.meta
    assert loaded.params == mem.params
    assert loaded.modalities == mem.modalities == ["rna", "prot"]
    np.testing.assert_array_equal(loaded.cell_ids, mem.cell_ids)
    np.testing.assert_array_equal(np.asarray(loaded.protein), mem.protein)
    pd.testing.assert_frame_equal(loaded.labels, mem.labels)
    for m in ("rna", "prot"):
        sims, pos = loaded.search(m, q, 10)
        np.testing.assert_array_equal(loaded.cell_ids[pos], mem.cell_ids[before[m][1]])
        np.testing.assert_array_equal(sims, before[m][0])
        np.testing.assert_array_equal(mem.search(m, q, 10)[1], before[m][1])  # saving left it searchable


def test_write_index_dir_is_build_then_save(tmp_path):
    ref = _reference(n=500)
    out = write_index_dir(tmp_path / "a", model_fingerprint="fp", section=_section(), **ref)
    ReferenceIndex.build(model_fingerprint="fp", section=_section(), **ref).save(tmp_path / "b")
    for name in ("rna.faiss", "prot.faiss", "cell_ids.tsv", "reference_protein.npy", "reference_obs.parquet"):
        assert (out / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    write_index_dir(out, model_fingerprint="fp2", section=_section(), overwrite=True, **ref)  # replaces its target
    assert ReferenceIndex.load(out).fingerprint == "fp2"


def test_save_refuses_an_existing_folder_without_overwrite(tmp_path):
    ref = _reference(n=400)
    mem = ReferenceIndex.build(model_fingerprint="fp", section=_section(), **ref)
    (tmp_path / "idx").mkdir()
    (tmp_path / "idx" / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="already exists"):
        mem.save(tmp_path / "idx")
    assert [p.name for p in (tmp_path / "idx").iterdir()] == ["keep.txt"]
    assert mem.path.name != "idx"  # still unsaved
    mem.save(tmp_path / "idx", overwrite=True)
    assert ReferenceIndex.load(tmp_path / "idx", model_fingerprint="fp").n == 400
    assert not (tmp_path / "idx" / "keep.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]  # no temporaries or locks left


def test_a_loaded_index_is_not_saved_over_its_own_folder(tmp_path):
    out = write_index_dir(tmp_path / "idx", model_fingerprint="fp", section=_section(), **_reference(n=300))
    loaded = ReferenceIndex.load(out)  # its protein is memory-mapped from that folder
    with pytest.raises(InputError, match="would delete the input"):
        loaded.save(out, overwrite=True)
    copy = loaded.save(tmp_path / "copy")
    assert loaded.path == copy
    np.testing.assert_array_equal(np.asarray(ReferenceIndex.load(copy).protein), np.asarray(loaded.protein))


def test_build_refuses_bad_input_by_name():
    ref = _reference(n=200)
    ref["labels"] = ref["labels"][:10]
    with pytest.raises(InputError, match="^<in memory>: 10 label rows for 200"):
        ReferenceIndex.build(model_fingerprint="fp", section=_section(), **ref)
    with pytest.raises(InputError, match="^out/idx: no embeddings"):
        ReferenceIndex.build(embeddings={}, cell_ids=["a"], model_fingerprint="fp", section=_section(),
                             name="out/idx")


def test_gpu_search_copy_is_saved_from_the_cpu(monkeypatch, tmp_path):
    """No GPU here: a fake GPU copy searches the in-memory index; save writes its CPU copy (faiss cannot write it)."""
    calls = []

    class GpuIndexFake:  # stands in for faiss.GpuIndexFlatIP & co.
        def __init__(self, cpu):
            self.cpu, self.d, self.ntotal = cpu, cpu.d, cpu.ntotal

        def search(self, q, k):
            calls.append("gpu_search")
            return self.cpu.search(q, k)

    def cpu_to_gpu(res, device, index, *args):
        calls.append("to_gpu")
        return GpuIndexFake(faiss.clone_index(index))

    def gpu_to_cpu(index):
        calls.append("to_cpu")
        return faiss.clone_index(index.cpu)

    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    monkeypatch.setattr(faiss, "StandardGpuResources", lambda: object(), raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", cpu_to_gpu, raising=False)
    monkeypatch.setattr(faiss, "index_gpu_to_cpu", gpu_to_cpu, raising=False)
    ref = _reference(n=500)
    mem = ReferenceIndex.build(model_fingerprint="fp", section=_section(kind="flat"), search_gpu="auto", **ref)
    assert calls == ["to_gpu", "to_gpu"]
    q = ref["embeddings"]["rna"][:30]
    sims, pos = mem.search("rna", q, 5)
    assert calls[-1] == "gpu_search"
    mem.save(tmp_path / "idx")
    assert calls.count("to_cpu") == 2
    loaded = ReferenceIndex.load(tmp_path / "idx", use_gpu=False)
    np.testing.assert_array_equal(loaded.search("rna", q, 5)[1], pos)
    np.testing.assert_array_equal(loaded.search("rna", q, 5)[0], sims)
