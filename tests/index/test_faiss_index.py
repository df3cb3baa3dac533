"""FAISS index layer and the reference folder: exactness, recall, GPU code path, save/load, refusals."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pandas as pd
import pytest
from conftest import load_bench

from omicsclip.config import default_config
from omicsclip.errors import InputError
from omicsclip.index.faiss_index import (
    brute_force,
    build_index,
    factory_string,
    gpu_enabled,
    recall_at_k,
    resolve_params,
    search,
)
from omicsclip.index.reference import ReferenceIndex, write_index_dir

ClusteredEmbeddings = load_bench("index_synth").ClusteredEmbeddings  # the benchmarks' generator


@pytest.fixture(autouse=True)
def _faiss_threads():
    faiss.omp_set_num_threads(2)


@pytest.fixture(scope="module")
def clustered_50k():
    gen = ClusteredEmbeddings(64, seed=0)
    x = gen.sample(50_000, seed=1)[0]
    q = gen.sample(300, seed=2)[0]  # new cells from the same distribution, not reference points
    return x, q, brute_force(x, q, 10)[1]


def _section(**kw):
    return {**default_config()["index"], **kw}


def test_flat_returns_numpy_brute_force():
    gen = ClusteredEmbeddings(32, seed=3)
    x, q = gen.sample(3000, seed=4)[0], gen.sample(100, seed=5)[0]
    index = build_index(x, resolve_params(len(x), 32, _section(kind="flat")))
    sims, pos = search(index, q, 10)
    ref_sims, ref_pos = brute_force(x, q, 10)
    np.testing.assert_array_equal(pos, ref_pos)
    np.testing.assert_allclose(sims, ref_sims, atol=1e-5)
    assert (np.diff(sims, axis=1) <= 1e-7).all()  # descending similarity


def test_search_clips_k_to_reference_size_and_checks_dimension():
    x = ClusteredEmbeddings(16, seed=0).sample(5, seed=1)[0]
    index = build_index(x, resolve_params(5, 16, _section(kind="flat")))
    sims, pos = search(index, x, 50)
    assert pos.shape == (5, 5)
    assert (pos[:, 0] == np.arange(5)).all()
    with pytest.raises(InputError, match=r"expected an \(n, 16\) array"):
        search(index, np.ones((3, 8), np.float32), 2)
    with pytest.raises(InputError, match="NaN"):
        search(index, np.full((1, 16), np.nan, np.float32), 2)


def test_resolve_params_auto_and_rules():
    assert resolve_params(1000, 64, _section()).kind == "flat"
    big = resolve_params(1_000_000, 64, _section(exact_max_cells=10_000))
    assert big.kind == default_config()["index"]["approximate"]
    ivf = resolve_params(1_000_000, 64, _section(kind="ivf_flat"))
    assert ivf.nlist == 4000
    assert factory_string(ivf) == "IVF4000,Flat"
    small = resolve_params(2000, 64, _section(kind="ivf_flat"))
    assert small.nlist == 2000 // 39
    assert small.nprobe <= small.nlist
    assert factory_string(resolve_params(50_000, 64, _section(kind="ivf_pq"))) == "IVF894,PQ16x8np,RFlat"
    assert factory_string(resolve_params(50_000, 64, _section(kind="hnsw"))) == "HNSW32,Flat"
    assert factory_string(resolve_params(50_000, 64, _section(kind="ivf_sq"))) == "IVF894,SQfp16"
    with pytest.raises(InputError, match="must divide"):
        resolve_params(50_000, 60, _section(kind="ivf_pq", pq_m=16))
    with pytest.raises(InputError, match="unknown index kind"):
        resolve_params(100, 8, _section(kind="annoy"))
    with pytest.raises(InputError, match="no reference cells"):
        resolve_params(0, 8, _section())


@pytest.mark.parametrize("kind", ["ivf_flat", "ivf_sq", "hnsw", pytest.param("ivf_pq", marks=pytest.mark.slow)])
def test_approximate_recall_at_default_parameters(clustered_50k, kind):
    x, q, truth = clustered_50k
    params = resolve_params(len(x), 64, _section(kind=kind))
    index = build_index(x, params)
    assert index.ntotal == len(x)
    recall = recall_at_k(search(index, q, 10)[1], truth)
    assert recall >= 0.95, f"{kind} recall@10 {recall:.3f}"


def test_gpu_code_path_with_mocked_faiss(monkeypatch, tmp_path):
    """No GPU here: fake faiss' GPU entry points and check the index goes there and back, same results."""
    calls = []

    class FakeResources:
        pass

    def cpu_to_gpu(res, device, index, *args):
        calls.append(("to_gpu", type(index).__name__, device))
        return faiss.clone_index(index)

    def gpu_to_cpu(index):
        calls.append(("to_cpu", type(index).__name__))
        return faiss.clone_index(index)

    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    monkeypatch.setattr(faiss, "StandardGpuResources", FakeResources, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", cpu_to_gpu, raising=False)
    monkeypatch.setattr(faiss, "index_gpu_to_cpu", gpu_to_cpu, raising=False)
    gen = ClusteredEmbeddings(16, seed=0)
    x, q = gen.sample(4000, seed=1)[0], gen.sample(50, seed=2)[0]
    assert gpu_enabled("auto")
    assert not gpu_enabled(False)
    index = build_index(x, resolve_params(len(x), 16, _section(kind="flat")), use_gpu="auto")
    assert calls[0][0] == "to_gpu"
    assert calls[-1][0] == "to_cpu"
    np.testing.assert_array_equal(search(index, q, 5)[1], brute_force(x, q, 5)[1])
    calls.clear()
    build_index(x, resolve_params(len(x), 16, _section(kind="hnsw")), use_gpu="auto")
    assert calls == []  # HNSW has no GPU implementation: stays on the CPU
    write_index_dir(tmp_path / "idx", embeddings={"rna": x}, cell_ids=[str(i) for i in range(len(x))],
                    model_fingerprint="m", section=_section(kind="flat"))
    calls.clear()
    loaded = ReferenceIndex.load(tmp_path / "idx")  # searching happens on the (fake) GPU copy
    assert [c[0] for c in calls] == ["to_gpu"]
    np.testing.assert_array_equal(loaded.search("rna", q, 5)[1], brute_force(x, q, 5)[1])


def test_gpu_required_but_absent(monkeypatch):
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 0)
    assert not gpu_enabled("auto")
    with pytest.raises(InputError, match="sees no GPU"):
        gpu_enabled(True)


# ------------------------------------------------------------------------------------------ the index folder


def _reference(n=600, dim=16, n_prot=5, seed=0):
    gen = ClusteredEmbeddings(dim, n_clusters=6, seed=seed)
    rna, labels = gen.sample(n, seed=seed + 1)
    prot = rna + 0.05 * np.random.default_rng(seed).standard_normal(rna.shape).astype(np.float32)
    prot /= np.linalg.norm(prot, axis=1, keepdims=True)
    protein = np.random.default_rng(seed + 2).normal(size=(n, n_prot)).astype(np.float32)
    return {
        "embeddings": {"rna": rna, "prot": prot},
        "cell_ids": [f"cell{i}" for i in range(n)],
        "protein": protein,
        "protein_names": [f"P{j}" for j in range(n_prot)],
        "labels": pd.DataFrame({"cell_type": [f"type{c}" for c in labels]}),
    }


def test_index_folder_round_trip(tmp_path):
    ref = _reference()
    out = write_index_dir(tmp_path / "idx", model_fingerprint="abc123", section=_section(), **ref)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["meta.json", "cell_ids.tsv", "rna.faiss", "prot.faiss", "reference_protein.npy", "reference_obs.parquet",
         "mapping_calibration.npy"])
    meta = json.loads((out / "meta.json").read_text())
    assert meta["metric"] == "inner_product"
    assert meta["dim"] == 16
    assert meta["n"] == 600
    assert meta["kind"] == "flat"
    assert meta["factory"] == "Flat"
    assert meta["model_fingerprint"] == "abc123"
    assert meta["params"]["kind"] == "flat"
    assert meta["proteins"] == ref["protein_names"]
    loaded = ReferenceIndex.load(out, model_fingerprint="abc123")
    assert list(loaded.cell_ids) == ref["cell_ids"]
    assert loaded.modalities == ["rna", "prot"]
    np.testing.assert_array_equal(np.asarray(loaded.protein), ref["protein"])
    pd.testing.assert_frame_equal(loaded.labels, ref["labels"])
    q = ref["embeddings"]["rna"][:20]
    for m in ("rna", "prot"):
        np.testing.assert_array_equal(loaded.search(m, q, 7)[1], brute_force(ref["embeddings"][m], q, 7)[1])
    assert not list(tmp_path.glob(".idx*"))  # no temporary leftovers


@pytest.mark.parametrize("kind", ["ivf_flat", "ivf_sq"])
def test_approximate_index_round_trip_keeps_search_parameters(tmp_path, kind):
    gen = ClusteredEmbeddings(16, seed=1)
    x, q = gen.sample(5000, seed=2)[0], gen.sample(50, seed=3)[0]
    section = _section(kind=kind, nprobe=3)
    write_index_dir(tmp_path / "idx", embeddings={"rna": x}, cell_ids=[str(i) for i in range(5000)],
                    model_fingerprint="m", section=section)
    loaded = ReferenceIndex.load(tmp_path / "idx")
    assert faiss.extract_index_ivf(loaded.indices["rna"]).nprobe == 3
    assert loaded.meta["kind"] == kind
    direct = build_index(x, resolve_params(5000, 16, section))
    np.testing.assert_array_equal(loaded.search("rna", q, 10)[1], search(direct, q, 10)[1])


def test_wrong_model_is_refused(tmp_path):
    write_index_dir(tmp_path / "idx", model_fingerprint="model-A", section=_section(), **_reference())
    with pytest.raises(InputError, match="index was built with model model-A.*rebuild"):
        ReferenceIndex.load(tmp_path / "idx", model_fingerprint="model-B")


@pytest.mark.parametrize("verify", [True, False])
def test_corrupt_index_file_is_refused(tmp_path, verify):
    out = write_index_dir(tmp_path / "idx", model_fingerprint="m", section=_section(), **_reference())
    f = out / "rna.faiss"
    f.write_bytes(f.read_bytes()[:100])  # truncated
    with pytest.raises(InputError, match=r"rna\.faiss: corrupt index file"):
        ReferenceIndex.load(out, verify=verify)


def test_missing_or_bad_meta_is_refused(tmp_path):
    with pytest.raises(InputError, match="index folder not found"):
        ReferenceIndex.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="not an omicsclip index folder"):
        ReferenceIndex.load(tmp_path / "empty")
    out = write_index_dir(tmp_path / "idx", model_fingerprint="m", section=_section(), **_reference())
    (out / "meta.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        ReferenceIndex.load(out)


def test_write_refuses_bad_input_and_leaves_nothing(tmp_path):
    ref = _reference()
    ref["protein"] = ref["protein"][:10]
    with pytest.raises(InputError, match="reference protein shape"):
        write_index_dir(tmp_path / "idx", model_fingerprint="m", section=_section(), **ref)
    with pytest.raises(InputError, match="no reference cells"):
        write_index_dir(tmp_path / "idx", embeddings={"rna": np.zeros((0, 4), np.float32)}, cell_ids=[],
                        model_fingerprint="m", section=_section())
    for broken in (2.0, np.nan):  # not unit vectors: inner products would not be cosine similarities
        ref = _reference()
        ref["embeddings"]["prot"][3] *= broken
        with pytest.raises(InputError, match="1 of 600 prot embeddings are not finite unit vectors"):
            write_index_dir(tmp_path / "idx", model_fingerprint="m", section=_section(), **ref)
    assert list(tmp_path.iterdir()) == []
    write_index_dir(tmp_path / "idx", model_fingerprint="m", section=_section(), **_reference())
    with pytest.raises(InputError, match="already exists"):
        write_index_dir(tmp_path / "idx", model_fingerprint="m", section=_section(), **_reference())


def test_build_reports_ivf_training_and_added_chunks(monkeypatch, caplog):
    import omicsclip.index.faiss_index as fi

    monkeypatch.setenv("OMICSCLIP_PROGRESS_SECONDS", "0")
    monkeypatch.setattr(fi, "_ADD_CHUNK", 1000)
    x = ClusteredEmbeddings(16, seed=0).sample(2500, seed=1)[0]
    caplog.set_level("INFO", logger=fi.__name__)
    build_index(x, resolve_params(len(x), 16, _section(kind="ivf_flat")), use_gpu=False, desc="index rna")
    lines = [r.getMessage() for r in caplog.records if r.name == fi.__name__]
    assert lines[0].startswith("index rna: training IVF")
    assert lines[1].startswith("index rna: trained in ")
    assert lines[2].startswith("index rna: assigned 2500 cells to ")
    assert [line.split(" cells ")[0] for line in lines[3:6]] == [
        "index rna: 1,000/2,500", "index rna: 2,000/2,500", "index rna: 2,500/2,500"]
    assert all("cells/s" in line and "ETA" in line for line in lines[3:6])
    assert lines[-1].startswith("index rna: finished 2,500/2,500 cells (100%)")


def test_preassigned_fill_matches_a_plain_add(clustered_50k, monkeypatch):
    """Assigning first and sizing the lists exactly stores the same index as faiss' own add."""
    import omicsclip.index.faiss_index as fi

    monkeypatch.setattr(fi, "_HNSW_ASSIGN_MIN_LISTS", 10**9)  # exact assignment, as faiss' add
    x, q, _ = clustered_50k
    params = resolve_params(len(x), 64, _section(kind="ivf_flat"))
    ours = build_index(x, params, use_gpu=False)
    plain = faiss.clone_index(ours)
    plain.reset()
    plain.add(x)
    assert ours.ntotal == plain.ntotal == len(x)
    s1, p1 = search(ours, q, 10)
    s2, p2 = search(plain, q, 10)
    np.testing.assert_array_equal(p1, p2)
    np.testing.assert_allclose(s1, s2, rtol=0, atol=1e-6)


def test_hnsw_assignment_keeps_recall(clustered_50k, monkeypatch):
    """Assignment through an HNSW graph over the centroids (large nlist) agrees with the exact one."""
    import omicsclip.index.faiss_index as fi

    x, q, truth = clustered_50k
    params = resolve_params(len(x), 64, _section(kind="ivf_flat"))
    index = build_index(x, params, use_gpu=False)
    ivf = faiss.extract_index_ivf(index)
    exact = ivf.quantizer.assign(x, 1).ravel()
    monkeypatch.setattr(fi, "_HNSW_ASSIGN_MIN_LISTS", 1)
    approx = fi._assign(ivf, x)
    assert (approx == exact).mean() >= 0.99
    approx_index = build_index(x, params, use_gpu=False)
    assert recall_at_k(search(approx_index, q, 10)[1], truth) >= 0.95
