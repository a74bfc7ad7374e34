"""Image models: likelihoods against scipy, module shapes and causality, readers, grids,
landscapes, the user classes' save/load round trip, and the `images` command group.

Everything runs on tiny images with tiny networks for one or two epochs.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.special
import scipy.stats
import torch
from click.testing import CliRunner
from PIL import Image

from mvae.errors import InputError, ModelFileError
from mvae.images.cli import images as images_cli
from mvae.images.data import ImageData, ImageSet, read_images, split_indices
from mvae.images.grids import comparison_grid, image_grid
from mvae.images.landscapes import (
    landscape_set,
    natural_photos,
    photo_crops,
    procedural_landscapes,
)
from mvae.images.likelihoods import (
    bernoulli_log_prob,
    bits_per_dim,
    discretized_logistic_log_prob,
    gaussian_log_prob,
    log_prob,
)
from mvae.images.model import ConvAutoencoder, ConvVAE, DenoisingAutoencoder, load_model
from mvae.images.modules import (
    ConvAutoencoderModule,
    ConvConfig,
    ConvVAEModule,
    DenoisingAutoencoderModule,
    corrupt,
)

DATA = Path(__file__).resolve().parent.parent / "data"
MNIST = DATA / "mnist_5k.csv.gz"
TINY = dict(n_filters=4, n_hidden=16, depth=2)


# ------------------------------------------------------------------------------------------------
# the package's boundary
# ------------------------------------------------------------------------------------------------


def test_image_package_imports_nothing_of_the_count_model_at_import_time():
    # what the image modules load at import: only mvae.errors, the estimators' parameter helpers
    # (mvae.params) and the one shared formula
    # (mvae.maths.likelihoods.kl_normal_standard); the loop and file helpers load inside the methods
    code = ("import sys\n"
            "import mvae.images.cli, mvae.images.data, mvae.images.grids, mvae.images.landscapes\n"
            "import mvae.images.likelihoods, mvae.images.model, mvae.images.modules\n"
            "print(' '.join(sorted(m for m in sys.modules if m.startswith('mvae'))))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    outside = {m for m in r.stdout.split() if not m.startswith("mvae.images")}
    assert outside == {"mvae", "mvae.errors", "mvae.params", "mvae.maths", "mvae.maths.likelihoods"}


# ------------------------------------------------------------------------------------------------
# likelihoods against scipy
# ------------------------------------------------------------------------------------------------


def test_bernoulli_matches_scipy():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, size=(5, 2, 4, 3))
    x = (rng.random(logits.shape) < 0.4).astype(float)
    got = bernoulli_log_prob(torch.tensor(logits), torch.tensor(x)).numpy()
    want = scipy.stats.bernoulli.logpmf(x, scipy.special.expit(logits)).reshape(5, -1).sum(1)
    np.testing.assert_allclose(got, want, rtol=1e-10)


def _logistic_reference(x, mean, scale, levels=256):
    """log P(k) from differences of scipy.stats.logistic.cdf at the bin edges (float64).

    Above the mean the same mass is taken as a difference of survival functions, which does not
    round to 1 - 1.
    """
    half = 0.5 / (levels - 1)
    upper = np.where(x > 1 - half / 2, np.inf, x + half)
    lower = np.where(x < half / 2, -np.inf, x - half)
    dist = scipy.stats.logistic(loc=mean, scale=scale)
    mass = np.where(lower > mean, dist.sf(lower) - dist.sf(upper),
                    dist.cdf(upper) - dist.cdf(lower))
    return np.log(mass)


@pytest.mark.parametrize("mean_sd,log_scale,seed", [
    (0.2, -2.0, 0),   # broad: many levels share the mass
    (0.1, -4.0, 1),   # about one level wide
    (0.3, -6.0, 2),   # narrow, near the floor of the scale
])
def test_discretized_logistic_matches_scipy(mean_sd, log_scale, seed):
    rng = np.random.default_rng(seed)
    shape = (4, 3, 5, 5)
    k = rng.integers(0, 256, size=shape)
    k[0, 0, 0, :2] = (0, 255)  # both end bins appear
    x = k / 255.0
    mean = np.clip(x + rng.normal(0, mean_sd, shape), -0.2, 1.2)
    ls = np.full(shape, log_scale) + rng.normal(0, 0.3, shape)
    got = discretized_logistic_log_prob(torch.tensor(mean), torch.tensor(ls),
                                        torch.tensor(x)).numpy()
    ref = _logistic_reference(x, mean, np.exp(ls))
    np.testing.assert_allclose(got, ref.reshape(4, -1).sum(1), rtol=1e-8)


@pytest.mark.parametrize("levels", [2, 16, 256])
@pytest.mark.parametrize("mean,log_scale", [(0.5, -1.0), (-3.0, -5.0), (0.37, -7.0), (2.0, 0.5)])
def test_discretized_logistic_sums_to_one_over_levels(levels, mean, log_scale):
    x = torch.arange(levels, dtype=torch.float64).reshape(levels, 1, 1, 1) / (levels - 1)
    lp = discretized_logistic_log_prob(torch.full_like(x, mean), torch.full_like(x, log_scale),
                                       x, n_levels=levels)
    assert torch.isfinite(lp).all()
    assert math.isclose(float(torch.logsumexp(lp, 0)), 0.0, abs_tol=1e-9)


def test_gaussian_matches_scipy_and_bits_per_dim_by_hand():
    rng = np.random.default_rng(3)
    shape = (3, 2, 4, 4)
    x, mean, ls = rng.random(shape), rng.random(shape), rng.normal(-2, 0.5, shape)
    got = gaussian_log_prob(torch.tensor(mean), torch.tensor(ls), torch.tensor(x)).numpy()
    want = scipy.stats.norm.logpdf(x, mean, np.exp(ls)).reshape(3, -1).sum(1)
    np.testing.assert_allclose(got, want, rtol=1e-10)
    # 784 binary pixels at 1 bit each = 784 ln 2 nats
    assert bits_per_dim(784 * math.log(2), 784) == pytest.approx(1.0)


def test_log_prob_dispatch_and_unknown_likelihood():
    x = torch.rand(2, 1, 3, 3)
    params = torch.zeros(2, 2, 3, 3)
    torch.testing.assert_close(log_prob("gaussian", params, x),
                               gaussian_log_prob(params[:, :1], params[:, 1:], x))
    with pytest.raises(ValueError, match="likelihood='poisson'"):
        log_prob("poisson", params, x)


# ------------------------------------------------------------------------------------------------
# modules
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [ConvVAEModule, ConvAutoencoderModule, DenoisingAutoencoderModule])
@pytest.mark.parametrize("C,H,W,depth,lik", [
    (1, 28, 28, 2, "bernoulli"), (3, 13, 11, 2, "logistic"), (1, 5, 7, 3, "gaussian"),
    (3, 2, 9, 2, "logistic"),  # one side shrinks to a single pixel before the other
])
def test_module_shapes_for_any_size(cls, C, H, W, depth, lik):
    torch.manual_seed(0)
    cfg = ConvConfig(C, H, W, n_latent=3, n_filters=4, depth=depth, n_hidden=8, likelihood=lik)
    m = cls(cfg)
    x = torch.rand(5, C, H, W)
    if lik == "logistic":
        x = torch.round(x * 255) / 255
    terms = m.loss(x, generator=torch.Generator().manual_seed(0))
    assert terms.reconstruction.shape == terms.kl.shape == (5,)
    assert torch.isfinite(terms.negative_elbo()).all()
    assert m.embed(x).shape == (5, 3)
    assert m.reconstruct(x).shape == (5, C, H, W)
    if cls is not ConvVAEModule:
        assert (terms.kl == 0).all()


def test_vae_elbo_below_importance_bound_and_beta_scales_kl():
    torch.manual_seed(0)
    m = ConvVAEModule(ConvConfig(1, 8, 8, n_latent=2, n_filters=4, n_hidden=8, beta=4.0))
    x = (torch.rand(6, 1, 8, 8) < 0.3).float()
    g = torch.Generator().manual_seed(1)
    t1 = m.loss(x, generator=torch.Generator().manual_seed(1), n_samples=64, beta=1.0)
    t4 = m.loss(x, generator=torch.Generator().manual_seed(1), n_samples=64)
    torch.testing.assert_close(t4.kl, 4.0 * t1.kl)
    elbo = -t1.negative_elbo()
    iw = m.importance_log_likelihood(x, n_samples=256, generator=g)
    assert (iw >= elbo - 0.5).all()  # the IW bound is tighter (up to Monte Carlo noise)


def test_causal_decoder_sees_only_earlier_pixels():
    torch.manual_seed(0)
    cfg = ConvConfig(2, 6, 5, n_latent=2, n_filters=4, n_hidden=8, context=5, likelihood="logistic")
    m = ConvVAEModule(cfg)
    torch.nn.init.normal_(m.decoder.causal_out.weight)  # make the causal path matter
    z = torch.randn(1, 2)
    x = torch.rand(1, 2, 6, 5)
    base = m.decoder(z, x)
    H, W = 6, 5
    for pos in (0, 7, 13, 29):
        i, j = divmod(pos, W)
        x2 = x.clone()
        x2[0, :, i, j] += 0.5
        diff = (m.decoder(z, x2) - base).abs().sum(1)[0].flatten()  # per pixel, raster order
        assert diff[:pos + 1].max() == 0  # the pixel itself and everything before it: unchanged
        if pos < H * W - 1:
            assert diff[pos + 1:].max() > 0


def test_greedy_generation_agrees_with_parallel_evaluation():
    torch.manual_seed(1)
    m = ConvVAEModule(ConvConfig(1, 7, 6, n_latent=2, n_filters=4, n_hidden=8, context=3))
    torch.nn.init.normal_(m.decoder.causal_out.weight)
    z = torch.randn(3, 2)
    means = m.decode(z, greedy=True)
    fed = (means > 0.5).float()  # what greedy decoding fed forward
    torch.testing.assert_close(torch.sigmoid(m.decoder(z, fed)), means)
    drawn = m.decode(z, generator=torch.Generator().manual_seed(0), greedy=False)
    assert drawn.shape == (3, 1, 7, 6) and ((drawn >= 0) & (drawn <= 1)).all()


def test_corruptions():
    g = torch.Generator().manual_seed(0)
    x = torch.full((20, 1, 16, 16), 0.5)
    masked = corrupt(x, "masking", 0.25, g)
    assert set(masked.unique().tolist()) == {0.0, 0.5}
    assert abs(float((masked == 0).float().mean()) - 0.25) < 0.02
    sp = corrupt(x, "salt_pepper", 0.2, g)
    assert abs(float((sp == 0).float().mean()) - 0.1) < 0.02
    assert abs(float((sp == 1).float().mean()) - 0.1) < 0.02
    noisy = corrupt(x, "gaussian", 0.3, g)
    assert noisy.min() >= 0 and noisy.max() <= 1 and abs(float((noisy - x).std()) - 0.3) < 0.03


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="context=4"):
        ConvConfig(1, 8, 8, context=4).check()
    with pytest.raises(ValueError, match="binarize=True needs likelihood='bernoulli'"):
        ConvConfig(1, 8, 8, likelihood="logistic", binarize=True).check()
    with pytest.raises(ValueError, match="must not see the input"):
        ConvAutoencoderModule(ConvConfig(1, 8, 8, context=3))


# ------------------------------------------------------------------------------------------------
# readers, grids, landscapes
# ------------------------------------------------------------------------------------------------


def _write_pngs(folder: Path, n: int = 24, size: int = 12, seed: int = 0, colour=False):
    """Bright squares or discs on black, in two label subfolders."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        label = "squares" if i % 2 else "discs"
        cy, cx, r = rng.integers(3, size - 3, 2).tolist() + [int(rng.integers(2, 4))]
        if label == "squares":
            img = (np.abs(yy - cy) <= r) & (np.abs(xx - cx) <= r)
        else:
            img = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        a = (img * 255).astype(np.uint8)
        if colour:
            a = np.stack([a, a // 2, 255 - a], axis=-1)
        (folder / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(folder / label / f"img{i:02d}.png")
    return folder


def test_read_folder_labels_sizes_and_modes(tmp_path):
    folder = _write_pngs(tmp_path / "pngs", n=6, colour=True)
    s = read_images(folder)
    assert s.images.shape == (6, 12, 12, 3) and s.images.dtype == np.uint8
    assert sorted(set(s.labels)) == ["discs", "squares"]
    assert s.ids[0] == "discs/img00.png"
    grey = read_images(folder, size=(8, 5), mode="grey")
    assert grey.images.shape == (6, 5, 8, 1)
    Image.new("L", (7, 7)).save(folder / "odd.png")
    with pytest.raises(InputError, match="differ in size"):
        read_images(folder)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty: no PNG or JPEG"):
        read_images(tmp_path / "empty")


def test_read_arrays_and_tables(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, size=(7, 4, 5), dtype=np.uint8)
    np.save(tmp_path / "a.npy", a)
    np.savez(tmp_path / "b.npz", images=a / 255.0, labels=np.arange(7))
    s = read_images(tmp_path / "a.npy")
    assert s.images.shape == (7, 4, 5, 1) and s.labels is None
    z = read_images(tmp_path / "b.npz")
    assert z.images.dtype == np.float32 and list(z.labels) == list(range(7))
    pd.DataFrame(a.reshape(7, -1)).assign(label=list("abcdefg")).to_csv(tmp_path / "t.csv",
                                                                      index=False)
    t = read_images(tmp_path / "t.csv", shape=(4, 5))
    np.testing.assert_array_equal(t.images[..., 0], a)
    assert list(t.labels) == list("abcdefg")
    np.save(tmp_path / "bad.npy", rng.normal(size=(3, 4, 4)) * 3)
    with pytest.raises(InputError, match="bad.npy: float intensities must lie in"):
        read_images(tmp_path / "bad.npy")


def test_mnist_table_and_seeded_split():
    s = read_images(MNIST)
    assert s.images.shape == (5000, 28, 28, 1) and s.images.dtype == np.uint8
    assert np.bincount(s.labels.astype(int)).tolist() == [500] * 10
    train, test = split_indices(5000, 1000, seed=0)
    assert len(train) == 4000 and len(test) == 1000 and not set(train) & set(test)
    np.testing.assert_array_equal(split_indices(5000, 1000, seed=0)[1], test)


def test_image_data_batches():
    a = np.arange(2 * 3 * 4 * 1, dtype=np.uint8).reshape(2, 3, 4, 1)
    d = ImageData(a)
    b = d.batch(torch.tensor([1]))
    assert b.shape == (1, 1, 3, 4) and b.dtype == torch.float32
    torch.testing.assert_close(b[0, 0], torch.tensor(a[1, ..., 0] / 255.0, dtype=torch.float32))
    assert [c.shape[0] for c in d.chunks(1)] == [1, 1]


def test_grids_by_hand():
    imgs = np.zeros((5, 4, 3, 1))
    g = image_grid(imgs, n_cols=2, padding=1, scale=2)
    assert g.size == (1 + 2 * (6 + 1), 1 + 3 * (8 + 1)) and g.mode == "L"
    c = comparison_grid(np.ones((3, 4, 4, 3)), np.zeros((3, 4, 4, 3)), n_cols=2, padding=0)
    a = np.asarray(c)
    assert c.mode == "RGB" and a.shape == (4 * 4, 2 * 4, 3)
    assert a[:4].min() == 255 and a[4:8].max() == 0  # row of originals, row of reconstructions


def test_procedural_landscapes_are_deterministic():
    a = procedural_landscapes(4, size=16, seed=3)
    b = procedural_landscapes(6, size=16, seed=3)
    assert a.shape == (4, 16, 16, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b[:4])  # image i does not depend on n
    test = procedural_landscapes(4, size=16, seed=3, part=1)
    assert not np.array_equal(a, test)
    # sky above, darker ground below
    assert a[:, :3].mean() > a[:, -3:].mean()


def test_photo_crops_keep_the_held_out_region_apart():
    rng = np.random.default_rng(0)
    photos = {"p": rng.integers(0, 256, (100, 200, 3), dtype=np.uint8)}
    train = photo_crops(20, 8, part="train", photos=photos, min_side=20, max_side=40)
    test = photo_crops(10, 8, part="test", photos=photos, min_side=20, max_side=40)
    split = 150  # 200 columns, the right 25 % held out
    for ident in train.ids:
        x, y, side = map(int, ident.rsplit(":", 1)[1].split(","))
        assert x + side <= split
    for ident in test.ids:
        x, y, side = map(int, ident.rsplit(":", 1)[1].split(","))
        assert x >= split and x + side <= 200
    assert train.images.shape == (20, 8, 8, 3)
    tr, te = landscape_set(6, 3, size=8, photos=False)
    assert tr.images.shape == (6, 8, 8, 3) and set(tr.labels) == {"procedural"}


def test_bundled_photos_match_the_packages_own_loaders():
    skdata = pytest.importorskip("skimage.data")
    photos = natural_photos()
    assert all(p.dtype == np.uint8 and p.ndim == 3 and p.shape[2] == 3 for p in photos.values())
    np.testing.assert_array_equal(photos["rocket"], skdata.rocket())
    np.testing.assert_array_equal(photos["gravel"][..., 1], skdata.gravel())
    tr, te = landscape_set(8, 4, size=8, photo_fraction=0.5)
    assert set(tr.labels) - {"procedural"} and set(te.labels) - {"procedural"}


# ------------------------------------------------------------------------------------------------
# user classes
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    """60 MNIST digits downsampled to 14x14 (uint8)."""
    s = read_images(MNIST).subset(range(60))
    return ImageSet(s.images[:, ::2, ::2], s.ids, s.labels, "mnist")


FIT = dict(max_epochs=2, batch_size=16, random_state=0, threads=1, **TINY)


@pytest.mark.parametrize("cls,kw", [(ConvVAE, dict(binarize=True)),
                                    (ConvVAE, dict(context=3, binarize=True)),
                                    (ConvVAE, dict(likelihood="logistic")),
                                    (ConvAutoencoder, {}),
                                    (DenoisingAutoencoder, dict(noise="masking", noise_level=.3))])
def test_fit_outputs_and_save_load_round_trip(tmp_path, digits, cls, kw):
    model = cls(3, **FIT, **kw).fit(digits)
    n = len(digits)
    assert model.transform(digits).shape == (n, 3)
    rec = model.reconstruct(digits.subset(range(4)))
    assert rec.shape == (4, 14, 14, 1) and rec.min() >= 0 and rec.max() <= 1
    assert model.sample(3, random_state=0).shape == (3, 14, 14, 1)
    scores = model.score_samples(digits)
    assert scores.shape == (n,) and np.isfinite(scores).all()
    np.testing.assert_array_equal(scores, model.score_samples(digits))  # seeded
    assert len(model.history_) == 2
    model.save(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["format"] == f"mvae.images.{cls.__name__}"
    loaded = cls.load(tmp_path / "m")
    assert loaded.get_params() == model.get_params()
    np.testing.assert_array_equal(loaded.transform(digits), model.transform(digits))
    np.testing.assert_array_equal(loaded.score_samples(digits), scores)
    np.testing.assert_array_equal(loaded.sample(3, random_state=1), model.sample(3, random_state=1))


def test_bits_per_dim_and_likelihood_choice(digits):
    vae = ConvVAE(2, **FIT, binarize=True).fit(digits)
    assert vae.likelihood_ == "bernoulli"
    nelbo = vae.score_samples(digits).mean()
    assert vae.bits_per_dim(digits) == pytest.approx(nelbo / (196 * math.log(2)))
    # on binary images (nothing left to binarise) the importance bound is tighter than the ELBO
    binary = (digits.images > 127).astype(np.float32)
    gap = vae.log_likelihood(binary, n_samples=64) + vae.score_samples(binary, n_samples=64)
    assert gap.mean() > 0
    assert ConvVAE(2, **FIT).fit(digits).likelihood_ == "logistic"  # 8-bit grey


def test_parameter_and_file_errors(tmp_path, digits):
    with pytest.raises(InputError, match="n_latent=0 is not allowed"):
        ConvVAE(0).fit(digits)
    with pytest.raises(InputError, match="binarize=True needs likelihood='bernoulli'"):
        ConvVAE(2, likelihood="gaussian", binarize=True).fit(digits)
    with pytest.raises(InputError, match="context=2"):
        ConvVAE(2, context=2).fit(digits)
    with pytest.raises(RuntimeError, match="not fitted"):
        ConvVAE().transform(digits)
    ae = ConvAutoencoder(2, **FIT).fit(digits)
    with pytest.raises(InputError, match="fitted on 14x14"):
        ae.transform(np.zeros((2, 10, 10), np.uint8))
    ae.save(tmp_path / "ae")
    with pytest.raises(ModelFileError, match="holds a ConvAutoencoder, not a ConvVAE"):
        ConvVAE.load(tmp_path / "ae")
    (tmp_path / "ae" / "config.json").write_text("{")
    with pytest.raises(ModelFileError, match="not valid JSON"):
        load_model(tmp_path / "ae")
    with pytest.raises(ModelFileError, match="not found"):
        load_model(tmp_path / "nothing")


# ------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------


def _invoke(*args):
    return CliRunner().invoke(images_cli, [str(a) for a in args], catch_exceptions=False)


FAST_CLI = ["--epochs", "1", "-k", "2", "--filters", "4", "--hidden", "16", "--threads", "1",
            "--batch-size", "8", "-q"]


@pytest.mark.parametrize("kind", ["vae", "dae"])
def test_cli_fit_sample_reconstruct_score(tmp_path, kind):
    folder = _write_pngs(tmp_path / "pngs")
    out = tmp_path / "fit"
    r = _invoke("fit", folder, "-o", out, "--model", kind, *FAST_CLI)
    assert r.exit_code == 0, r.output
    for name in ("model.safetensors", "config.json", "history.tsv", "loss.png", "samples.png",
                 "reconstructions.png", "scores.tsv"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert config["run"]["input"]["n_images"] == 24

    r = _invoke("sample", out, "-n", "6", "-o", tmp_path / "s.png", "--cols", "3", "--scale", "1")
    assert r.exit_code == 0, r.output
    with Image.open(tmp_path / "s.png") as im:
        assert im.size == (2 + 3 * 14, 2 + 2 * 14)  # 12-pixel images with 2-pixel padding

    r = _invoke("reconstruct", out, folder, "-o", tmp_path / "r.png", "-n", "4", "--cols", "4",
                "--scale", "1", "--corrupt", "masking")
    assert r.exit_code == 0, r.output
    with Image.open(tmp_path / "r.png") as im:
        assert im.size == (2 + 4 * 14, 2 + 2 * 14)

    r = _invoke("score", out, folder, "-o", tmp_path / "scores.tsv")
    assert r.exit_code == 0, r.output
    frame = pd.read_csv(tmp_path / "scores.tsv", sep="\t")
    column = "negative_elbo" if kind == "vae" else "reconstruction_nll"
    assert list(frame.columns) == ["image_id", "label", column, "bits_per_dim"]
    assert len(frame) == 24 and np.isfinite(frame[column]).all()
    np.testing.assert_allclose(frame["bits_per_dim"], frame[column] / (144 * math.log(2)))


def test_cli_errors_are_one_line(tmp_path):
    r = CliRunner().invoke(images_cli, ["fit", str(tmp_path / "missing"), "-o",
                                        str(tmp_path / "o"), *FAST_CLI])
    assert r.exit_code == 2
    assert r.output.strip().startswith("Error:") and "no such file" in r.output
    assert len(r.output.strip().splitlines()) == 1
    (tmp_path / "exists").mkdir()
    folder = _write_pngs(tmp_path / "pngs", n=4)
    r = CliRunner().invoke(images_cli, ["fit", str(folder), "-o", str(tmp_path / "exists"),
                                        *FAST_CLI])
    assert r.exit_code == 2 and "already exists" in r.output
    r = CliRunner().invoke(images_cli, ["score", str(tmp_path / "exists"), str(folder), "-o",
                                        str(tmp_path / "x.tsv")])
    assert r.exit_code == 2 and "config.json: not found" in r.output
