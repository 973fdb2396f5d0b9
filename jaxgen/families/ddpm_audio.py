"""Diffusion on audio: DDPM on log-mel spectrograms of pitched notes, conditioned on the MIDI pitch.

The DDPM family's math, EMA, samplers and classifier-free guidance (jaxgen.families.ddpm.diffusion_family)
with a UNet on log-mel images x0 = log_mel(y) (B, n_mels, frames, 1) in [-1, 1] (jaxgen.data.mel), computed
inside the jitted step from the batch's waveforms y; the label is the MIDI pitch (128 classes + the null
label), embedded as a class and (model.harmonic_profile) drawn as an input channel marking the mel rows of its
harmonics, so the denoiser is told where the pitch's partials go rather than having to learn it per class. Samples go back to waveforms inside the sampler's jit: mel -> linear magnitude (NNLS) -> Griffin-Lim.

Sampler: sampler(rng, num, label=PITCH (int or (num,) MIDI pitches; default cycles data.pitch_range),
guidance=w, steps=S, ...) -> float32 (num, samples) in [-1, 1]; sampler(rng, melody=[60, 62, 64], note_s=0.5)
-> (1, samples): one note sampled per pitch, each cut to note_s and joined with crossfade_s linear crossfades.

Evaluator `note_quality`: a small CNN pitch classifier trained once on the real train split's log-mels;
pitch accuracy of generated notes for their requested pitch (exact and within a semitone), FD-notes
(Fréchet distance in its penultimate features, against real train notes), and the real floors: the same
figures for the real test notes, and for the real test notes after the mel -> Griffin-Lim inversion.
"""
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen import evaluators, metrics, samples
from jaxgen.data import audio, mel
from jaxgen.errors import UserError
from jaxgen.families.base import Family, Feature
from jaxgen.families.ddpm import diffusion_family
from jaxgen.models.classifier import Classifier
from jaxgen.models.unet import UNet

CLASSIFIER = dict(features=(16, 32, 64), hidden=128)    # the pitch classifier of note_quality: 60 MFLOP an example
CLASSIFIER_STEPS = 800                                   # at batch 64: ~46 epochs of jaxgen_notes


def crossfade_join(notes: jax.Array, note_samples: int, fade_samples: int) -> jax.Array:
  """(M, N) notes -> (1, M note_samples + fade_samples): note i starts at i note_samples; each is cut to
  note_samples + fade_samples and faded out linearly over its last fade_samples while the next fades in."""
  m = notes.shape[0]
  length = note_samples + fade_samples
  ramp = jnp.linspace(0.0, 1.0, fade_samples, endpoint=False)
  envelope = jnp.concatenate([ramp, jnp.ones(note_samples - fade_samples), 1.0 - ramp])   # (length,)
  first = jnp.concatenate([jnp.ones(fade_samples), envelope[fade_samples:]])           # no fade-in at the start
  segments = notes[:, :length] * jnp.where(jnp.arange(m)[:, None] == 0, first, envelope)
  out = jnp.zeros((m * note_samples + fade_samples,), notes.dtype)
  idx = note_samples * jnp.arange(m)[:, None] + jnp.arange(length)[None, :]
  return out.at[idx.reshape(-1)].add(segments.reshape(-1))[None]


def _profiles(p: mel.MelParams, num_classes: int) -> tuple:
  return tuple(map(tuple, mel.harmonic_profiles(p, num_classes).tolist()))


def build(config, spec) -> Family:
  """DDPM on the spec's log-mel images; the batch carries waveforms, the sampler returns waveforms."""
  mc, p = config.model, mel.params_of(spec)
  if mc.num_classes not in (0, spec.num_classes):
    raise UserError(f'model.num_classes={mc.num_classes}: an audio model is conditioned on the MIDI pitch, '
                    f'so use {spec.num_classes} (or 0 for unconditional)')
  levels = len(mc.ch_mult) - 1
  if p.n_mels % 2**levels or p.frames % 2**levels:
    raise UserError(f'log-mel size {p.image_shape[:2]} is not divisible by 2^{levels} for model.ch_mult='
                    f'{tuple(mc.ch_mult)}; use fewer levels')
  model = UNet(out_channels=1, ch=mc.ch, ch_mult=tuple(mc.ch_mult), num_res_blocks=mc.num_res_blocks,
               attn_resolutions=tuple(mc.attn_resolutions), dropout=mc.dropout, num_heads=mc.num_heads,
               norm_groups=mc.norm_groups, num_classes=mc.num_classes,
               row_coordinate=mc.get('row_coordinate', False), dtype=jnp.dtype(mc.dtype),
               row_profiles=_profiles(p, spec.num_classes) if mc.num_classes and mc.get('harmonic_profile') else None)
  batch_spec = {'audio': Feature((spec.num_samples,), np.float32, -1.0, 1.0),
                'label': Feature((), np.int32, *spec.pitch_range)}
  gl_iters = config.sampling.griffin_lim_iters
  family = diffusion_family(
      config, model, p.image_shape, batch_key='audio', batch_spec=batch_spec,
      sample_kind=samples.Audio(spec.sample_rate), evaluators={'note_quality': note_quality},
      decode=lambda _, x0: mel.to_waveform(x0, p, gl_iters), clip=(-1.0, 1.0) if config.sampling.clip_x0 else None,
      features=lambda y: mel.log_mel(y, p))
  lo, hi = spec.pitch_range
  pitches = np.arange(lo, hi + 1)

  def make_sampler(state):
    notes = family.make_sampler(state)

    def sampler(rng, num: int = config.num_preview, *, label=None, melody=None, note_s: float = 0.5,
                crossfade_s: float = 0.05, **options):
      """-> float32 (num, samples) waveforms in [-1, 1]; with melody (MIDI pitches, or 'P1,P2,...') one
      (1, samples) waveform of the notes in turn. Other options: the DDPM sampler's (steps, guidance, ...)."""
      if melody is None:
        if mc.num_classes and label is None:
          label = pitches[np.arange(num) % len(pitches)]
        return notes(rng, num, label=label, **options)
      if label is not None:
        raise UserError('give --melody or --label, not both')
      try:
        melody = [int(m) for m in (melody.split(',') if isinstance(melody, str) else melody)]
      except ValueError:
        raise UserError(f'--melody must be MIDI pitches separated by commas, e.g. 60,62,64,65; got {melody!r}')
      note_samples, fade_samples = round(note_s * spec.sample_rate), round(crossfade_s * spec.sample_rate)
      if not melody or not 0 < fade_samples <= note_samples <= spec.num_samples - fade_samples:
        raise UserError(f'a melody needs pitches, and 0 < crossfade_s <= note_s <= '
                        f'{(spec.num_samples - fade_samples) / spec.sample_rate:.3f} s (the note length)')
      return crossfade_join(notes(rng, len(melody), label=np.array(melody), **options), note_samples, fade_samples)

    return sampler

  def preview(state, batch, rng):
    del batch
    return make_sampler(state)(rng, config.num_preview)

  return family._replace(make_sampler=make_sampler, preview=preview)


# --------------------------------------------------------------------------------------------- evaluation

def _classifier_input(p: mel.MelParams):
  return lambda y: (mel.log_mel(y, p) + 1) / 2          # the Classifier reads images in [0, 1]


def pitch_classifier(config, spec, cache_dir: str):
  """(classify(waveforms (N, samples), batch) -> (features, probs), info); trained once and cached."""
  p = mel.params_of(spec)
  name = f'pitch_{spec.name.replace("/", "_")}'
  architecture = {'input': 'log_mel', 'mel': dict(spec.mel), **{k: list(v) if isinstance(v, tuple) else v
                                                                 for k, v in CLASSIFIER.items()}}
  model = Classifier(num_classes=spec.num_classes, **CLASSIFIER)
  to_input = _classifier_input(p)
  apply = jax.jit(lambda params, y: model.apply({'params': params}, to_input(y)))
  cached = evaluators.load_classifier_params(cache_dir, name, architecture)
  if cached is None:
    print(f'no cached pitch classifier for {spec.name} in {cache_dir}: training it once '
          f'({CLASSIFIER_STEPS} steps of batch 64)')
    dconfig = config.copy_and_resolve_references()
    dconfig.batch_size, dconfig.seed = 64, 0
    start = time.time()
    params = evaluators.fit_classifier(model, np.zeros((1, *p.image_shape), np.float32),
                                       audio.load(dconfig, '').train_iterator(), CLASSIFIER_STEPS,
                                       inputs=lambda batch: to_input(batch['audio']))
    test = _real(dconfig, 'test')
    _, probs = evaluators.features_and_probs(apply, params, test['audio'], 64)
    info = dict(dataset=spec.name, architecture=architecture, num_classes=spec.num_classes,
                test_accuracy=float(np.mean(probs.argmax(-1) == test['label'])),
                test_examples=len(test['label']), train_steps=CLASSIFIER_STEPS, train_seconds=time.time() - start)
    evaluators.save_classifier(cache_dir, name, params, info)
    print(f'pitch classifier: test accuracy {100 * info["test_accuracy"]:.2f}%')
    cached = params, info
  params, info = cached
  return lambda y, batch: evaluators.features_and_probs(apply, params, y, batch), info


def _real(config, split: str, num: int | None = None) -> dict:
  """The first `num` (default all) notes of `split`, in order: {'audio': (N, samples), 'label': (N,)}."""
  batches = []
  for b in audio.ordered_batches(config, split):
    batches.append(b)
    if num is not None and sum(len(x['label']) for x in batches) >= num:
      break
  return {k: np.concatenate([b[k] for b in batches])[:num] for k in ('audio', 'label')}


def _accuracies(probs: np.ndarray, labels: np.ndarray, prefix: str) -> dict:
  error = np.abs(probs.argmax(-1) - labels)
  return {f'{prefix}': float(np.mean(error == 0)), f'{prefix}_within_1': float(np.mean(error <= 1))}


def note_quality(ctx: evaluators.Context) -> dict:
  """Pitch accuracy and FD-notes of ctx.num (default 4 per pitch) generated notes against the real floors."""
  spec, p = ctx.spec, mel.params_of(ctx.spec)
  lo, hi = spec.pitch_range
  pitches = np.arange(lo, hi + 1)
  num = ctx.num or 4 * len(pitches)
  batch = min(ctx.batch, num)
  sampler_options = ctx.options.get('sampler_options', {})
  cache_dir = ctx.options.get('cache_dir') or evaluators.classifier_dir(ctx.config.data.get('data_dir'))
  classify, info = pitch_classifier(ctx.config, spec, cache_dir)
  dconfig = ctx.config.copy_and_resolve_references()
  dconfig.batch_size = batch
  train = _real(dconfig, 'train', num)
  test = _real(dconfig, 'test')
  test = {k: v[np.isin(test['label'], pitches)] for k, v in test.items()}
  train_f, _ = classify(train['audio'], batch)
  test_f, test_p = classify(test['audio'], batch)
  invert = jax.jit(lambda y: mel.to_waveform(mel.log_mel(y, p), p))      # one compiled function for all batches
  inverted = np.concatenate([np.asarray(invert(test['audio'][i:i + batch]))
                             for i in range(0, len(test['label']), batch)])
  _, inverted_p = classify(inverted, batch)
  labels = pitches[np.arange(num) % len(pitches)]
  t0 = time.time()
  fake = np.concatenate([np.asarray(ctx.sampler(jax.random.fold_in(jax.random.key(ctx.seed), i), num=batch,
                                                label=labels[i:i + batch] if i + batch <= num else
                                                np.resize(labels[i:], batch), **sampler_options))
                         for i in range(0, num, batch)])[:num]
  sample_s = time.time() - t0
  fake_f, fake_p = classify(fake, batch)
  return dict(
      fd_name='FD-notes', fd=metrics.frechet_distance_of(fake_f, train_f),
      fd_floor=metrics.frechet_distance_of(test_f, train_f[:len(test_f)]),
      **_accuracies(fake_p, labels, 'pitch_accuracy'),
      **_accuracies(test_p, test['label'], 'pitch_accuracy_real_test'),
      **_accuracies(inverted_p, test['label'], 'pitch_accuracy_real_test_griffin_lim'),
      num=num, num_real_test=len(test['label']), pitches=[int(lo), int(hi)], sampler_options=sampler_options,
      sample_seconds=sample_s, classifier_test_accuracy=info['test_accuracy'],
      note="FD-notes uses jaxgen's own pitch classifier's features; compare runs at the same num")
