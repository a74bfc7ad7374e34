"""`mvae fit --stream`: the CLI over MultinomialVAE.fit_stream, checked against the in-memory fit
and against independent readers (biom-format for the table, pandas for the outputs)."""

import threading

import biom
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from mvae.io import sources, streaming
from mvae.cli import main
from mvae.training.distributed import DistInfo
from mvae.io.tables import write_biom
from mvae.evaluation.simulate import simulate
from mvae.io.streaming import StreamingCounts

FAST = ["-k", "3", "--epochs", "4", "--hidden", "16", "--threads", "1", "-q"]


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    sim = simulate(240, 50, 3, depth=400, abundance_spread=1.5, random_state=7)
    X = sim.counts.tolil()
    X[3, :] = 0  # an all-zero sample: dropped and listed in filtered.tsv
    X[:, 7] = 0  # an all-zero feature
    path = tmp_path_factory.mktemp("stream_cli") / "table.biom"
    write_biom(path, X.tocsr(), list(sim.sample_ids), list(sim.feature_ids))
    return path


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_fit_stream_writes_the_same_files_as_an_in_memory_fit(table, tmp_path):
    r = invoke("fit", table, "-o", tmp_path / "s", "--stream", "--chunk-mb", "1", *FAST)
    assert r.exit_code == 0, r.output
    r = invoke("fit", table, "-o", tmp_path / "m", *FAST)
    assert r.exit_code == 0, r.output
    s, m = tmp_path / "s", tmp_path / "m"
    assert sorted(p.name for p in s.iterdir()) == sorted(p.name for p in m.iterdir())
    t = biom.load_table(str(table))
    X = t.matrix_data.T.toarray()
    ids = [i for i, row in zip(t.ids(axis="sample"), X) if row.sum() > 0]
    scores = pd.read_csv(s / "scores.tsv", sep="\t", index_col=0, dtype={0: str})
    assert list(scores.index) == ids
    np.testing.assert_array_equal(scores["depth"], X[X.sum(axis=1) > 0].sum(axis=1))
    emb = pd.read_csv(s / "embeddings.tsv", sep="\t", index_col=0)
    emb_m = pd.read_csv(m / "embeddings.tsv", sep="\t", index_col=0)
    assert list(emb.index) == list(emb_m.index) == ids and np.isfinite(emb.to_numpy()).all()
    filt = pd.read_csv(s / "filtered.tsv", sep="\t")
    assert sorted(filt["id"]) == sorted(pd.read_csv(m / "filtered.tsv", sep="\t")["id"])
    assert set(filt["axis"]) == {"sample", "feature"}


@pytest.mark.parametrize("extra, message", [
    (["--orientation", "samples-as-rows"], "--orientation applies to text tables"),
    (["--color", "x"], "needs --metadata"),
])
def test_stream_option_errors(table, tmp_path, extra, message):
    r = invoke("fit", table, "-o", tmp_path / "o", "--stream", *extra, *FAST)
    assert r.exit_code == 2 and message in r.output, r.output
    assert not (tmp_path / "o").exists()


def test_stream_refuses_text_tables(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text("id\ta\tb\ns1\t1\t2\ns2\t3\t0\n")
    r = invoke("fit", path, "-o", tmp_path / "o", "--stream", *FAST)
    assert r.exit_code == 2 and "needs an HDF5 table" in r.output, r.output


class _ThreadGroup:
    """An all-reduce between threads: what torch.distributed does between processes."""

    def __init__(self, world):
        self.barrier = threading.Barrier(world)
        self.slots = [None] * world


class _ThreadRank(DistInfo):
    group: _ThreadGroup = None

    def sum(self, values):
        values = np.array(values, dtype=np.float64)
        self.group.slots[self.rank] = values
        self.group.barrier.wait()
        out = np.sum(self.group.slots, axis=0)
        self.group.barrier.wait()
        return out


def _run_ranks(world, fn):
    group, results, errors = _ThreadGroup(world), [None] * world, []

    def work(rank):
        info = _ThreadRank(rank, world)
        object.__setattr__(info, "group", group)
        try:
            results[rank] = fn(info)
        except Exception as exc:  # pragma: no cover - surfaced below
            errors.append(exc)
            group.barrier.abort()

    threads = [threading.Thread(target=work, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    return results


@pytest.mark.parametrize("world", [2, 3])
def test_sharded_scan_and_statistics_equal_one_pass(table, world, monkeypatch):
    """Each rank reads only its own block of rows; the summed totals equal a single pass."""
    whole = StreamingCounts(table, chunk_rows=16)
    one = whole.scan()
    stats = whole.input_statistics(0.5)
    read = {}  # thread -> file rows it read
    original = streaming._Source.read_rows

    def recording(self, rows):
        read.setdefault(threading.get_ident(), set()).update(np.asarray(rows).tolist())
        return original(self, rows)

    monkeypatch.setattr(streaming._Source, "read_rows", recording)

    def per_rank(info):
        data = StreamingCounts(table, chunk_rows=16)
        scan = sources.scan(data, info)
        own = data.shard(info.rank, info.world, equal=False)
        return (scan, sources.input_statistics(data, 0.5, info), own.rows,
                read.get(threading.get_ident(), set()))

    results = _run_ranks(world, per_rank)
    blocks = [r[2] for r in results]
    assert np.array_equal(np.concatenate(blocks), np.arange(len(whole)))  # disjoint, complete
    for block, rows_read in zip(blocks, (r[3] for r in results)):
        assert rows_read == set(block.tolist())  # a rank touched its own rows and no others
    for scan, (pooled, centre, scale), _, _ in results:
        np.testing.assert_array_equal(scan.feature_nnz, one.feature_nnz)
        np.testing.assert_array_equal(scan.sample_nnz, one.sample_nnz)
        np.testing.assert_allclose(scan.feature_totals, one.feature_totals, rtol=1e-12)
        np.testing.assert_allclose(scan.depths, one.depths, rtol=1e-12)
        assert scan.max_count == one.max_count and scan.max_at == one.max_at
        np.testing.assert_allclose(pooled, stats[0], rtol=1e-12)
        np.testing.assert_allclose(centre, stats[1], rtol=1e-10, atol=1e-12)
        assert scale == pytest.approx(stats[2], rel=1e-10)
    # an independent reference for the depths: biom-format's own reader
    t = biom.load_table(str(table))
    np.testing.assert_allclose(results[0][0].depths, t.sum(axis="sample"))
