"""The ``mvae`` command line: parses and validates arguments, then calls the Python API.

No model logic lives here. Heavy modules (torch, anndata, scikit-bio) are imported inside the
commands so that ``mvae --help`` answers at once.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from . import __version__

CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True}


class _Group(click.Group):
    """Turn the errors mvae raises on purpose into a one-line message and exit code 2."""

    def invoke(self, ctx):
        from .errors import MVAEError

        try:
            return super().invoke(ctx)
        except MVAEError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(2)


@click.group(cls=_Group, context_settings=CONTEXT)
@click.version_option(__version__, prog_name="mvae")
def main():
    """Multinomial variational autoencoders for count tables (microbiome, single-cell).

    Fit a model with `mvae fit TABLE -o OUTDIR`; see `mvae COMMAND --help` for each command.
    """


@main.command(context_settings=CONTEXT)
@click.argument("table", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", "outdir", required=True, type=click.Path(path_type=Path),
              help="Output directory (created).")
@click.option("--latent-dim", "-k", default=10, type=click.IntRange(min=1),
              help="Latent dimensions k.")
@click.option("--encoder-depth", default=2, type=click.IntRange(min=1),
              help="Encoder layers including the output head (1 = linear).")
@click.option("--hidden", default=128, type=click.IntRange(min=1), help="Encoder width.")
@click.option("--pseudocount", default=1.0, type=click.FloatRange(min=0, min_open=True),
              help="Pseudocount c in the encoder input log(x + c).")
@click.option("--objective", default="marginal", type=click.Choice(["marginal", "sampled"]),
              help="ELBO form (marginal integrates z out; sampled is catvae's).")
@click.option("--basis", default="helmert", type=click.Choice(["helmert", "balanced", "tree"]),
              help="ILR basis for balance-coordinate outputs.")
@click.option("--tree", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Newick tree over the features (for --basis tree).")
@click.option("--layer", default=None, help="AnnData layer holding the counts (.h5ad).")
@click.option("--epochs", default=None, type=click.IntRange(min=1),
              help="Maximum epochs (default: chosen from the table size).")
@click.option("--batch-size", default=128, type=click.IntRange(min=1))
@click.option("--lr", default=1e-3, type=click.FloatRange(min=0, min_open=True),
              help="Adam learning rate.")
@click.option("--seed", default=0, type=int, help="Random seed (same seed, same result).")
@click.option("--threads", default=None, type=click.IntRange(min=1),
              help="torch threads (default: half the usable cores, at most 8).")
@click.option("--device", default="cpu", type=click.Choice(["cpu", "cuda", "auto"]))
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def fit(table, outdir, latent_dim, encoder_depth, hidden, pseudocount, objective, basis, tree,
        layer, epochs, batch_size, lr, seed, threads, device, quiet):
    """Fit a multinomial VAE to TABLE (.biom or .h5ad) and write the model and embeddings."""
    from .io import read_counts
    from .model import MultinomialVAE

    adata = read_counts(table, layer=layer)
    model = MultinomialVAE(
        n_latent=latent_dim, encoder_depth=encoder_depth, n_hidden=hidden,
        pseudocount=pseudocount, objective=objective, basis=basis,
        tree=str(tree) if tree else None, max_epochs=epochs, batch_size=batch_size,
        learning_rate=lr, random_state=seed, threads=threads, device=device,
        progress=not quiet and sys.stderr.isatty(),
    )
    model.fit(adata)
    outdir.mkdir(parents=True, exist_ok=True)
    model.save(outdir)
    emb = adata.obsm["X_mvae"]
    import pandas as pd

    cols = [f"axis{i + 1}" for i in range(emb.shape[1])]
    frame = pd.DataFrame(emb, index=pd.Index(adata.obs_names, name="sample_id"), columns=cols)
    frame.to_csv(outdir / "embeddings.tsv", sep="\t")
    model.history_.to_csv(outdir / "history.tsv", sep="\t", index=False)
    if not quiet:
        last = model.history_.iloc[-1]
        click.echo(f"fitted {adata.n_obs} samples x {adata.n_vars} features in "
                   f"{len(model.history_)} epochs (best {model.best_epoch_}); final train loss "
                   f"{last.train_loss:.4g} nats/sample; wrote {outdir}/", err=True)


if __name__ == "__main__":  # pragma: no cover
    main()
