"""The evaluation room's boundary: a fit, from Python or from `mvae fit`, never imports it."""

import subprocess
import sys

import numpy as np



def _evaluation_modules(code: str) -> set[str]:
    script = code + (
        "\nimport sys\nprint(' '.join(m for m in sys.modules if m.startswith('mvae.evaluation')))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True)
    return set(out.stdout.split())


def test_a_fit_in_python_imports_no_evaluation_code():
    loaded = _evaluation_modules(
        "import numpy as np, mvae\n"
        "x = np.random.default_rng(0).poisson(5.0, size=(40, 8))\n"
        "mvae.MultinomialVAE(n_latent=2, max_epochs=2, threads=1, random_state=0).fit(x)\n"
    )
    assert loaded == set()


def test_mvae_fit_imports_no_evaluation_code(tmp_path):
    table = tmp_path / "t.tsv"
    x = np.random.default_rng(1).poisson(5.0, size=(20, 6))
    lines = ["id\t" + "\t".join(f"f{j}" for j in range(6))]
    lines += [f"s{i}\t" + "\t".join(str(v) for v in row) for i, row in enumerate(x)]
    table.write_text("\n".join(lines) + "\n")
    args = [str(table), "-o", str(tmp_path / "out"), "--orientation", "samples-as-rows",
            "-k", "1", "--epochs", "2", "--threads", "1", "-q"]
    loaded = _evaluation_modules(
        "from mvae.cli import main\n"
        f"main(['fit'] + {args!r}, standalone_mode=False)\n"
    )
    assert (tmp_path / "out" / "model.safetensors").exists()
    assert loaded == set()  # the `mvae benchmark` group too is loaded only when invoked
