"""What every example shares: its command line, the device and saving a figure."""

import argparse
import os

import torch


def parse_args(description: str) -> argparse.Namespace:
    """``--quick`` (a tiny run of a few seconds) and ``--out DIR`` (where the PNGs go)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="a tiny run of a few seconds")
    parser.add_argument("--out", default="out", help="folder for the PNG figures (default: ./out)")
    return parser.parse_args()


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def save(fig, out: str, name: str) -> None:
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, name)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    print(f"wrote {path}")
