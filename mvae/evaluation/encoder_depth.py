r"""The encoder-depth benchmark: does a deeper encoder remove the pseudocount's bias?

The MVAE's encoder sees log(x + c); the decoder never does (docs/model.md). The claim under test
is that a deeper encoder undoes more of the distortion the pseudocount c puts into that input.
This module simulates count tables with known truth (:func:`mvae.evaluation.simulate.simulate`),
fits

- the MVAE for every encoder depth L, both objectives and several pseudocounts;
- the *non-amortised reference* (:mod:`mvae.evaluation.nonamortised`): the same decoder with each
  sample's posterior optimised directly -- no encoder, so no amortisation bias;
- the baselines on exactly the same tables (:mod:`mvae.evaluation.baselines`): clr(x + c) + PCA
  for each c, multiplicative replacement + PCA, the sample clr covariance, SparCC, robust
  Aitchison PCA (rclr + matrix completion) and, when pyPLNmodels is installed, PLN-PCA;
- the *floor*: PCA of the true clr logits η of the simulation (what is left when η itself is
  observed, i.e. with no count noise at all),

and scores each against the truth with :mod:`mvae.evaluation.metrics`. Everything is organised
as independent *tasks* (one MVAE fit, one reference fit, or all the baselines of one table) that
run in parallel processes with one torch thread each; each task writes one small JSON file under
``DIR/runs/`` atomically, so a rerun skips the finished ones (resumable). At the end the runs are
gathered into ``DIR/results.csv`` (one row per method and table), ``DIR/summary.md`` (means ±
standard deviations over seeds) and ``DIR/*.png``.

Entry points: :func:`run_encoder_depth` (Python), ``mvae benchmark encoder-depth`` (command line,
:mod:`mvae.evaluation.cli`) and ``benchmarks/encoder_depth.py`` (a script with ``main(config)``).
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
import zlib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from ..io.outputs import json_default

__all__ = [
    "Regime",
    "EncoderDepthConfig",
    "Task",
    "smoke_config",
    "full_config",
    "build_tasks",
    "run_task",
    "run_encoder_depth",
    "collect_results",
    "write_summary",
    "write_plots",
]

#: Columns of results.csv that describe a run's setting (the rest are metrics and timings).
SETTING_COLUMNS = ["n_features", "n_samples", "regime", "depth", "abundance_spread", "seed",
                   "density", "absent_features", "method", "family", "encoder_depth",
                   "objective", "pseudocount"]
METRIC_COLUMNS = ["subspace_distance", "angle_max_deg", "angle_mean_deg", "cov_rel_frobenius",
                  "corr_pearson", "corr_spearman", "corr_rmse", "embedding_r2", "sigma_hat",
                  "heldout_nelbo", "heldout_nelbo_refined", "heldout_nelbo_floor"]
OTHER_COLUMNS = ["principal_angles_deg", "wall_s", "cpu_s", "threads", "epochs", "best_epoch",
                 "task_id", "error"]


@dataclass(frozen=True)
class Regime:
    """A sparsity level: median reads per sample and the spread of mean clr abundances."""

    name: str
    depth: float
    abundance_spread: float


#: From (almost) no zeros to ~95 % zeros. The share of zeros also grows with D at a fixed depth:
#: D=100: 0 / 57 / 79 %; D=200: 1 / 70 / 86 %; D=500: 3 / 84 / 94 % (simulate(500, D, 10)).
DEFAULT_REGIMES = (
    Regime("none", 10_000, 0.5),
    Regime("moderate", 100, 1.0),     # the prototype's "100 reads"
    Regime("high", 50, 2.0),
)


@dataclass(frozen=True)
class EncoderDepthConfig:
    """Everything that defines a benchmark run (the design is written to DIR/config.json).

    The grid is three blocks, run in this order of priority:

    core
        ``n_features`` x ``n_samples``, every regime, every encoder depth and objective at the
        default pseudocount, the non-amortised reference and all baselines; ``seeds`` seeds.
    pseudocount sweep
        pseudocounts ``pseudocount_sweep`` at depths ``pseudocount_sweep_depths``, objective
        ``marginal``, regimes ``pseudocount_sweep_regimes`` (same tables as the core);
        ``pseudocount_seeds`` seeds (default: ``seeds``).
    scale
        other (D, n) in ``scale_cells`` for regimes ``scale_regimes``: MVAE at
        ``scale_depths`` (marginal, default pseudocount), the reference and the baselines;
        ``scale_seeds`` seeds.
    """

    regimes: tuple = DEFAULT_REGIMES
    n_features: int = 100
    n_samples: int = 500
    n_test: int = 200
    n_latent: int = 10
    encoder_depths: tuple = (1, 2, 3, 4, 6)
    objectives: tuple = ("marginal", "sampled")
    pseudocount: float = 1.0
    pseudocount_sweep: tuple = (0.1, 0.5)
    pseudocount_sweep_depths: tuple = (1, 4)
    pseudocount_sweep_regimes: tuple = ("moderate", "high")
    scale_cells: tuple = ((500, 500), (100, 2000))
    scale_depths: tuple = (1, 4)
    scale_regimes: tuple = ("moderate", "high")
    seeds: int = 5
    pseudocount_seeds: int | None = None  # None: as many as ``seeds``
    scale_seeds: int = 5
    # MVAE settings (None: the model's automatic epoch budget and patience). The model is the
    # package's default; the committed run (benchmarks/results/encoder_depth/) predates that and
    # used the retired "full" posterior with Monte Carlo draws on every table
    n_hidden: int = 128
    batch_size: int = 128
    learning_rate: float = 3e-3
    max_epochs: int | None = None
    patience: int | None = None
    # non-amortised reference (full batch; steps = epochs) and held-out posteriors
    reference_max_steps: int = 6000
    reference_patience: int = 150
    reference_learning_rate: float = 3e-3
    local_step_scale: float = 10.0
    heldout_max_steps: int = 1000
    heldout_patience: int = 100
    # baselines
    baseline_pseudocounts: tuple = (0.1, 0.5, 1.0)
    sparcc_draws: int = 20
    rclr_iterations: int = 30
    pln_max_iterations: int = 400
    use_pln: bool | None = None  # None: when pyPLNmodels imports
    label: str = "default"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["regimes"] = [asdict(r) for r in self.regimes]
        return d


def full_config(**changes) -> EncoderDepthConfig:
    """The design committed under benchmarks/results/encoder_depth (about an hour on 2 cores).

    Sized from measured costs (one thread): an MVAE task at D=100, n=500 takes ~15-20 CPU-s, at
    D=500, n=500 ~20-26 s, the non-amortised reference ~47 s and the baselines ~36 s at D=500.
    The core grid (every depth and objective) is at the cheapest of the issue's sizes, D=100 and
    n=500; D=500 (where the same reads give 84-94 % zeros) and n=2000 are checked at L in {1, 4}.
    Every cell has 5 seeds."""
    return replace(EncoderDepthConfig(), **changes)


def smoke_config(**changes) -> EncoderDepthConfig:
    """A tiny design for CI (well under a minute): two depths, both objectives, one regime.

    PLN-PCA is left out (importing pyPLNmodels alone takes several seconds); pass
    ``use_pln=None`` to include it when installed."""
    base = EncoderDepthConfig(
        regimes=(Regime("moderate", 100, 1.0),), n_features=30, n_samples=150, n_test=30,
        n_latent=3, encoder_depths=(1, 2), objectives=("marginal", "sampled"),
        pseudocount_sweep=(0.5,), pseudocount_sweep_depths=(1,),
        pseudocount_sweep_regimes=("moderate",), scale_cells=(), seeds=1, scale_seeds=0,
        n_hidden=16, max_epochs=15, patience=5, reference_max_steps=60, reference_patience=20,
        heldout_max_steps=30, heldout_patience=10, sparcc_draws=3, rclr_iterations=5,
        pln_max_iterations=30, use_pln=False, label="smoke")
    return replace(base, **changes)


# ------------------------------------------------------------------------------------------------
# tasks
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Task:
    """One unit of work: an MVAE fit, a reference fit or the baselines of one table."""

    kind: str  # "mvae" | "reference" | "baselines"
    block: str  # "core" | "pseudocount" | "scale"
    n_features: int
    n_samples: int
    regime: str
    seed: int
    encoder_depth: int | None = None
    objective: str | None = None
    pseudocount: float | None = None

    @property
    def table_id(self) -> str:
        return f"D{self.n_features}_n{self.n_samples}_{self.regime}_s{self.seed}"

    @property
    def task_id(self) -> str:
        if self.kind == "mvae":
            return (f"{self.table_id}__mvae_L{self.encoder_depth}_{self.objective}"
                    f"_c{self.pseudocount:g}")
        return f"{self.table_id}__{self.kind}"

    def cost(self) -> float:
        """Rough relative cost (for ordering; a D=200, n=1000 MVAE fit is 1)."""
        size = self.n_features / 200 * max(1.0, self.n_samples / 1000) ** 0.5
        return size * {"mvae": 1.0, "reference": 1.3, "baselines": 1.5}[self.kind]


def build_tasks(config: EncoderDepthConfig) -> list[Task]:
    """All tasks of a design, in priority order, so that a run cut short still answers the main
    question: the core grid seed by seed, with the first seed of the pseudocount sweep and of the
    other sizes after the second core seed (core s0, core s1, pseudocount s0, scale s0, core s2,
    pseudocount s1, scale s1, ...); within a group the costliest tasks first."""
    regimes = {r.name: r for r in config.regimes}
    groups: list[tuple[float, list[Task]]] = []
    D, n = config.n_features, config.n_samples
    for seed in range(config.seeds):
        block = []
        for reg in config.regimes:
            for obj in config.objectives:
                for L in config.encoder_depths:
                    block.append(Task("mvae", "core", D, n, reg.name, seed, L, obj,
                                      float(config.pseudocount)))
            block.append(Task("reference", "core", D, n, reg.name, seed))
            block.append(Task("baselines", "core", D, n, reg.name, seed))
        groups.append((2.0 * seed, block))
    pc_seeds = config.seeds if config.pseudocount_seeds is None else config.pseudocount_seeds
    for seed in range(pc_seeds):
        block = []
        for name in config.pseudocount_sweep_regimes:
            if name not in regimes:
                continue
            for c in config.pseudocount_sweep:
                for L in config.pseudocount_sweep_depths:
                    block.append(Task("mvae", "pseudocount", D, n, name, seed, L, "marginal",
                                      float(c)))
        groups.append((2.0 * seed + 3.0, block))
    for seed in range(config.scale_seeds):
        block = []
        for Ds, ns in config.scale_cells:
            for name in config.scale_regimes:
                if name not in regimes:
                    continue
                for L in config.scale_depths:
                    block.append(Task("mvae", "scale", Ds, ns, name, seed, L, "marginal",
                                      float(config.pseudocount)))
                block.append(Task("reference", "scale", Ds, ns, name, seed))
                block.append(Task("baselines", "scale", Ds, ns, name, seed))
        groups.append((2.0 * seed + 3.5, block))
    tasks: list[Task] = []
    for _, block in sorted(groups, key=lambda g: g[0]):
        tasks += sorted(block, key=lambda t: -t.cost())
    seen, unique = set(), []
    for t in tasks:  # a pseudocount-sweep cell equal to a core cell is the same run
        if t.task_id not in seen:
            seen.add(t.task_id)
            unique.append(t)
    return unique


# ------------------------------------------------------------------------------------------------
# one table and its truth
# ------------------------------------------------------------------------------------------------
@dataclass
class _Table:
    sim: object
    train: object  # CSR (n, D)
    test: object  # CSR (n_test, D)
    kept: np.ndarray  # features with a count in the training table
    regime: Regime
    seed: int
    true_corr: np.ndarray = field(repr=False, default=None)

    def setting(self) -> dict:
        return {
            "n_features": self.train.shape[1], "n_samples": self.train.shape[0],
            "regime": self.regime.name, "depth": self.regime.depth,
            "abundance_spread": self.regime.abundance_spread, "seed": self.seed,
            "density": float(self.train.nnz / np.prod(self.train.shape)),
            "absent_features": int(self.train.shape[1] - self.kept.size),
        }


def _table_seed(task: Task) -> int:
    return zlib.crc32(task.table_id.encode()) & 0x7FFFFFFF


def make_table(task: Task, config: EncoderDepthConfig) -> _Table:
    """Simulate the task's table (n training + n_test held-out samples, one truth)."""
    from .simulate import simulate

    regime = {r.name: r for r in config.regimes}[task.regime]
    sim = simulate(task.n_samples + config.n_test, task.n_features, config.n_latent,
                   depth=regime.depth, abundance_spread=regime.abundance_spread,
                   random_state=_table_seed(task))
    train = sim.counts[:task.n_samples]
    test = sim.counts[task.n_samples:]
    kept = np.flatnonzero(np.asarray(train.sum(axis=0)).ravel() > 0)
    return _Table(sim, train, test, kept, regime, task.seed, sim.correlation_clr())


class _Decoder:
    """Just the tensors a decoder needs (loadings, bias, noise variance) for held-out ELBOs."""

    def __init__(self, loadings, bias, noise_variance):
        import torch

        self.loadings = torch.as_tensor(np.asarray(loadings), dtype=torch.float32)
        self.bias = torch.as_tensor(np.asarray(bias), dtype=torch.float32)
        self.noise_variance = torch.as_tensor(float(noise_variance), dtype=torch.float32)


def _heldout(decoder, table: _Table, config: EncoderDepthConfig) -> float:
    """Mean held-out −ELBO per sample with optimised posteriors, on the kept features."""
    from .nonamortised import heldout_negative_elbo

    values = heldout_negative_elbo(decoder, table.test[:, table.kept],
                                   max_steps=config.heldout_max_steps,
                                   patience=config.heldout_patience,
                                   local_step_scale=config.local_step_scale, seed=table.seed)
    return float(np.mean(values))


# ------------------------------------------------------------------------------------------------
# metrics
# ------------------------------------------------------------------------------------------------
def _pad(loadings, kept, D):
    """Loadings over the kept features -> (D, k), zero rows for features never observed."""
    out = np.zeros((D, loadings.shape[1]))
    out[kept] = loadings
    return out


def evaluate_estimate(table: _Table, *, loadings=None, noise_variance=None, covariance=None,
                      correlation=None, embeddings=None) -> dict:
    """Recovery metrics of one estimate against the table's truth.

    Give either a low-rank estimate (``loadings`` (D, k) in clr coordinates and
    ``noise_variance``) or a dense ``covariance`` (D, D) (clr); ``correlation`` overrides the
    correlations derived from the covariance (SparCC). Subspaces of dense covariances are their
    top-k eigenvectors. Features with zero estimated variance get correlation 0.
    """
    from ..maths.covariance import LowRankCovariance
    from .metrics import (
        correlation_agreement,
        covariance_to_correlation,
        embedding_r2,
        principal_angles,
        relative_frobenius,
        subspace_distance,
    )

    sim = table.sim
    k = sim.n_latent
    out = {}
    if loadings is not None:
        est = LowRankCovariance(loadings, max(float(noise_variance), 0.0), space="clr")
        frob = relative_frobenius(est, sim.covariance)
        corr = est.correlation_dense() if correlation is None else correlation
        basis = loadings
        out["sigma_hat"] = math.sqrt(max(float(noise_variance), 0.0))
    else:
        cov = np.asarray(covariance)
        frob = relative_frobenius(cov, sim.covariance)
        corr = covariance_to_correlation(cov) if correlation is None else correlation
        w, v = np.linalg.eigh(cov)
        basis = v[:, np.argsort(w)[::-1][:k]]
    corr = np.nan_to_num(np.asarray(corr, dtype=np.float64), nan=0.0)
    np.fill_diagonal(corr, 1.0)
    agree = correlation_agreement(corr, table.true_corr)
    angles = np.degrees(principal_angles(sim.loadings_clr, basis))
    out.update({
        "subspace_distance": subspace_distance(sim.loadings_clr, basis),
        "angle_max_deg": float(angles.max()),
        "angle_mean_deg": float(angles.mean()),
        "principal_angles_deg": ";".join(f"{a:.2f}" for a in angles),
        "cov_rel_frobenius": frob,
        "corr_pearson": agree.pearson,
        "corr_spearman": agree.spearman,
        "corr_rmse": agree.rmse,
    })
    if embeddings is not None:
        out["embedding_r2"] = embedding_r2(sim.z[:table.train.shape[0]], embeddings)
    return out


# ------------------------------------------------------------------------------------------------
# running tasks
# ------------------------------------------------------------------------------------------------
class _Clock:
    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def _run_mvae(task: Task, table: _Table, config: EncoderDepthConfig) -> list[dict]:
    from ..model import MultinomialVAE

    D = task.n_features
    model = MultinomialVAE(
        n_latent=config.n_latent, encoder_depth=task.encoder_depth, n_hidden=config.n_hidden,
        pseudocount=task.pseudocount, objective=task.objective, batch_size=config.batch_size,
        learning_rate=config.learning_rate, max_epochs=config.max_epochs,
        patience=config.patience, random_state=task.seed, threads=1)
    with _Clock() as clock:
        model.fit(table.train)
    kept = np.asarray(model.kept_feature_index_)
    row = evaluate_estimate(table, loadings=_pad(model.components_, kept, D),
                            noise_variance=model.noise_variance_,
                            embeddings=model.transform(table.train))
    row["heldout_nelbo"] = float(np.mean(model.score_samples(table.test[:, kept])))
    row["heldout_nelbo_refined"] = _heldout(model.module_, table, config)
    row.update(method="mvae", family="mvae", wall_s=clock.wall, cpu_s=clock.cpu,
               epochs=len(model.history_), best_epoch=model.best_epoch_)
    return [row]


def _run_reference(task: Task, table: _Table, config: EncoderDepthConfig) -> list[dict]:
    import torch

    from .nonamortised import (
        IndexedCountData,
        NonAmortisedConfig,
        NonAmortisedModule,
    )
    from ..training.loop import TrainConfig, train_module

    X = table.train[:, table.kept]
    n, Dk = X.shape
    with _Clock() as clock, torch.random.fork_rng(devices=[]):
        torch.manual_seed(task.seed)
        module = NonAmortisedModule(NonAmortisedConfig(
            n_samples=n, n_features=Dk, n_latent=config.n_latent,
            local_step_scale=config.local_step_scale))
        module.initialise_decoder(X, pseudocount=config.pseudocount)
        module.initialise_posteriors(X, pseudocount=config.pseudocount)
        history = train_module(module, IndexedCountData(X), None, TrainConfig(
            max_epochs=config.reference_max_steps, batch_size=n,
            learning_rate=config.reference_learning_rate, patience=config.reference_patience,
            seed=task.seed), handle_signals=False)
    with torch.no_grad():
        W = module.loadings.double().numpy()
        sigma2 = float(module.noise_variance)
        emb = module.latent_mean().double().numpy()
    row = evaluate_estimate(table, loadings=_pad(W, table.kept, task.n_features),
                            noise_variance=sigma2, embeddings=emb)
    refined = _heldout(module, table, config)
    row.update(method="nonamortised", family="reference", heldout_nelbo=refined,
               heldout_nelbo_refined=refined, wall_s=clock.wall, cpu_s=clock.cpu,
               epochs=len(history.epoch), best_epoch=history.best_epoch,
               pseudocount=float("nan"))
    return [row]


def _pln_available(config) -> bool:
    if config.use_pln is not None:
        return bool(config.use_pln)
    try:
        from .baselines import _import_pyplnmodels

        _import_pyplnmodels()
        return True
    except ImportError:
        return False


def _run_baselines(task: Task, table: _Table, config: EncoderDepthConfig) -> list[dict]:
    from . import baselines as bl

    X = table.train
    k = config.n_latent
    D = task.n_features
    H = np.eye(D) - 1.0 / D
    rows = []

    def add(method, family, fn, *, pseudocount=float("nan"), heldout=False):
        try:
            with _Clock() as clock:
                est = fn()
            if isinstance(est, bl.PCAResult):
                row = evaluate_estimate(table, loadings=est.loadings_clr,
                                        noise_variance=est.noise_variance,
                                        embeddings=est.embeddings)
                if heldout:
                    dec = _Decoder(est.loadings_clr[table.kept], est.mean_clr[table.kept],
                                   max(est.noise_variance, 1e-6))
                    row["heldout_nelbo_refined"] = _heldout(dec, table, config)
            elif isinstance(est, bl.SparCCResult):
                row = evaluate_estimate(table, covariance=H @ est.covariance @ H,
                                        correlation=est.correlation)
            else:
                row = evaluate_estimate(table, covariance=est)
            row.update(wall_s=clock.wall, cpu_s=clock.cpu)
        except Exception as exc:  # a failing baseline must not lose the others
            row = {"error": f"{type(exc).__name__}: {exc}"}
        row.update(method=method, family=family, pseudocount=pseudocount)
        rows.append(row)

    sim = table.sim
    eta = sim.eta_clr[:task.n_samples]
    add("floor_true_eta", "floor", lambda: bl.clr_table_pca(eta, k))
    for c in config.baseline_pseudocounts:
        add("clr_pca", "baseline", lambda c=c: bl.clr_pca(X, k, pseudocount=c), pseudocount=c,
            heldout=(c == config.pseudocount))
    add("mr_pca", "baseline", lambda: bl.mr_pca(X, k))
    add("sample_clr_cov", "baseline", lambda: bl.sample_clr_covariance(X, config.pseudocount),
        pseudocount=config.pseudocount)
    add("sparcc", "baseline", lambda: bl.sparcc(X, n_draws=config.sparcc_draws,
                                                random_state=task.seed))
    add("rclr_pca", "baseline", lambda: bl.rclr_pca(X, k, n_iterations=config.rclr_iterations,
                                                    random_state=task.seed))
    if _pln_available(config):
        add("pln_pca", "baseline", lambda: bl.pln_pca(X, k, random_state=task.seed,
                                                      max_iterations=config.pln_max_iterations))
    # the true decoder's held-out ELBO (optimised posteriors): the floor for that metric
    truth = _Decoder(sim.loadings_clr[table.kept], sim.bias_clr[table.kept], sim.sigma**2)
    floor = _heldout(truth, table, config)
    for row in rows:
        if row["method"] == "floor_true_eta":
            row["heldout_nelbo_refined"] = floor
    return rows


def run_task(task: Task, config: EncoderDepthConfig, out_dir) -> list[dict]:
    """Run one task (unless its JSON exists) and write ``out_dir/runs/<task_id>.json``
    atomically. Returns its rows."""
    from ..errors import TrainingInterrupted
    from ..training.loop import torch_threads

    path = Path(out_dir) / "runs" / f"{task.task_id}.json"
    if path.is_file():
        return json.loads(path.read_text())["rows"]
    with torch_threads(1), warnings.catch_warnings():  # one thread for torch and numpy's BLAS
        warnings.simplefilter("ignore")  # e.g. "samples with fewer than 50 reads": by design here
        table = make_table(task, config)
        runner = {"mvae": _run_mvae, "reference": _run_reference,
                  "baselines": _run_baselines}[task.kind]
        try:
            rows = runner(task, table, config)
        except TrainingInterrupted:
            raise  # stopped on purpose (SIGTERM/SIGINT): not a result, leave no record
        except Exception as exc:  # recorded, not fatal: the other tasks go on
            rows = [{"method": "mvae" if task.kind == "mvae" else "nonamortised",
                     "family": "mvae" if task.kind == "mvae" else "reference",
                     "error": f"{type(exc).__name__}: {exc}"}]
    setting = table.setting()
    for row in rows:
        row.setdefault("encoder_depth", task.encoder_depth)
        row.setdefault("objective", task.objective)
        if "pseudocount" not in row:
            row["pseudocount"] = task.pseudocount
        row.update(setting, task_id=task.task_id, block=task.block, threads=1)
        # truth-level held-out floor beside every row is filled in by collect_results
    record = {"task": asdict(task), "rows": rows}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(record, default=json_default, indent=1))
    os.replace(tmp, path)
    return rows


def _worker_init():
    import torch

    torch.set_num_threads(1)


def _pool_task(args):
    task, config, out_dir = args
    t0 = time.perf_counter()
    rows = run_task(task, config, out_dir)
    return task.task_id, time.perf_counter() - t0, any(r.get("error") for r in rows)


def run_encoder_depth(config: EncoderDepthConfig, out_dir, *, jobs: int = 1, log=print,
                      plots: bool = True):
    """Run (or resume) a design and write results.csv, summary.md and the plots into ``out_dir``.

    Parameters
    ----------
    config : EncoderDepthConfig
    out_dir : path
        Output directory; finished tasks found in ``out_dir/runs`` are not run again.
    jobs : int
        Processes in parallel, one torch thread each.
    log : callable
        Progress lines (``print`` by default).
    plots : bool

    Returns
    -------
    pandas.DataFrame
        The tidy results (one row per method and table).
    """
    out = Path(out_dir)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config.to_dict(), indent=1, default=json_default))
    tasks = build_tasks(config)
    todo = [t for t in tasks if not (out / "runs" / f"{t.task_id}.json").is_file()]
    for stale in (out / "runs").glob("*.tmp*"):
        stale.unlink()
    log(f"{len(tasks)} tasks, {len(tasks) - len(todo)} already done, {len(todo)} to run "
        f"with {jobs} job(s)")
    t0, cpu0 = time.perf_counter(), time.process_time()
    if jobs <= 1 or len(todo) <= 1:
        for i, t in enumerate(todo, 1):
            s = time.perf_counter()
            rows = run_task(t, config, out)
            bad = " (error)" if any(r.get("error") for r in rows) else ""
            log(f"[{i}/{len(todo)}] {t.task_id} {time.perf_counter() - s:.1f}s{bad}")
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = "1"  # spawned workers read these at import
        ctx = mp.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx,
                                 initializer=_worker_init) as pool:
            futures = [pool.submit(_pool_task, (t, config, str(out))) for t in todo]
            for i, fut in enumerate(as_completed(futures), 1):
                task_id, secs, bad = fut.result()
                log(f"[{i}/{len(todo)}] {task_id} {secs:.1f}s{' (error)' if bad else ''}")
    log(f"ran {len(todo)} tasks in {time.perf_counter() - t0:.0f}s wall")
    df = collect_results(out, tasks)
    df.to_csv(out / "results.csv", index=False)
    write_summary(df, out / "summary.md", config)
    if plots:
        write_plots(df, out)
    return df


# ------------------------------------------------------------------------------------------------
# results
# ------------------------------------------------------------------------------------------------
def collect_results(out_dir, tasks=None):
    """Gather ``out_dir/runs/*.json`` (only those of ``tasks`` when given) into a DataFrame."""
    import pandas as pd

    runs = Path(out_dir) / "runs"
    wanted = None if tasks is None else {t.task_id for t in tasks}
    rows = []
    for path in sorted(runs.glob("*.json")):
        if wanted is not None and path.stem not in wanted:
            continue
        rows += json.loads(path.read_text())["rows"]
    df = pd.DataFrame(rows)
    for col in SETTING_COLUMNS + METRIC_COLUMNS + OTHER_COLUMNS + ["block"]:
        if col not in df:
            df[col] = np.nan
    # the true model's held-out −ELBO (optimised posteriors) beside every row of its table
    if len(df):
        floor = df[df.method == "floor_true_eta"].set_index(
            ["n_features", "n_samples", "regime", "seed"])["heldout_nelbo_refined"]
        key = list(zip(df.n_features, df.n_samples, df.regime, df.seed))
        df["heldout_nelbo_floor"] = [floor.get(k, np.nan) for k in key]
    df["error"] = df["error"].fillna("")
    order = SETTING_COLUMNS + ["block"] + METRIC_COLUMNS + OTHER_COLUMNS
    return df[order + [c for c in df.columns if c not in order]]


def _method_label(row) -> str:
    m = row["method"]
    if m == "mvae":
        return f"MVAE {row['objective']} L={int(row['encoder_depth'])}"
    if m == "clr_pca":
        return f"clr(x+{row['pseudocount']:g})+PCA"
    return {"nonamortised": "non-amortised (same decoder)", "mr_pca": "mult. repl.+PCA",
            "sample_clr_cov": f"sample clr cov (c={row['pseudocount']:g})", "sparcc": "SparCC",
            "rclr_pca": "robust Aitchison PCA (rclr)", "pln_pca": "PLN-PCA (pyPLNmodels)",
            "floor_true_eta": "floor: PCA of true η"}.get(m, m)


HEADLINE = [("subspace_distance", "subspace ↓"), ("cov_rel_frobenius", "Σ_clr rel. Frob. ↓"),
            ("corr_spearman", "corr Spearman ↑"), ("corr_pearson", "corr Pearson ↑"),
            ("corr_rmse", "corr RMSE ↓"), ("embedding_r2", "R² z ↑"),
            ("heldout_excess", "held-out −ELBO − true model's ↓"), ("cpu_s", "fit CPU s")]


def _with_derived(df):
    df = df.copy()
    best = df["heldout_nelbo"].where(df["heldout_nelbo"].notna(), df["heldout_nelbo_refined"])
    df["heldout_excess"] = best - df["heldout_nelbo_floor"]
    df["label"] = df.apply(_method_label, axis=1)
    return df


def _fmt(mean, sd, digits=3):
    if not np.isfinite(mean):
        return "–"
    if not np.isfinite(sd):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def _table_md(df, metrics, group_cols=("label",)):
    """Markdown table of mean ± sd over seeds, one row per group."""
    import pandas as pd

    lines = ["| method | n | " + " | ".join(name for _, name in metrics) + " |",
             "|---|---|" + "---|" * len(metrics)]
    order = []
    for _, r in df.drop_duplicates(list(group_cols)).iterrows():
        order.append(tuple(r[c] for c in group_cols))
    for key in order:
        mask = pd.Series(True, index=df.index)
        for c, v in zip(group_cols, key):
            mask &= df[c] == v
        sub = df[mask]
        cells = []
        for col, _ in metrics:
            vals = pd.to_numeric(sub[col], errors="coerce").dropna()
            digits = 1 if col in ("cpu_s", "heldout_excess") else 3
            cells.append(_fmt(vals.mean() if len(vals) else np.nan,
                              vals.std(ddof=1) if len(vals) > 1 else np.nan, digits))
        lines.append(f"| {' '.join(str(k) for k in key)} | {len(sub)} | " + " | ".join(cells)
                     + " |")
    return "\n".join(lines)


def _sort_methods(df):
    fam = {"mvae": 0, "reference": 1, "baseline": 2, "floor": 3}
    obj = {"marginal": 0, "sampled": 1}
    return df.assign(
        _f=df.family.map(fam).fillna(9), _o=df.objective.map(obj).fillna(9),
        _l=df.encoder_depth.fillna(0), _c=df.pseudocount.fillna(0),
    ).sort_values(["_f", "_o", "_l", "method", "_c"]).drop(columns=["_f", "_o", "_l", "_c"])


HIGHER_IS_BETTER = ("corr_spearman", "corr_pearson", "embedding_r2")


def depth_effect(df, metric="corr_spearman"):
    """Per regime and objective: the metric at L=1 and at the deepest L (paired over seeds), the
    change, and the share of the L=1 → reference gap that the deepest encoder closes."""
    import pandas as pd

    d = df[(df.block == "core") & (df.error == "")]
    mv = d[d.method == "mvae"]
    ref = d[d.method == "nonamortised"].set_index(["regime", "seed"])[metric]
    out = []
    for (regime, obj), g in mv.groupby(["regime", "objective"], sort=False):
        depths = sorted(g.encoder_depth.dropna().unique())
        if len(depths) < 2:
            continue
        lo, hi = depths[0], depths[-1]
        a = g[g.encoder_depth == lo].set_index("seed")[metric]
        b = g[g.encoder_depth == hi].set_index("seed")[metric]
        seeds = a.index.intersection(b.index)
        diff = (b[seeds] - a[seeds])
        r = pd.Series({s: ref.get((regime, s), np.nan) for s in seeds})
        # share of the way from L=1 to the reference covered by the deepest encoder; only
        # defined where the reference is better than L=1 (else there is no gap to close)
        sign = 1.0 if metric in HIGHER_IS_BETTER else -1.0
        gap = sign * (r.mean() - a[seeds].mean())
        closed = (sign * diff.mean() / gap) if gap > 1e-3 else np.nan
        best_L = g.groupby("encoder_depth")[metric].mean()
        out.append({"regime": regime, "objective": obj, "metric": metric,
                    f"L={int(lo)}": a[seeds].mean(), f"L={int(hi)}": b[seeds].mean(),
                    "change": diff.mean(), "change_sd": diff.std(ddof=1),
                    "best_L": int(best_L.idxmax() if metric in HIGHER_IS_BETTER
                                  else best_L.idxmin()),
                    "reference": r.mean(), "gap_closed": closed, "seeds": len(seeds)})
    return pd.DataFrame(out)


def write_summary(df, path, config: EncoderDepthConfig | None = None) -> None:
    """Markdown tables of means ± sd over seeds (one section per block and regime)."""
    df = _with_derived(df)
    ok = df[df.error == ""]
    lines = ["# Encoder depth vs pseudocount bias — summary", ""]
    if config is not None:
        lines += [f"Design `{config.label}`: D={config.n_features}, n={config.n_samples} "
                  f"(+{config.n_test} held-out), k={config.n_latent}; encoder depths "
                  f"{list(config.encoder_depths)}, objectives {list(config.objectives)}, "
                  f"pseudocount {config.pseudocount:g} (sweep {list(config.pseudocount_sweep)} "
                  f"at L ∈ {list(config.pseudocount_sweep_depths)}); {config.seeds} seed(s).", ""]
    lines += [f"{len(df)} rows, {int((df.error != '').sum())} failed; total fit CPU "
              f"{pd_sum(df.cpu_s):.0f} s (one thread per run).", "",
              "Mean ± standard deviation over seeds. ↓ lower is better, ↑ higher is better. "
              "'held-out −ELBO − true model's': mean held-out negative ELBO per sample minus that "
              "of the true generative model with optimised mean-field posteriors (nats; MVAE: "
              "its own encoder's posteriors; reference and clr+PCA: posteriors optimised under "
              "the method's decoder). It can be negative: a mean-field ELBO is looser for the "
              "true, nearly low-rank prior than for a fit with a larger σ.", ""]
    for block, title in (("core", "Core grid"), ("pseudocount", "Pseudocount sweep"),
                         ("scale", "Other sizes")):
        sub = ok[ok.block == block]
        if block == "pseudocount":
            sub = ok[(ok.method == "mvae") & (ok.objective == "marginal") & ok.encoder_depth.isin(
                config.pseudocount_sweep_depths if config else (1, 4))
                & ok.regime.isin(config.pseudocount_sweep_regimes if config else ok.regime)
                & (ok.n_features == (config.n_features if config else ok.n_features))
                & (ok.n_samples == (config.n_samples if config else ok.n_samples))]
            sub = pd_concat([sub, ok[(ok.block == "core") & (ok.method == "clr_pca")]])
            swept = set(ok[ok.block == "pseudocount"].seed)
            sub = sub[sub.seed.isin(swept)]  # same tables for every pseudocount
        if not len(sub):
            continue
        lines += [f"## {title}", ""]
        for (D, n, regime), g in sub.groupby(["n_features", "n_samples", "regime"], sort=False):
            dens = g.density.mean()
            lines += [f"### D={int(D)}, n={int(n)}, regime `{regime}` (depth "
                      f"{g.depth.iloc[0]:g}, spread {g.abundance_spread.iloc[0]:g}; "
                      f"{100 * (1 - dens):.0f}% zeros)", ""]
            g = _sort_methods(g)
            if block == "pseudocount":
                g = g.assign(label=g.label + g.pseudocount.map(
                    lambda c: f" c={c:g}").where(g.method == "mvae", ""))
            lines += [_table_md(g, HEADLINE), ""]
    eff = [depth_effect(ok, m) for m in ("corr_spearman", "subspace_distance",
                                         "cov_rel_frobenius", "embedding_r2")]
    eff = [e for e in eff if len(e)]
    if eff:
        lines += ["## Effect of encoder depth (core grid, paired by seed)", "",
                  "change = metric(deepest L) − metric(L=1); gap closed = the share of the "
                  "distance from L=1 to the non-amortised reference that the deepest encoder "
                  "covers (– where the reference is not better than L=1; over 100% = beyond "
                  "the reference).", "",
                  "| metric | regime | objective | L=1 | deepest | change ± sd | best L | "
                  "non-amortised | gap closed |", "|---|---|---|---|---|---|---|---|---|"]
        for e in eff:
            for _, r in e.iterrows():
                lo = [c for c in e.columns if c.startswith("L=")]
                lines.append(
                    f"| {r.metric} | {r.regime} | {r.objective} | {r[lo[0]]:.3f} | "
                    f"{r[lo[1]]:.3f} ({lo[1]}) | {r.change:+.3f} ± {r.change_sd:.3f} | "
                    f"{r.best_L} | {r.reference:.3f} | {_pct(r.gap_closed)} |")
        lines.append("")
    Path(path).write_text("\n".join(lines))


def _pct(x):
    if not np.isfinite(x):
        return "–"
    return "beyond the reference" if x > 1.5 else f"{100 * x:.0f}%"


def pd_sum(s):
    import pandas as pd

    return float(pd.to_numeric(s, errors="coerce").sum())


def pd_concat(frames):
    import pandas as pd

    return pd.concat(frames, ignore_index=True)


PLOT_METRICS = [("subspace_distance", "subspace distance (÷k) ↓"),
                ("cov_rel_frobenius", "relative Frobenius error of Σ_clr ↓"),
                ("corr_spearman", "Spearman of clr correlations ↑"),
                ("embedding_r2", "R² of embeddings vs true z ↑"),
                ("heldout_excess", "held-out −ELBO minus the true model's (nats) ↓")]


def write_plots(df, out_dir) -> list[Path]:
    """``encoder_depth.png``: each metric vs encoder depth (a row per metric, a column per
    objective), a line per regime (mean ± sd over seeds), with horizontal lines for the
    non-amortised reference (dashed) and the floor (dotted) and a band (mean ± sd) for
    clr(x + c) + PCA at the default pseudocount; and ``methods_core.png`` (every method)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    df = _with_derived(df)
    core = df[(df.block == "core") & (df.error == "")]
    mv = core[core.method == "mvae"]
    if not len(mv):
        return []
    objectives = [o for o in ("marginal", "sampled") if o in set(mv.objective)]
    regimes = list(dict.fromkeys(core.regime))
    colours = dict(zip(regimes, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    c_default = mv.pseudocount.mode().iloc[0]
    metrics = [(m, t) for m, t in PLOT_METRICS if mv[m].notna().any()]
    fig, axes = plt.subplots(len(metrics), len(objectives),
                             figsize=(5.0 * len(objectives), 3.0 * len(metrics)),
                             sharex=True, squeeze=False)
    for row, (metric, title) in enumerate(metrics):
        for ax, obj in zip(axes[row], objectives):
            for regime in regimes:
                col = colours[regime]
                g = mv[(mv.objective == obj) & (mv.regime == regime)
                       & (mv.pseudocount == c_default)]
                if not len(g):
                    continue
                stats = g.groupby("encoder_depth")[metric].agg(["mean", "std"])
                x = stats.index.to_numpy()
                ax.errorbar(x, stats["mean"], yerr=stats["std"].fillna(0), color=col,
                            marker="o", capsize=3, label=f"MVAE, {regime}")
                lo, hi = x.min() - 0.3, x.max() + 0.3
                ref = core[(core.method == "nonamortised") & (core.regime == regime)][metric]
                if ref.notna().any():
                    ax.hlines(ref.mean(), lo, hi, colors=col, linestyles="--", linewidth=1.2)
                flo = core[(core.method == "floor_true_eta") & (core.regime == regime)][metric]
                if flo.notna().any():
                    ax.hlines(flo.mean(), lo, hi, colors=col, linestyles=":", linewidth=1.2)
                base = core[(core.method == "clr_pca") & (core.regime == regime)
                            & (core.pseudocount == c_default)][metric]
                if base.notna().any():
                    m, s = base.mean(), (base.std(ddof=1) if base.notna().sum() > 1 else 0.0)
                    ax.axhspan(m - s, m + s, color=col, alpha=0.12, lw=0)
                    ax.hlines(m, lo, hi, colors=col, linestyles="-", linewidth=0.6, alpha=0.6)
            if row == 0:
                ax.set_title(f"objective: {obj}")
            if row == len(metrics) - 1:
                ax.set_xlabel("encoder depth L (1 = linear)")
            ax.set_xticks(sorted(mv.encoder_depth.dropna().unique()))
            ax.grid(alpha=0.3)
        axes[row][0].set_ylabel(title, fontsize=8)
    handles, labels = axes[0][0].get_legend_handles_labels()
    handles += [Line2D([], [], color="grey", ls="--"), Line2D([], [], color="grey", ls=":"),
                Patch(color="grey", alpha=0.25)]
    labels += ["non-amortised (same decoder)", "floor: PCA of true η",
               f"clr(x+{c_default:g})+PCA (mean ± sd)"]
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.subplots_adjust(left=0.1, right=0.98, top=0.96, bottom=0.1 if len(metrics) < 3 else 0.06,
                        hspace=0.15, wspace=0.12)
    path = Path(out_dir) / "encoder_depth.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [path] + _plot_methods(df, out_dir) + _plot_sizes(df, out_dir)


def _plot_sizes(df, out_dir) -> list[Path]:
    """``sizes.png``: for every (D, n, regime) table outside the core grid and the core grid's
    own sparse tables, the marginal MVAE at the shallowest and deepest depth fitted there
    (joined), the non-amortised reference, clr(x+1)+PCA and PLN-PCA; mean ± sd over seeds."""
    import matplotlib.pyplot as plt

    ok = df[(df.error == "")]
    mv = ok[(ok.method == "mvae") & (ok.objective == "marginal")]
    c_default = mv.pseudocount.mode().iloc[0] if len(mv) else 1.0
    scale = ok[ok.block == "scale"]
    if not len(scale):
        return []
    cells = list(dict.fromkeys(zip(scale.n_features, scale.n_samples, scale.regime)))
    depths = sorted(mv[mv.block == "scale"].encoder_depth.dropna().unique())
    core = ok[ok.block == "core"]
    core_cells = [(D, n, r) for D, n, r in dict.fromkeys(
        zip(core.n_features, core.n_samples, core.regime)) if r in set(scale.regime)]
    cells = core_cells + cells
    metrics = [(m, t) for m, t in PLOT_METRICS[:4]]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 4.2), squeeze=False)
    x = np.arange(len(cells))

    def stat(sel, metric):
        means, sds = [], []
        for D, n, r in cells:
            g = sel[(sel.n_features == D) & (sel.n_samples == n) & (sel.regime == r)][metric]
            means.append(g.mean() if g.notna().any() else np.nan)
            sds.append(g.std(ddof=1) if g.notna().sum() > 1 else 0.0)
        return np.array(means), np.array(sds)

    for ax, (metric, title) in zip(axes[0], metrics):
        lo = stat(mv[(mv.encoder_depth == depths[0]) & (mv.pseudocount == c_default)], metric)
        hi = stat(mv[(mv.encoder_depth == depths[-1]) & (mv.pseudocount == c_default)], metric)
        for i in x:
            ax.plot([i - 0.15, i + 0.15], [lo[0][i], hi[0][i]], color="0.6", lw=1)
        ax.errorbar(x - 0.15, lo[0], yerr=lo[1], fmt="o", color="C0", capsize=3,
                    label=f"MVAE marginal L={int(depths[0])}")
        ax.errorbar(x + 0.15, hi[0], yerr=hi[1], fmt="o", color="C3", capsize=3,
                    label=f"MVAE marginal L={int(depths[-1])}")
        for method, style, label in (("nonamortised", dict(marker="_", ms=18, color="k"),
                                      "non-amortised"),
                                     ("pln_pca", dict(marker="s", ms=5, color="C2", ls=""),
                                      "PLN-PCA"),
                                     ("clr_pca", dict(marker="x", ms=6, color="C7", ls=""),
                                      f"clr(x+{c_default:g})+PCA")):
            sel = ok[ok.method == method]
            if method == "clr_pca":
                sel = sel[sel.pseudocount == c_default]
            m, _ = stat(sel, metric)
            if np.isfinite(m).any():
                ax.plot(x, m, ls="", label=label, **{k: v for k, v in style.items() if k != "ls"})
        ax.set_xticks(x)
        ax.set_xticklabels([f"D={D}\nn={n}\n{r}" for D, n, r in cells], fontsize=7)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="best")
    fig.tight_layout()
    path = Path(out_dir) / "sizes.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [path]


def _plot_methods(df, out_dir) -> list[Path]:
    """Bar chart: every method on the core tables, per regime, for two headline metrics."""
    import matplotlib.pyplot as plt

    core = df[(df.block == "core") & (df.error == "")]
    if not len(core):
        return []
    mv = core[core.method == "mvae"]
    keep = core[core.method != "mvae"]
    if len(mv):  # show MVAE at L=1 and its deepest L for each objective
        depths = sorted(mv.encoder_depth.dropna().unique())
        keep = pd_concat([mv[mv.encoder_depth.isin([depths[0], depths[-1]])], keep])
    keep = _sort_methods(keep)
    labels = list(dict.fromkeys(keep.label))
    regimes = list(dict.fromkeys(core.regime))
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.32 * len(labels) + 1.5))
    for ax, (metric, title) in zip(axes, [("corr_spearman", "Spearman of clr correlations ↑"),
                                          ("cov_rel_frobenius", "rel. Frobenius of Σ_clr ↓")]):
        h = 0.8 / max(1, len(regimes))
        for j, regime in enumerate(regimes):
            stats = keep[keep.regime == regime].groupby("label")[metric].agg(["mean", "std"])
            stats = stats.reindex(labels)
            y = np.arange(len(labels)) + j * h
            ax.barh(y, stats["mean"], height=h, xerr=stats["std"].fillna(0), label=regime,
                    capsize=2)
        ax.set_yticks(np.arange(len(labels)) + 0.4 - h / 2)
        ax.set_yticklabels(labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_title(title)
        ax.grid(axis="x", alpha=0.3)
        if metric == "cov_rel_frobenius":
            finite = keep[metric].replace([np.inf, -np.inf], np.nan).dropna()
            if len(finite):
                ax.set_xlim(0, min(float(finite.max()) * 1.05, 3.0))
    axes[0].legend(title="regime", fontsize=8)
    fig.subplots_adjust(left=0.2, right=0.98, wspace=0.55, top=0.93, bottom=0.06)
    path = Path(out_dir) / "methods_core.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [path]
