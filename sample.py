"""Sample from a trained workdir: python sample.py --workdir DIR [--num N] [--out FILE] [family options], or from a
Hugging Face GPT-2 checkpoint: python sample.py --pretrained NAME|DIR --prompt TEXT.

The command itself is jaxgen/sample.py (also installed as jaxgen-sample, and python -m jaxgen.sample).
"""
from jaxgen import cli

if __name__ == '__main__':
  cli.sample()
