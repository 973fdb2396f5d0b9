"""Data specs of the mocked datasets, for building families without data."""
import json

from jaxgen import data
from jaxgen.data import tokenizers

FASHION_MNIST = data.make_spec(modality='image', name='fashion_mnist', image_shape=(28, 28, 1), num_classes=10)


def text(vocab_size: int = 16):
  """A text spec of `vocab_size` stand-in characters."""
  tokenizer = tokenizers.CharTokenizer(''.join(chr(97 + i) for i in range(vocab_size)))
  return data.make_spec(modality='text', source='synthetic', vocab_size=vocab_size,
                        tokenizer=json.dumps(tokenizer.to_json()))
