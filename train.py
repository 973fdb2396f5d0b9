"""Train a jaxgen model: python train.py --config configs/<family>_<dataset>.py[:preset] --workdir DIR.

The command itself is jaxgen/train/__main__.py (also installed as jaxgen-train).
"""
from jaxgen import cli

if __name__ == '__main__':
  cli.train()
