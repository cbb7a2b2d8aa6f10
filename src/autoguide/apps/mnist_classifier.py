"""``autoguide-mnist-classifier {train,test}``: the feature network of ``metrics=mnist``
(``autoguide.eval.mnist_classifier``).

    autoguide-mnist-classifier train --out ~/.cache/autoguide/mnist-classifier.safetensors
    autoguide-mnist-classifier test ~/.cache/autoguide/mnist-classifier.safetensors
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from autoguide.data.mnist import MNIST5k
from autoguide.eval.mnist_classifier import accuracy, load_classifier, save_classifier, train
from autoguide.runtime.process import resolve_device


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autoguide-mnist-classifier", description="Train or test the MNIST-5k feature classifier of metrics=mnist."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    fit = commands.add_parser("train", help="train on the MNIST-5k train split and save")
    fit.add_argument("--out", type=Path, required=True, help="output .safetensors file")
    fit.add_argument("--steps", type=int, default=3000)
    fit.add_argument("--batch-size", type=int, default=128)
    fit.add_argument("--lr", type=float, default=1e-3)
    fit.add_argument("--shift", type=int, default=2, help="largest random shift in pixels (augmentation)")
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--device", default="auto", help="auto | cpu | cuda:0 ...")
    check = commands.add_parser("test", help="print the card and re-measure the test accuracy")
    check.add_argument("path", type=Path)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point ``autoguide-mnist-classifier``."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "train":
            net, card = train(args.steps, args.batch_size, args.lr, args.shift, args.seed, resolve_device(args.device))
            save_classifier(args.out, net, card)
            print(json.dumps(card, indent=2))
            print(
                f"wrote {args.out}: test accuracy {card['test_accuracy']:.4f} on {card['test_images']} held-out images"
            )
        else:
            net, card = load_classifier(args.path)
            test_set = MNIST5k("test")
            print(json.dumps(card, indent=2))
            test_accuracy = accuracy(net, test_set.images, test_set.labels)
            print(f"test accuracy {test_accuracy:.4f} on {len(test_set)} held-out images")
    except (FileNotFoundError, ValueError) as err:
        print(f"autoguide-mnist-classifier: error: {err}", file=sys.stderr)
        raise SystemExit(2) from err


if __name__ == "__main__":
    main()
