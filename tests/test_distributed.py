"""Data-parallel training: 2 local gloo ranks under torchrun against 1 rank, same global batch."""

import socket
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from mvae.io.tables import write_biom
from mvae.evaluation.metrics import embedding_r2
from mvae.evaluation.simulate import simulate


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    sim = simulate(400, 40, 3, depth=2000, random_state=0)
    path = tmp_path_factory.mktemp("ddp") / "table.biom"
    write_biom(path, sim.counts, list(sim.sample_ids), list(sim.feature_ids))
    return path


def _fit(table, out, ranks, *extra):
    args = ["fit", str(table), "-o", str(out), "-k", "3", "--epochs", "25", "--batch-size", "64",
            "--threads", "1", "--seed", "2", "-q", *extra]
    if ranks == 1:
        cmd = [sys.executable, "-m", "mvae", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={ranks}",
               f"--master_port={_free_port()}", "-m", "mvae", *args, "--distributed"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]


def test_two_gloo_ranks_match_one_rank(table, tmp_path):
    _fit(table, tmp_path / "one", 1)
    _fit(table, tmp_path / "two", 2)
    h1 = pd.read_csv(tmp_path / "one" / "history.tsv", sep="\t")
    h2 = pd.read_csv(tmp_path / "two" / "history.tsv", sep="\t")
    assert len(h1) == len(h2) == 25
    # the same global batches and averaged gradients: losses agree to the Monte Carlo noise
    np.testing.assert_allclose(h2.train_loss.to_numpy()[-5:], h1.train_loss.to_numpy()[-5:],
                               rtol=0.01)
    e1 = pd.read_csv(tmp_path / "one" / "embeddings.tsv", sep="\t", index_col=0)
    e2 = pd.read_csv(tmp_path / "two" / "embeddings.tsv", sep="\t", index_col=0)
    assert list(e1.index) == list(e2.index)
    assert embedding_r2(e1.to_numpy(), e2.to_numpy()) > 0.95
    # rank 0 alone wrote outputs: exactly one results directory per run
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]


def test_two_gloo_ranks_streaming_their_own_shards_match_one_rank(table, tmp_path):
    """--stream --distributed: each rank reads and trains on its own block of rows (shard
    reads are tested in test_stream_cli.py); 32 rows per rank per step make the same global
    batch of 64 as one process."""
    _fit(table, tmp_path / "one", 1, "--stream", "--chunk-mb", "1")
    _fit(table, tmp_path / "two", 2, "--stream", "--chunk-mb", "1")
    h1 = pd.read_csv(tmp_path / "one" / "history.tsv", sep="\t")
    h2 = pd.read_csv(tmp_path / "two" / "history.tsv", sep="\t")
    assert len(h1) == len(h2) == 25
    # different shuffles (per-rank shards), so compare the level reached, not epoch by epoch
    assert h2.train_loss.to_numpy()[-5:].mean() == pytest.approx(
        h1.train_loss.to_numpy()[-5:].mean(), rel=0.01)
    assert h2.validation_loss.to_numpy()[-5:].mean() == pytest.approx(
        h1.validation_loss.to_numpy()[-5:].mean(), rel=0.01)
    e1 = pd.read_csv(tmp_path / "one" / "embeddings.tsv", sep="\t", index_col=0)
    e2 = pd.read_csv(tmp_path / "two" / "embeddings.tsv", sep="\t", index_col=0)
    assert list(e1.index) == list(e2.index)
    assert embedding_r2(e1.to_numpy(), e2.to_numpy()) > 0.95


def test_distributed_without_torchrun_is_a_clear_error(table, tmp_path):
    r = subprocess.run([sys.executable, "-m", "mvae", "fit", str(table), "-o",
                        str(tmp_path / "x"), "--distributed"], capture_output=True, text=True,
                       env={k: v for k, v in __import__("os").environ.items()
                            if k not in ("RANK", "WORLD_SIZE")})
    assert r.returncode == 2 and "torchrun" in r.stderr


RESUME_SCRIPT = r'''
import json, sys
import torch
from mvae.training.batches import CountData
from mvae.training.distributed import init_from_env
from mvae.counts import MultinomialVAEModule, MVAEConfig
from mvae.evaluation.simulate import simulate
from mvae.training.loop import TrainConfig, train_module

out = sys.argv[1]
info = init_from_env("cpu")
torch.set_num_threads(1)
sim = simulate(256, 20, 2, depth=500, random_state=1)
data = CountData(sim.counts)

class Crash(Exception):
    pass

def crash(epoch, step):
    if epoch == 3 and step == 1:
        raise Crash()

def module():
    torch.manual_seed(0)
    return MultinomialVAEModule(MVAEConfig(n_features=20, n_latent=2, n_hidden=8))

conf = dict(batch_size=32, early_stopping=False, seed=4)
try:
    train_module(module(), data, None, TrainConfig(max_epochs=4, **conf),
                 checkpoint_path=out + "/ck.pt", checkpoint_every=1, fingerprint="f",
                 handle_signals=False, on_step=crash)
except Crash:
    pass
m = module()
h = train_module(m, data, None, TrainConfig(max_epochs=4, **conf), checkpoint_path=out + "/ck.pt",
                 fingerprint="f", resume=True, handle_signals=False)
flat = torch.cat([p.detach().reshape(-1) for p in m.parameters()])
json.dump({"epochs": h.epoch, "params": flat.tolist()}, open(f"{out}/rank{info.rank}.json", "w"))
'''


def test_two_ranks_resume_from_rank_0s_checkpoint(tmp_path):
    """Every rank resumes from the checkpoint rank 0 wrote; before, the other ranks started
    afresh and the all-reduces no longer matched."""
    script = tmp_path / "resume.py"
    script.write_text(RESUME_SCRIPT)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                        f"--master_port={_free_port()}", str(script), str(tmp_path)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    import json

    ranks = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1)]
    assert ranks[0]["epochs"] == ranks[1]["epochs"] == [1, 2, 3, 4]
    # averaged gradients and the same loaded optimiser state: identical parameters on both ranks
    np.testing.assert_array_equal(ranks[0]["params"], ranks[1]["params"])


def test_collectives_keep_their_last_tensor_referenced_without_its_memory():
    """The recent collectives' tensors stay referenced from Python (so that a gloo worker thread
    releasing it never needs the GIL at exit; see mvae.training.distributed._RECENT), the gradient buffer's
    memory is freed all the same, and the values are right: a one-rank gloo group in this
    process, each gradient its own mean."""
    import torch
    import torch.distributed as dist

    from mvae.training import distributed
    from mvae.training.distributed import DistInfo

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0,
                            world_size=1)
    try:
        module = torch.nn.Linear(3, 2)
        module(torch.ones(4, 3)).sum().backward()
        want = [p.grad.clone() for p in module.parameters()]
        DistInfo(0, 1).average_gradients(module)
        for p, w in zip(module.parameters(), want):
            assert torch.equal(p.grad, w)
        kept = distributed._RECENT[-1]
        assert kept.numel() == 0  # referenced, but its storage is gone
        out = DistInfo(0, 1).sum(np.array([1.5, 2.0]))
        np.testing.assert_array_equal(out, [1.5, 2.0])
        assert distributed._RECENT[-1] is not kept and distributed._RECENT[-2] is kept
    finally:
        dist.destroy_process_group()
        distributed._RECENT.clear()
