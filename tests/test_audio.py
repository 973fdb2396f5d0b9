"""Diffusion on audio: log-mel features and their inverse, the rendered notes dataset, the audio family."""
import os
import shutil
import wave

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxgen
from jaxgen import data
from jaxgen.data import mel, notes
from jaxgen.errors import UserError
from jaxgen.families import ddpm_audio
from tests.support.mock_tfds import mock_images
from tests.support.runs import straight_and_resumed, train
from tests.test_ddpm import random_state
from tests.test_gan import assert_trees_equal

P = mel.MelParams()


def midi_hz(pitch) -> float:
  return 440.0 * 2 ** ((pitch - 69) / 12)


def tone(pitch: int, num: int = P.num_samples, rate: int = P.sample_rate, seed: int = 0) -> np.ndarray:
  """A decaying tone of 4 harmonics (amplitudes 1/k) at the MIDI pitch, peak 0.9."""
  t = np.arange(num) / rate
  phases = np.random.default_rng(seed).uniform(0, 2 * np.pi, 4)
  y = sum(np.sin(2 * np.pi * k * midi_hz(pitch) * t + phases[k - 1]) / k for k in range(1, 5)) * np.exp(-2 * t)
  return (0.9 * y / np.abs(y).max()).astype(np.float32)


def f0_hps(y: np.ndarray, rate: int, harmonics: int = 3) -> float:
  """Fundamental by the harmonic product spectrum: argmax_f prod_k |Y(k f)| over the FFT of the note."""
  n = 1 << 17
  spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y)), n))
  m = len(spectrum) // harmonics
  product = np.prod([spectrum[::k][:m] for k in range(1, harmonics + 1)], axis=0)
  lowest = int(40 * n / rate)                       # ignore below 40 Hz
  return (lowest + np.argmax(product[lowest:])) * rate / n


def semitones(f: float, pitch: int) -> float:
  return abs(12 * np.log2(f / midi_hz(pitch)))


# ------------------------------------------------------------------------------------------- features

def test_stft_is_scipys_centred_stft_and_the_mel_magnitude_uses_librosas_filterbank():
  """X: scipy.signal.stft with zero padding of n_fft / 2 at both ends (librosa's centred frames) and a periodic
  Hann window, unscaled; M = |X| B^T with librosa's Slaney filterbank, whose centres are librosa's mel
  frequencies. (Not librosa.stft itself: importing it compiles numba kernels, ~16 s on a fresh install.)"""
  import librosa
  import scipy.signal
  y = tone(60) + 0.05 * np.random.default_rng(1).standard_normal(P.num_samples).astype(np.float32)
  ours = np.asarray(mel.stft(jnp.asarray(y[None]), P.n_fft, P.hop))[0].T              # (F, frames)
  window = scipy.signal.get_window('hann', P.n_fft)                                   # periodic
  _, _, ref = scipy.signal.stft(y.astype(np.float64), window=window, nperseg=P.n_fft, noverlap=P.n_fft - P.hop,
                                boundary='zeros', padded=False)
  ref = ref * window.sum()                                                            # undo scaling='spectrum'
  assert ours.shape == ref.shape == (1 + P.n_fft // 2, 1 + P.num_samples // P.hop)
  np.testing.assert_allclose(ours, ref, atol=2e-4 * np.abs(ref).max())
  basis = librosa.filters.mel(sr=P.sample_rate, n_fft=P.n_fft, n_mels=P.n_mels, fmin=P.fmin, fmax=P.fmax)
  m = np.asarray(mel.mel_magnitude(jnp.asarray(y[None]), P))[0].T
  np.testing.assert_allclose(m, basis @ np.abs(ref), atol=2e-4 * m.max())
  hz = np.fft.rfftfreq(P.n_fft, 1 / P.sample_rate)
  peaks = hz[np.argmax(basis, axis=1)]                                # each filter peaks at its mel centre
  centres = librosa.mel_frequencies(P.n_mels + 2, fmin=P.fmin, fmax=P.fmax)[1:-1]
  assert np.all(np.abs(peaks - centres) <= hz[1])


def test_istft_inverts_stft():
  y = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, P.num_samples)), jnp.float32)
  back = mel.istft(mel.stft(y, P.n_fft, P.hop), P.n_fft, P.hop, P.num_samples)
  np.testing.assert_allclose(back, y, atol=1e-5)


def test_log_mel_is_a_normalised_image_with_silence_at_minus_one():
  x = np.asarray(mel.log_mel(jnp.stack([jnp.asarray(tone(60)), jnp.zeros(P.num_samples)]), P))
  assert x.shape == (2, *P.image_shape) and x.min() >= -1 and x.max() <= 1
  assert np.all(x[1] == -1.0) and x[0].max() > 0.5


def test_mel_to_linear_recovers_a_consistent_magnitude():
  """For M = S0 B^T from a non-negative S0, the NNLS updates reach ||S B^T - M|| / ||M|| < 2 %."""
  s0 = jnp.abs(mel.stft(jnp.asarray(tone(64)[None]), P.n_fft, P.hop))
  m = s0 @ jnp.asarray(mel.mel_basis(P)).T
  s = mel.mel_to_linear(m, P)
  assert float(s.min()) >= 0
  assert float(jnp.linalg.norm(s @ jnp.asarray(mel.mel_basis(P)).T - m) / jnp.linalg.norm(m)) < 0.02


@pytest.mark.parametrize('pitch', [50, 69, 83])
def test_spectrogram_waveform_spectrogram_round_trip_is_bounded_and_keeps_the_pitch(pitch):
  y = tone(pitch)
  x = mel.log_mel(jnp.asarray(y[None]), P)
  back = np.asarray(jax.jit(lambda x: mel.to_waveform(x, P))(x))[0]
  assert back.shape == (P.num_samples,) and np.abs(back).max() <= 1
  x2 = mel.log_mel(jnp.asarray(back[None]), P)
  assert float(jnp.mean(jnp.abs(x - x2))) < 0.05                # ~2.5 dB mean log-mel error over 100 dB
  m, m2 = mel.unit_to_magnitude(x, P), mel.unit_to_magnitude(x2, P)
  assert float(jnp.linalg.norm(m - m2) / jnp.linalg.norm(m)) < 0.15   # spectral convergence
  assert semitones(f0_hps(back, P.sample_rate), pitch) < 0.5


# ------------------------------------------------------------------------------------------- dataset

def test_note_table_has_every_pitch_of_every_instrument_in_both_splits():
  table = notes.note_table()
  assert table == notes.note_table()                            # fixed
  assert len(table) == len(notes.INSTRUMENTS) * len(notes.PITCHES) * len(notes.VELOCITIES)
  for program in notes.INSTRUMENTS:
    for pitch in notes.PITCHES:
      splits = [n.split for n in table if (n.program, n.pitch) == (program, pitch)]
      assert splits.count('test') == 1 and splits.count('train') == len(notes.VELOCITIES) - 1


def _soundfont():
  if shutil.which('fluidsynth') is None:
    pytest.skip('fluidsynth is not installed (apt-get install fluidsynth timgm6mb-soundfont; make does this)')
  try:
    return notes.find_soundfont()
  except UserError as e:
    pytest.skip(str(e))


@pytest.mark.parametrize('program,pitch', [(73, 60), (19, 55), (40, 76), (0, 67)])
def test_rendered_notes_are_deterministic_and_have_their_labelled_pitch(program, pitch):
  soundfont = _soundfont()
  a = notes.render_note(program, pitch, 100, soundfont)
  assert a.tobytes() == notes.render_note(program, pitch, 100, soundfont).tobytes()
  assert a.shape == (notes.CLIP_SAMPLES,) and a.dtype == np.int16
  assert np.abs(a).max() == round(notes.PEAK * 32767)
  assert semitones(f0_hps(a[:8_000] / 32768.0, notes.SAMPLE_RATE), pitch) < 0.5


def test_missing_soundfont_is_one_line_naming_the_packages(monkeypatch, tmp_path):
  monkeypatch.setattr(notes, 'SOUNDFONTS', ())
  monkeypatch.setenv('JAXGEN_SOUNDFONT', '')
  with pytest.raises(UserError, match='apt-get install fluidsynth timgm6mb-soundfont'):
    notes.find_soundfont(str(tmp_path))
  (tmp_path / 'my.sf2').write_bytes(b'')
  assert notes.find_soundfont(str(tmp_path)) == str(tmp_path / 'my.sf2')


# ------------------------------------------------------------------------------------------- family

def test_crossfade_join_of_constant_notes_is_constant_until_the_last_fade():
  out = np.asarray(ddpm_audio.crossfade_join(jnp.ones((3, 100)), 40, 10))
  assert out.shape == (1, 3 * 40 + 10)
  np.testing.assert_allclose(out[0, :120], 1.0, atol=1e-6)      # fade-out + fade-in sum to one
  np.testing.assert_allclose(out[0, 120:], 1 - np.arange(10) / 10, atol=1e-6)


def smoke_config():
  from configs import ddpm_notes
  return ddpm_notes.get_config('smoke')


@pytest.fixture(scope='module')
def smoke_family(tmp_path_factory):
  config = smoke_config()
  config.data.data_dir = str(tmp_path_factory.mktemp('tfds'))
  with mock_images():
    spec = data.synthetic_spec(config)
  family = ddpm_audio.build(config, spec)
  return config, spec, family, random_state(family)


def test_spec_records_the_mel_parameters_and_midi_classes(smoke_family):
  _, spec, family, _ = smoke_family
  assert mel.params_of(spec) == P and spec.num_classes == 128 and tuple(spec.pitch_range) == (48, 84)
  assert family.batch_spec['audio'].shape == (P.num_samples,)


def test_sampler_returns_waveforms_for_the_requested_pitches_and_melodies(smoke_family):
  config, spec, family, state = smoke_family
  sampler = family.make_sampler(state)
  a = sampler(jax.random.key(0), num=2, label=60)
  assert a.shape == (2, P.num_samples) and a.dtype == jnp.float32 and float(jnp.abs(a).max()) <= 1
  np.testing.assert_array_equal(a, sampler(jax.random.key(0), num=2, label=60))
  assert np.any(np.asarray(a) != np.asarray(sampler(jax.random.key(0), num=2, label=61)))   # label is used
  tune = sampler(jax.random.key(0), melody='60,64,67', note_s=0.25, crossfade_s=0.05)
  assert tune.shape == (1, 3 * 4_000 + 800)
  with pytest.raises(UserError, match='melody'):
    sampler(jax.random.key(0), melody='60,x')
  with pytest.raises(UserError, match='label must be'):
    sampler(jax.random.key(0), num=2, label=128)


def test_model_classes_other_than_midi_are_refused(smoke_family):
  config, spec, _, _ = smoke_family
  config = config.copy_and_resolve_references()
  config.model.num_classes = 10
  with pytest.raises(UserError, match='MIDI pitch'):
    ddpm_audio.build(config, spec)


def test_smoke_run_writes_wav_previews_and_resumes_bit_exactly(tmp_path, cli):
  straight, resumed = straight_and_resumed(smoke_config, tmp_path, 4, 2)
  assert_trees_equal(straight, resumed)
  samples_dir = tmp_path / 'straight' / 'samples'
  assert (samples_dir / 'step_000004.wav').exists() and (samples_dir / 'step_000004.png').exists()
  out = tmp_path / 'x.wav'
  cli('sample.py', '--workdir', str(tmp_path / 'straight'), '--num', '2', '--label', '62', '--guidance', '2',
      '--out', str(out), mock_data=False)
  with wave.open(str(out)) as w:
    assert (w.getframerate(), w.getsampwidth(), w.getnchannels()) == (16_000, 2, 1)
    assert w.getnframes() == 2 * P.num_samples + round(0.25 * 16_000)    # two notes, a 0.25 s gap
  assert os.path.exists(tmp_path / 'x.png')
  with pytest.raises(UserError, match=r'^--melody must be MIDI pitches'):     # sample.py's one line: test_reliability
    jaxgen.load_sampler(str(tmp_path / 'straight'))(jax.random.key(0), melody='60,62,zz')


@pytest.mark.slow   # ~60 s: trains, evaluates and samples twice
def test_note_quality_reports_pitch_accuracy_and_fd_with_their_floors_and_caches_the_classifier(
    tmp_path, monkeypatch):
  from jaxgen import eval as eval_lib, evaluators
  train(smoke_config, tmp_path, tmp_path / 'run', 2)
  monkeypatch.setattr(ddpm_audio, 'CLASSIFIER_STEPS', 30)
  options = dict(cache_dir=str(tmp_path / 'classifiers'), sampler_options={'steps': 2})
  with mock_images():
    record = eval_lib.evaluate_workdir(str(tmp_path / 'run'), 8, batch=4, **options)
    fits = []
    monkeypatch.setattr(evaluators, 'fit_classifier', lambda *a, **k: fits.append(1))
    again = eval_lib.evaluate_workdir(str(tmp_path / 'run'), 8, batch=4, **options)
  assert not fits                                              # the cached classifier is reused
  assert record['fd_name'] == 'FD-notes' and record['num'] == 8 and record['pitches'] == [48, 84]
  for key in ('pitch_accuracy', 'pitch_accuracy_within_1', 'pitch_accuracy_real_test',
              'pitch_accuracy_real_test_griffin_lim'):
    assert 0 <= record[key] <= 1 and record[key] <= record[f'{key}_within_1' if 'within' not in key else key]
  assert record['fd'] >= 0 and record['fd_floor'] >= 0 and record['num_real_test'] == 32
  assert again['fd_floor'] == record['fd_floor']                # same classifier, same real notes
