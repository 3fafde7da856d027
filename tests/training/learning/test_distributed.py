"""DDP: the trained model does not depend on the number of ranks (issue 4, "Distributed").

Each rank regenerates the probes of its frames from the frame ids, and the global batch is
split over ranks; with gradients all-reduced, 1 and 2 CPU ranks (gloo) must give the same
parameters up to float32 reduction-order round-off.
"""

import subprocess
import sys

import yaml

from hessid.training.data.synthetic import write_synthetic_dataset
from hessid.training.learning.models import load_potential


def _train(tmp_path, datasets, devices: int):
    cfg = {
        "name": f"ranks{devices}", "output_dir": str(tmp_path / "runs"), "seed": 5,
        "data": {"datasets": [str(p) for p in datasets], "batch_size": 4, "val_fraction": 0.2},
        "model": {"embedding_dimension": 8, "num_layers": 1, "num_rbf": 6, "cutoff_lower": 0.0,
                  "cutoff_upper": 8.0},
        "loss": {"mode": "fm_hvp", "cov_weight": 1.0},
        "optim": {"lr": 3e-3, "schedule": "constant"},
        "trainer": {"max_steps": 4, "val_every_steps": 2, "checkpoint_every_steps": 2,
                    "progress_bar": False, "accelerator": "cpu", "devices": devices},
    }
    path = tmp_path / f"ranks{devices}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    subprocess.run([sys.executable, "-m", "hessid", "train", "--config", str(path)],
                   check=True, capture_output=True, text=True, timeout=300)
    return load_potential(tmp_path / "runs" / f"ranks{devices}" / "model.pt")


def test_two_ranks_train_the_same_model_as_one(tmp_path):
    datasets = [write_synthetic_dataset(tmp_path / "a" / "a.h5", n_beads=6, n_frames=12, seed=0,
                                        name="protA")]
    one, two = _train(tmp_path, datasets, 1), _train(tmp_path, datasets, 2)
    diffs = [float((p - q).abs().max()) for p, q in zip(one.parameters(), two.parameters(), strict=True)]
    scale = max(float(p.abs().max()) for p in one.parameters())
    assert max(diffs) <= 1e-5 * scale, f"1 vs 2 ranks differ by {max(diffs):.2e} (scale {scale:.2e})"
    assert one.metadata["global_step"] == two.metadata["global_step"] == 4
