"""How plainly a text encoder says what a prompt names: the count against the colour.

For every grammar caption that names a count, the encoder's last hidden states (48 positions x
64) are probed two ways:
- a linear probe (logistic regression) of the count at each of the first positions and on the
  mean over positions, trained on two shapes and tested on the third, in turn;
- the share of the states' variance that the count explains (between-count over total sum of
  squares), and the same share for the colour among captions that name one.
A probe finds what is there at all; the variance share is how loud it is, which is what a UNet's
cross-attention has to pick up. A frozen encoder in which the count is faint makes a UNet that
cannot be taught to count.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/probe_text_encoder.py \
        models/shapes-sd/text_encoder models/shapes-clip     # a few seconds
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import CLIPModel, CLIPTextModel, CLIPTokenizer

from t2i_rlhf.shapes.prompts import format_caption
from t2i_rlhf.shapes.vocab import COLOURS, SCENES, SHAPES


def load_encoder(path: Path) -> CLIPTextModel | torch.nn.Module:
    """A CLIPTextModel directory, or a CLIPModel directory (its text tower)."""
    if (path / "config.json").exists() and "text_config" in (path / "config.json").read_text():
        return CLIPModel.from_pretrained(path).text_model.eval()
    return CLIPTextModel.from_pretrained(path).eval()


def probe_accuracy(x: np.ndarray, y: np.ndarray, train: np.ndarray) -> float:
    """Held-out accuracy of an L2-regularised logistic regression (L-BFGS) on standardised x."""
    xt = torch.tensor(x, dtype=torch.float32)
    mu, sd = xt[train].mean(0), xt[train].std(0) + 1e-6
    xt = (xt - mu) / sd
    yt = torch.tensor(y)
    w = torch.zeros(xt.shape[1], int(y.max()) + 1, requires_grad=True)
    b = torch.zeros(int(y.max()) + 1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=300)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(xt[train] @ w + b, yt[train]) + 1e-3 * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float(((xt[~train] @ w + b).argmax(1) == yt[~train]).float().mean())


def variance_share(x: np.ndarray, y: np.ndarray) -> float:
    """Between-class sum of squares over the total: how much of x the label y accounts for."""
    x = x.reshape(len(x), -1)
    centre = x.mean(0)
    between = sum((y == k).sum() * ((x[y == k].mean(0) - centre) ** 2).sum() for k in np.unique(y))
    return float(between / ((x - centre) ** 2).sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("encoders", type=Path, nargs="+", help="CLIPTextModel or CLIPModel directories")
    ap.add_argument("--tokenizer", type=Path, default=Path("models/shapes-clip"))
    args = ap.parse_args()
    tokenizer = CLIPTokenizer.from_pretrained(args.tokenizer)
    rows = [(shape, n, colour, format_caption(shape, n, True, colour, scene))
            for shape, n, colour, scene in itertools.product(SHAPES, range(1, 5), [None, *COLOURS], [None, *SCENES])]
    shapes = np.array([r[0] for r in rows])
    counts = np.array([r[1] - 1 for r in rows])
    colours = np.array([r[2] or "" for r in rows])
    ids = tokenizer([r[3] for r in rows], padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids
    print(f"{len(rows)} captions naming a count; probe: train on two shapes, test on the third")
    for path in args.encoders:
        with torch.no_grad():
            h = load_encoder(path)(ids).last_hidden_state.numpy()
        positions = [*range(8), "mean"]
        acc = np.mean([[probe_accuracy(h.mean(1) if p == "mean" else h[:, p], counts, shapes != held)
                        for p in positions] for held in SHAPES], axis=0)
        named = colours != ""
        print(f"\n{path}")
        print("  count probe accuracy by position: "
              + " ".join(f"{p}:{a:.2f}" for p, a in zip(positions, acc, strict=True)))
        print(f"  variance explained: count {variance_share(h, counts):.3f}, "
              f"colour {variance_share(h[named], colours[named]):.3f} (all positions)")


if __name__ == "__main__":
    main()
